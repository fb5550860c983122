/**
 * Tracked faces drawn on a 2D canvas: boxes, "#id emotion · age · F" tags, and optionally the five
 * landmarks and the emotion probabilities as bars. Tags and bars are placed where they cover no face
 * and nothing else drawn (faces.js placeNear). The live overlay and the snapshot both use it, so a
 * snapshot shows what was on screen.
 *
 * Face coordinates are pixels of the analysed frame; `scale` maps them to canvas units, and `unit` is
 * the size of one CSS pixel in canvas units (lines and text keep their on-screen size at any scale).
 */
import { compactLabel, faceColor, formatPercent, placeNear } from './faces.js';

const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const DARK = '#111318';

/** The palette colour of a track: a face keeps its colour as long as it keeps its number. */
export function trackColor(trackId) {
  return faceColor(trackId - 1);
}

function canvasBox([x1, y1, x2, y2], scale) {
  return { x: x1 * scale, y: y1 * scale, width: (x2 - x1) * scale, height: (y2 - y1) * scale };
}

function drawBox(ctx, box, color, unit) {
  ctx.lineJoin = 'round';
  ctx.strokeStyle = 'rgb(0 0 0 / 0.55)'; // a dark halo keeps the box visible on light and dark skin alike
  ctx.lineWidth = 4.5 * unit;
  ctx.strokeRect(box.x, box.y, box.width, box.height);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2.5 * unit;
  ctx.strokeRect(box.x, box.y, box.width, box.height);
}

/** The size of a tag with `text`; sets the tag's font on `ctx`. */
function tagSize(ctx, text, unit) {
  ctx.font = `700 ${13 * unit}px ${FONT}`;
  return { width: ctx.measureText(text).width + 12 * unit, height: 20 * unit };
}

/** The label on a coloured tag in `rect`. */
function drawTag(ctx, text, rect, color, unit) {
  ctx.font = `700 ${13 * unit}px ${FONT}`;
  ctx.fillStyle = color;
  ctx.fillRect(rect.x, rect.y, rect.width, rect.height);
  ctx.fillStyle = DARK;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'left';
  ctx.fillText(text, rect.x + 6 * unit, rect.y + rect.height / 2);
}

function drawLandmarks(ctx, landmarks, scale, color, unit) {
  ctx.fillStyle = color;
  ctx.strokeStyle = DARK;
  ctx.lineWidth = 1 * unit;
  for (const [x, y] of landmarks) {
    ctx.beginPath();
    ctx.arc(x * scale, y * scale, 2.75 * unit, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
  }
}

/** Sizes of the emotion-bars panel at scale `k` (1: full size; smaller where it would not fit). */
function barsLayout(rows, unit, k) {
  const u = unit * k;
  const layout = { padding: 6 * u, rowHeight: 15 * u, nameWidth: 56 * u, barWidth: 52 * u, valueWidth: 32 * u, u };
  layout.width = layout.nameWidth + layout.barWidth + layout.valueWidth + 2 * layout.padding;
  layout.height = rows * layout.rowHeight + 2 * layout.padding;
  return layout;
}

/** A panel with one bar per emotion in `rect`, laid out by `layout`. */
function drawEmotionBars(ctx, emotion, rect, layout, color) {
  const { padding, rowHeight, nameWidth, barWidth, u } = layout;
  const { x, y, width } = rect;
  ctx.fillStyle = 'rgb(17 19 24 / 0.78)';
  ctx.fillRect(x, y, width, rect.height);
  ctx.textBaseline = 'middle';
  Object.entries(emotion.probabilities).forEach(([name, probability], index) => {
    const isTop = name === emotion.label;
    const middle = y + padding + index * rowHeight + rowHeight / 2;
    ctx.font = `${isTop ? 700 : 500} ${11 * u}px ${FONT}`;
    ctx.fillStyle = isTop ? '#ffffff' : '#c9ccd6';
    ctx.textAlign = 'left';
    ctx.fillText(name, x + padding, middle);
    const barX = x + padding + nameWidth;
    ctx.fillStyle = 'rgb(255 255 255 / 0.18)';
    ctx.fillRect(barX, middle - 3 * u, barWidth, 6 * u);
    ctx.fillStyle = isTop ? color : '#9aa1b3';
    ctx.fillRect(barX, middle - 3 * u, Math.max(u, barWidth * probability), 6 * u);
    ctx.fillStyle = isTop ? '#ffffff' : '#c9ccd6';
    ctx.textAlign = 'right';
    ctx.fillText(formatPercent(probability), x + width - padding, middle);
  });
  ctx.textAlign = 'left';
}

/** The panel's rectangle and layout: full size where it fits, else smaller, else the least covering. */
function placeBars(emotion, box, unit, bounds, obstacles) {
  const rows = Object.keys(emotion.probabilities).length;
  let fallback = null;
  for (const k of [1, 0.8, 0.65]) {
    const layout = barsLayout(rows, unit, k);
    const { rect, clear } = placeNear(layout, box, bounds, obstacles, 4 * unit);
    if (clear) return { rect, layout };
    fallback ??= { rect, layout };
  }
  return fallback;
}

/**
 * Draws every face on `ctx` and returns what it drew where, in canvas units: {boxes, tags, panels}
 * (the page's tests check that nothing covers a face).
 * @param {object} view - {scale, unit, width, height} of the canvas (width and height in canvas units)
 * @param {object} show - {landmarks, emotions}: which extras to draw
 */
export function drawFaces(ctx, faces, view, show) {
  const { scale, unit, width, height } = view;
  const bounds = { width, height };
  const boxes = faces.map((face) => canvasBox(face.box, scale));
  const tags = [];
  const panels = [];
  faces.forEach((face, index) => {
    const color = trackColor(face.track_id);
    drawBox(ctx, boxes[index], color, unit);
    if (show.landmarks) drawLandmarks(ctx, face.landmarks, scale, color, unit);
  });
  faces.forEach((face, index) => {
    const text = compactLabel(face, face.track_id);
    const { rect } = placeNear(tagSize(ctx, text, unit), boxes[index], bounds, [...boxes, ...tags], 2 * unit);
    drawTag(ctx, text, rect, trackColor(face.track_id), unit);
    tags.push(rect);
  });
  if (show.emotions) {
    faces.forEach((face, index) => {
      const { rect, layout } = placeBars(face.emotion, boxes[index], unit, bounds, [...boxes, ...tags, ...panels]);
      drawEmotionBars(ctx, face.emotion, rect, layout, trackColor(face.track_id));
      panels.push(rect);
    });
  }
  return { boxes, tags, panels };
}
