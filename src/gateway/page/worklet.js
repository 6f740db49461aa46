// AudioWorklet processor: the microphone's first channel, resampled (linear interpolation) from
// the context's rate to the gateway's input rate, as 16-bit PCM blocks of about 100 ms posted to
// the page, which sends them over the WebSocket ingest.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const target = options.processorOptions.targetRate;
    this.step = sampleRate / target; // input samples per output sample
    this.position = 0; // next output sample, in input samples from this block's start
    this.previous = 0; // the last sample of the block before
    this.blockLength = Math.max(1, Math.round(target / 10));
    this.block = new Int16Array(this.blockLength);
    this.filled = 0;
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.block[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.blockLength) {
      // Transferred, not copied: the buffer is detached here, hence a new block.
      this.port.postMessage(this.block.buffer, [this.block.buffer]);
      this.block = new Int16Array(this.blockLength);
      this.filled = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const length = channel.length;
    if (this.step === 1) {
      for (let i = 0; i < length; i++) this.emit(channel[i]);
      return true;
    }
    while (this.position <= length - 1) {
      const i = Math.floor(this.position);
      const fraction = this.position - i;
      const a = i < 0 ? this.previous : channel[i];
      const b = i + 1 < length ? channel[i + 1] : a;
      this.emit(a + (b - a) * fraction);
      this.position += this.step;
    }
    this.position -= length;
    this.previous = channel[length - 1];
    return true;
  }
}

registerProcessor('pcm-capture', PcmCapture);
