"""Faces followed from frame to frame: stable track ids, and per-track smoothing of what the heads say.

One piece of code for the video and live modes alike; it knows nothing of sockets or files. Per frame::

    tracked = tracker.update(faces)          # faces: the service's list[Face] for this frame
    tracked[i].smoothed.to_dict()            # what a viewer shows ("track_id" included)
    tracked[i].raw                           # what the models said about this very frame

Matching is greedy on IoU, best pair first, with no motion model: at the frame rates we serve (5-30
fps) a face moves little between frames, and the simplest rule is the easiest to reason about.

What a track shows:
- emotion changes from moment to moment, so it is an exponential moving average (EMA) per track:
  ``s = alpha * new + (1 - alpha) * s``;
- age and gender do not change within a track, so every frame is evidence about one value
  (:class:`TraitEstimate`): age is a quality-weighted mean in log space (``app/inference/quality.py``),
  with an uncertainty from each frame's predicted spread, gender the quality-weighted mean of the
  female logit. The estimate gets *more* certain as frames arrive, and ``age.std`` of a smoothed face
  is that uncertainty, not one frame's spread.
``alpha = 1`` turns all of it off: every frame shows its own values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from app.inference.results import Age, Emotion, Face, Gender, age_group

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame, as the models saw it (``raw``) and averaged over its track (``smoothed``).

    Both carry ``track_id``; box, score and landmarks are this frame's in both (smoothing them would
    make the box lag behind a moving face).
    """

    track_id: int
    raw: Face
    smoothed: Face


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Intersection over union of every box of ``a`` with every box of ``b``: shape (len(a), len(b))."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda boxes: (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(previous: Sequence[Box], current: Sequence[Box], min_iou: float) -> dict[int, int]:
    """Pairs boxes of two frames, highest IoU first, each box at most once; pairs below ``min_iou``
    are not made. Returns ``{index in current: index in previous}``."""
    if not previous or not current:
        return {}
    iou = iou_matrix(previous, current)
    matches: dict[int, int] = {}
    used: set[int] = set()
    # Stable sort: equal IoUs resolve by index, so the result never depends on the platform.
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        p, c = divmod(int(flat), iou.shape[1])
        if iou[p, c] < min_iou:
            break
        if p not in used and c not in matches:
            matches[c] = p
            used.add(p)
    return matches


def ema(previous: float, new: float, alpha: float) -> float:
    return alpha * new + (1.0 - alpha) * previous


def smooth_emotion(previous: Emotion, new: Emotion, alpha: float) -> Emotion:
    """``new``'s probabilities averaged with ``previous``'s; the label follows the averaged values."""
    probabilities = {name: ema(previous.probabilities[name], p, alpha) for name, p in new.probabilities.items()}
    return Emotion(label=max(probabilities, key=probabilities.get), probabilities=probabilities)


# Consecutive frames of one face are far from independent looks (same light, same pose, same model
# error), so after the first, each frame adds this share of its precision: ten frames count as one
# more independent look. Without it the uncertainty would shrink to nothing within a second of video.
FRAME_INDEPENDENCE = 0.1
# A frame never claims its age to better than 15% (log space). The age head's predicted spread is
# overconfident where it is smallest: on the UTKFace test split, the shipped model's predictions with
# log-spread 0.065-0.155 (mostly older faces) were off by 0.157 RMS in log space, those with 0.155-0.299
# by 0.17-0.24 (the spread-calibration line of `python -m training.evaluate age_gender ...`; the model
# card quotes it).
MIN_LOG_SPREAD = 0.15
_P_CLAMP = 1e-4


