// Live emotion page: camera frames + microphone windows -> /ws/stream -> boxes, bars, timeline.
// It says what state it is in: connecting, server starting (models loading, with progress), live,
// paused, or disconnected (results greyed out, retrying with backoff); and why a device is missing.
'use strict';

const FRAME_FPS = 8;                 // frames sent per second
const FRAME_WIDTH = 320;             // frames are downscaled to this width before JPEG encoding
const JPEG_QUALITY = 0.7;
const AUDIO_CHUNK_MS = 250;          // 4000 samples at 16 kHz per message
const MAX_BUFFERED_BYTES = 256 * 1024; // skip frames while the socket is this far behind
const TIMELINE_SECONDS = 60;
const STALE_MS = 2000;               // bars fade and boxes vanish when older than this
const PING_MS = 500;                 // pings keep the round trip fresh and tell a hung server from a quiet one
const WATCHDOG_MS = 2000;            // a ping unanswered this long: the server is gone
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
const HEALTH_POLL_MS = 500;          // while the server loads its models
const KIND_FRAME = 1, KIND_PCM16 = 2;
const DEFAULT_EMOTIONS = ['neutral', 'happy', 'sad', 'angry', 'fear', 'disgust', 'surprise'];
// neutral is a light grey: every box and label also gets a dark outline, so it reads on light video too
const COLORS = {
  neutral: '#b8c2cc', happy: '#f2c230', sad: '#4a8fe7', angry: '#e5533d',
  fear: '#9b6ee8', disgust: '#5fb548', surprise: '#f08ac6',
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// State other scripts (and the end-to-end tests) can read.
const app = window.emotionApp = {
  emotions: DEFAULT_EMOTIONS.slice(),
  connection: 'connecting',          // connecting | loading | connected | down
  live: 'connecting',                // what the results show: connecting | loading | live | paused | down
  paused: false,
  results: 0, frameResults: 0, audioResults: 0, voiceResults: 0, framesSent: 0, errors: [],
  lastResult: null, rtt: null, camera: 'pending', microphone: 'pending', deviceHelp: 'none',
  loadProgress: null, fileResult: null,
};

let ws = null;
let nextId = 1;
let reconnectDelay = RECONNECT_MIN_MS;
let reconnectTimer = null;
let unansweredSince = null;          // when the first ping sent after the last message went out
let lastFrameResult = null;          // {faces, size, at}
let faceSeen = 0, voiceSeen = 0;
const history = [];                  // {at, fused}; fused null marks a gap (nothing seen, offline, paused)
const offline = [];                  // {from, to, why}: spans the timeline shades instead of drawing forward
const frameTimes = [], sentTimes = [];

// ---- UI helpers --------------------------------------------------------------------------
function setPill(el, state, text, tone) {
  el.dataset.state = state;
  el.textContent = text;
  el.className = 'pill pill-' + tone;
}

const textColor = (hex) => {  // black on light colours, white on dark ones
  const n = parseInt(hex.slice(1), 16);
  return (0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255)) > 140 ? '#000' : '#fff';
};

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

function clearBars() {  // no number may outlive the connection it came from
  for (const group of ['face', 'voice', 'fused']) {
    const box = $('bars-' + group);
    box.classList.add('stale');
    for (const row of box.children) {
      const fill = row.querySelector('.bar-fill');
      fill.style.width = '0';
      fill.dataset.p = '0';
      row.querySelector('.bar-value').textContent = '–';
    }
  }
}

function setFused(text, detail, label = '') {
  const el = $('fused-label');
  el.textContent = text;
  el.dataset.label = label;
  el.style.color = label ? (COLORS[label] || '') : '';
  $('fused-detail').textContent = detail;
}

function showConnection(state, text) {
  app.connection = state;
  const tone = state === 'connected' ? 'ok' : (state === 'connecting' || state === 'loading') ? 'wait' : 'bad';
  setPill($('conn-state'), state, text, tone);
}

