"""Face detection for a sequence of frames: a full search every few frames, following in between.

MTCNN's whole-picture search is most of a frame's cost on a CPU, nearly all of it in the P-net
pyramid. Between two searches the faces of the last frame are followed with the
output network alone (:meth:`InferenceService.follow`, one 48x48 pass per face), which moves each box onto
the face and gives fresh landmarks for alignment. Each box is first moved by its face's motion over
the last frame (constant velocity), so that O-net starts from where the face should be: a face that
moves a third of its width per frame is still followed. A face that enters the picture is found at
the next search, at most ``search_every - 1`` analysed frames late; one that leaves is dropped as soon
as O-net no longer scores it as a face.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from app.inference import PHOTO
from app.tracking import greedy_match
from models.detector import Detection

MATCH_MIN_IOU = 0.3  # a face of this frame continues one of the last frame (after its predicted move)


@dataclass(frozen=True)
class PendingFrames:
    """Frames whose searches are queued (:meth:`KeyframeDetector.start`)."""

    first: int  # the first frame's number in the sequence
    frames: list[np.ndarray]
    searches: dict[int, Future]  # frame's place in ``frames`` -> its search


class KeyframeDetector:
    """Detections for consecutive frames of one video (one instance per video: it remembers the
    last frame's faces and how they moved).

    Args:
        service: the process's ``InferenceService``.
        search_every: a full search on the first frame and every ``search_every``-th after it;
            1 searches every frame (no following).
        max_side: searches run on the frame downscaled to this longer side (``None``: the detector's
            default); following always reads the full frame.
        source: whose share of the service the detections count against (``app.inference.LIVE``, ``VIDEO``).
    """

    def __init__(self, service, search_every: int, max_side: int | None = None, source: str = PHOTO):
        if search_every < 1:
            raise ValueError("search_every must be at least 1")
        self.service = service
        self.search_every = int(search_every)
        self.max_side = max_side
        self.source = source
        self.frames_seen = 0  # frames whose detections are out (finish)
        self.frames_started = 0  # frames whose searches are queued (start)
        self.searches = 0
        self._last: list[Detection] = []
        self._velocity: list[np.ndarray] = []  # per face of ``_last``: its box's move over one frame

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections for ``frames``, which continue the frames of the previous call. The searched
        frames of the call go through the detector together (same-size frames share an MTCNN batch)."""
        return self.finish(self.start(frames))

    def start(self, frames: Sequence[np.ndarray]) -> PendingFrames:
        """Queues the searches of ``frames`` (which continue the frames of the previous ``start``) and
        returns at once: a video job searches its next chunk while it follows and draws this one.
        Each returned value goes to :meth:`finish`, in the order they were started."""
        first = self.frames_started
        searched_at = [k for k in range(len(frames)) if (first + k) % self.search_every == 0]
        futures = (self.service.submit_searches([frames[k] for k in searched_at], self.max_side, source=self.source)
                   if searched_at else [])
        self.frames_started += len(frames)
        self.searches += len(searched_at)
        return PendingFrames(first, list(frames), dict(zip(searched_at, futures)))

    def finish(self, pending: PendingFrames) -> list[list[Detection]]:
        """The detections of ``pending``'s frames: its searches' results, and its other frames' faces
        followed from the frame before (one follow after the other: each starts where the last left)."""
        if pending.first != self.frames_seen:
            raise ValueError(f"frames {pending.first}... finished out of order (expected {self.frames_seen})")
        out: list[list[Detection]] = []
        for k, frame in enumerate(pending.frames):
            predicted = [replace(d, box=d.box + v) for d, v in zip(self._last, self._velocity)]
            if k in pending.searches:
                found = pending.searches[k].result()
            else:
                found = self.service.follow(frame, predicted, source=self.source)
            self._velocity = self._motion(predicted, found)
            self._last = found
            out.append(found)
        self.frames_seen += len(pending.frames)
        return out

    def _motion(self, predicted: list[Detection], found: list[Detection]) -> list[np.ndarray]:
        """Each found face's move since the last frame (zero for a new face)."""
        matches = greedy_match([d.box for d in predicted], [d.box for d in found], MATCH_MIN_IOU)
        moves = []
        for c, face in enumerate(found):
            if c in matches:
                p = matches[c]
                before = self._last[p].box
                shift = ((face.box[:2] + face.box[2:]) - (before[:2] + before[2:])) / 2  # centre's move
                moves.append(np.tile(shift, 2).astype(np.float32))
            else:
                moves.append(np.zeros(4, dtype=np.float32))
        return moves
