// The plots: a scrolling mel spectrogram (dB heat map with a legend), the pitch track on a
// log-frequency axis with note names, the loudness strip and a time axis in seconds, all on the
// same x axis (one column per frame, the newest at the right). Frames are kept by index, so a
// frame arriving twice is drawn once; `drawn` counts the frames drawn so far and `voiced` those
// of them with a pitch (an f0: a point of the pitch line). The spectrogram canvas's
// `data-drawn-from` is the first of its columns that holds a frame (the columns before it are
// empty), which the browser tests use to look at the drawn part only.
'use strict';

const NOTE_NAMES = ['C', 'C#', 'D', 'D#', 'E', 'F', 'F#', 'G', 'G#', 'A', 'A#', 'B'];
const DB_RANGE = 80; // the colour scale spans the loudest mel value seen down to 80 dB below
const COLOUR_STOPS = [ // dark blue → purple → orange → pale yellow
  [0, [6, 6, 20]], [0.25, [60, 15, 110]], [0.5, [170, 45, 110]],
  [0.75, [245, 125, 40]], [1, [252, 253, 190]],
];

function colourAt(x) {
  x = Math.max(0, Math.min(1, x));
  for (let k = 1; k < COLOUR_STOPS.length; k++) {
    const [x1, c1] = COLOUR_STOPS[k];
    const [x0, c0] = COLOUR_STOPS[k - 1];
    if (x <= x1) {
      const t = (x - x0) / (x1 - x0);
      return c0.map((v, i) => Math.round(v + (c1[i] - v) * t));
    }
  }
  return COLOUR_STOPS[COLOUR_STOPS.length - 1][1];
}

function noteName(hz) {
  const midi = Math.round(69 + 12 * Math.log2(hz / 440));
  return NOTE_NAMES[((midi % 12) + 12) % 12] + (Math.floor(midi / 12) - 1);
}

const toDb = (power) => 10 * Math.log10(Math.max(power, 1e-10));

class FeatureView {
  constructor(canvases, options) {
    this.c = canvases; // {spectrogram, legend, pitch, loudness}
    this.pitchMin = options.pitchMin || 65;
    this.pitchMax = options.pitchMax || 2093;
    this.frameMs = options.frameMs || 32;
    this.onDrawn = options.onDrawn || (() => {});
    this.columns = canvases.spectrogram.width; // frames shown
    this.reset();
    for (const canvas of [canvases.spectrogram, canvases.pitch, canvases.loudness]) {
      canvas.addEventListener('mousemove', (e) => this.hover(canvas, e));
    }
    requestAnimationFrame(() => this.render());
    // Hidden or throttled tabs get no animation frames: draw at least five times a second.
    setInterval(() => this.renderOnce(), 200);
  }

  reset() {
    this.frames = []; // the newest `columns` frames, in index order
    this.lastIndex = -1;
    this.drawn = 0;
    this.voiced = 0;
    this.pending = 0; // frames added since the last render
    this.topDb = null;
    this.originMs = null; // capture time of the first frame: time zero of the axis
    this.delayMs = null;
    this.dirty = true;
  }

  add(frames) {
    for (const frame of frames) {
      if (typeof frame.index !== 'number' || frame.index <= this.lastIndex) continue;
      this.lastIndex = frame.index;
      if (frame.f0 > 0) this.voiced++;
      if (this.originMs === null) this.originMs = frame.timestamp_ms;
      if (Array.isArray(frame.mel)) {
        for (const v of frame.mel) {
          const db = toDb(v);
          if (this.topDb === null || db > this.topDb) this.topDb = db;
        }
      }
      this.frames.push(frame);
      this.pending++;
    }
    if (this.frames.length > this.columns) this.frames.splice(0, this.frames.length - this.columns);
    this.dirty = true;
  }

  render() {
    this.renderOnce();
    requestAnimationFrame(() => this.render());
  }

  renderOnce() {
    if (this.dirty) {
      this.dirty = false;
      this.drawSpectrogram();
      this.drawLegend();
      this.drawPitch();
      this.drawLoudness();
      if (this.pending > 0) {
        this.drawn += this.pending;
        this.pending = 0;
        const newest = this.frames[this.frames.length - 1];
        this.delayMs = Date.now() - (newest.timestamp_ms + this.frameMs);
      }
      this.onDrawn(this);
    }
  }

  // x of the i-th kept frame: the newest frame at the right edge.
  x(i, width) { return width - (this.frames.length - i); }

  drawSpectrogram() {
    const canvas = this.c.spectrogram;
    const g = canvas.getContext('2d');
    g.fillStyle = '#0a0b0e';
    g.fillRect(0, 0, canvas.width, canvas.height);
    canvas.dataset.drawnFrom = String(this.x(0, this.columns));
    const bands = this.frames.find((f) => Array.isArray(f.mel));
    if (!bands) return;
    const n = bands.mel.length;
    const image = g.createImageData(this.columns, n);
    const bottom = this.topDb - DB_RANGE;
    this.frames.forEach((frame, i) => {
      if (!Array.isArray(frame.mel)) return;
      const x = this.x(i, this.columns);
      for (let b = 0; b < n; b++) {
        const [r, gr, bl] = colourAt((toDb(frame.mel[b]) - bottom) / DB_RANGE);
        const p = ((n - 1 - b) * this.columns + x) * 4; // low bands at the bottom
        image.data[p] = r; image.data[p + 1] = gr; image.data[p + 2] = bl; image.data[p + 3] = 255;
      }
    });
    const scratch = document.createElement('canvas');
    scratch.width = this.columns; scratch.height = n;
    scratch.getContext('2d').putImageData(image, 0, 0);
    g.imageSmoothingEnabled = false;
    g.drawImage(scratch, 0, 0, canvas.width, canvas.height);
    g.fillStyle = '#cfd5df'; g.font = '11px system-ui';
    g.fillText(`mel band (${n}) ↑`, 4, 12);
  }

