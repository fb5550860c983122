"""How much one sighting of a face should count: size, detection score, sharpness and pose.

A track combines every frame's age and gender into one estimate (``app/tracking.py``); a small,
blurred, turned-away or doubtful face says less about a person than a large sharp frontal one, so its
vote is weighed down. Each factor lies in [0.1, 1] (none silences a frame entirely) and ``weight`` is
their product.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# A face this many pixels across (geometric mean of the box sides) or more counts fully: the
# age/gender head reads 64 px crops, so a smaller face is enlarged and carries less detail.
FULL_SIZE_PX = 64.0
# Variance of the Laplacian of the 64 px crop at which a face counts as sharp. Measured once, by hand
# (no command in the repository), on 2,000 UTKFace training crops: median 561 (10th percentile 215);
# the same crops reduced 2x and enlarged back: 94, reduced 4x: 22. So a face as soft as a 2x down-up
# copy counts ~0.4, a 4x one 0.1; tests/test_generalisation.py checks that ordering on a real face.
SHARP_LAPLACIAN_VAR = 250.0
MIN_FACTOR = 0.1


@dataclass(frozen=True)
class FaceQuality:
    size: float
    score: float
    sharpness: float
    frontal: float

    @property
    def weight(self) -> float:
        return self.size * self.score * self.sharpness * self.frontal

    def to_dict(self) -> dict:
        return {"weight": round(self.weight, 3), "size": round(self.size, 3), "score": round(self.score, 3),
                "sharpness": round(self.sharpness, 3), "frontal": round(self.frontal, 3)}


def _clip(x: float) -> float:
    return float(min(1.0, max(MIN_FACTOR, x)))


def laplacian_variance(crop: np.ndarray) -> float:
    """Sharpness of a uint8 crop (grey or RGB): variance of its Laplacian."""
    grey = crop if crop.ndim == 2 else (crop[..., 0] if crop.shape[2] == 1 else cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def frontal_offset(landmarks) -> float | None:
    """How far the nose sits from the eyes' midpoint along the eye line, in eye distances: ~0 for a
    frontal face, ~0.5 in profile. None without the five landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return None
    left, right, nose = pts[0], pts[1], pts[2]
    eyes = right - left
    d2 = float(eyes @ eyes)
    if d2 < 1e-6:
        return None
    return float(abs((nose - (left + right) / 2) @ eyes) / d2)


def assess(box, score: float, landmarks, crop: np.ndarray | None) -> FaceQuality:
    """The quality factors of one face: its box (x1, y1, x2, y2), detection score, MTCNN landmarks and
    the aligned crop the age/gender head read."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    offset = frontal_offset(landmarks)
    return FaceQuality(
        size=_clip(np.sqrt(side) / FULL_SIZE_PX),
        score=_clip((float(score) - 0.5) / 0.5),
        sharpness=1.0 if crop is None else _clip(laplacian_variance(crop) / SHARP_LAPLACIAN_VAR),
        frontal=1.0 if offset is None else _clip(1.0 - 2.0 * offset),
    )
