"""Batch augmentation in torch: one affine warp and one colour jitter for the whole batch at once.

Each sample gets its own random flip, rotation, scale and shift, but they are folded into one 2x3 matrix
per sample and applied with a single ``grid_sample`` call: far cheaper than per-image PIL transforms on
a 2-core machine, and it runs on the GPU unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip (faces are left-right symmetric)
    rotate_deg: float = 10.0  # uniform in +-rotate_deg
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.08  # uniform in +-shift, as a fraction of the image side
    brightness: float = 0.2  # additive, uniform in +-brightness (images in [0, 1])
    contrast: float = 0.2  # multiplicative around the image mean, uniform in 1 +- contrast


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1] -> augmented batch, same shape, still in [0, 1]."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device="cpu").to(x.device, x.dtype) * (hi - lo) + lo

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180)
    scale = uniform(*cfg.scale)
    # affine_grid maps *output* coordinates to input ones, in [-1, 1]: dividing by the scale zooms in
    # for scale > 1. A shift of s image sides is 2s in these units.
    tx, ty = uniform(-cfg.shift, cfg.shift) * 2, uniform(-cfg.shift, cfg.shift) * 2
    flip = torch.where(uniform(0, 1) < cfg.flip, -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], dim=1),
        torch.stack([sin * flip, cos, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # "border" repeats the edge pixels, like the serving path's cv2.BORDER_REPLICATE in align_face.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    brightness = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
    return ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class DegradeConfig:
    """Served faces are often worse than a data set's: compressed webcam and video frames, small faces
    enlarged. Each crop is JPEG-compressed with probability ``p`` (quality uniform in ``jpeg_quality``) and,
    independently, shrunk and enlarged back with probability ``p`` (factor uniform in ``down_up``).
    Applied to the uint8 crops before they become tensors; ``p = 0`` leaves them untouched."""

    p: float = 0.0
    jpeg_quality: tuple[int, int] = (20, 90)
    down_up: tuple[float, float] = (1.3, 4.0)


def degrade_batch(images: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, S, S, C) -> a degraded copy (see :class:`DegradeConfig`); the input is not modified."""
    if cfg.p <= 0:
        return images
    out = np.array(images, copy=True)
    size, channels = images.shape[1], images.shape[3]
    for i in range(len(out)):
        im = out[i] if channels == 3 else out[i, ..., 0]
        if rng.random() < cfg.p:
            small = max(4, int(round(size / rng.uniform(*cfg.down_up))))
            im = cv2.resize(cv2.resize(im, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                            interpolation=cv2.INTER_LINEAR)
        if rng.random() < cfg.p:
            ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*cfg.jpeg_quality))])
            im = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else im
        out[i] = im if channels == 3 else im[..., None]
    return out