// What the results panel shows. Anything but 'live' greys the results out and says why over the video.
function setLive(state, banner = '') {
  const was = app.live;
  app.live = state;
  $('live').dataset.live = state;
  $('live-banner').textContent = banner;
  const now = performance.now();
  if (state !== 'live' && was === 'live') {
    history.push({ at: now, fused: null });
    offline.push({ from: now, to: null, why: state });
  } else if (state === 'live' && offline.length && offline[offline.length - 1].to === null) {
    offline[offline.length - 1].to = now;
  }
  if (state !== 'live') {
    clearBars();
    lastFrameResult = null;
    drawBoxes();
    const face = app.camera === 'on' ? 'face: –' : $('face-state').textContent;
    const voice = app.microphone === 'on' ? 'voice: –' : $('voice-state').textContent;
    setPill($('face-state'), state === 'down' ? 'offline' : state, face, 'wait');
    setPill($('voice-state'), state === 'down' ? 'offline' : state, voice, 'wait');
  }
}

// ---- WebSocket ---------------------------------------------------------------------------
function connect() {
  clearTimeout(reconnectTimer);
  showConnection('connecting', 'connecting…');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws/stream';
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  ws = socket;
  socket.onopen = () => { reconnectDelay = RECONNECT_MIN_MS; unansweredSince = null; };
  socket.onmessage = (event) => {
    unansweredSince = null;
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
    if (event.code === 1013 && /loading models/.test(event.reason)) waitForModels();
    else goOffline(event.code === 1013 ? `server busy (${event.reason})` : 'server down');
  };
}

function goOffline(why) {
  const delay = reconnectDelay;
  reconnectDelay = Math.min(RECONNECT_MAX_MS, reconnectDelay * 2);
  showConnection('down', `disconnected: ${why} — retrying in ${(delay / 1000).toFixed(1)} s`);
  const last = app.lastResult ? ` · last result ${new Date(Date.now() - (performance.now() - app.lastResultAt)).toLocaleTimeString()}` : '';
  setLive('down', 'disconnected — nothing here is live');
  setFused('disconnected', `${why}; reconnecting by itself${last}`);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, delay);
}

async function waitForModels() {
  showConnection('loading', 'server starting: loading models');
  setLive('loading', 'the server is starting');
  setFused('starting', 'the server is loading its models');
  $('loading').hidden = false;
  for (;;) {
    let health;
    try {
      const response = await fetch('/api/health', { cache: 'no-store' });
      health = await response.json();
    } catch (e) {
      $('loading').hidden = true;
      goOffline('server down');
      return;
    }
    if (health.status !== 'loading') break;
    app.loadProgress = health.progress;
    $('load-progress').value = health.progress;
    $('load-text').textContent = `${Math.round(100 * health.progress)} %${health.step ? ' · ' + health.step : ''}`;
    setPill($('conn-state'), 'loading', `server starting: loading models ${Math.round(100 * health.progress)} %`, 'wait');
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_MS));
  }
  $('loading').hidden = true;
  connect();
}

function onHello(msg) {
  if (Array.isArray(msg.emotions) && msg.emotions.join() !== app.emotions.join()) {
    app.emotions = msg.emotions;
    buildBars();
  }
  app.models = msg.models;
  $('loading').hidden = true;
  const loaded = Object.entries(msg.models || {}).filter(([, m]) => m.loaded).map(([n]) => n);
  showConnection('connected', 'connected · models: ' + (loaded.join(', ') || 'none'));
  if (app.paused) showPaused();
  else {
    setLive('live');
    setFused('–', 'waiting for face or voice');
  }
}

