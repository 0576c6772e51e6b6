// Live emotion page: camera frames + microphone windows -> /ws/stream -> boxes, bars, timeline.
'use strict';

const FRAME_FPS = 8;                 // frames sent per second
const FRAME_WIDTH = 320;             // frames are downscaled to this width before JPEG encoding
const JPEG_QUALITY = 0.7;
const AUDIO_CHUNK_MS = 250;          // 4000 samples at 16 kHz per message
const MAX_BUFFERED_BYTES = 256 * 1024; // skip frames while the socket is this far behind
const TIMELINE_SECONDS = 60;
const STALE_MS = 2000;               // bars fade and boxes vanish when older than this
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
const KIND_FRAME = 1, KIND_PCM16 = 2;
const DEFAULT_EMOTIONS = ['neutral', 'happy', 'sad', 'angry', 'fear', 'disgust', 'surprise'];
const COLORS = {
  neutral: '#9aa5b1', happy: '#f2c230', sad: '#4a8fe7', angry: '#e5533d',
  fear: '#9b6ee8', disgust: '#5fb548', surprise: '#f08ac6',
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// State other scripts (and the end-to-end test) can read.
const app = window.emotionApp = {
  emotions: DEFAULT_EMOTIONS.slice(),
  connection: 'connecting',
  results: 0, frameResults: 0, audioResults: 0, errors: [],
  lastResult: null, rtt: null, camera: 'pending', microphone: 'pending',
};

let ws = null;
let nextId = 1;
let reconnectDelay = RECONNECT_MIN_MS;
let lastFrameResult = null;          // {faces, image_size, at}
let faceSeen = 0, voiceSeen = 0;
const history = [];                  // {at, fused, face_state, voice_state}
const resultTimes = [];

// ---- UI helpers --------------------------------------------------------------------------
function setPill(el, state, text, tone) {
  el.dataset.state = state;
  el.textContent = text;
  el.className = 'pill pill-' + tone;
}

function buildBars() {
  for (const group of ['face', 'voice', 'fused']) {
    const box = $('bars-' + group);
    box.innerHTML = '';
    for (const emotion of app.emotions) {
      const row = document.createElement('div');
      row.className = 'bar-row';
      row.dataset.emotion = emotion;
      row.innerHTML = `<span class="bar-name">${emotion}</span>` +
        `<div class="bar-track"><div class="bar-fill" data-p="0" style="background:${COLORS[emotion] || '#888'}"></div></div>` +
        `<span class="bar-value">–</span>`;
      box.appendChild(row);
    }
  }
  $('legend').innerHTML = app.emotions.map(
    (e) => `<span><i style="background:${COLORS[e] || '#888'}"></i>${e}</span>`).join('');
}

function setBars(group, probs) {
  const box = $('bars-' + group);
  box.classList.toggle('stale', !probs);
  if (!probs) return;
  for (const row of box.children) {
    const p = probs[row.dataset.emotion] || 0;
    const fill = row.querySelector('.bar-fill');
    fill.style.width = (100 * p).toFixed(1) + '%';
    fill.dataset.p = p.toFixed(4);
    row.querySelector('.bar-value').textContent = Math.round(100 * p) + '%';
  }
}

function showConnection(state, text) {
  app.connection = state;
  const tone = state === 'connected' ? 'ok' : state === 'connecting' ? 'wait' : 'bad';
  setPill($('conn-state'), state, text, tone);
}

// ---- WebSocket ---------------------------------------------------------------------------
function connect() {
  showConnection('connecting', 'connecting…');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws/stream';
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  ws = socket;
  socket.onopen = () => { reconnectDelay = RECONNECT_MIN_MS; };
  socket.onmessage = (event) => {
    let msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === 'hello') onHello(msg);
    else if (msg.type === 'result') onResult(msg);
    else if (msg.type === 'pong') updateRtt(msg.t);
    else if (msg.type === 'error') { app.errors.push(msg); if (app.errors.length > 20) app.errors.shift(); }
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    const why = event.code === 1013 ? `server busy (${event.reason})` : 'server down';
    showConnection('down', `${why} — retrying in ${(reconnectDelay / 1000).toFixed(1)} s`);
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(RECONNECT_MAX_MS, reconnectDelay * 2);
  };
}

function onHello(msg) {
  if (Array.isArray(msg.emotions) && msg.emotions.join() !== app.emotions.join()) {
    app.emotions = msg.emotions;
    buildBars();
  }
  app.models = msg.models;
  const loaded = Object.entries(msg.models || {}).filter(([, m]) => m.loaded).map(([n]) => n);
  showConnection('connected', 'connected · models: ' + (loaded.join(', ') || 'none'));
}

