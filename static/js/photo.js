/**
 * Photo page: choose, drop or paste a picture, send it to the API, show the faces found in it.
 */
import { asSentence, linkBoxesAndCards, renderFaceCards, renderOverlay } from './faces.js';

const ACCEPTED_TYPES = new Set(['image/jpeg', 'image/png', 'image/webp', 'image/bmp', 'image/x-ms-bmp']);
const ACCEPTED_EXTENSIONS = /\.(jpe?g|png|webp|bmp)$/i;

/** With more faces than this, the cards go in a wide grid under the picture instead of beside it. */
const FACES_BESIDE_PICTURE = 4;

/**
 * Faces are shown at least this wide (CSS pixels, the median face): a crowd on a phone is shown larger
 * than the screen, in a frame that scrolls sideways, so that every face keeps a readable label beside it.
 */
const MIN_FACE_ON_SCREEN = 44;

/** Shown when an error response carries no message of its own. */
const STATUS_MESSAGES = {
  400: 'The server could not read this upload.',
  413: 'This file is too large for the server.',
  415: 'This file type is not supported. Please use a JPEG, PNG, WebP or BMP image.',
  422: 'This file could not be read as an image.',
  503: 'The server is busy or still starting up. Please try again in a moment.',
};

/** An error whose message is meant for the person using the page. */
class UserFacingError extends Error {}

const uploader = document.getElementById('uploader');
const config = {
  endpoint: uploader.dataset.endpoint,
  maxBytes: Number(uploader.dataset.maxBytes),
  maxLabel: uploader.dataset.maxLabel,
};

const ui = {
  dropzone: document.getElementById('dropzone'),
  input: document.getElementById('file-input'),
  status: document.getElementById('status'),
  results: document.getElementById('results'),
  summary: document.getElementById('results-summary'),
  download: document.getElementById('download-json'),
  image: document.getElementById('preview-image'),
  overlay: document.getElementById('overlay'),
  timings: document.getElementById('timings'),
  noFaces: document.getElementById('no-faces'),
  cards: document.getElementById('face-cards'),
  cardTemplate: document.getElementById('face-card-template'),
};

/** What is on screen: the analysed frame plus the object URLs that must be released later. */
let shown = null;
let pendingRequest = null;

/* ---------- Status line ---------- */

/** kind: "busy" (with spinner), "success" or "error". */
function setStatus(kind, message, detail = '') {
  const text = document.createElement('span');
  text.className = 'status__text';
  if (detail) {
    const strong = document.createElement('strong');
    strong.textContent = message;
    text.append(strong, ' ', detail);
  } else {
    text.textContent = message;
  }
  const spinner = document.createElement('span');
  spinner.className = 'spinner';
  spinner.setAttribute('aria-hidden', 'true');

  ui.status.dataset.kind = kind;
  ui.status.replaceChildren(spinner, text);
  ui.status.hidden = false;
}

/* ---------- Validation and upload ---------- */

function formatMegabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function isAcceptedImage(file) {
  return ACCEPTED_TYPES.has(file.type) || (!file.type && ACCEPTED_EXTENSIONS.test(file.name));
}

/** A friendly sentence saying why `file` can't be uploaded, or null if it can. */
function validationProblem(file) {
  if (!isAcceptedImage(file)) {
    return `“${file.name}” is not a supported image. Please choose a JPEG, PNG, WebP or BMP file.`;
  }
  if (file.size > config.maxBytes) {
    return `“${file.name}” is ${formatMegabytes(file.size)}, more than the ${config.maxLabel} limit. `
      + 'Please choose a smaller photo, or save it at a lower quality.';
  }
  if (file.size === 0) return `“${file.name}” is empty.`;
  return null;
}

function apiErrorMessage(status, payload) {
  return asSentence(payload?.error?.message)
    || STATUS_MESSAGES[status]
    || `The server could not analyse this photo (HTTP ${status}).`;
}

/** POSTs the file as multipart form data (field "image") and returns the parsed response. */
async function uploadImage(file, signal) {
  const body = new FormData();
  body.append('image', file, file.name);

  let response;
  try {
    response = await fetch(config.endpoint, {
      method: 'POST', body, signal, headers: { Accept: 'application/json' },
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new UserFacingError('Could not reach the server. Check the connection and try again.');
  }

  const payload = await response.json().catch(() => null);
  if (!response.ok) throw new UserFacingError(apiErrorMessage(response.status, payload));
  if (!Array.isArray(payload?.images) || payload.images.length === 0) {
    throw new UserFacingError('The server sent a response this page does not understand.');
  }
  return payload;
}

/* ---------- Showing results ---------- */

function formatMs(ms) {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

function renderTimings(timings, roundTripMs) {
  const parts = Object.entries(timings ?? {}).map(([stage, ms]) => `${stage} ${formatMs(ms)}`);
  parts.push(`round trip ${formatMs(roundTripMs)}`);
  ui.timings.textContent = `Timings: ${parts.join(' · ')}`;
}

function countFaces(count) {
  return count === 1 ? '1 face' : `${count} faces`;
}

function releaseShown() {
  if (!shown) return;
  URL.revokeObjectURL(shown.imageUrl);
  URL.revokeObjectURL(shown.jsonUrl);
  shown = null;
}

function clearResults() {
  document.dispatchEvent(new CustomEvent('photo:cleared'));
  releaseShown();
  ui.results.hidden = true;
  ui.overlay.replaceChildren();
  ui.cards.replaceChildren();
}

/** Loads `url` into the preview; resolves to whether the browser could decode the picture. */
async function loadPreview(url, name) {
  ui.image.src = url;
  ui.image.alt = `The analysed photo, ${name}`;
  try {
    await ui.image.decode();
    return true;
  } catch {
    return false;
  }
}

/** The picture's width on screen for crowds of small faces (see MIN_FACE_ON_SCREEN), else '' (fit). */
function zoomedWidth(frame, fitWidth) {
  const widths = frame.faces.map(({ box }) => box[2] - box[0]).sort((a, b) => a - b);
  if (widths.length < 2 || fitWidth === 0) return '';
  const median = widths[Math.floor(widths.length / 2)];
  const fitScale = fitWidth / frame.width;
  if (median * fitScale >= MIN_FACE_ON_SCREEN) return '';
  const width = Math.min(frame.width, Math.ceil((frame.width * MIN_FACE_ON_SCREEN) / median));
  return width > fitWidth ? `${width}px` : '';
}

/** Fits the picture to its frame, or zooms a crowd of small faces in (scrolling sideways). */
function sizePreview() {
  const stage = ui.image.closest('.preview');
  ui.image.style.width = '';
  ui.image.classList.remove('preview__image--zoomed');
  const width = zoomedWidth(shown.frame, ui.image.clientWidth);
  if (!width) return;
  ui.image.style.width = width;
  ui.image.classList.add('preview__image--zoomed');
  stage.scrollLeft = 0;
}

let previewWidth = null;

function drawOverlay() {
  if (!shown?.previewLoaded) return;
  const frameWidth = ui.image.closest('.preview').clientWidth;
  if (frameWidth !== previewWidth) { // the page was resized: fit again
    previewWidth = frameWidth;
    sizePreview();
  }
  const displayed = { width: ui.image.clientWidth, height: ui.image.clientHeight };
  if (displayed.width === 0) return;
  renderOverlay(ui.overlay, shown.frame.faces, shown.frame, displayed);
}

function setDownload(payload, fileName) {
  const json = JSON.stringify(payload, null, 2);
  const url = URL.createObjectURL(new Blob([json], { type: 'application/json' }));
  ui.download.href = url;
  ui.download.download = `${fileName.replace(/\.[^.]+$/, '') || 'photo'}.faces.json`;
  return url;
}

async function showResults(file, payload, roundTripMs, signal) {
  const frame = payload.images[0];
  const imageUrl = URL.createObjectURL(file);
  const previewLoaded = await loadPreview(imageUrl, file.name);
  if (signal.aborted) { // another file was chosen meanwhile
    URL.revokeObjectURL(imageUrl);
    signal.throwIfAborted();
  }
  shown = { frame, imageUrl, previewLoaded, jsonUrl: setDownload(payload, file.name) };

  ui.summary.textContent = `${countFaces(frame.faces.length)} in ${file.name} (${frame.width} × ${frame.height})`;
  ui.image.closest('figure').hidden = !previewLoaded;
  ui.noFaces.hidden = frame.faces.length > 0;
  ui.results.classList.toggle('results--many', frame.faces.length > FACES_BESIDE_PICTURE);
  ui.dropzone.classList.add('dropzone--compact');
  renderTimings(frame.timings_ms, roundTripMs);
  renderFaceCards(ui.cards, ui.cardTemplate, frame.faces, frame, previewLoaded ? ui.image : null);
  ui.results.hidden = false; // before drawing: the overlay is sized from the picture on screen
  previewWidth = null;
  drawOverlay();
  document.dispatchEvent(new CustomEvent('photo:results', { detail: { file, frame } })); // photo-explain.js
}

/* ---------- The whole flow ---------- */

async function analyse(file) {
  const problem = validationProblem(file);
  if (problem) {
    setStatus('error', problem);
    return;
  }

  pendingRequest?.abort();
  const request = new AbortController();
  pendingRequest = request;
  clearResults();
  setStatus('busy', `Analysing “${file.name}”…`);

  const started = performance.now();
  try {
    const payload = await uploadImage(file, request.signal);
    await showResults(file, payload, performance.now() - started, request.signal);
    setStatus('success', `Found ${countFaces(payload.images[0].faces.length)}.`);
  } catch (error) {
    if (error.name === 'AbortError') return;
    if (!(error instanceof UserFacingError)) console.error(error);
    const message = error instanceof UserFacingError
      ? error.message
      : 'Something went wrong while showing the results. Please try again.';
    clearResults();
    setStatus('error', `Could not analyse “${file.name}”.`, message);
  } finally {
    if (pendingRequest === request) pendingRequest = null;
  }
}

/* ---------- Input: file chooser, drag and drop, paste ---------- */

function draggingFiles(event) {
  return event.dataTransfer?.types.includes('Files') ?? false;
}

function onFileChosen() {
  const [file] = ui.input.files;
  if (file) analyse(file);
  ui.input.value = ''; // choosing the same file again should analyse it again
}

/** The whole window accepts dropped files, so a near miss doesn't navigate away from the page. */
function bindDragAndDrop() {
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  const setDragging = (on) => ui.dropzone.classList.toggle('is-dragover', on);

  window.addEventListener('dragenter', (event) => {
    if (!draggingFiles(event)) return;
    depth += 1;
    setDragging(true);
  });
  window.addEventListener('dragleave', (event) => {
    if (!draggingFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) setDragging(false);
  });
  window.addEventListener('dragover', (event) => {
    if (!draggingFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  window.addEventListener('drop', (event) => {
    if (!draggingFiles(event)) return;
    event.preventDefault();
    depth = 0;
    setDragging(false);
    const [file] = event.dataTransfer.files;
    if (file) analyse(file);
  });
}

function onPaste(event) {
  const file = [...(event.clipboardData?.files ?? [])].find((item) => item.type.startsWith('image/'));
  if (!file) return;
  event.preventDefault();
  analyse(file);
}

ui.input.addEventListener('change', onFileChosen);
bindDragAndDrop();
document.addEventListener('paste', onPaste);
new ResizeObserver(drawOverlay).observe(ui.image);
linkBoxesAndCards(ui.overlay, ui.cards);
