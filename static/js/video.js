/**
 * Video page: upload a video, follow its job by polling the status endpoint, then show the annotated
 * video, one card per track (thumbnail, dominant emotion, age, gender, emotion timeline) and downloads.
 * The job id is kept in the URL (#job=<id>) so a reload picks the job up again.
 */

import { asSentence, faceColor, formatAge, formatGender, formatPercent } from './faces.js';

const POLL_MS = 700;
const EMOTION_COLORS = {
  angry: '#e5484d', disgust: '#8e4ec6', fear: '#6e56cf', happy: '#30a46c',
  neutral: '#8b8d98', sad: '#0090ff', surprise: '#f76b15', contempt: '#ad7f58',
};
const DOWNLOADS = [
  ['annotated_mp4', 'Annotated video'], ['frames_jsonl', 'Frames (JSONL)'],
  ['frames_csv', 'Frames (CSV)'], ['summary_json', 'Summary (JSON)'],
];

const uploader = document.getElementById('video-uploader');
const ui = {
  input: document.getElementById('video-input'),
  dropzone: document.getElementById('dropzone'),
  stride: document.getElementById('stride'),
  searchEvery: document.getElementById('search-every'),
  alpha: document.getElementById('alpha'),
  job: document.getElementById('job'),
  progress: document.getElementById('job-progress'),
  text: document.getElementById('job-text'),
  cancel: document.getElementById('job-cancel'),
  status: document.getElementById('status'),
  results: document.getElementById('video-results'),
  summary: document.getElementById('video-summary'),
  downloads: document.getElementById('downloads'),
  video: document.getElementById('annotated'),
  tracks: document.getElementById('tracks'),
};
const maxBytes = Number(uploader.dataset.maxBytes);
let currentJob = null;
let pollTimer = null;

/** The transports the server asks for (SOCKETIO_TRANSPORTS: websocket only behind several processes), if any. */
function socketOptions() {
  const transports = document.body.dataset.socketTransports;
  return transports ? { transports: transports.split(',') } : {};
}

/**
 * Progress pushed over Socket.IO (namespace /videos) when the client library loaded; polling goes on
 * regardless, only slower while pushes arrive, so a lost connection costs nothing but speed.
 */
const socket = window.io ? window.io('/videos', socketOptions()) : null;
if (socket) {
  socket.on('progress', (job) => {
    if (job.id !== currentJob) return;
    renderJob(job);
    if (job.status !== 'queued' && job.status !== 'running') {
      clearTimeout(pollTimer);
      poll();  // the full status (with the file URLs) ends the job on the page
    }
  });
  socket.on('connect', () => { if (currentJob) socket.emit('watch', currentJob); });
}
const pollDelay = () => (socket?.connected ? POLL_MS * 4 : POLL_MS);

function showStatus(message, kind = 'error') {
  ui.status.hidden = !message;
  ui.status.dataset.kind = kind;
  ui.status.querySelector('.status__text').textContent = message || '';
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return asSentence(body.error.message);
  } catch { /* not JSON */ }
  return `The server answered ${response.status}.`;
}

function formatEta(seconds) {
  if (seconds == null) return '';
  if (seconds < 60) return `about ${Math.ceil(seconds)} s left`;
  return `about ${Math.ceil(seconds / 60)} min left`;
}

// Only the uploader may delete a job: the server answers the upload with a delete token, kept in this
// browser (localStorage, so a reload or a new tab of the same job can still cancel it).
const TOKENS_KEY = 'faceapp.video.deleteTokens';

function deleteTokens() {
  try { return JSON.parse(localStorage.getItem(TOKENS_KEY)) || {}; } catch { return {}; }
}

function rememberDeleteToken(jobId, token) {
  if (!token) return;
  try {
    const kept = Object.entries(deleteTokens()).slice(-49); // jobs expire after a day: keep the newest
    localStorage.setItem(TOKENS_KEY, JSON.stringify(Object.fromEntries([...kept, [jobId, token]])));
  } catch { /* storage full or disabled: the job can still be followed, not cancelled */ }
}

function forgetDeleteToken(jobId) {
  const tokens = deleteTokens();
  delete tokens[jobId];
  try { localStorage.setItem(TOKENS_KEY, JSON.stringify(tokens)); } catch { /* see above */ }
}

