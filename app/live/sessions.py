"""Per-client state of the live mode, keyed by Socket.IO session id.

Each client gets its own tracker (ids and moving averages never leak between clients), its own
face detector state (a full search every few frames, the faces followed in between; see
``app/inference/keyframes.py``) and at most one frame in flight: a frame that arrives while the
previous one is still being analysed is refused at once, never queued, so a client that floods the
server cannot build a backlog.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from app.inference.keyframes import KeyframeDetector
from app.live.protocol import FrameError
from app.tracking import FaceTracker
from models.detector import Detection


@dataclass
class LiveSession:
    tracker: FaceTracker
    new_detector: Callable[[], KeyframeDetector]
    detector: KeyframeDetector | None = None
    frame_shape: tuple[int, ...] | None = None
    in_flight: bool = False

    def detect(self, image: np.ndarray) -> list[Detection]:
        """The faces of the client's next frame; a frame of another size (the camera changed) starts
        over with a full search."""
        if self.detector is None or image.shape != self.frame_shape:
            self.detector, self.frame_shape = self.new_detector(), image.shape
        return self.detector.detect([image])[0]


class LiveSessions:
    """Thread-safe registry of the connected clients, with room for at most ``capacity`` of them.

    Event handlers run on their own threads; the lock guards the dict and the in-flight flags. A
    session's tracker and detector need no lock of their own: only the holder of its in-flight slot
    touches them.
    """

    def __init__(self, capacity: int, new_tracker: Callable[[], FaceTracker],
                 new_detector: Callable[[], KeyframeDetector]):
        self.capacity = capacity
        self._new_tracker = new_tracker
        self._new_detector = new_detector
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, sid: str) -> bool:
        with self._lock:
            return sid in self._sessions

    def open(self, sid: str) -> bool:
        """Starts a session; False (and nothing opened) when ``capacity`` clients are connected."""
        with self._lock:
            if len(self._sessions) >= self.capacity:
                return False
            self._sessions[sid] = LiveSession(tracker=self._new_tracker(), new_detector=self._new_detector)
            return True

    def close(self, sid: str) -> None:
        """Forgets the client. A frame still in flight finishes on the orphaned session, then it is freed."""
        with self._lock:
            self._sessions.pop(sid, None)

    @contextmanager
    def frame_slot(self, sid: str) -> Iterator[LiveSession]:
        """Holds the client's one in-flight slot while its frame is analysed; yields its session.

        Raises:
            FrameError: ``busy_dropped`` when the previous frame is still in flight,
                ``no_session`` when the client is not connected (any more).
        """
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise FrameError("no_session", "this client is not connected to /live; reconnect")
            if session.in_flight:
                raise FrameError("busy_dropped", "dropped: the previous frame is still being analysed; "
                                                 "send the next frame after its answer")
            session.in_flight = True
        try:
            yield session
        finally:
            with self._lock:
                session.in_flight = False
