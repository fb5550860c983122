"""Faces followed from frame to frame: stable track ids, and per-track smoothing of what the heads say.

One piece of code for the video and live modes alike; it knows nothing of sockets or files. Per frame::

    tracked = tracker.update(faces)          # faces: the service's list[Face] for this frame
    tracked[i].smoothed.to_dict()            # what a viewer shows ("track_id" included)
    tracked[i].raw                           # what the models said about this very frame

Matching is greedy on IoU, best pair first, with no motion model: at the frame rates we serve (5-30
fps) a face moves little between frames, and the simplest rule is the easiest to reason about.
Smoothing is an exponential moving average (EMA) per track: ``s = alpha * new + (1 - alpha) * s``.
"""
from __future__ import annotations

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


def smooth_face(previous: Face, new: Face, alpha: float) -> Face:
    """``new`` with its emotion probabilities, age (years and spread) and gender probability averaged
    with ``previous``; labels follow the averaged values."""
    probabilities = {name: ema(previous.emotion.probabilities[name], p, alpha)
                     for name, p in new.emotion.probabilities.items()}
    years = ema(previous.age.years, new.age.years, alpha)
    return replace(
        new,
        emotion=Emotion(label=max(probabilities, key=probabilities.get), probabilities=probabilities),
        age=Age(years=years, std=ema(previous.age.std, new.age.std, alpha), group=age_group(years)),
        gender=Gender.from_p_female(ema(previous.gender.p_female, new.gender.p_female, alpha)),
    )


@dataclass
class _Track:
    track_id: int
    box: Box  # where the face was last seen
    smoothed: Face
    missed: int = 0  # frames in a row without a match


class FaceTracker:
    """Gives each face a track id that persists while the face stays in view, and smooths its predictions.

    Args:
        min_iou: a face continues a track only if its box overlaps the track's last box at least this much.
        max_age: a track survives this many frames in a row without a face, then ends; its id is
            never given out again.
        alpha: default weight of the newest observation in the moving average (1: no smoothing).
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
            alpha: weight of this frame in the averages (default: the tracker's ``alpha``).
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
                track.smoothed = smooth_face(track.smoothed, face, alpha)
            else:
                track = _Track(track_id=self._next_id, box=face.box, smoothed=face)
                self._next_id += 1
                self._tracks.append(track)
            out.append(TrackedFace(track_id=track.track_id, raw=replace(face, track_id=track.track_id),
                                   smoothed=replace(track.smoothed, track_id=track.track_id)))
        self._tracks = [t for t in self._tracks if t.missed <= self.max_age]
        return out


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha
