"""MTCNN face detector (facenet-pytorch), wrapped for numpy 2, devices and large pictures.

Training uses it to measure where landmarks fall in data-set crops (``training/template.py``), and
the inference service uses it to find faces, so both sides see the same detector.

Two ways in: :meth:`FaceDetector.detect_many` searches whole pictures (MTCNN's three stages; the first,
a sliding P-net over an image pyramid, is nearly all of the cost), and :meth:`FaceDetector.refine_many`
follows faces already known from the previous frame of a video by running only the last stage (O-net)
on the square around each old box: O-net regresses the box onto where the face is now and gives fresh
landmarks and a score, at a few milliseconds per face instead of a pyramid per frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.mtcnn_pipeline import detect_faces


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
        follow_min_score: a face being followed (:meth:`refine_many`) is kept while O-net scores it at
            least this. Lower than ``min_score`` on purpose (hysteresis): a face a search confirmed is
            not dropped on one doubtful frame (bench/video_throughput.py reports the share of a
            per-frame search's faces that following keeps).
    """

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), max_side: int = 1280,
                 min_score: float = 0.9, follow_min_score: float = 0.7):
        from facenet_pytorch import MTCNN  # heavy import, kept out of module import time

        if max_side < 64:
            raise ValueError("max_side must be at least 64 pixels")
        self.device = torch.device(device)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.follow_min_score = float(follow_min_score)
        self.thresholds = tuple(thresholds)
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds),
                            device=self.device, post_process=False)

    @property
    def networks(self) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
        """P-, R- and O-net, as run now."""
        return self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet

    def use_networks(self, pnet: torch.nn.Module, rnet: torch.nn.Module, onet: torch.nn.Module) -> None:
        """Run MTCNN's three stages with other implementations of its networks (same inputs and
        outputs, e.g. ``models.onnx_backend.OrtModule``); the pyramid, NMS and box logic stay as they are."""
        self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet = pnet, rnet, onet

    def detect(self, image: np.ndarray, max_side: int | None = None, min_face: int | None = None) -> list[Detection]:
        """RGB uint8 (H, W, 3) -> detections sorted by score, best first.

        ``max_side`` and ``min_face`` override the detector's own for this call (the live mode detects
        on smaller pictures than the photo API; photos look for faces down to a larger size).
        """
        return self.detect_many([image], max_side, min_face)[0]

    def detect_many(self, images: list[np.ndarray], max_side: int | None = None,
                    min_face: int | None = None) -> list[list[Detection]]:
        """Several pictures at once. Same-sized pictures go through MTCNN as one batch (video frames)."""
        if not images:
            return []
        max_side = self.max_side if max_side is None else max_side
        min_face = self.min_face_size if min_face is None else int(min_face)
        pairs = [self._downscale(img, max_side) for img in images]
        # MTCNN's pyramid is empty when the short side is below the smallest face size: such a
        # picture has no face we could find.
        searchable = [i for i, (im, _) in enumerate(pairs) if min(im.shape[:2]) >= min_face]
        results: list[list[Detection]] = [[] for _ in images]
        if searchable:
            found = self._detect_scaled([pairs[i][0] for i in searchable], [pairs[i][1] for i in searchable],
                                        min_face)
            for i, detections in zip(searchable, found):
                results[i] = detections
        return results

    def refine_many(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[list[Detection]]:
        """Each picture's faces near the given boxes (typically the previous frame's detections), by
        MTCNN's output network alone: one O-net batch for all the boxes of all the pictures.

        A box whose face left (O-net score below ``follow_min_score``) yields nothing; boxes that converge
        onto the same face are merged. Faces not near any given box are not searched for: callers run
        a full :meth:`detect_many` every few frames to find newcomers.

        Args:
            images: RGB uint8 (H, W, 3) pictures.
            boxes: per picture, an (N, 4) array of x1, y1, x2, y2 in that picture's pixels.
        """
        crops, owners, squares = [], [], []
        for i, (image, image_boxes) in enumerate(zip(images, boxes)):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError("detector expects an RGB uint8 array of shape (H, W, 3)")
            h, w = image.shape[:2]
            for square in _squares(np.asarray(image_boxes, dtype=np.float32).reshape(-1, 4)):
                # The same 1-based, clipped window MTCNN's own stages crop (detect_face.pad).
                x1, y1 = max(1, int(square[0])), max(1, int(square[1]))
                x2, y2 = min(w, int(square[2])), min(h, int(square[3]))
                if x2 <= x1 or y2 <= y1:
                    continue  # the box left the picture
                crops.append(cv2.resize(image[y1 - 1:y2, x1 - 1:x2], (48, 48), interpolation=cv2.INTER_AREA))
                owners.append(i)
                squares.append(square)
        results: list[list[Detection]] = [[] for _ in images]
        if not crops:
            return results
        onet = self._mtcnn.onet
        dtype = next(onet.parameters()).dtype
        x = torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2).to(dtype)
        with torch.inference_mode():
            reg, points, probs = onet((x - 127.5) * 0.0078125)
        reg, points = reg.float().cpu().numpy(), points.float().cpu().numpy()
        scores = probs[:, 1].float().cpu().numpy()
        squares_arr = np.stack(squares)
        side = squares_arr[:, 2] - squares_arr[:, 0] + 1  # squares: width == height
        keep = scores >= self.follow_min_score
        for k in np.flatnonzero(keep):
            sq, s = squares_arr[k], side[k]
            landmarks = np.stack([s * points[k, :5] + sq[0] - 1, s * points[k, 5:] + sq[1] - 1], axis=1)
            box = sq + reg[k] * s
            results[owners[k]].append(Detection(box=box.astype(np.float32), score=float(scores[k]),
                                                landmarks=landmarks.astype(np.float32)))
        return [_merge_overlaps(found) for found in results]

    def _detect_scaled(self, scaled: list[np.ndarray], scales: list[float], min_face: int) -> list[list[Detection]]:
        same_size = len({im.shape for im in scaled}) == 1
        groups = [scaled] if same_size else [[im] for im in scaled]
        found = [r for group in groups for r in detect_faces(
            group, min_face, self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet, self.thresholds,
            self.device)]
        return [self._convert(boxes, points, scale) for (boxes, points), scale in zip(found, scales)]

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

    def _convert(self, boxes: np.ndarray, points: np.ndarray, scale: float) -> list[Detection]:
        out = [Detection(box=box[:4] / scale, score=float(box[4]), landmarks=pts / scale)
               for box, pts in zip(boxes, points) if box[4] >= self.min_score]
        out.sort(key=lambda d: -d.score)
        return out



def _squares(boxes: np.ndarray) -> np.ndarray:
    """Each box made square about its centre, on its longer side (what MTCNN feeds its O-net)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) / 2
    y1 = boxes[:, 1] + (h - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _merge_overlaps(detections: list[Detection], threshold: float = 0.7) -> list[Detection]:
    """Best score first; a detection covering more than ``threshold`` of a kept one's (or its own)
    area is the same face, and dropped (MTCNN's own final "Min" suppression)."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(_overlap_of_smaller(d.box, k.box) <= threshold for k in kept):
            kept.append(d)
    return kept


def _overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller) if smaller > 0 else 0.0
