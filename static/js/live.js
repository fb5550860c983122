/**
 * Live page: streams the camera to the server's /live Socket.IO namespace and draws the tracked faces
 * it answers over the video.
 *
 * One frame is in flight at a time: the next frame is captured only when the previous one has been
 * answered (or has timed out), so a slow server never builds a backlog. Frames are downscaled to at
 * most 640 px on their longest side and sent as binary JPEG; each answer carries its frame's `seq`.
 */
import { asSentence } from './faces.js';
import { drawFaces } from './live-overlay.js';

const root = document.getElementById('live');
const config = {
  namespace: root.dataset.namespace,
  // SOCKETIO_TRANSPORTS: websocket only behind several processes (no sticky sessions needed); else the default
  socketTransports: document.body.dataset.socketTransports ? document.body.dataset.socketTransports.split(',') : null,
  maxSide: Number(root.dataset.maxSide),
  defaultAlpha: Number(root.dataset.defaultAlpha),
  jpegQuality: 0.8,
  answerTimeoutMs: 10_000,
  refusedRetryMs: 5_000,
  hudWindow: 30, // the HUD averages over the last 30 answers
};

/** Smoothing strength s in [0, 1] sets the weight of the newest frame: alpha = 1 - (1 - MIN_ALPHA) s. */
const MIN_ALPHA = 0.05;

const ui = {
  cameraSelect: document.getElementById('camera-select'),
  start: document.getElementById('start'),
  stop: document.getElementById('stop'),
  snapshot: document.getElementById('snapshot'),
  connection: document.getElementById('connection'),
  showLandmarks: document.getElementById('show-landmarks'),
  showEmotions: document.getElementById('show-emotions'),
  smoothing: document.getElementById('smoothing'),
  strength: document.getElementById('strength'),
  alphaValue: document.getElementById('alpha-value'),
  status: document.getElementById('status'),
  video: document.getElementById('video'),
  overlay: document.getElementById('overlay'),
  placeholder: document.getElementById('placeholder'),
  hud: document.getElementById('hud'),
  hudLatency: document.getElementById('hud-latency'),
  hudFps: document.getElementById('hud-fps'),
  hudServer: document.getElementById('hud-server'),
  hudFaces: document.getElementById('hud-faces'),
  hudFacesLabel: document.getElementById('hud-faces-label'),
};

/** What the page is doing. Tests (and curious people, in the console) read it as `window.__liveState`. */
const state = {
  phase: 'idle', // idle | starting | streaming | stopped
  connection: 'offline', // offline | connecting | connected | reconnecting | busy
  sentSeq: 0,
  answeredSeq: null,
  answered: 0, // frames answered with faces (possibly none)
  faces: [], // the last answer's faces, in pixels of `frame`
  frame: null, // {width, height} of the frame those faces were found in
  roundTripMs: null,
  fps: null,
  serverMs: null,
  message: null, // the status line's text, if one is shown
  layout: null, // what the overlay drew where: {boxes, tags, panels} in CSS pixels of the canvas
};
window.__liveState = state;

let stream = null;
let socket = null;
let inFlight = false;
let refusedRetry = null;
const recentAnswers = []; // {at, roundTripMs, serverMs}

const capture = document.createElement('canvas');
const captureContext = capture.getContext('2d');

/* ---------- Status line and connection badge ---------- */

/** kind: "info", "busy" (with a spinner) or "error". */
function setStatus(kind, text) {
  const spinner = document.createElement('span');
  spinner.className = 'spinner';
  spinner.setAttribute('aria-hidden', 'true');
  const message = document.createElement('span');
  message.className = 'status__text';
  message.textContent = text;
  ui.status.dataset.kind = kind;
  ui.status.replaceChildren(spinner, message);
  ui.status.hidden = false;
  state.message = text;
}

function clearStatus() {
  ui.status.hidden = true;
  state.message = null;
}