function send(kind, id, payload) {
  if (app.paused || !ws || ws.readyState !== WebSocket.OPEN) return false;
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
  if (msg.kind === 'frame') { app.frameResults += 1; frameTimes.push(now); }
  else if (msg.kind === 'voice') app.voiceResults += 1;
  else app.audioResults += 1;
  if (msg.kind !== 'voice') updateRtt(msg.t);  // a voice estimate's t is its audio's: that is its age, not RTT
  if (app.live !== 'live') return;              // paused: answers still in flight are not shown as live
  app.lastResult = msg;
  app.lastResultAt = now;
  if (msg.kind === 'frame') {
    lastFrameResult = { faces: msg.faces, size: msg.image_size, at: now };
    drawBoxes();
  }
  if (msg.face) faceSeen = now;
  if (msg.voice) voiceSeen = now;
  setBars('face', msg.face);
  setBars('voice', msg.voice);
  setBars('fused', msg.fused && msg.fused.probabilities);
  showStates(msg);
  if (msg.fused) {
    const p = msg.fused.probabilities[msg.fused.label];
    setFused(msg.fused.label, `${Math.round(100 * p)}% · from ${msg.fused.sources.join(' + ')}`, msg.fused.label);
  } else {
    setFused('–', 'waiting for face or voice');
  }
  history.push({ at: now, fused: msg.fused && msg.fused.probabilities });
  while (history.length && now - history[0].at > TIMELINE_SECONDS * 1000) history.shift();
}

function showStates(msg) {
  const face = {
    face: ['face', 'face: found', 'ok'], no_face: ['no_face', 'no face', 'warn'],
    no_model: ['no_model', 'face: no model', 'bad'], unknown: ['unknown', 'face: –', 'wait'],
  }[msg.face_state] || ['unknown', 'face: –', 'wait'];
  if (app.camera !== 'on') setPill($('face-state'), 'no_camera', `face: camera ${app.camera === 'off' ? 'off' : app.camera}`, 'wait');
  else setPill($('face-state'), ...face);
  const voice = {
    voice: ['voice', 'voice: speaking', 'ok'], silence: ['silence', 'silence', 'warn'],
    no_speech: ['no_speech', `no speech (${msg.no_speech || 'not a voice'})`, 'warn'],
    no_model: ['no_model', 'voice: no model', 'bad'], unknown: ['unknown', 'voice: –', 'wait'],
  }[msg.voice_state] || ['unknown', 'voice: –', 'wait'];
  if (app.microphone !== 'on') setPill($('voice-state'), 'no_microphone', `voice: microphone ${app.microphone === 'off' ? 'off' : app.microphone}`, 'wait');
  else setPill($('voice-state'), ...voice);
}

// ---- pause -------------------------------------------------------------------------------
function showPaused() {
  setLive('paused', 'paused — press Resume to analyse again');
  setFused('paused', 'nothing is sent while paused');
}

$('pause').addEventListener('click', () => {
  app.paused = !app.paused;
  const button = $('pause');
  button.dataset.paused = String(app.paused);
  button.textContent = app.paused ? 'Resume' : 'Pause';
  if (app.paused) showPaused();
  else if (app.connection === 'connected') { setLive('live'); setFused('–', 'waiting for face or voice'); }
});

