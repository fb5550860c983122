/**
 * Drawing detected faces: boxes over a picture and one card per face.
 *
 * Works on the face objects of the API (`box`, `score`, `emotion`, `age`, `gender`), so the photo,
 * video and live pages can share it. Coordinates in a face are pixels of the analysed frame
 * (`frame.width` x `frame.height`); callers say how large that frame is shown on screen.
 */

const SVG_NS = 'http://www.w3.org/2000/svg';

const LABEL_HEIGHT = 18;
const LABEL_PADDING_X = 5;

/** Light colours, so that dark label text stays readable on each of them. */
const PALETTE = [
  '#facc15', '#34d399', '#38bdf8', '#fb923c', '#c084fc',
  '#f472b6', '#a3e635', '#fda4af', '#5eead4', '#93c5fd',
];

export function faceColor(index) {
  return PALETTE[index % PALETTE.length];
}

/* ---------- Formatting ---------- */

export function formatPercent(probability) {
  return `${Math.round(probability * 100)}%`;
}

/** Detection scores crowd near 1, so keep one decimal and never round 0.9996 up to 100%. */
export function formatScore(score) {
  return `${(Math.floor(score * 1000 + 1e-6) / 10).toFixed(1)}%`;
}

export function formatAge(age) {
  return `${Math.round(age.years)} ± ${Math.round(age.std)} years`;
}

function genderInitial(gender) {
  return gender.label.charAt(0).toUpperCase();
}

/** Compact label drawn next to a box, e.g. "#1 happy · 34 · F". */
export function compactLabel(face, number) {
  return `#${number} ${face.emotion.label} · ${Math.round(face.age.years)} · ${genderInitial(face.gender)}`;
}

/* ---------- Overlay ---------- */

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function screenBox(face, scaleX, scaleY) {
  const [x1, y1, x2, y2] = face.box;
  return { x: x1 * scaleX, y: y1 * scaleY, width: (x2 - x1) * scaleX, height: (y2 - y1) * scaleY };
}

/** Whether two rectangles come closer than `gap` pixels. */
function overlaps(a, b, gap = 2) {
  return a.x < b.x + b.width + gap && b.x < a.x + a.width + gap
    && a.y < b.y + b.height + gap && b.y < a.y + a.height + gap;
}

/**
 * The rectangle of a tag `textWidth` wide on a box: just `above` it, just `below` it, or `inside` its
 * top edge (where there is no room above or below).
 */
function tagRect(textWidth, box, overlay, place) {
  const width = Math.ceil(textWidth) + 2 * LABEL_PADDING_X;
  const above = box.y - LABEL_HEIGHT;
  const below = box.y + box.height;
  let y = box.y;
  if (place === 'above' && above >= 0) y = above;
  if (place === 'below' && below + LABEL_HEIGHT <= overlay.height) y = below;
  return { x: Math.max(0, Math.min(box.x, overlay.width - width)), y, width, height: LABEL_HEIGHT };
}

/**
 * Adds the first of `candidates` ({text, place}) whose tag covers none of `obstacles`, or the last
 * one if all do. The group must already be in the document, so the text can be measured.
 * Returns the tag's rectangle.
 */
function addTag(group, candidates, box, overlay, obstacles) {
  const background = svgElement('rect', { class: 'face-box__tag', rx: 3 });
  const label = svgElement('text', { class: 'face-box__text' });
  group.append(background, label);

  let rect;
  for (const { text, place } of candidates) {
    label.textContent = text;
    rect = tagRect(label.getComputedTextLength(), box, overlay, place);
    if (!obstacles.some((obstacle) => overlaps(rect, obstacle))) break;
  }
  for (const [key, value] of Object.entries(rect)) background.setAttribute(key, value);
  label.setAttribute('x', rect.x + LABEL_PADDING_X);
  label.setAttribute('y', rect.y + LABEL_HEIGHT / 2);
  return rect;
}

/** Tag texts and places to try for a face, best first. */
function tagCandidates(face, number) {
  const full = compactLabel(face, number);
  const short = String(number);
  return [
    { text: full, place: 'above' }, { text: full, place: 'below' },
    { text: short, place: 'above' }, { text: short, place: 'inside' }, { text: short, place: 'below' },
  ];
}

/**
 * Draws every face's box and a tag into `svg`, which lies over the picture at its top-left corner.
 * A tag shows the compact label, or only the face number where the label would cover another face
 * or tag (trying a few places), so crowded pictures stay readable. `displayed` is the picture's size on screen; one SVG
 * unit is one CSS pixel, so lines and text stay crisp at any scale.
 */