function send(kind, id, payload) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  const header = new DataView(new ArrayBuffer(13));
  header.setUint8(0, kind);
  header.setUint32(1, id, true);
  header.setFloat64(5, performance.now(), true);
  const message = new Uint8Array(13 + payload.byteLength);
  message.set(new Uint8Array(header.buffer), 0);
  message.set(new Uint8Array(payload), 13);
  ws.send(message.buffer);
  return true;
}

function updateRtt(t) {
  if (typeof t !== 'number') return;
  const rtt = performance.now() - t;
  app.rtt = app.rtt === null ? rtt : 0.8 * app.rtt + 0.2 * rtt;
  $('rtt').textContent = Math.round(app.rtt);
}

function onResult(msg) {
  const now = performance.now();
  app.results += 1;
  app.lastResult = msg;
  updateRtt(msg.t);
  resultTimes.push(now);
  while (resultTimes.length && now - resultTimes[0] > 1000) resultTimes.shift();
  $('result-rate').textContent = resultTimes.length;
  $('dropped').textContent = msg.stats ? msg.stats.frames_dropped : 0;
  if (msg.kind === 'frame') {
    app.frameResults += 1;
    lastFrameResult = { faces: msg.faces, size: msg.image_size, at: now };
    drawBoxes();
  } else {
    app.audioResults += 1;
  }
  if (msg.face) faceSeen = now;
  if (msg.voice) voiceSeen = now;
  setBars('face', msg.face);
  setBars('voice', msg.voice);
  setBars('fused', msg.fused && msg.fused.probabilities);
  showStates(msg);
  const label = $('fused-label');
  if (msg.fused) {
    label.textContent = msg.fused.label;
    label.dataset.label = msg.fused.label;
    label.style.color = COLORS[msg.fused.label] || '';
    const p = msg.fused.probabilities[msg.fused.label];
    $('fused-detail').textContent = `${Math.round(100 * p)}% · from ${msg.fused.sources.join(' + ')}`;
  } else {
    label.textContent = '–';
    label.dataset.label = '';
    label.style.color = '';
    $('fused-detail').textContent = 'waiting for face or voice';
  }
  history.push({ at: now, fused: msg.fused && msg.fused.probabilities });
  while (history.length && now - history[0].at > TIMELINE_SECONDS * 1000) history.shift();
}

function showStates(msg) {
  const face = {
    face: ['face', 'face: found', 'ok'], no_face: ['no_face', 'no face', 'warn'],
    no_model: ['no_model', 'face: no model', 'bad'], unknown: ['unknown', 'face: –', 'wait'],
  }[msg.face_state] || ['unknown', 'face: –', 'wait'];
  if (app.camera !== 'on') setPill($('face-state'), 'no_camera', 'face: camera off', 'wait');
  else setPill($('face-state'), ...face);
  const voice = {
    voice: ['voice', 'voice: speaking', 'ok'], silence: ['silence', 'silence', 'warn'],
    no_speech: ['no_speech', `no speech (${msg.no_speech || 'not a voice'})`, 'warn'],
    no_model: ['no_model', 'voice: no model', 'bad'], unknown: ['unknown', 'voice: –', 'wait'],
  }[msg.voice_state] || ['unknown', 'voice: –', 'wait'];
  if (app.microphone !== 'on') setPill($('voice-state'), 'no_microphone', 'voice: microphone off', 'wait');
  else setPill($('voice-state'), ...voice);
}

// ---- drawing -----------------------------------------------------------------------------
function drawBoxes() {
  const canvas = $('overlay');
  const ctx = canvas.getContext('2d');
  if (!lastFrameResult || !lastFrameResult.size) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  const [w, h] = lastFrameResult.size;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.clearRect(0, 0, w, h);
  if (performance.now() - lastFrameResult.at > STALE_MS) return;
  ctx.lineWidth = Math.max(2, w / 160);
  ctx.font = `${Math.max(12, Math.round(w / 22))}px system-ui, sans-serif`;
  for (const face of lastFrameResult.faces) {
    const [x, y, bw, bh] = face.box;
    const color = COLORS[face.label] || '#0f0';
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, bw, bh);
    const text = `${face.label} ${Math.round(100 * face.probabilities[face.label])}%`;
    const tw = ctx.measureText(text).width + 8;
    const th = parseInt(ctx.font, 10) + 6;
    const ty = y - th >= 0 ? y - th : y + bh;
    ctx.fillStyle = color;
    ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = '#000';
    ctx.fillText(text, x + 4, ty + th - 5);
  }
}

