// The page's controller: the token, the two ways to feed the view (watch a stream's live feed,
// or capture the microphone and stream it over the WebSocket ingest while watching it), and the
// messages a person reads when something fails. The DOM outputs #frame-count, #last-frame-index,
// #voiced-count, #delay-ms, #state and #error are what the browser tests read.
'use strict';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'specflow.token';
const FEATURES = 'mel,f0,rms,loudness_dbfs';
const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;

let info = { tokens_required: false, sample_rate: 16000, frame_length: 512, hop_length: 160 };
let view = null;
let live = null; // the live feed's WebSocket
let mic = null; // {context, media, node, socket}

function setState(state, text) {
  $('state').dataset.state = state;
  $('state').textContent = text || state;
}

function showError(text, kind) {
  const box = $('error');
  box.textContent = text;
  box.className = kind || 'error';
  box.hidden = false;
  if (kind !== 'notice') setState('error');
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  delete $('error').dataset.untilFrames;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function protocols() { return token() ? ['bearer', token()] : undefined; }

function askForToken(why) {
  $('token-form').hidden = false;
  $('token').focus();
  if (why) showError(why);
}

// A `/v1` request; refusals become errors whose message says what went wrong.
async function api(path) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  let response;
  try {
    response = await fetch(path, { headers });
  } catch (e) {
    throw new Error(`The gateway does not answer (${e.message}).`);
  }
  if (response.status === 401) {
    askForToken(token() ? 'The token was refused (401 unauthorized). Enter a valid token.'
      : 'This gateway needs a token (401 unauthorized). Enter it above.');
    throw new Error('unauthorized');
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const what = body.error === 'kafka_unavailable'
      ? 'Kafka is unreachable: the broker does not answer.' : `The gateway refused: ${body.error}.`;
    throw new Error(`${what} ${body.message || ''} (HTTP ${response.status})`);
  }
  return body;
}

async function loadRecentStreams() {
  const body = await api('/v1/streams');
  const list = $('recent-streams');
  list.replaceChildren(...body.streams.map((s) => {
    const option = document.createElement('option');
    option.value = s.stream_id;
    option.label = `seen ${new Date(s.last_seen_ms).toLocaleTimeString()}`;
    return option;
  }));
  // The list came with the token this tab holds (tests wait for it).
  list.dataset.loaded = 'true';
  return body.streams;
}

function updateStats(v) {
  $('frame-count').value = String(v.drawn);
  $('voiced-count').value = String(v.voiced);
  $('last-frame-index').value = v.lastIndex < 0 ? '–' : String(v.lastIndex);
  // The delay: this computer's clock against the end of the newest frame's capture. A stream
  // sent faster than real time (a file, `specflow produce`) has capture times ahead of the clock:
  // a negative number would mean nothing, so it says so instead (data-ms keeps the number).
  const delay = $('delay-ms');
  const ms = v.delayMs === null ? null : Math.round(v.delayMs);
  delay.dataset.ms = ms === null ? '' : String(ms);
  if (ms === null) {
    delay.value = '–';
    delay.title = '';
  } else if (ms < 0) {
    delay.value = 'ahead of real time';
    delay.title = `The newest frame was captured ${-ms} ms "in the future" of this computer's `
      + 'clock: the stream is sent faster than real time (a file, not a microphone) or the '
      + 'clocks differ, so there is no delay to show.';
  } else {
    delay.value = `${ms} ms`;
    delay.title = 'From the end of the newest frame\'s capture to its drawing here.';
  }
}

function closeLive() {
  if (live) { live.onclose = null; live.close(1000); live = null; }
}

// Follows one stream; resolves once the feed is live (history, if any, already queued).
function openLive(streamId, fromMs) {
  closeLive();
  clearError();
  view.reset();
  $('stream-shown').value = streamId;
  setState('connecting', 'connecting…');
  const query = new URLSearchParams({ features: FEATURES });
  if (fromMs !== undefined) query.set('from_ms', String(fromMs));
  const url = `${wsBase}/v1/streams/${encodeURIComponent(streamId)}/features/live?${query}`;
  const socket = new WebSocket(url, protocols());
  live = socket;
  let failed = false;
  return new Promise((resolve, reject) => {
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === 'frames') {
        view.add(message.frames);
        if (!$('error').hidden && $('error').dataset.untilFrames) clearError();
      } else if (message.type === 'live') {
        setState('live', message.history ? 'live (history loaded)' : 'live');
        if (message.known === false && view.lastIndex < 0) {
          showError(`Stream “${streamId}” is unknown: nothing is stored for it yet. `
            + 'Waiting for its first frames…', 'notice');
          $('error').dataset.untilFrames = 'yes'; // the first frames end it
        }
        resolve();
      } else if (message.type === 'error') {
        failed = true;
        const what = {
          kafka_unavailable: 'Kafka is unreachable: the live feed stopped.',
          mongodb_unavailable: 'MongoDB is unreachable: the stored history cannot be read.',
          slow_client: 'This page fell behind the live feed and was disconnected.',
          shutting_down: 'The gateway is stopping.',
        }[message.error] || `The live feed failed: ${message.error}.`;
        showError(`${what} ${message.message}`);
        reject(new Error(message.error));
      }
    };
    socket.onclose = async (event) => {
      if (live === socket) live = null;
      if (failed) return;
      // A refused upgrade shows no status to the page: ask the API why.
      try {
        await api('/v1/streams');
        showError(`The live feed closed (code ${event.code}${event.reason ? `, ${event.reason}` : ''}).`);
      } catch (e) {
        if (e.message !== 'unauthorized') showError(e.message);
      }
      reject(new Error('closed'));
    };
  });
}

