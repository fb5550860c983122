"""MTCNN face detector (facenet-pytorch), wrapped for numpy 2, devices and large pictures.

Training uses it to measure where landmarks fall in data-set crops (``training/template.py``), and
the inference service uses it to find faces, so both sides see the same detector.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in input pixels
    score: float
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, mouth left, mouth right


class FaceDetector:
    """Finds faces with MTCNN.

    Args:
        device: torch device for the three MTCNN stages.
        min_face_size: smallest face side, in pixels of the (possibly downscaled) picture.
        thresholds: P-, R- and O-net score thresholds.
        max_side: pictures whose longest side exceeds this are downscaled for detection (the pyramid's
            cost grows with the area); boxes and landmarks come back in the original pixels.
        min_score: detections below this final score are dropped.
    """

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), max_side: int = 1280,
                 min_score: float = 0.9):
        from facenet_pytorch import MTCNN  # heavy import, kept out of module import time

        if max_side < 64:
            raise ValueError("max_side must be at least 64 pixels")
        self.device = torch.device(device)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds),
                            device=self.device, post_process=False)

    def detect(self, image: np.ndarray, max_side: int | None = None) -> list[Detection]:
        """RGB uint8 (H, W, 3) -> detections sorted by score, best first.

        ``max_side`` overrides the detector's own for this call (the live mode detects on smaller
        pictures than the photo API).
        """
        return self.detect_many([image], max_side)[0]

    def detect_many(self, images: list[np.ndarray], max_side: int | None = None) -> list[list[Detection]]:
        """Several pictures at once. Same-sized pictures go through MTCNN as one batch (video frames)."""
        if not images:
            return []
        max_side = self.max_side if max_side is None else max_side
        pairs = [self._downscale(img, max_side) for img in images]
        # MTCNN's pyramid is empty (and facenet-pytorch fails) when the short side is below the
        # smallest face size: such a picture has no face we could find.
        searchable = [i for i, (im, _) in enumerate(pairs) if min(im.shape[:2]) >= self.min_face_size]
        results: list[list[Detection]] = [[] for _ in images]
        if searchable:
            found = self._detect_scaled([pairs[i][0] for i in searchable], [pairs[i][1] for i in searchable])
            for i, detections in zip(searchable, found):
                results[i] = detections
        return results

    def _detect_scaled(self, scaled: list[np.ndarray], scales: list[float]) -> list[list[Detection]]:
        same_size = len({im.shape for im in scaled}) == 1
        if same_size and len(scaled) > 1:
            batch = np.stack(scaled)
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
        else:
            boxes, probs, points = [], [], []
            for im in scaled:
                b, p, l = self._mtcnn.detect(im, landmarks=True)
                boxes.append(b)
                probs.append(p)
                points.append(l)
        return [self._convert(b, p, l, s) for b, p, l, s in zip(boxes, probs, points, scales)]

    def _downscale(self, image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("detector expects an RGB uint8 array of shape (H, W, 3)")
        h, w = image.shape[:2]
        side = max(h, w)
        if side <= max_side:
            return np.ascontiguousarray(image), 1.0
        scale = max_side / side
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        return small, scale

    def _convert(self, boxes, probs, points, scale: float) -> list[Detection]:
        # With numpy 2, facenet-pytorch 2.5.3 returns object arrays (and None for no face): make them float.
        if boxes is None or points is None or len(boxes) == 0 or boxes[0] is None:
            return []
        boxes = np.asarray(np.stack([np.asarray(b, dtype=np.float32) for b in boxes]), dtype=np.float32)
        points = np.asarray(np.stack([np.asarray(p, dtype=np.float32) for p in points]), dtype=np.float32)
        probs = np.asarray([float(p) for p in probs], dtype=np.float32)
        out = []
        for box, prob, pts in zip(boxes, probs, points):
            if prob < self.min_score:
                continue
            out.append(Detection(box=box / scale, score=float(prob), landmarks=pts / scale))
        out.sort(key=lambda d: -d.score)
        return out