function drawTimeline() {
  const canvas = $('timeline');
  const width = canvas.clientWidth || canvas.width;
  if (canvas.width !== width) canvas.width = width;
  const ctx = canvas.getContext('2d');
  const h = canvas.height, now = performance.now();
  ctx.clearRect(0, 0, width, h);
  ctx.strokeStyle = '#26303a';
  ctx.fillStyle = '#6b7682';
  ctx.font = '10px system-ui, sans-serif';
  for (let s = 0; s <= TIMELINE_SECONDS; s += 10) {
    const x = width - (s / TIMELINE_SECONDS) * width;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
    ctx.fillText(s === 0 ? 'now' : `-${s}s`, Math.min(x + 2, width - 24), h - 3);
  }
  const xOf = (at) => width - ((now - at) / (TIMELINE_SECONDS * 1000)) * width;
  const yOf = (p) => h - 14 - p * (h - 26);
  // Top band: the winning fused emotion over time, readable at a glance.
  for (let i = 0; i < history.length; i++) {
    const point = history[i];
    if (!point.fused) continue;
    const top = Object.keys(point.fused).reduce((a, b) => (point.fused[a] >= point.fused[b] ? a : b));
    const x0 = xOf(point.at);
    const x1 = i + 1 < history.length ? xOf(history[i + 1].at) : width;
    ctx.fillStyle = COLORS[top] || '#888';
    ctx.fillRect(x0, 0, Math.max(1, x1 - x0), 6);
  }
  for (const emotion of app.emotions) {
    ctx.strokeStyle = COLORS[emotion] || '#888';
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    for (const point of history) {
      if (!point.fused) { drawing = false; continue; }  // gaps where nothing was seen or heard
      const x = xOf(point.at), y = yOf(point.fused[emotion] || 0);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    }
    ctx.stroke();
  }
}

function tick() {
  const now = performance.now();
  // A modality that stopped answering (camera unplugged, socket down) fades out.
  if (now - faceSeen > STALE_MS) $('bars-face').classList.add('stale');
  if (now - voiceSeen > STALE_MS) $('bars-voice').classList.add('stale');
  if (lastFrameResult && now - lastFrameResult.at > STALE_MS) drawBoxes();
  drawTimeline();
}

// ---- capture -----------------------------------------------------------------------------
async function openMedia() {
  const wantCamera = params.get('camera') !== 'off';
  const wantMic = params.get('mic') !== 'off';
  let stream = null;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    app.camera = app.microphone = 'unavailable';
  } else {
    // Ask for both at once (one prompt); if that is refused, try each alone so one is enough.
    if (wantCamera && wantMic) {
      try { stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true }); }
      catch (e) { stream = null; }
    }
    if (!stream) {
      const tracks = [];
      if (wantCamera) {
        try { tracks.push(...(await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } })).getTracks()); }
        catch (e) { app.camera = 'denied'; }
      }
      if (wantMic) {
        try { tracks.push(...(await navigator.mediaDevices.getUserMedia({ audio: true })).getTracks()); }
        catch (e) { app.microphone = 'denied'; }
      }
      stream = new MediaStream(tracks);
    }
    if (stream.getVideoTracks().length) app.camera = 'on';
    else if (app.camera === 'pending') app.camera = 'off';
    if (stream.getAudioTracks().length) app.microphone = 'on';
    else if (app.microphone === 'pending') app.microphone = 'off';
  }
  const tone = (s) => (s === 'on' ? 'ok' : s === 'denied' ? 'bad' : 'wait');
  setPill($('camera-state'), app.camera, 'camera: ' + app.camera, tone(app.camera));
  setPill($('mic-state'), app.microphone, 'microphone: ' + app.microphone, tone(app.microphone));
  if (app.camera === 'on') startFrames(stream); else $('video-box').classList.add('no-camera');
  if (app.microphone === 'on') await startAudio(stream);
}

function startFrames(stream) {
  const video = $('video');
  video.srcObject = new MediaStream(stream.getVideoTracks());
  const canvas = document.createElement('canvas');
  let encoding = false;
  setInterval(() => {
    if (encoding || !ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > MAX_BUFFERED_BYTES) return;
    if (!video.videoWidth) return;
    canvas.width = FRAME_WIDTH;
    canvas.height = Math.round(FRAME_WIDTH * video.videoHeight / video.videoWidth);
    canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
    encoding = true;
    canvas.toBlob(async (blob) => {
      try { if (blob) send(KIND_FRAME, nextId++, await blob.arrayBuffer()); }
      finally { encoding = false; }
    }, 'image/jpeg', JPEG_QUALITY);
  }, 1000 / FRAME_FPS);
}