// ---- drawing -----------------------------------------------------------------------------
function drawBoxes() {
  const canvas = $('overlay');
  const ctx = canvas.getContext('2d');
  if (!lastFrameResult || !lastFrameResult.size) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  const [w, h] = lastFrameResult.size;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.clearRect(0, 0, w, h);
  if (performance.now() - lastFrameResult.at > STALE_MS) return;
  const line = Math.max(2, w / 160);
  ctx.font = `${Math.max(12, Math.round(w / 22))}px system-ui, sans-serif`;
  for (const face of lastFrameResult.faces) {
    const [x, y, bw, bh] = face.box;
    const color = COLORS[face.label] || '#0f0';
    ctx.lineWidth = line + 3;                 // dark outline first: readable on light and dark video
    ctx.strokeStyle = 'rgba(0, 0, 0, 0.75)';
    ctx.strokeRect(x, y, bw, bh);
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, bw, bh);
    const text = `${face.label} ${Math.round(100 * face.probabilities[face.label])}%`;
    const tw = ctx.measureText(text).width + 8;
    const th = parseInt(ctx.font, 10) + 6;
    const ty = y - th >= 0 ? y - th : y + bh;
    ctx.fillStyle = 'rgba(0, 0, 0, 0.75)';
    ctx.fillRect(x - 1.5, ty - 1.5, tw + 3, th + 3);
    ctx.fillStyle = color;
    ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = textColor(color);
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
  const xOf = (at) => width - ((now - at) / (TIMELINE_SECONDS * 1000)) * width;
  const yOf = (p) => h - 14 - p * (h - 26);
  // Offline and paused stretches are shaded and named; nothing is drawn into them.
  ctx.font = '11px system-ui, sans-serif';
  for (const span of offline) {
    const x0 = Math.max(0, xOf(span.from)), x1 = span.to === null ? width : xOf(span.to);
    if (x1 <= 0) continue;
    ctx.fillStyle = span.why === 'down' ? 'rgba(194, 65, 59, 0.18)' : 'rgba(138, 150, 163, 0.15)';
    ctx.fillRect(x0, 0, x1 - x0, h);
    ctx.fillStyle = '#8a96a3';
    if (x1 - x0 > 60) ctx.fillText(span.why === 'down' ? 'disconnected' : span.why, x0 + 4, 20);
  }
  ctx.strokeStyle = '#26303a';
  ctx.fillStyle = '#6b7682';
  ctx.font = '10px system-ui, sans-serif';
  for (let s = 0; s <= TIMELINE_SECONDS; s += 10) {
    const x = width - (s / TIMELINE_SECONDS) * width;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
    ctx.fillText(s === 0 ? 'now' : `-${s}s`, Math.min(x + 2, width - 24), h - 3);
  }
  // Top band: the winning fused emotion over time. A point holds until the next one, at most STALE_MS:
  // the last known emotion is never drawn forward to "now".
  for (let i = 0; i < history.length; i++) {
    const point = history[i];
    if (!point.fused) continue;
    const top = Object.keys(point.fused).reduce((a, b) => (point.fused[a] >= point.fused[b] ? a : b));
    const until = Math.min(i + 1 < history.length ? history[i + 1].at : now, point.at + STALE_MS);
    const x0 = xOf(point.at);
    ctx.fillStyle = COLORS[top] || '#888';
    ctx.fillRect(x0, 0, Math.max(1, xOf(until) - x0), 6);
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
  // A ping unanswered for WATCHDOG_MS (with nothing else heard either) means the server is gone: a server
  // that hangs or a network that drops does not always close the connection. Counting from the ping, not
  // from the last message, keeps a background tab whose timers the browser slows from tripping it.
  if (ws && ws.readyState === WebSocket.OPEN && unansweredSince !== null && now - unansweredSince > WATCHDOG_MS) {
    const stale = ws;
    ws = null;
    stale.close();
    goOffline('no answer from the server');
  }
  // A modality that stopped answering (camera unplugged) fades out.
  if (now - faceSeen > STALE_MS) $('bars-face').classList.add('stale');
  if (now - voiceSeen > STALE_MS) $('bars-voice').classList.add('stale');
  if (lastFrameResult && now - lastFrameResult.at > STALE_MS) drawBoxes();
  while (frameTimes.length && now - frameTimes[0] > 1000) frameTimes.shift();
  while (sentTimes.length && now - sentTimes[0] > 1000) sentTimes.shift();
  $('frame-rate').textContent = frameTimes.length;
  $('frame-sent').textContent = sentTimes.length;
  drawTimeline();
}

// ---- capture -----------------------------------------------------------------------------
function deviceState(error) {
  const name = error && error.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') return 'denied';
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') return 'missing';
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') return 'busy';
  return 'denied';
}

async function tryMedia(constraints) {
  try { return { stream: await navigator.mediaDevices.getUserMedia(constraints) }; }
  catch (error) { return { error }; }
}

async function openMedia() {
  const wantCamera = params.get('camera') !== 'off';
  const wantMic = params.get('mic') !== 'off';
  let stream = null;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    app.camera = wantCamera ? 'unavailable' : 'off';
    app.microphone = wantMic ? 'unavailable' : 'off';
  } else {
    // Ask for both at once (one prompt); if that is refused, try each alone so one is enough.
    if (wantCamera && wantMic) stream = (await tryMedia({ video: { width: 640, height: 480 }, audio: true })).stream;
    if (!stream) {
      const tracks = [];
      if (wantCamera) {
        const got = await tryMedia({ video: { width: 640, height: 480 } });
        if (got.stream) tracks.push(...got.stream.getTracks()); else app.camera = deviceState(got.error);
      }
      if (wantMic) {
        const got = await tryMedia({ audio: true });
        if (got.stream) tracks.push(...got.stream.getTracks()); else app.microphone = deviceState(got.error);
      }
      stream = new MediaStream(tracks);
    }
    if (stream.getVideoTracks().length) app.camera = 'on';
    else if (app.camera === 'pending') app.camera = 'off';
    if (stream.getAudioTracks().length) app.microphone = 'on';
    else if (app.microphone === 'pending') app.microphone = 'off';
  }
  const tone = (s) => (s === 'on' ? 'ok' : s === 'off' ? 'wait' : 'bad');
  setPill($('camera-state'), app.camera, 'camera: ' + app.camera, tone(app.camera));
  setPill($('mic-state'), app.microphone, 'microphone: ' + app.microphone, tone(app.microphone));
  showDeviceHelp();
  if (app.camera === 'on') startFrames(stream);
  else {
    $('video-box').classList.add('no-camera');
    $('video-placeholder').textContent = app.camera === 'off' ? 'camera off' : `camera ${app.camera}`;
  }
  if (app.microphone === 'on') await startAudio(stream);
}