async function watch() {
  const streamId = $('stream-id').value.trim();
  if (!streamId) { showError('Type a stream id or pick one from the list.'); return; }
  try {
    await api('/v1/streams'); // token and broker first: their errors are clearer here
    await openLive(streamId, $('from').value === 'start' ? 0 : undefined);
  } catch (e) {
    if (!['unauthorized', 'closed'].includes(e.message) && $('error').hidden) showError(e.message);
  }
}

function micStreamId() {
  return `mic-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 7)}`;
}

// An AudioContext at the gateway's rate, so that the browser resamples the microphone; a
// browser that cannot connect a device of another rate to it (Firefox) gets one at the device's
// rate, and the worklet resamples. `?capture=native` on the page's URL asks for the latter.
async function captureContext(media, rate) {
  if (new URLSearchParams(location.search).get('capture') !== 'native') {
    const context = new AudioContext({ sampleRate: rate });
    try {
      const source = context.createMediaStreamSource(media);
      await context.resume();
      return { context, source };
    } catch (e) {
      await context.close();
    }
  }
  const context = new AudioContext();
  const source = context.createMediaStreamSource(media);
  await context.resume();
  return { context, source };
}

// A device that sends nothing but zeros (muted, held by another application, a fake device
// without its file) would draw a flat view without a word: after 2 s of it, a notice says so.
function watchForSilence(block, rate) {
  if (mic.peak > 0) return;
  for (const v of new Int16Array(block)) if (v !== 0) { mic.peak = 1; break; }
  if (mic.peak === 0 && mic.samples >= 2 * rate && !mic.silenceShown) {
    mic.silenceShown = true;
    showError('The microphone sends silence (every sample is zero): is it muted, switched off '
      + 'or in use by another application?', 'notice');
  }
}

async function startMic() {
  const rate = info.sample_rate;
  const streamId = micStreamId();
  $('stream-id').value = streamId;
  $('mic-start').disabled = true;
  try {
    await api('/v1/streams');
    await openLive(streamId); // from now: every frame of the new stream arrives live
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    const { context, source } = await captureContext(media, rate);
    await context.audioWorklet.addModule('/ui/worklet.js');
    const node = new AudioWorkletNode(context, 'pcm-capture', {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { targetRate: rate },
    });
    const socket = new WebSocket(`${wsBase}/v1/streams/${encodeURIComponent(streamId)}/ws`, protocols());
    socket.binaryType = 'arraybuffer';
    mic = { context, media, node, socket, waiting: [], started: false, samples: 0, peak: 0 };
    socket.onopen = () => {
      for (const block of mic.waiting) socket.send(block);
      mic.waiting = [];
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.error) showError(`The microphone stream was refused: ${message.error}. ${message.message}`);
      if (typeof message.durable_samples === 'number') {
        $('durable-samples').value = `${(message.durable_samples / rate).toFixed(1)} s`;
      }
      if (message.eos) setState('live', 'stopped: last frames arriving');
    };
    node.port.onmessage = (event) => {
      const block = event.data;
      if (!mic.started) {
        // The format goes first, with the capture time of the first sample.
        mic.started = true;
        const captured = Date.now() - (block.byteLength / 2 / rate) * 1000;
        const format = JSON.stringify({ format: 's16le', sample_rate: rate, channels: 1,
          start_sample: 0, timestamp_ms: Math.round(captured) });
        if (socket.readyState === WebSocket.OPEN) socket.send(format); else mic.waiting.push(format);
      }
      mic.samples += block.byteLength / 2;
      watchForSilence(block, rate);
      if (socket.readyState === WebSocket.OPEN) socket.send(block); else mic.waiting.push(block);
    };
    source.connect(node);
    $('mic-stop').disabled = false;
    setState('live', 'live: microphone');
  } catch (e) {
    $('mic-start').disabled = false;
    if (e.name === 'NotAllowedError' || e.name === 'NotFoundError') {
      showError(`No microphone: ${e.message}`);
    } else if (!['unauthorized', 'closed'].includes(e.message) && $('error').hidden) {
      showError(e.message);
    }
  }
}

// Stop: no more audio, then `{"eos": true}` (the audio.eos chunk); the live feed stays open
// for the frames still on their way.
async function stopMic() {
  if (!mic) return;
  const { context, media, node, socket } = mic;
  mic = null;
  node.port.onmessage = null;
  node.disconnect();
  media.getTracks().forEach((t) => t.stop());
  await context.close();
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ eos: true }));
  $('mic-stop').disabled = true;
  $('mic-start').disabled = false;
}

async function start() {
  view = new FeatureView({
    spectrogram: $('spectrogram'), legend: $('legend'), pitch: $('pitch'), loudness: $('loudness'),
  }, {
    frameMs: 0, onDrawn: updateStats,
  });
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token-form').hidden = true;
    clearError();
    setState('idle');
    loadRecentStreams().catch((err) => { if (err.message !== 'unauthorized') showError(err.message); });
  });
  $('watch').addEventListener('click', watch);
  $('refresh-streams').addEventListener('click', () => loadRecentStreams().catch((e) => {
    if (e.message !== 'unauthorized') showError(e.message);
  }));
  $('mic-start').addEventListener('click', startMic);
  $('mic-stop').addEventListener('click', stopMic);
  try {
    info = await (await fetch('/ui/info')).json();
  } catch (e) {
    showError(`The gateway does not answer (${e.message}).`);
    return;
  }
  view.pitchMin = info.pitch_fmin;
  view.pitchMax = info.pitch_fmax;
  view.frameMs = (info.frame_length / info.sample_rate) * 1000;
  if (info.tokens_required && !token()) { askForToken(); return; }
  loadRecentStreams().catch((e) => { if (e.message !== 'unauthorized') showError(e.message); });
}

start();
