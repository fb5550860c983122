/**
 * Drawing detected faces: boxes over a picture and one card per face; how a face is written on every
 * page (formatting helpers); where labels go so that they cover no face (placeNear, also used live).
 *
 * Works on the face objects of the API (`box`, `score`, `emotion`, `age`, `gender`), so the photo,
 * video and live pages can share it. Coordinates in a face are pixels of the analysed frame
 * (`frame.width` x `frame.height`); callers say how large that frame is shown on screen.
 */

const SVG_NS = 'http://www.w3.org/2000/svg';

const LABEL_PADDING_X = 5;

/** Light colours, so that dark label text stays readable on each of them. */
const PALETTE = [
  '#facc15', '#34d399', '#38bdf8', '#fb923c', '#c084fc',
  '#f472b6', '#a3e635', '#fda4af', '#5eead4', '#93c5fd',
];

export function faceColor(index) {
  return PALETTE[index % PALETTE.length];
}

/* ---------- Formatting: how a face is written, on every page ---------- */

export function formatPercent(probability) {
  return `${Math.round(probability * 100)}%`;
}

/** Detection scores crowd near 1, so keep one decimal and never round 0.9996 up to 100%. */
export function formatScore(score) {
  return `${(Math.floor(score * 1000 + 1e-6) / 10).toFixed(1)}%`;
}

/** "38 ± 9 years" (`age` is {years, std}, as in the API; video summaries give {mean, std}). */
export function formatAge(age) {
  return `${Math.round(age.years ?? age.mean)} ± ${Math.round(age.std)} years`;
}

/** "female 98%". */
export function formatGender(gender) {
  return `${gender.label} ${formatPercent(gender.probability)}`;
}

/** A server's or a browser's message as a sentence: capital first letter, full stop at the end. */
export function asSentence(text) {
  const trimmed = String(text ?? '').trim();
  if (!trimmed) return '';
  const capitalised = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?…]$/.test(capitalised) ? capitalised : `${capitalised}.`;
}

/**
 * The label of a face on a picture, e.g. "#1 happy · 34 · F" (the same words app/formatting.py burns
 * into videos). `lines` = 2 splits it into "#1 happy" and "34 · F" for narrow places.
 */
export function faceLabelLines(face, number, lines = 1) {
  const who = `#${number} ${face.emotion.label}`;
  const facts = `${Math.round(face.age.years)} · ${face.gender.label.charAt(0).toUpperCase()}`;
  return lines === 2 ? [who, facts] : [`${who} · ${facts}`];
}

export function compactLabel(face, number) {
  return faceLabelLines(face, number)[0];
}

/* ---------- Placing labels where they cover no face ---------- */

/** Whether two rectangles ({x, y, width, height}) come closer than `gap` pixels. */
function overlaps(a, b, gap = 2) {
  return a.x < b.x + b.width + gap && b.x < a.x + a.width + gap
    && a.y < b.y + b.height + gap && b.y < a.y + a.height + gap;
}

function overlapArea(a, b) {
  const w = Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y);
  return w > 0 && h > 0 ? w * h : 0;
}

/**
 * Where to put a `size` ({width, height}) rectangle next to `box` inside `bounds` ({width, height}) so
 * that it covers none of `obstacles`: the first free place of, in order, just above or below the box
 * (left-aligned, centred, right-aligned), beside it (right, then left), then the nearest free place
 * around it (crowds on small screens). Returns {rect, clear}; when no place is free, the one covering
 * the least (clear false).
 */