@dataclass
class TraitEstimate:
    """One person's age and gender from all the frames of their track, with an uncertainty that shrinks
    as frames arrive.

    Age: each frame's predicted mean ``y`` becomes a log-space observation ``m = log(1 + y)``, weighted by
    the frame's quality. The estimate is the weighted mean; its uncertainty is the frames' mean predicted
    log-spread ``s / (1 + y)`` (floored at :data:`MIN_LOG_SPREAD`) or, if larger, how much the frames
    disagree, shrunk by the number of independent looks (:data:`FRAME_INDEPENDENCE`). Log space because
    age errors grow with age: 5 years is a lot at 8 and little at 70.

    The frames' predicted spreads set the uncertainty but not the weights: within one face, the age head
    is surest of its older readings (on `one_face_talking.mp4` a frame's log-spread and its log-age
    correlate at -0.79), so weighting by precision pulls the track towards whatever the frames that
    claim most certainty say (README, "Per-person traits converge").
    Gender: quality-weighted mean of the female logit.
    """

    frames: int = 0
    quality: float = 0.0  # sum of q, each frame's quality weight
    log_age: float = 0.0  # sum of q * m
    log_age_sq: float = 0.0  # sum of q * m^2: how much the frames disagree
    log_var: float = 0.0  # sum of q * s^2: what the frames claim
    female_logit: float = 0.0  # sum of q * logit(p_female)

    def add(self, face: Face) -> None:
        q = face.quality.weight if face.quality is not None else 1.0
        years = max(0.0, face.age.years)
        spread = max(face.age.std / (1.0 + years), MIN_LOG_SPREAD)
        m = math.log1p(years)
        self.frames += 1
        self.quality += q
        self.log_age += q * m
        self.log_age_sq += q * m * m
        self.log_var += q * spread * spread
        p = min(1.0 - _P_CLAMP, max(_P_CLAMP, face.gender.p_female))
        self.female_logit += q * math.log(p / (1.0 - p))

    def age(self) -> Age:
        mean = self.log_age / self.quality
        independent_looks = 1.0 + FRAME_INDEPENDENCE * (self.frames - 1)
        claimed = self.log_var / self.quality
        scatter = max(0.0, self.log_age_sq / self.quality - mean * mean)
        log_std = math.sqrt(max(claimed, scatter) / independent_looks)
        years = math.expm1(mean)
        return Age(years=years, std=(years + 1.0) * log_std, group=age_group(years))

    def gender(self) -> Gender:
        return Gender.from_p_female(1.0 / (1.0 + math.exp(-self.female_logit / self.quality)))

    def smoothed(self, new: Face, emotion: Emotion) -> Face:
        return replace(new, emotion=emotion, age=self.age(), gender=self.gender())


@dataclass
class _Track:
    track_id: int
    box: Box  # where the face was last seen
    smoothed: Face
    traits: TraitEstimate
    missed: int = 0  # frames in a row without a match


class FaceTracker:
    """Gives each face a track id that persists while the face stays in view, and smooths its predictions.

    Args:
        min_iou: a face continues a track only if its box overlaps the track's last box at least this much.
        max_age: a track survives this many frames in a row without a face, then ends; its id is
            never given out again.
        alpha: default weight of the newest frame in the emotion's moving average; 1 turns every
            kind of smoothing off (emotion, age and gender all show the frame's own values).
    """

    def __init__(self, min_iou: float = 0.3, max_age: int = 5, alpha: float = 0.3):
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.min_iou = float(min_iou)
        self.max_age = int(max_age)
        self.alpha = _check_alpha(alpha)
        self._tracks: list[_Track] = []
        self._next_id = 1

    @property
    def track_ids(self) -> list[int]:
        """Ids of the tracks alive now (seen within the last ``max_age`` frames)."""
        return [t.track_id for t in self._tracks]

    def update(self, faces: Sequence[Face], alpha: float | None = None) -> list[TrackedFace]:
        """Takes the faces of the next frame; returns them in the same order, tracked and smoothed.

        Args:
            faces: every face the service found in this frame.
            alpha: weight of this frame in the emotion average (default: the tracker's ``alpha``); 1 shows
                the frame's own values. Age and gender keep accumulating either way.
        """
        alpha = self.alpha if alpha is None else _check_alpha(alpha)
        matches = greedy_match([t.box for t in self._tracks], [f.box for f in faces], self.min_iou)
        continued = set(matches.values())
        for index, track in enumerate(self._tracks):
            if index not in continued:
                track.missed += 1

        out = []
        for index, face in enumerate(faces):
            if index in matches:
                track = self._tracks[matches[index]]
                track.box, track.missed = face.box, 0
                emotion = smooth_emotion(track.smoothed.emotion, face.emotion, alpha)
            else:
                track = _Track(track_id=self._next_id, box=face.box, smoothed=face, traits=TraitEstimate())
                self._next_id += 1
                self._tracks.append(track)
                emotion = face.emotion
            track.traits.add(face)
            track.smoothed = face if alpha >= 1.0 else track.traits.smoothed(face, emotion)
            out.append(TrackedFace(track_id=track.track_id, raw=replace(face, track_id=track.track_id),
                                   smoothed=replace(track.smoothed, track_id=track.track_id)))
        self._tracks = [t for t in self._tracks if t.missed <= self.max_age]
        return out


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha
