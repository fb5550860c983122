"""Measure where the five MTCNN landmarks sit in a data set's face crops.

Serving detects faces with MTCNN and warps each one so its landmarks land on ``PreprocessConfig.template``
(``models.preprocess.align_face``). For that to reproduce the training framing, the template must be where
the landmarks fall in the *training* crops, so we run the same detector on a seeded sample of training
images, convert the landmarks to [0, 1] crop coordinates and take the per-point median (robust to the odd
misdetection). With too few detections (e.g. synthetic test images) we fall back to
``models.preprocess.DEFAULT_TEMPLATE`` and warn: the model still trains, only the serving framing is generic.

Each image is first padded with a grey border (``pad``, a share of its side on every side). Data-set crops
are tight (UTKFace's 200 px crops and FER2013's faces fill the frame, the chin or forehead often cut off),
and MTCNN finds such a face with a box that spills over the edge and landmarks displaced by a tenth of the
face or more: measured without the border, the UTKFace template put the eyes at 21% of the crop's height
where they sit at about 38%, so served faces were framed ~1.4x tighter than the training faces.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from models.preprocess import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

MIN_DETECTIONS = 20
PAD = 0.5  # grey border on every side, as a share of the image's side
PAD_VALUE = 127


@dataclass(frozen=True)
class TemplateResult:
    template: tuple[tuple[float, float], ...]
    n_sampled: int
    n_detected: int
    measured: bool  # False: fell back to DEFAULT_TEMPLATE
    spread: tuple[tuple[float, float], ...] | None = None  # per-point median absolute deviation

    @property
    def detection_rate(self) -> float:
        return self.n_detected / self.n_sampled if self.n_sampled else 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "TemplateResult":
        pairs = lambda a: tuple((float(x), float(y)) for x, y in a) if a else None  # noqa: E731
        return cls(pairs(d["template"]), int(d["n_sampled"]), int(d["n_detected"]), bool(d["measured"]),
                   pairs(d.get("spread")))

    def to_dict(self) -> dict:
        return {"template": [list(p) for p in self.template], "n_sampled": self.n_sampled,
                "n_detected": self.n_detected, "detection_rate": round(self.detection_rate, 4),
                "measured": self.measured, "spread": [list(p) for p in self.spread] if self.spread else None}


def to_detector_rgb(image: np.ndarray, upscale: int = 1) -> np.ndarray:
    """A data-set image (grey (H, W) / (H, W, 1) or RGB) -> RGB uint8, optionally upscaled.

    FER's 48 px faces are too small for MTCNN's pyramid, hence the x3 upscale for that set.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if upscale != 1:
        image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def padded(image: np.ndarray, pad: float) -> tuple[np.ndarray, int, int]:
    """The image inside a grey border of ``pad`` times its height / width; returns it and the border's
    (top, left) widths."""
    h, w = image.shape[:2]
    py, px = int(round(pad * h)), int(round(pad * w))
    if not (py or px):
        return image, 0, 0
    return cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3), py, px


@dataclass(frozen=True)
class BorderedFace:
    """One data-set image set in a grey border, and the best face MTCNN found in it."""

    row: int
    image: np.ndarray  # the bordered picture the detector saw
    top: int  # border widths: the original image starts at (left, top)
    left: int
    height: int  # the original (upscaled) image's size
    width: int
    detection: object  # models.detector.Detection, in the bordered picture's pixels


def faces_in_border(load_image: Callable[[int], np.ndarray], rows: Sequence[int], detector, upscale: int = 1,
                    pad: float = PAD, batch_size: int = 32) -> Iterator[BorderedFace]:
    """Each row's image (upscaled, in a grey border of ``pad``) through MTCNN in batches; rows where no face
    is found are skipped. Used to measure the template and to frame faces as the app does
    (``training.evaluate --served``)."""
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [to_detector_rgb(load_image(int(i)), upscale) for i in chunk]
        framed = [padded(img, pad) for img in images]
        for i, img, (bordered, top, left), dets in zip(chunk, images, framed,
                                                       detector.detect_many([f[0] for f in framed])):
            if dets:
                yield BorderedFace(int(i), bordered, top, left, img.shape[0], img.shape[1], dets[0])


def measure_template(load_image: Callable[[int], np.ndarray], candidates: Sequence[int], n_samples: int = 600,
                     seed: int = 0, upscale: int = 1, detector=None, min_detections: int = MIN_DETECTIONS,
                     batch_size: int = 32, pad: float = PAD) -> TemplateResult:
    """Median landmark layout over a seeded sample of images.

    Args:
        load_image: index -> data-set image (uint8), as the model's training crops are framed.
        candidates: indices to sample from (the training split).
        n_samples: how many to try; the sample is ``np.random.default_rng(seed).choice``.
        upscale: integer factor applied before detection (3 for FER's 48 px images).
        pad: grey border added on every side before detection, as a share of the side (see above).
        detector: a ``models.detector.FaceDetector``; built on the CPU when None.
        min_detections: below this many detected faces the default template is returned, with a warning.
    """
    candidates = np.asarray(candidates)
    n = min(n_samples, len(candidates))
    sample = np.sort(np.random.default_rng(seed).choice(candidates, size=n, replace=False)) if n else candidates[:0]
    if detector is None:
        from models.detector import FaceDetector

        detector = FaceDetector(device="cpu")
    # best face only, back in the unpadded crop's [0, 1] coordinates
    points = [(f.detection.landmarks - np.array([f.left, f.top], dtype=np.float32))
              / np.array([f.width, f.height], dtype=np.float32)
              for f in faces_in_border(load_image, sample, detector, upscale, pad, batch_size)]
    if len(points) < min_detections:
        warnings.warn(f"template: only {len(points)} of {n} sampled training images had a detected face "
                      f"(need {min_detections}); using models.preprocess.DEFAULT_TEMPLATE", stacklevel=2)
        return TemplateResult(DEFAULT_TEMPLATE, n, len(points), measured=False)
    stack = np.stack(points)  # (M, 5, 2)
    median = np.median(stack, axis=0)
    mad = np.median(np.abs(stack - median), axis=0)
    as_tuple = lambda a: tuple((round(float(x), 4), round(float(y), 4)) for x, y in a)  # noqa: E731
    result = TemplateResult(as_tuple(median), n, len(points), measured=True, spread=as_tuple(mad))
    log.info("template from %d/%d detections: %s", result.n_detected, n, result.template)
    return result