// A short how-to-fix for each way a device can be missing, and the file box as the way round it.
function showDeviceHelp() {
  const box = $('device-help');
  const problems = { camera: app.camera, microphone: app.microphone };
  const which = (state) => Object.keys(problems).filter((k) => problems[k] === state).join(' and ');
  const fileBox = 'Meanwhile you can analyse a recording, a photo or a video with <a href="#file-panel">the file box below</a>.';
  let state = 'none', html = '';
  if (which('unavailable')) {
    state = 'insecure';
    html = `<div class="notice-title">This page cannot use the ${which('unavailable')}</div>Browsers give camera and ` +
      `microphone access only to pages on <b>localhost</b> or <b>HTTPS</b>: open <code>http://localhost:${location.port || 80}/</code> ` +
      'on the machine that runs the server, or start it with <code>--ssl-certfile</code> and <code>--ssl-keyfile</code>. ' + fileBox;
  } else if (which('denied')) {
    state = 'denied';
    html = `<div class="notice-title">The ${which('denied')} ${which('denied').includes(' and ') ? 'are' : 'is'} blocked for this page</div>` +
      'To allow: click the camera or padlock icon at the left of the address bar, set Camera and Microphone to ' +
      '<b>Allow</b>, then reload the page. ' + fileBox;
  } else if (which('missing')) {
    state = 'missing';
    html = `<div class="notice-title">No ${which('missing')} found</div>Plug one in (or enable it in the system ` +
      'settings) and reload the page. ' + fileBox;
  } else if (which('busy')) {
    state = 'busy';
    html = `<div class="notice-title">The ${which('busy')} is in use by another program</div>Close the other ` +
      'program (a video call?) and reload the page. ' + fileBox;
  }
  app.deviceHelp = state;
  box.dataset.state = state;
  box.innerHTML = html;  // fixed text only: nothing from the network or the user goes in here
  box.hidden = state === 'none';
}