export function renderOverlay(svg, faces, frame, displayed) {
  const scaleX = displayed.width / frame.width;
  const scaleY = displayed.height / frame.height;
  svg.setAttribute('width', displayed.width);
  svg.setAttribute('height', displayed.height);
  svg.setAttribute('viewBox', `0 0 ${displayed.width} ${displayed.height}`);

  const boxes = faces.map((face) => screenBox(face, scaleX, scaleY));
  const groups = boxes.map((box, index) => {
    const group = svgElement('g', { class: 'face-box', 'data-face': index + 1 });
    group.style.setProperty('--face-color', faceColor(index));
    group.append(svgElement('rect', { class: 'face-box__rect', rx: 2, ...box }));
    return group;
  });
  svg.replaceChildren(...groups);

  const placedTags = [];
  faces.forEach((face, index) => {
    const obstacles = [...boxes.filter((_, other) => other !== index), ...placedTags];
    placedTags.push(addTag(groups[index], tagCandidates(face, index + 1), boxes[index], displayed, obstacles));
  });
}

/* ---------- Cards ---------- */

/** Draws a square crop around the face, with some margin, from an already loaded image. */
function drawThumbnail(canvas, image, face, frame) {
  const pixelRatio = window.devicePixelRatio || 1;
  const cssSize = canvas.width;
  canvas.style.width = `${cssSize}px`;
  canvas.style.height = `${cssSize}px`;
  canvas.width = canvas.height = Math.round(cssSize * pixelRatio);

  // The image may be decoded at another size than the frame the server analysed.
  const kx = image.naturalWidth / frame.width;
  const ky = image.naturalHeight / frame.height;
  const [x1, y1, x2, y2] = face.box;
  const side = Math.max(x2 - x1, y2 - y1) * 1.25;
  const left = (x1 + x2) / 2 - side / 2;
  const top = (y1 + y2) / 2 - side / 2;

  const context = canvas.getContext('2d');
  context.imageSmoothingQuality = 'high';
  context.drawImage(image, left * kx, top * ky, side * kx, side * ky, 0, 0, canvas.width, canvas.height);
}

function emotionRow(name, probability, isTop) {
  const row = document.createElement('li');
  row.className = isTop ? 'emotion-bars__row is-top' : 'emotion-bars__row';
  row.style.setProperty('--probability', probability);

  const label = document.createElement('span');
  label.className = 'emotion-bars__name';
  label.textContent = name;
  const track = document.createElement('span');
  track.className = 'emotion-bars__track';
  track.setAttribute('aria-hidden', 'true');
  track.append(document.createElement('span'));
  const value = document.createElement('span');
  value.className = 'emotion-bars__value';
  value.textContent = formatPercent(probability);

  row.append(label, track, value);
  return row;
}

/** The emotions in the order the API lists them (the same for every face), the top one marked. */
function emotionRows(emotion) {
  return Object.entries(emotion.probabilities)
    .map(([name, probability]) => emotionRow(name, probability, name === emotion.label));
}

function fillText(root, selector, text) {
  root.querySelector(selector).textContent = text;
}

function faceCard(template, face, index, image, frame) {
  const number = index + 1;
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.face = number;
  card.id = `face-${number}`;
  card.style.setProperty('--face-color', faceColor(index));

  const badge = card.querySelector('.face-badge');
  badge.textContent = `#${number}`;
  fillText(card, '.face-card__emotion', face.emotion.label);
  fillText(card, '.face-card__confidence', formatPercent(face.emotion.probabilities[face.emotion.label] ?? 0));
  fillText(card, '.face-facts__age', formatAge(face.age));
  fillText(card, '.face-facts__age-group', face.age.group);
  fillText(card, '.face-facts__gender', face.gender.label);
  fillText(card, '.face-facts__gender-confidence', formatPercent(face.gender.probability));
  fillText(card, '.face-facts__score', formatScore(face.score));
  card.querySelector('.emotion-bars').append(...emotionRows(face.emotion));

  const thumbnail = card.querySelector('.face-card__thumb');
  thumbnail.setAttribute('aria-label', `Face ${number}, cropped from the photo`);
  if (image) drawThumbnail(thumbnail, image, face, frame);
  else thumbnail.hidden = true;
  return card;
}

/**
 * Replaces the content of `list` with one card per face, cloned from `template`.
 * `image` (optional) is the loaded picture the thumbnails are cut from.
 */
export function renderFaceCards(list, template, faces, frame, image = null) {
  list.replaceChildren(...faces.map((face, index) => faceCard(template, face, index, image, frame)));
}

/* ---------- Linking boxes and cards ---------- */

function setActiveFace(svg, list, number) {
  for (const element of [...svg.querySelectorAll('.face-box'), ...list.querySelectorAll('.face-card')]) {
    element.classList.toggle('is-active', element.dataset.face === number);
  }
}

/**
 * Pointing at a card highlights its box and the other way round;
 * clicking a box scrolls its card into view.
 */
export function linkBoxesAndCards(svg, list) {
  const faceOf = (event) => event.target.closest('[data-face]')?.dataset.face ?? null;
  const highlight = (event) => setActiveFace(svg, list, faceOf(event));
  const clear = () => setActiveFace(svg, list, null);

  for (const root of [svg, list]) {
    root.addEventListener('pointerover', highlight);
    root.addEventListener('pointerleave', clear);
  }
  svg.addEventListener('click', (event) => {
    const number = faceOf(event);
    if (number) list.querySelector(`[data-face="${number}"]`)?.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  });
}
