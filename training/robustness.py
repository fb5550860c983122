"""The same test faces, degraded the ways served faces differ from a data set's: a robustness table.

Each corruption maps uint8 (N, H, W, C) crops at the data set's size (FER2013 48 px grey, UTKFace 64 px
RGB) to crops of the same shape; evaluation then runs them through the model exactly as the clean ones.
A model that only fits its data set's framing and quality loses much more than a few points here.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Corruption = Callable[[np.ndarray], np.ndarray]


def _each(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    channels = images.shape[3]
    out = [fn(im if channels == 3 else im[..., 0]) for im in images]
    return np.stack([o if o.ndim == 3 else o[..., None] for o in out]).astype(np.uint8)


def jpeg(quality: int) -> Corruption:
    def apply(images: np.ndarray) -> np.ndarray:
        def one(im: np.ndarray) -> np.ndarray:
            # cv2 codes BGR; a round trip through the same order leaves RGB data RGB.
            ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return _each(images, one)
    return apply


def down_up(factor: int) -> Corruption:
    """Reduce by ``factor`` (area averaging), enlarge back (bilinear): a small, soft face."""
    def apply(images: np.ndarray) -> np.ndarray:
        size = images.shape[1]
        small = max(2, size // factor)
        return _each(images, lambda im: cv2.resize(cv2.resize(im, (small, small), interpolation=cv2.INTER_AREA),
                                                   (size, size), interpolation=cv2.INTER_LINEAR))
    return apply


def affine(angle_deg: float = 0.0, shift_x: float = 0.0, shift_y: float = 0.0) -> Corruption:
    """Rotate about the centre and shift by a fraction of the side; edges repeated, as serving does."""
    def apply(images: np.ndarray) -> np.ndarray:
        size = images.shape[1]
        m = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle_deg, 1.0)
        m[:, 2] += (shift_x * size, shift_y * size)
        return _each(images, lambda im: cv2.warpAffine(im, m, (size, size), flags=cv2.INTER_LINEAR,
                                                       borderMode=cv2.BORDER_REPLICATE))
    return apply


def grey(images: np.ndarray) -> np.ndarray:
    """Colour faces shown in grey (a black-and-white photo); grey inputs are returned unchanged."""
    if images.shape[3] != 3:
        return images.copy()
    g = (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().clip(0, 255)
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=3)


CORRUPTIONS: dict[str, Corruption] = {
    "JPEG quality 30": jpeg(30),
    "2x down-up": down_up(2),
    "4x down-up": down_up(4),
    "rotated +15°": affine(angle_deg=15),
    "rotated -15°": affine(angle_deg=-15),
    "shifted 10% right": affine(shift_x=0.10),
    "shifted 10% down": affine(shift_y=0.10),
    "grey": grey,
}
TOLERANCE_POINTS = 5.0  # the target: within 5 accuracy points of the clean faces


def applicable(name: str, channels: int) -> bool:
    """Grey is a no-op for a grey model."""
    return not (name == "grey" and channels != 3)