export function placeNear(size, box, bounds, obstacles, gap = 2) {
  const { width, height } = size;
  const xs = [box.x, box.x + (box.width - width) / 2, box.x + box.width - width];
  const spots = [];
  for (const y of [box.y - height - gap, box.y + box.height + gap]) for (const x of xs) spots.push({ x, y });
  for (const y of [box.y, box.y + (box.height - height) / 2, box.y + box.height - height]) {
    spots.push({ x: box.x + box.width + gap, y }, { x: box.x - width - gap, y });
  }
  // Then every place within a few label sizes, nearest first (distance between the centres).
  const cx = box.x + box.width / 2 - width / 2;
  const cy = box.y + box.height / 2 - height / 2;
  const reach = 1.5 * Math.max(width, height) + Math.max(box.width, box.height) / 2;
  const step = Math.max(3, Math.round(height / 4));
  const around = [];
  for (let dy = -reach; dy <= reach; dy += step) {
    for (let dx = -reach; dx <= reach; dx += step) around.push({ x: cx + dx, y: cy + dy, d: dx * dx + dy * dy });
  }
  around.sort((a, b) => a.d - b.d);
  spots.push(...around);

  let best = null;
  for (const spot of spots) {
    if (spot.y < 0 || spot.y + height > bounds.height) continue;
    const rect = { x: Math.max(0, Math.min(spot.x, bounds.width - width)), y: spot.y, width, height };
    if (!obstacles.some((obstacle) => overlaps(rect, obstacle, gap))) return { rect, clear: true };
    if (best && best.covered === 0) continue;
    const covered = obstacles.reduce((sum, obstacle) => sum + overlapArea(rect, obstacle), 0);
    if (!best || covered < best.covered) best = { rect, covered };
  }
  if (!best) { // taller than the picture: its top edge
    best = { rect: { x: Math.max(0, Math.min(box.x, bounds.width - width)), y: 0, width, height } };
  }
  return { rect: best.rect, clear: false };
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

/** Writes `lines` into a group's tag and returns the tag's size. The group must be in the document. */
function setTagText(label, lines, fontSize) {
  label.replaceChildren(...lines.map((line) => {
    const span = svgElement('tspan');
    span.textContent = line;
    return span;
  }));
  label.style.fontSize = `${fontSize}px`;
  const lineHeight = Math.round(fontSize * 1.35);
  const textWidth = Math.max(...[...label.children].map((span) => span.getComputedTextLength()));
  return { width: Math.ceil(textWidth) + 2 * LABEL_PADDING_X, height: lines.length * lineHeight + 4, lineHeight };
}

/**
 * Tags every face with the same label, placed where it covers no face and no other tag: on one line
 * where all fit so, else on two lines (narrow screens, crowds). Returns each tag's rectangle.
 */
function placeTags(groups, faces, boxes, displayed) {
  const fontSize = displayed.width < 520 ? 10 : 12;
  const parts = groups.map((group) => {
    const background = svgElement('rect', { class: 'face-box__tag', rx: 3 });
    const label = svgElement('text', { class: 'face-box__text' });
    group.append(background, label);
    return { background, label };
  });
  let placed;
  for (const lines of [1, 2]) {
    placed = [];
    let allClear = true;
    faces.forEach((face, index) => {
      const size = setTagText(parts[index].label, faceLabelLines(face, index + 1, lines), fontSize);
      const obstacles = [...boxes, ...placed.map((p) => p.rect)];
      const { rect, clear } = placeNear(size, boxes[index], displayed, obstacles);
      allClear &&= clear;
      placed.push({ rect, lineHeight: size.lineHeight });
    });
    if (allClear) break;
  }
  placed.forEach(({ rect, lineHeight }, index) => {
    const { background, label } = parts[index];
    for (const [key, value] of Object.entries(rect)) background.setAttribute(key, value);
    [...label.children].forEach((span, line) => {
      span.setAttribute('x', rect.x + LABEL_PADDING_X);
      span.setAttribute('y', rect.y + 2 + lineHeight * (line + 0.5));
    });
  });
  return placed.map((p) => p.rect);
}

/**
 * Draws every face's box and its tag into `svg`, which lies over the picture at its top-left corner.
 * `displayed` is the picture's size on screen; one SVG unit is one CSS pixel, so lines and text stay
 * crisp at any scale.
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
  placeTags(groups, faces, boxes, displayed);
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
