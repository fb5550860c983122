"""Why a face got its emotion label: occlusion sensitivity on the emotion model's own input.

The aligned crop the model saw is covered, one square patch at a time, with mid-grey; where covering
it lowers the probability of the label given, that part of the face drove the label. The drops are
averaged per pixel over the patches that cover it, mapped from the crop back onto the face's box in
the picture (the inverse of the alignment), and rendered as a small PNG whose opacity is the heat.

Occlusion needs only forward passes, so it works the same with both backends (PyTorch, ONNX Runtime),
is deterministic, and costs one batch of ``(1 + steps^2)`` crops per face.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import PreprocessConfig, similarity_transform

PATCH_FRACTION = 0.25  # patch side, as a share of the crop side (12 of FER2013's 48 pixels)
STEPS = 9  # patch positions per axis
OUT_SIDE = 64  # the heat map's longer side, in pixels
GREY = 128


@dataclass(frozen=True)
class Explanation:
    method: str
    label: str  # the emotion whose probability the heat map explains
    box: tuple[float, float, float, float]  # where the map lies in the picture (the face's box)
    width: int  # the map's own pixels
    height: int
    peak_drop: float  # the largest fall of the label's probability under one patch
    png: str  # data:image/png;base64,... RGBA: colour and opacity grow with the heat

    def to_dict(self) -> dict:
        return {"method": self.method, "label": self.label, "box": [round(float(v), 1) for v in self.box],
                "width": self.width, "height": self.height, "peak_drop": round(self.peak_drop, 4),
                "png": self.png}


def occlusion_batch(crop: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The crop, then one copy per patch position with that patch grey; and the patches (x, y, side)."""
    size = crop.shape[0]
    side = max(2, round(size * PATCH_FRACTION))
    starts = np.linspace(0, size - side, STEPS).round().astype(int)
    patches = [(int(x), int(y), side) for y in starts for x in starts]
    batch = np.repeat(crop[None], len(patches) + 1, axis=0)
    for k, (x, y, s) in enumerate(patches, start=1):
        batch[k, y:y + s, x:x + s] = GREY
    return batch, patches


def heat_from_drops(size: int, patches: list[tuple[int, int, int]], drops: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the (positive) drops of the patches covering it; (size, size) float32."""
    heat = np.zeros((size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    for (x, y, s), drop in zip(patches, np.clip(drops, 0, None)):
        heat[y:y + s, x:x + s] += drop
        count[y:y + s, x:x + s] += 1
    heat = (heat / np.maximum(count, 1)).astype(np.float32)
    # Patch edges are an artefact of the method, not of the face: soften them.
    return cv2.GaussianBlur(heat, (0, 0), sigmaX=patches[0][2] / 4) if patches else heat


def crop_matrix(image_shape: tuple[int, ...], landmarks: np.ndarray | None, cfg: PreprocessConfig) -> np.ndarray:
    """2x3 map from picture pixels to the model's input pixels: the alignment of models.preprocess
    (landmarks onto the template at frame size, then scaled to input size), or a plain resize of the
    whole picture when there are no landmarks (``detect=false``)."""
    to_input = cfg.input_size / cfg.frame_size
    if landmarks is not None and len(landmarks) == 5:
        dst = np.asarray(cfg.template, dtype=np.float64) * cfg.frame_size
        m = similarity_transform(np.asarray(landmarks, np.float64), dst)
    else:
        h, w = image_shape[:2]
        m = np.array([[cfg.frame_size / w, 0, 0], [0, cfg.frame_size / h, 0]], np.float64)
    return m * to_input


def heat_on_box(heat: np.ndarray, matrix: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The crop's heat map resampled onto the face box: (h, w) with the longer side OUT_SIDE."""
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    out_w = OUT_SIDE if bw >= bh else max(1, round(OUT_SIDE * bw / bh))
    out_h = OUT_SIDE if bh >= bw else max(1, round(OUT_SIDE * bh / bw))
    # output pixel -> picture pixel -> crop pixel, as one affine map (dst -> src for warpAffine)
    to_picture = np.array([[bw / out_w, 0, x1], [0, bh / out_h, y1], [0, 0, 1]], np.float64)
    to_crop = np.vstack([matrix, [0, 0, 1]]) @ to_picture
    return cv2.warpAffine(heat, to_crop[:2], (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def render_png(heat: np.ndarray) -> str:
    """Heat (float, >= 0) -> RGBA PNG data URL: a colour ramp, opacity proportional to heat / max."""
    peak = float(heat.max())
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    level = np.round(norm * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(level, cv2.COLORMAP_JET)
    alpha = np.round(norm * 210).astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")