/** Sends the file with XMLHttpRequest: fetch() cannot report upload progress. */
function upload(file) {
  const form = new FormData();
  form.append('video', file);
  form.append('stride', ui.stride.value || '1');
  if (ui.searchEvery.value) form.append('search_every', ui.searchEvery.value);
  form.append('alpha', ui.alpha.value || '0.3');
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', uploader.dataset.endpoint);
    xhr.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) {
        ui.progress.value = event.loaded / event.total;
        ui.text.textContent = `Uploading… ${formatPercent(event.loaded / event.total)}`;
      }
    });
    xhr.addEventListener('load', () => resolve(new Response(xhr.response, { status: xhr.status })));
    xhr.addEventListener('error', () => reject(new Error('The upload failed: is the server reachable?')));
    xhr.send(form);
  });
}

async function start(file) {
  if (!file) return;
  if (file.size > maxBytes) {
    showStatus(`This file is larger than the ${uploader.dataset.maxLabel} limit.`);
    return;
  }
  resetResults();
  showStatus('');
  ui.job.hidden = false;
  ui.cancel.hidden = true;
  try {
    const response = await upload(file);
    if (response.status !== 202) {
      ui.job.hidden = true;
      showStatus(await errorMessage(response));
      return;
    }
    const body = await response.json();
    rememberDeleteToken(body.id, body.delete_token);
    history.replaceState(null, '', `#job=${body.id}`);
    follow(body.id);
  } catch (error) {
    ui.job.hidden = true;
    showStatus(error.message);
  }
}

function follow(jobId) {
  currentJob = jobId;
  if (socket?.connected) socket.emit('watch', jobId);
  ui.job.hidden = false;
  ui.cancel.hidden = false;
  clearTimeout(pollTimer);
  poll();
}

async function poll() {
  const jobId = currentJob;
  if (!jobId) return;
  let job;
  try {
    const response = await fetch(`/api/v1/videos/${jobId}`, { cache: 'no-store' });
    if (response.status === 404) {
      ui.job.hidden = true;
      showStatus('This video job no longer exists (finished jobs are removed after a while).');
      history.replaceState(null, '', location.pathname);
      return;
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    job = await response.json();
  } catch (error) {
    ui.text.textContent = `Could not reach the server (${error.message}); retrying…`;
    pollTimer = setTimeout(poll, POLL_MS * 3);
    return;
  }
  if (jobId !== currentJob) return;
  renderJob(job);
  const finished = job.status !== 'queued' && job.status !== 'running';
  if (finished) currentJob = null;  // a push or timer arriving now finds nothing left to do
  if (!finished) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, pollDelay());
  } else if (job.status === 'done') {
    ui.cancel.hidden = true;
    await showResults(job);
  } else {
    ui.cancel.hidden = true;
    showStatus(job.status === 'failed' ? `The video could not be analysed. ${asSentence(job.error)}`
      : 'The job was cancelled.');
  }
}

function renderJob(job) {
  ui.progress.value = job.progress;
  if (job.status === 'queued') {
    ui.text.textContent = job.queue_position ? `Waiting in line (position ${job.queue_position})…` : 'Waiting…';
  } else if (job.status === 'running') {
    const frames = job.frames_total ? `frame ${job.frames_done} of ${job.frames_total}` : `frame ${job.frames_done}`;
    ui.text.textContent = [`Analysing ${frames}`, formatEta(job.eta_s)].filter(Boolean).join(' · ');
  } else if (job.status === 'done') {
    ui.text.textContent = `Done: ${job.frames_total} frames analysed.`;
  } else {
    ui.text.textContent = job.status === 'failed' ? 'Failed.' : 'Cancelled.';
  }
}

function resetResults() {
  ui.results.hidden = true;
  ui.tracks.replaceChildren();
  ui.downloads.replaceChildren();
  ui.video.removeAttribute('src');
  ui.video.load();
}

async function showResults(job) {
  const response = await fetch(job.urls.summary_json, { cache: 'no-store' });
  if (!response.ok) {
    showStatus(await errorMessage(response));
    return;
  }
  const summary = await response.json();
  ui.video.src = job.urls.annotated_mp4;
  for (const [key, label] of DOWNLOADS) {
    const link = document.createElement('a');
    link.className = 'button';
    link.href = `${job.urls[key]}?download=1`;
    link.textContent = label;
    ui.downloads.append(link);
  }
  const n = summary.tracks.length;
  ui.summary.textContent = `${summary.frames} frames, ${n} ${n === 1 ? 'face' : 'faces'} followed`
    + (summary.notes.length ? ` · ${summary.notes.join('; ')}` : '');
  ui.results.hidden = false;
  for (const track of summary.tracks) ui.tracks.append(trackCard(job.id, track, summary.fps));
}

