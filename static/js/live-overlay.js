/**
 * Tracked faces drawn on a 2D canvas: boxes, "#id emotion · age · F" tags, and optionally the five
 * landmarks and the emotion probabilities as bars. The live overlay and the snapshot both use it, so a
 * snapshot shows what was on screen.
 *
 * Face coordinates are pixels of the analysed frame; `scale` maps them to canvas units, and `unit` is
 * the size of one CSS pixel in canvas units (lines and text keep their on-screen size at any scale).
 */
import { compactLabel, faceColor, formatPercent } from './faces.js';

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

/** The label on a coloured tag just above the box, or inside its top edge when there is no room above. */
function drawTag(ctx, text, box, color, unit, canvasWidth) {
  const height = 20 * unit;
  const padding = 6 * unit;
  ctx.font = `700 ${13 * unit}px ${FONT}`;
  const width = ctx.measureText(text).width + 2 * padding;
  const x = Math.max(0, Math.min(box.x, canvasWidth - width));
  const y = box.y - height >= 0 ? box.y - height : box.y;
  ctx.fillStyle = color;
  ctx.fillRect(x, y, width, height);
  ctx.fillStyle = DARK;
  ctx.textBaseline = 'middle';
  ctx.fillText(text, x + padding, y + height / 2);
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

/** A small panel beside the box (right if it fits, else left) with one bar per emotion. */
function drawEmotionBars(ctx, emotion, box, color, unit, canvasWidth, canvasHeight) {
  const rows = Object.entries(emotion.probabilities);
  const padding = 6 * unit;
  const rowHeight = 15 * unit;
  const nameWidth = 56 * unit;
  const barWidth = 52 * unit;
  const valueWidth = 32 * unit;
  const width = nameWidth + barWidth + valueWidth + 2 * padding;
  const height = rows.length * rowHeight + 2 * padding;
  const gap = 6 * unit;

  let x = box.x + box.width + gap;
  if (x + width > canvasWidth) x = box.x - gap - width;
  x = Math.max(0, Math.min(x, canvasWidth - width));
  const y = Math.max(0, Math.min(box.y, canvasHeight - height));

  ctx.fillStyle = 'rgb(17 19 24 / 0.78)';
  ctx.fillRect(x, y, width, height);
  ctx.textBaseline = 'middle';
  rows.forEach(([name, probability], index) => {
    const isTop = name === emotion.label;
    const middle = y + padding + index * rowHeight + rowHeight / 2;
    ctx.font = `${isTop ? 700 : 500} ${11 * unit}px ${FONT}`;
    ctx.fillStyle = isTop ? '#ffffff' : '#c9ccd6';
    ctx.textAlign = 'left';
    ctx.fillText(name, x + padding, middle);
    const barX = x + padding + nameWidth;
    ctx.fillStyle = 'rgb(255 255 255 / 0.18)';
    ctx.fillRect(barX, middle - 3 * unit, barWidth, 6 * unit);
    ctx.fillStyle = isTop ? color : '#9aa1b3';
    ctx.fillRect(barX, middle - 3 * unit, Math.max(unit, barWidth * probability), 6 * unit);
    ctx.fillStyle = isTop ? '#ffffff' : '#c9ccd6';
    ctx.textAlign = 'right';
    ctx.fillText(formatPercent(probability), x + width - padding, middle);
  });
  ctx.textAlign = 'left';
}

/**
 * Draws every face on `ctx`.
 * @param {object} view - {scale, unit, width, height} of the canvas (width and height in canvas units)
 * @param {object} show - {landmarks, emotions}: which extras to draw
 */
export function drawFaces(ctx, faces, view, show) {
  const { scale, unit, width, height } = view;
  for (const face of faces) {
    const color = trackColor(face.track_id);
    const box = canvasBox(face.box, scale);
    drawBox(ctx, box, color, unit);
    if (show.landmarks) drawLandmarks(ctx, face.landmarks, scale, color, unit);
    drawTag(ctx, compactLabel(face, face.track_id), box, color, unit, width);
    if (show.emotions) drawEmotionBars(ctx, face.emotion, box, color, unit, width, height);
  }
}