const CONNECTION_LABELS = {
  offline: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  busy: 'Server busy',
};

function setConnection(connection) {
  state.connection = connection;
  root.dataset.connection = connection;
  ui.connection.dataset.state = connection;
  ui.connection.textContent = CONNECTION_LABELS[connection];
}

function setPhase(phase) {
  state.phase = phase;
  root.dataset.state = phase;
  const running = phase === 'starting' || phase === 'streaming';
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.snapshot.disabled = phase !== 'streaming';
  ui.placeholder.hidden = phase === 'streaming';
}

/* ---------- Smoothing control ---------- */

function currentAlpha() {
  if (!ui.smoothing.checked) return 1;
  return 1 - (1 - MIN_ALPHA) * (Number(ui.strength.value) / 100);
}

function showAlpha() {
  ui.strength.disabled = !ui.smoothing.checked;
  ui.alphaValue.textContent = ui.smoothing.checked ? `α ${currentAlpha().toFixed(2)}` : 'off';
}

/* ---------- Drawing ---------- */

function shownExtras() {
  return { landmarks: ui.showLandmarks.checked, emotions: ui.showEmotions.checked };
}

/** Redraws the overlay canvas over the video: one canvas unit per device pixel, drawn in CSS pixels. */
function drawOverlay() {
  const canvas = ui.overlay;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext('2d');
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, canvas.width, canvas.height);
  state.layout = null;
  if (!state.frame || width === 0) return;
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  state.layout = drawFaces(context, state.faces, { scale: width / state.frame.width, unit: 1, width, height },
    shownExtras());
}

function formatMs(ms) {
  return ms === null ? '–' : String(Math.round(ms));
}

function updateHud() {
  const mean = (key) => recentAnswers.reduce((sum, answer) => sum + answer[key], 0) / recentAnswers.length;
  const span = recentAnswers.at(-1).at - recentAnswers[0].at;
  state.roundTripMs = mean('roundTripMs');
  state.serverMs = mean('serverMs');
  state.fps = recentAnswers.length > 1 && span > 0 ? ((recentAnswers.length - 1) * 1000) / span : null;
  ui.hudLatency.textContent = formatMs(state.roundTripMs);
  ui.hudServer.textContent = formatMs(state.serverMs);
  ui.hudFps.textContent = state.fps === null ? '–' : state.fps.toFixed(1);
  ui.hudFaces.textContent = String(state.faces.length);
  ui.hudFacesLabel.textContent = state.faces.length === 1 ? 'face' : 'faces';
}

/** Downloads the current video frame with the overlay drawn on it, at the camera's resolution. */
async function downloadSnapshot() {
  const { videoWidth: width, videoHeight: height } = ui.video;
  if (!width) return;
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  context.drawImage(ui.video, 0, 0, width, height);
  if (state.frame) {
    const unit = ui.video.clientWidth ? width / ui.video.clientWidth : 1; // same look as on screen
    drawFaces(context, state.faces, { scale: width / state.frame.width, unit, width, height }, shownExtras());
  }
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = `faceapp-live-${new Date().toISOString().replace(/[:.]/g, '-')}.png`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // after the download has surely started
}

/* ---------- Camera ---------- */

async function listCameras() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  // Before the camera is allowed, browsers list cameras without ids or names: keep "Default camera" only.
  const cameras = devices.filter((device) => device.kind === 'videoinput' && device.deviceId);
  const chosen = ui.cameraSelect.value;
  ui.cameraSelect.replaceChildren(
    new Option('Default camera', ''),
    ...cameras.map((camera, index) => new Option(camera.label || `Camera ${index + 1}`, camera.deviceId)),
  );
  if (cameras.some((camera) => camera.deviceId === chosen)) ui.cameraSelect.value = chosen;
}

/** No size constraints: browsers may crop the picture to meet them, and frames are downscaled anyway. */
function openCamera(deviceId) {
  const video = deviceId ? { deviceId: { exact: deviceId } } : { facingMode: 'user' };
  return navigator.mediaDevices.getUserMedia({ video, audio: false });
}

