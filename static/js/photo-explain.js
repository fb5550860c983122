/**
 * Photo page: "Why this emotion?" toggle. Overlays, on each face, the heat map of what drove its
 * emotion label (the API's `?explain=true`: occlusion sensitivity, a PNG stretched over the face box).
 *
 * Kept apart from photo.js: it listens for the `photo:results` / `photo:cleared` events that photo.js
 * dispatches, and asks the API again, with explain=true, for the picture on screen when the toggle is
 * on and the maps are not there yet.
 */

const uploader = document.getElementById('uploader');
const stage = document.querySelector('.preview__stage');
const bar = document.querySelector('.results__bar');

const toggle = document.createElement('label');
toggle.className = 'explain-toggle';
toggle.title = 'Heat map of the parts of each face that drove its emotion label (occlusion sensitivity)';
const checkbox = document.createElement('input');
checkbox.type = 'checkbox';
checkbox.id = 'explain-toggle';
const text = document.createElement('span');
text.textContent = 'Why this emotion?';
toggle.append(checkbox, ' ', text);
Object.assign(toggle.style, { display: 'inline-flex', alignItems: 'center', gap: '0.35rem', cursor: 'pointer' });
bar.querySelector('#download-json').before(toggle);

const layer = document.createElement('div');
layer.className = 'explain-layer';
layer.setAttribute('aria-hidden', 'true');
Object.assign(layer.style, { position: 'absolute', inset: '0', pointerEvents: 'none' });
stage.querySelector('.overlay').before(layer); // under the boxes and their labels

/** The picture on screen: its file, its frame (API answer) and the explained faces once fetched. */
let current = null;

function sameBox(a, b) {
  return a.every((v, i) => Math.abs(v - b[i]) < 0.5);
}

function render() {
  layer.replaceChildren();
  layer.hidden = !checkbox.checked;
  if (!checkbox.checked || !current?.explained) return;
  const { width, height } = current.frame;
  for (const face of current.explained) {
    const map = face.explanation;
    if (!map) continue;
    const [x1, y1, x2, y2] = map.box;
    const img = document.createElement('img');
    img.className = 'explain-map';
    img.src = map.png;
    img.alt = '';
    img.dataset.label = map.label;
    Object.assign(img.style, {
      position: 'absolute',
      left: `${(x1 / width) * 100}%`,
      top: `${(y1 / height) * 100}%`,
      width: `${((x2 - x1) / width) * 100}%`,
      height: `${((y2 - y1) / height) * 100}%`,
      opacity: '0.85',
    });
    layer.append(img);
  }
}

async function fetchExplanations(shown) {
  const body = new FormData();
  body.append('image', shown.file, shown.file.name);
  text.textContent = 'Why this emotion? (working…)';
  try {
    const response = await fetch(`${uploader.dataset.endpoint}?explain=true`, {
      method: 'POST', body, headers: { Accept: 'application/json' },
    });
    const payload = await response.json().catch(() => null);
    if (!response.ok || !payload?.images?.[0]) throw new Error(payload?.error?.message ?? `HTTP ${response.status}`);
    if (current !== shown) return; // another picture meanwhile
    // Same picture, same detector: match each explained face to the face on screen by its box.
    const faces = payload.images[0].faces;
    shown.explained = shown.frame.faces.map((face) => faces.find((f) => sameBox(f.box, face.box)) ?? face);
    text.textContent = 'Why this emotion?';
  } catch (error) {
    shown.pending = false; // switching the toggle again retries
    if (current === shown) text.textContent = `Why this emotion? (failed: ${error.message})`;
    return;
  }
  render();
}

function update() {
  if (checkbox.checked && current && !current.explained && !current.pending) {
    current.pending = true;
    fetchExplanations(current);
  }
  render();
}

document.addEventListener('photo:results', (event) => {
  const { file, frame } = event.detail;
  const explained = frame.faces.every((f) => f.explanation) ? frame.faces : null;
  current = { file, frame, explained, pending: false };
  update();
});
document.addEventListener('photo:cleared', () => {
  current = null;
  text.textContent = 'Why this emotion?';
  render();
});
checkbox.addEventListener('change', update);