function startFrames(stream) {
  const video = $('video');
  video.srcObject = new MediaStream(stream.getVideoTracks());
  const canvas = document.createElement('canvas');
  let encoding = false;
  setInterval(() => {
    if (app.paused || encoding || !ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > MAX_BUFFERED_BYTES) return;
    if (!video.videoWidth) return;
    canvas.width = FRAME_WIDTH;
    canvas.height = Math.round(FRAME_WIDTH * video.videoHeight / video.videoWidth);
    canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
    encoding = true;
    canvas.toBlob(async (blob) => {
      try {
        if (blob && send(KIND_FRAME, nextId++, await blob.arrayBuffer())) {
          app.framesSent += 1;
          sentTimes.push(performance.now());
        }
      } finally { encoding = false; }
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
const FILE_ENDPOINTS = {  // by media type: a recording's windows, a photo drawn, a video's segments
  audio: '/api/predict/audio?segments=true&', image: '/api/predict/image?annotate=true&',
  video: '/api/predict/video?segments=true&',
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

function miniBars(probs) {  // all 7 probabilities, small
  const box = document.createElement('div');
  box.className = 'mini-bars';
  for (const emotion of app.emotions) {
    const p = probs[emotion] || 0;
    const cell = document.createElement('div');
    cell.dataset.emotion = emotion;
    cell.dataset.p = p.toFixed(4);
    const bar = document.createElement('i');
    bar.style.width = Math.round(40 * p) + 'px';
    bar.style.background = COLORS[emotion] || '#888';
    cell.append(bar, `${emotion} ${Math.round(100 * p)}%`);
    box.appendChild(cell);
  }
  return box;
}

// Stacked columns, one per window / segment: how the emotions share each stretch of the file.
function timelinePlot(rows, probsOf, kind) {
  const canvas = document.createElement('canvas');
  canvas.className = 'file-plot';
  canvas.dataset.kind = kind;
  canvas.dataset.columns = String(rows.length);
  canvas.width = 900;
  canvas.height = 150;
  const ctx = canvas.getContext('2d');
  const left = 4, right = canvas.width - 4, top = 6, bottom = canvas.height - 18;
  const end = Math.max(...rows.map((r) => r.end), 1e-3);
  const xOf = (t) => left + (right - left) * t / end;
  ctx.font = '10px system-ui, sans-serif';
  for (const row of rows) {
    const probs = probsOf(row);
    const x0 = xOf(row.start) + 1, x1 = xOf(row.end) - 1;
    if (!probs) {
      ctx.fillStyle = '#26303a';
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), bottom - top);
      continue;
    }
    let y = bottom;
    for (const emotion of app.emotions) {
      const hgt = (bottom - top) * (probs[emotion] || 0);
      ctx.fillStyle = COLORS[emotion] || '#888';
      ctx.fillRect(x0, y - hgt, Math.max(1, x1 - x0), hgt);
      y -= hgt;
    }
  }
  ctx.fillStyle = '#8a96a3';
  for (const row of rows) ctx.fillText(`${row.start.toFixed(1)} s`, xOf(row.start) + 2, canvas.height - 4);
  return canvas;
}

function segmentTable(segments) {
  const table = document.createElement('table');
  table.className = 'segments';
  const head = table.insertRow();
  for (const name of ['time', 'fused', 'face', 'voice']) {
    const th = document.createElement('th');
    th.textContent = name;
    head.appendChild(th);
  }
  for (const seg of segments) {
    const tr = table.insertRow();
    tr.dataset.fused = seg.fused ? seg.fused.label : '';
    tr.insertCell().textContent = `${seg.start.toFixed(1)}–${seg.end.toFixed(1)} s`;
    for (const side of ['fused', 'face', 'voice']) {
      const cell = tr.insertCell();
      cell.dataset.side = side;
      if (!seg[side]) { cell.textContent = side === 'face' ? 'no face' : side === 'voice' ? 'no speech' : '–'; continue; }
      const swatch = document.createElement('i');
      swatch.style.background = COLORS[seg[side].label] || 'transparent';
      cell.append(swatch, verdict(seg[side]));
      cell.dataset.label = seg[side].label;
    }
  }
  return table;
}

function fileRows(kind, r) {
  if (kind === 'image') {
    const out = [];
    if (r.annotated) {
      const img = document.createElement('img');
      img.className = 'file-image';
      img.alt = `${r.path} with every face boxed and labelled`;
      img.src = r.annotated;  // a data: URL the server made from the upload
      out.push(img);
    }
    if (!r.faces.length) return [...out, fileRow(`${r.path}: no face found`, '', true)];
    r.faces.forEach((f, i) => {
      out.push(fileRow(`face ${i + 1} at (${f.box[0]}, ${f.box[1]}): ${verdict(f)}`, f.label, i === 0));
      out.push(miniBars(f.probabilities));
    });
    return out;
  }
  if (kind === 'audio' && r.no_speech) return [fileRow(`${r.path}: no speech (${r.no_speech})`, '', true)];
  if (!r.label) return [fileRow(`${r.path}: neither a face nor a voice found`, '', true)];
  const rows = [fileRow(`${r.path}: ${verdict(r)}`, r.label, true), miniBars(r.probabilities)];
  if (kind === 'video') {
    for (const side of ['face', 'voice']) {
      if (r[side]) rows.push(fileRow(`${side}: ${verdict(r[side])}`, r[side].label));
    }
    if (r.no_speech) rows.push(fileRow(`voice: no speech (${r.no_speech}); the face alone decides`, ''));
    if (r.segments && r.segments.length) {
      rows.push(timelinePlot(r.segments, (s) => s.fused && s.fused.probabilities, 'video'));
      rows.push(segmentTable(r.segments));
    }
    return rows;
  }
  if (r.segments && r.segments.length > 1) rows.push(timelinePlot(r.segments, (s) => s.probabilities, 'audio'));
  for (const seg of r.segments || []) {
    rows.push(fileRow(`${seg.start.toFixed(1)}–${seg.end.toFixed(1)} s: ${verdict(seg)}`, seg.label));
  }
  return rows;
}

const KIND_BY_EXTENSION = {  // for files the browser gives no media type (core/media_types.py's lists)
  wav: 'audio', flac: 'audio', mp3: 'audio', ogg: 'audio', opus: 'audio', m4a: 'audio', aac: 'audio', aif: 'audio',
  aiff: 'audio',
  jpg: 'image', jpeg: 'image', png: 'image', bmp: 'image', webp: 'image', tif: 'image', tiff: 'image',
  mp4: 'video', webm: 'video', mov: 'video', avi: 'video', mkv: 'video', m4v: 'video',
};

async function analyseFile(file) {
  const kind = file.type ? file.type.split('/')[0] : KIND_BY_EXTENSION[file.name.split('.').pop().toLowerCase()];
  const state = $('file-state');
  const out = $('file-result');
  out.replaceChildren();
  app.fileResult = null;
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
    app.fileResult = body;
    out.replaceChildren(...fileRows(kind, body));
    state.dataset.state = 'done';
    state.dataset.kind = kind;
    state.textContent = kind === 'audio' && body.segments && body.segments.length > 1
      ? `${body.segments.length} windows of speech, averaged`
      : kind === 'video' && body.segments ? `${body.segments.length} segment(s) of ${body.duration_seconds.toFixed(1)} s` : 'done';
    // A clip longer than the server's max_video_seconds: say that only its start was heard and seen.
    if (kind === 'video' && body.truncated) {
      state.textContent += ` (only the start of this ${body.duration_seconds.toFixed(1)} s clip was analysed)`;
    }
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
setInterval(() => {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const now = performance.now();
  if (unansweredSince === null) unansweredSince = now;
  ws.send(JSON.stringify({ type: 'ping', id: nextId++, t: now }));
}, PING_MS);