async function startAudio(stream) {
  let context;
  try { context = new AudioContext({ sampleRate: 16000 }); }   // let the browser resample
  catch (e) { context = new AudioContext(); }                   // the worklet resamples instead
  await context.audioWorklet.addModule('/static/audio-worklet.js');
  const source = context.createMediaStreamSource(new MediaStream(stream.getAudioTracks()));
  const node = new AudioWorkletNode(context, 'pcm-chunker', { processorOptions: { chunkMs: AUDIO_CHUNK_MS } });
  node.port.onmessage = (event) => send(KIND_PCM16, nextId++, event.data);
  source.connect(node);
  // A worklet only runs while connected to the graph's output; a muted gain keeps it silent.
  const mute = context.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(context.destination);
  const resume = () => context.resume();
  if (context.state !== 'running') {
    resume();
    document.addEventListener('click', resume, { once: true });  // autoplay policies want a gesture
  }
  app.audioContext = context;
}

// ---- file upload (the REST endpoints, not the stream) -------------------------------------
const FILE_ENDPOINTS = {  // by media type; audio asks for the window-by-window timeline too
  audio: '/api/predict/audio?segments=true&', image: '/api/predict/image?', video: '/api/predict/video?',
};

function fileRow(text, emotion, headline) {
  const row = document.createElement('div');
  row.className = 'file-row' + (headline ? ' headline' : '');
  if (emotion) row.dataset.label = emotion;
  const swatch = document.createElement('i');
  swatch.style.background = COLORS[emotion] || 'transparent';
  const span = document.createElement('span');
  span.textContent = text;  // file names are user input: never innerHTML
  row.append(swatch, span);
  return row;
}

// "angry 82 %" for anything the API answers with {label, probabilities}
const verdict = (x) => `${x.label} ${Math.round(100 * (x.probabilities[x.label] || 0))} %`;

function fileRows(kind, r) {
  if (kind === 'image') {
    if (!r.faces.length) return [fileRow(`${r.path}: no face found`, '', true)];
    return r.faces.map((f, i) => fileRow(`face ${i + 1} at (${f.box[0]}, ${f.box[1]}): ${verdict(f)}`, f.label, i === 0));
  }
  if (kind === 'audio' && r.no_speech) return [fileRow(`${r.path}: no speech (${r.no_speech})`, '', true)];
  if (!r.label) return [fileRow(`${r.path}: neither a face nor a voice found`, '', true)];
  const rows = [fileRow(`${r.path}: ${verdict(r)}`, r.label, true)];
  if (kind === 'video') {
    for (const side of ['face', 'voice']) {
      if (r[side]) rows.push(fileRow(`${side}: ${verdict(r[side])}`, r[side].label));
    }
    if (r.no_speech) rows.push(fileRow(`voice: no speech (${r.no_speech}); the face alone decides`, ''));
  }
  for (const seg of r.segments || []) {
    rows.push(fileRow(`${seg.start.toFixed(1)}–${seg.end.toFixed(1)} s: ${verdict(seg)}`, seg.label));
  }
  return rows;
}

const KIND_BY_EXTENSION = {  // for files the browser gives no media type
  wav: 'audio', flac: 'audio', mp3: 'audio', ogg: 'audio', m4a: 'audio', aiff: 'audio',
  jpg: 'image', jpeg: 'image', png: 'image', bmp: 'image', webp: 'image', tif: 'image', tiff: 'image',
  mp4: 'video', webm: 'video', mov: 'video', avi: 'video', mkv: 'video',
};

async function analyseFile(file) {
  const kind = file.type ? file.type.split('/')[0] : KIND_BY_EXTENSION[file.name.split('.').pop().toLowerCase()];
  const state = $('file-state');
  const out = $('file-result');
  out.replaceChildren();
  if (!FILE_ENDPOINTS[kind]) {
    state.dataset.state = 'error';
    state.textContent = `${file.name}: not an audio, image or video file`;
    return;
  }
  state.dataset.state = 'busy';
  state.textContent = `analysing ${file.name}…`;
  try {
    const response = await fetch(FILE_ENDPOINTS[kind] + 'filename=' + encodeURIComponent(file.name),
                                 { method: 'POST', headers: { 'content-type': file.type || 'application/octet-stream' },
                                   body: file });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    out.replaceChildren(...fileRows(kind, body));
    state.dataset.state = 'done';
    state.textContent = kind === 'audio' && body.segments && body.segments.length > 1
      ? `${body.segments.length} windows of speech, averaged` : 'done';
  } catch (err) {
    state.dataset.state = 'error';
    state.textContent = `${file.name}: ${err.message}`;
  }
}

$('file-input').addEventListener('change', (event) => {
  if (event.target.files.length) analyseFile(event.target.files[0]);
});

buildBars();
connect();
openMedia();
setInterval(tick, 100);
setInterval(() => {  // keeps RTT fresh when neither camera nor microphone is on
  if (app.camera !== 'on' && app.microphone !== 'on' && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: 'ping', id: nextId++, t: performance.now() }));
  }
}, 1000);