  drawLegend() {
    const canvas = this.c.legend;
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, canvas.width, canvas.height);
    for (let y = 0; y < canvas.height; y++) {
      const [r, gr, b] = colourAt(1 - y / (canvas.height - 1));
      g.fillStyle = `rgb(${r},${gr},${b})`;
      g.fillRect(0, y, 14, 1);
    }
    g.fillStyle = '#cfd5df'; g.font = '11px system-ui';
    const top = this.topDb === null ? 0 : this.topDb;
    for (let k = 0; k <= 4; k++) {
      const y = Math.min(canvas.height - 3, Math.max(10, (k / 4) * canvas.height));
      g.fillText(`${(top - (k * DB_RANGE) / 4).toFixed(0)} dB`, 18, y);
    }
  }

  pitchY(hz, height) {
    const lo = Math.log2(this.pitchMin);
    const hi = Math.log2(this.pitchMax);
    return height - ((Math.log2(hz) - lo) / (hi - lo)) * height;
  }

  drawPitch() {
    const canvas = this.c.pitch;
    const g = canvas.getContext('2d');
    const { width, height } = canvas;
    g.fillStyle = '#0a0b0e'; g.fillRect(0, 0, width, height);
    g.font = '11px system-ui';
    for (let octave = 1; octave <= 8; octave++) { // a line and a label at every C
      const hz = 440 * Math.pow(2, (12 * (octave + 1) - 69) / 12);
      if (hz < this.pitchMin || hz > this.pitchMax) continue;
      const y = this.pitchY(hz, height);
      g.fillStyle = '#262b35'; g.fillRect(0, y, width, 1);
      g.fillStyle = '#8a93a6'; g.fillText(`C${octave} ${hz.toFixed(0)} Hz`, 4, y - 2);
    }
    g.lineWidth = 2.5;
    for (let i = 1; i < this.frames.length; i++) {
      const a = this.frames[i - 1];
      const b = this.frames[i];
      if (!(a.f0 > 0 && b.f0 > 0) || b.index !== a.index + 1) continue;
      const p = typeof b.voiced_prob === 'number' ? b.voiced_prob : 1;
      g.strokeStyle = `rgba(110, 235, 255, ${0.3 + 0.7 * p})`;
      g.beginPath();
      g.moveTo(this.x(i - 1, width), this.pitchY(a.f0, height));
      g.lineTo(this.x(i, width), this.pitchY(b.f0, height));
      g.stroke();
    }
    g.fillStyle = '#cfd5df'; g.fillText('f0 (opacity: voiced probability)', width - 200, 12);
  }

  loudnessOf(frame) {
    if (typeof frame.loudness_dbfs === 'number') return frame.loudness_dbfs;
    if (typeof frame.rms === 'number') return 20 * Math.log10(Math.max(frame.rms, 1e-5));
    return null;
  }

  drawLoudness() {
    const canvas = this.c.loudness;
    const g = canvas.getContext('2d');
    const { width } = canvas;
    const strip = canvas.height - 22; // the time axis below
    g.fillStyle = '#0a0b0e'; g.fillRect(0, 0, width, canvas.height);
    g.fillStyle = '#7fdc8c';
    this.frames.forEach((frame, i) => {
      const db = this.loudnessOf(frame);
      if (db === null) return;
      const h = Math.max(0, Math.min(1, (db + 90) / 90)) * strip;
      g.fillRect(this.x(i, width), strip - h, 1, h);
    });
    g.fillStyle = '#cfd5df'; g.font = '11px system-ui';
    g.fillText('loudness (dBFS, −90…0)', 4, 12);
    g.fillStyle = '#3a4150'; g.fillRect(0, strip, width, 1);
    if (this.originMs === null) return;
    let lastSecond = null;
    this.frames.forEach((frame, i) => {
      const second = Math.floor((frame.timestamp_ms - this.originMs) / 1000);
      if (second !== lastSecond && lastSecond !== null) {
        const x = this.x(i, width);
        g.fillStyle = '#8a93a6';
        g.fillRect(x, strip, 1, 5);
        g.fillText(`${second} s`, x + 2, strip + 16);
      }
      lastSecond = second;
    });
  }

  hover(canvas, event) {
    const box = canvas.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * canvas.width;
    const py = ((event.clientY - box.top) / box.height) * canvas.height;
    const i = this.frames.length - (canvas.width - Math.floor(px));
    const frame = this.frames[i];
    const readout = document.getElementById('readout');
    if (!frame) { readout.textContent = 'no frame here'; return; }
    const parts = [`t ${((frame.timestamp_ms - this.originMs) / 1000).toFixed(2)} s`, `frame ${frame.index}`];
    if (canvas === this.c.spectrogram && Array.isArray(frame.mel)) {
      const band = Math.min(frame.mel.length - 1, Math.floor((1 - py / canvas.height) * frame.mel.length));
      parts.push(`mel band ${band}: ${toDb(frame.mel[band]).toFixed(1)} dB`);
    }
    parts.push(frame.f0 > 0 ? `f0 ${frame.f0.toFixed(1)} Hz (${noteName(frame.f0)})` : 'unvoiced');
    if (typeof frame.voiced_prob === 'number') parts.push(`p(voiced) ${frame.voiced_prob.toFixed(2)}`);
    const db = this.loudnessOf(frame);
    if (db !== null) parts.push(`loudness ${db.toFixed(1)} dBFS`);
    readout.textContent = parts.join(' · ');
  }
}

window.FeatureView = FeatureView;