function trackCard(jobId, track, fps) {
  const card = document.createElement('article');
  card.className = 'track-card';
  card.dataset.trackId = track.track_id;
  card.style.setProperty('--face-color', faceColor(track.track_id - 1)); // the colour of its box in the video

  const head = document.createElement('div');
  head.className = 'track-card__head';
  const thumb = document.createElement('img');
  thumb.className = 'track-card__thumb';
  thumb.src = `/api/v1/videos/${jobId}/tracks/${track.track_id}.jpg`;
  thumb.alt = `Face #${track.track_id}`;
  const text = document.createElement('div');
  const title = document.createElement('h3');
  const badge = document.createElement('span');
  badge.className = 'face-badge';
  badge.textContent = `#${track.track_id}`;
  title.append(Object.assign(document.createElement('span'), { className: 'visually-hidden', textContent: 'Face ' }),
    badge, ` ${track.emotion.dominant}`);
  const facts = document.createElement('p');
  facts.className = 'track-card__facts';
  const seconds = (frame) => (frame / fps).toFixed(1);
  facts.textContent = [formatAge(track.age), formatGender(track.gender),
    `${seconds(track.first_frame)}–${seconds(track.last_frame)} s`].join(' · ');
  text.append(title, facts);
  head.append(thumb, text);

  const chartBox = document.createElement('div');
  chartBox.className = 'track-card__chart';
  const canvas = document.createElement('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', `Emotion timeline of face #${track.track_id}: mostly ${track.emotion.dominant}`);
  chartBox.append(canvas);
  card.append(head, chartBox);
  requestAnimationFrame(() => timelineChart(canvas, track));
  return card;
}

/**
 * The emotions of a track over time as a stacked area: at each moment the seven probabilities fill the
 * height, so the dominant emotion is the widest band. Tooltips give the time and every percentage.
 */
function timelineChart(canvas, track) {
  if (!window.Chart || !track.timeline.length) return;
  const names = Object.keys(track.timeline[0].probabilities);
  const times = track.timeline.map((point) => point.time_s);
  new window.Chart(canvas, {
    type: 'line',
    data: {
      datasets: names.map((name, index) => ({
        label: name,
        data: track.timeline.map((point) => ({ x: point.time_s, y: point.probabilities[name] })),
        borderColor: EMOTION_COLORS[name] || '#888888',
        backgroundColor: `${EMOTION_COLORS[name] || '#888888'}b3`,
        fill: index === 0 ? 'origin' : '-1',
        pointRadius: 0,
        pointHitRadius: 6,
        borderWidth: 1,
      })),
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      scales: {
        x: {
          type: 'linear',
          min: Math.min(...times),
          max: Math.max(...times),
          title: { display: true, text: 'time (s)' },
          ticks: { maxRotation: 0, autoSkipPadding: 20 },
        },
        y: {
          stacked: true,
          min: 0,
          max: 1,
          ticks: { stepSize: 0.25, callback: (value) => formatPercent(value) },
        },
      },
      plugins: {
        legend: { position: 'bottom', labels: { boxWidth: 10, boxHeight: 10, padding: 8, font: { size: 11 } } },
        tooltip: {
          itemSort: (a, b) => b.parsed.y - a.parsed.y,
          callbacks: {
            title: (items) => `${items[0].parsed.x.toFixed(1)} s`,
            label: (item) => ` ${item.dataset.label} ${formatPercent(item.parsed.y)}`,
          },
        },
      },
    },
  });
}

ui.input.addEventListener('change', () => start(ui.input.files[0]));
ui.dropzone.addEventListener('dragover', (event) => { event.preventDefault(); ui.dropzone.classList.add('is-dragover'); });
ui.dropzone.addEventListener('dragleave', () => ui.dropzone.classList.remove('is-dragover'));
ui.dropzone.addEventListener('drop', (event) => {
  event.preventDefault();
  ui.dropzone.classList.remove('is-dragover');
  start(event.dataTransfer.files[0]);
});
ui.cancel.addEventListener('click', async () => {
  if (!currentJob) return;
  const jobId = currentJob;
  currentJob = null;
  clearTimeout(pollTimer);
  const response = await fetch(`/api/v1/videos/${jobId}`, {
    method: 'DELETE', headers: { 'X-Delete-Token': deleteTokens()[jobId] || '' },
  });
  if (response.status !== 204 && response.status !== 404) {
    currentJob = jobId;
    poll();
    showStatus(await errorMessage(response));
    return;
  }
  forgetDeleteToken(jobId);
  ui.job.hidden = true;
  history.replaceState(null, '', location.pathname);
  showStatus('The job was cancelled.', 'success');
});

const resumed = /^#job=([0-9a-f]{32})$/.exec(location.hash);
if (resumed) follow(resumed[1]);