function cameraProblem(error) {
  switch (error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera access was denied. Allow the camera for this site (see the camera icon in the address bar), then press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found. Connect a camera or choose another one, then press Start again.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera could not be started: another application may be using it.';
    default:
      return `The camera could not be started (${error.message}).`;
  }
}

function releaseCamera() {
  stream?.getTracks().forEach((track) => track.stop());
  stream = null;
  ui.video.srcObject = null;
}

async function showCamera(deviceId) {
  const next = await openCamera(deviceId);
  releaseCamera();
  stream = next;
  const [track] = stream.getVideoTracks();
  track.addEventListener('ended', () => stop('The camera stopped (was it unplugged?). Press Start to try again.'));
  ui.video.srcObject = stream;
  await ui.video.play();
  await listCameras(); // names are known now that the camera is allowed
  ui.cameraSelect.value = track.getSettings().deviceId ?? ui.cameraSelect.value;
}

/* ---------- Connection ---------- */

function connect() {
  setConnection('connecting');
  const options = { forceNew: true, reconnectionDelayMax: 5_000 }; // a fresh connection per Start
  if (config.socketTransports) options.transports = config.socketTransports;
  socket = window.io(config.namespace, options);
  socket.on('connect', () => {
    setConnection('connected');
    clearStatus();
    sendNextFrame();
  });
  socket.on('disconnect', (reason) => {
    if (reason === 'io client disconnect') return; // we hung up (Stop)
    setConnection('reconnecting');
    setStatus('busy', 'Lost the connection to the server. Reconnecting…');
    if (reason === 'io server disconnect') socket.connect(); // the only case the client does not retry by itself
  });
  socket.on('connect_error', (error) => {
    if (socket.active) { // the server could not be reached: Socket.IO keeps trying by itself
      setConnection('reconnecting');
      setStatus('busy', 'Cannot reach the server. Retrying…');
      return;
    }
    // The server refused the connection (busy, or failing): Socket.IO does not retry those by itself.
    const busy = error.data?.code === 'busy';
    setConnection(busy ? 'busy' : 'reconnecting');
    const reason = busy ? error.message : `the server refused the connection (${error.message})`;
    setStatus('error', `${asSentence(reason)} Trying again in ${config.refusedRetryMs / 1000} s.`);
    refusedRetry = setTimeout(() => socket?.connect(), config.refusedRetryMs);
  });
  socket.on('error', (body) => setStatus('error', asSentence(body?.error?.message) || 'The server failed to process a frame.'));
}

function disconnect() {
  clearTimeout(refusedRetry);
  socket?.disconnect();
  socket = null;
  setConnection('offline');
}

/* ---------- Frames ---------- */

/** The current video frame, downscaled to at most `maxSide`, as JPEG bytes; null while there is no picture yet. */
async function captureFrame() {
  const { videoWidth, videoHeight } = ui.video;
  if (!videoWidth || !videoHeight) return null;
  const scale = Math.min(1, config.maxSide / Math.max(videoWidth, videoHeight));
  capture.width = Math.round(videoWidth * scale);
  capture.height = Math.round(videoHeight * scale);
  captureContext.drawImage(ui.video, 0, 0, capture.width, capture.height);
  const blob = await new Promise((resolve) => capture.toBlob(resolve, 'image/jpeg', config.jpegQuality));
  return { width: capture.width, height: capture.height, jpeg: await blob.arrayBuffer() };
}

function scheduleNextFrame() {
  requestAnimationFrame(sendNextFrame); // paused in hidden tabs, which is what we want
}

async function sendNextFrame() {
  if (state.phase !== 'streaming' || inFlight || !socket?.connected) return;
  inFlight = true;
  const sentOn = socket;
  const frame = await captureFrame();
  if (sentOn !== socket) return; // stopped meanwhile: the in-flight flag belongs to the next connection
  if (!frame) { // no picture yet: try again at the next animation frame
    inFlight = false;
    scheduleNextFrame();
    return;
  }
  const seq = ++state.sentSeq;
  const sentAt = performance.now();
  const payload = { seq, image: frame.jpeg, alpha: currentAlpha() };
  socket.timeout(config.answerTimeoutMs).emit('frame', payload, (error, answer) => {
    if (sentOn !== socket) return; // an answer to a connection that was stopped meanwhile
    inFlight = false;
    if (!error) handleAnswer(answer, frame, sentAt);
    scheduleNextFrame(); // on a timeout or a disconnection too: the connect handler resumes otherwise
  });
}

function handleAnswer(answer, frame, sentAt) {
  if (answer.error) {
    if (answer.error.code === 'busy') setStatus('info', 'The server is overloaded: some frames are skipped.');
    else if (answer.error.code !== 'busy_dropped') setStatus('error', asSentence(`A frame was refused: ${answer.error.message}`));
    return;
  }
  const now = performance.now();
  recentAnswers.push({ at: now, roundTripMs: now - sentAt, serverMs: answer.timings_ms?.total ?? 0 });
  if (recentAnswers.length > config.hudWindow) recentAnswers.shift();
  Object.assign(state, {
    answered: state.answered + 1,
    answeredSeq: answer.seq,
    faces: answer.faces,
    frame: { width: frame.width, height: frame.height },
  });
  root.dataset.faces = String(answer.faces.length);
  if (ui.status.dataset.kind !== 'busy') clearStatus(); // a frame went through: older problems are over
  updateHud();
  drawOverlay();
}

/* ---------- Start and stop ---------- */

async function start() {
  if (!navigator.mediaDevices?.getUserMedia) {
    setStatus('error', 'This browser cannot use a camera on this page: open it over https, or on localhost.');
    return;
  }
  if (typeof window.io !== 'function') {
    setStatus('error', 'The Socket.IO client library is missing on the server (run "npm ci" there).');
    return;
  }
  setPhase('starting');
  setStatus('busy', 'Starting the camera…');
  try {
    await showCamera(ui.cameraSelect.value);
  } catch (error) {
    releaseCamera();
    setPhase('idle');
    setStatus('error', cameraProblem(error));
    return;
  }
  Object.assign(state, { faces: [], frame: null, answered: 0, roundTripMs: null, fps: null, serverMs: null });
  recentAnswers.length = 0;
  setPhase('streaming');
  setStatus('busy', 'Connecting to the server…');
  connect();
}

function stop(message = null) {
  disconnect();
  releaseCamera();
  inFlight = false;
  state.faces = [];
  state.frame = null;
  root.dataset.faces = '0';
  setPhase('stopped');
  drawOverlay();
  if (message) setStatus('error', message);
  else clearStatus();
}

async function switchCamera() {
  if (state.phase !== 'streaming') return;
  try {
    await showCamera(ui.cameraSelect.value);
  } catch (error) {
    stop(cameraProblem(error));
  }
}

/* ---------- Wiring ---------- */

ui.strength.value = String(Math.round(((1 - config.defaultAlpha) / (1 - MIN_ALPHA)) * 100));
showAlpha();
ui.start.addEventListener('click', start);
ui.stop.addEventListener('click', () => stop());
ui.snapshot.addEventListener('click', downloadSnapshot);
ui.cameraSelect.addEventListener('change', switchCamera);
ui.smoothing.addEventListener('change', showAlpha);
ui.strength.addEventListener('input', showAlpha);
ui.showLandmarks.addEventListener('change', drawOverlay);
ui.showEmotions.addEventListener('change', drawOverlay);
new ResizeObserver(drawOverlay).observe(ui.video);
navigator.mediaDevices?.addEventListener('devicechange', listCameras);
listCameras();
