"""Socket.IO namespace ``/live``: one session per client, one analysed frame per ``frame`` event.

Events (see ``protocol.py`` for the payloads):
    connect     refused with a ``busy`` event when ``MAX_LIVE_CLIENTS`` clients are connected
    frame       answered by its acknowledgement: the tracked, smoothed faces, or an error
    disconnect  the client's tracker and averages are dropped
    error       sent to a client when one of its events made a handler fail unexpectedly
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, emit

from app.errors import error_body
from app.inference import LIVE, get_service
from app.inference.batching import QueueFullError
from app.inference.keyframes import KeyframeDetector
from app.inference.results import Face
from app.live.protocol import FrameError, decode_frame, error_ack, parse_frame, result_ack, seq_of
from app.live.sessions import LiveSession, LiveSessions
from app.security import UNAUTHORIZED, socket_allowed
from app.tracking import FaceTracker

log = logging.getLogger(__name__)

NAMESPACE = "/live"


@dataclass(frozen=True)
class LiveSettings:
    max_clients: int
    max_frame_bytes: int
    max_frame_side: int
    default_alpha: float
    track_min_iou: float
    track_max_age: int
    detector_max_side: int
    search_every: int

    @classmethod
    def from_config(cls, config) -> "LiveSettings":
        settings = cls(
            max_clients=int(config["MAX_LIVE_CLIENTS"]),
            max_frame_bytes=int(config["MAX_LIVE_FRAME_BYTES"]),
            max_frame_side=int(config["MAX_LIVE_FRAME_SIDE"]),
            default_alpha=float(config["LIVE_DEFAULT_ALPHA"]),
            track_min_iou=float(config["LIVE_TRACK_MIN_IOU"]),
            track_max_age=int(config["LIVE_TRACK_MAX_AGE"]),
            detector_max_side=int(config["LIVE_DETECTOR_MAX_SIDE"]),
            search_every=int(config["LIVE_SEARCH_EVERY"]),
        )
        if settings.max_clients < 1 or settings.detector_max_side < 64 or settings.search_every < 1:
            raise ValueError("MAX_LIVE_CLIENTS and LIVE_SEARCH_EVERY must be >= 1 and "
                             "FACEAPP_LIVE_DETECTOR_MAX_SIDE >= 64")
        settings.new_tracker()  # checks IoU, max age and alpha: fail at start-up, not at a client's connect
        return settings

    def new_tracker(self) -> FaceTracker:
        return FaceTracker(min_iou=self.track_min_iou, max_age=self.track_max_age, alpha=self.default_alpha)

    def new_detector(self) -> KeyframeDetector:
        return KeyframeDetector(get_service(), self.search_every, self.detector_max_side, source=LIVE)


class LiveNamespace(Namespace):
    """Handlers of ``/live``. Each event runs on its own thread; all share the one inference service,
    whose micro-batcher runs faces of several clients in one forward pass."""

    def __init__(self, namespace: str, settings: LiveSettings):
        super().__init__(namespace)
        self.settings = settings
        self.sessions = LiveSessions(settings.max_clients, settings.new_tracker, settings.new_detector)

    def on_connect(self, auth=None):
        if not socket_allowed(auth):
            raise ConnectionRefusedError(UNAUTHORIZED, {"code": "unauthorized"})
        if not self.sessions.open(request.sid):
            n = self.settings.max_clients
            clients = "client" if n == 1 else "clients"
            message = f"the server is busy: it already serves its maximum of {n} live {clients}"
            # Python clients receive the event; browsers see the refusal's data in "connect_error".
            emit("busy", {"message": message})
            raise ConnectionRefusedError(message, {"code": "busy"})
        log.info("live client %s connected (%d connected)", request.sid, len(self.sessions))

    def on_disconnect(self, reason=None):
        self.sessions.close(request.sid)
        log.info("live client %s disconnected (%s)", request.sid, reason)

    def on_frame(self, *args):
        # A well-behaved client sends exactly one object; anything else is answered, not crashed on.
        payload = args[0] if len(args) == 1 else args
        t0 = time.perf_counter()
        try:
            frame = parse_frame(payload, self.settings.max_frame_bytes, self.settings.default_alpha)
            with self.sessions.frame_slot(request.sid) as session:
                faces, timings = self._analyze(frame.jpeg, session)
                t_track = time.perf_counter()
                tracked = session.tracker.update(faces, frame.alpha)
                timings["track"] = (time.perf_counter() - t_track) * 1000
        except FrameError as exc:
            return error_ack(seq_of(payload), exc.code, exc.message)
        except QueueFullError:
            return error_ack(seq_of(payload), "busy", "the server is busy; the frame was dropped")
        timings["total"] = (time.perf_counter() - t0) * 1000
        return result_ack(frame.seq, [t.smoothed for t in tracked], timings)

    def _analyze(self, jpeg: bytes, session: LiveSession) -> tuple[list[Face], dict[str, float]]:
        """Decode, detect (a search on a downscaled copy every few frames, the faces followed in between),
        run the heads on crops of the full frame."""
        service = get_service()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        image = decode_frame(jpeg, self.settings.max_frame_side)
        t1 = time.perf_counter()
        detections = session.detect(image)
        timings["decode"] = (t1 - t0) * 1000
        timings["detect"] = (time.perf_counter() - t1) * 1000
        faces = service.analyze_detections(image, detections, timings, source=LIVE)  # adds "align" and "models"
        return faces, timings


def handle_error(exc: Exception):
    """An unexpected failure in a ``/live`` handler: logged, then told to the client as an ``error``
    event (and as the acknowledgement, if the event asked for one). The connection stays up."""
    event = request.event["message"]
    log.error("live %r handler failed for client %s", event, request.sid, exc_info=exc)
    if event == "connect":
        return False  # refuse: better than a client without a session
    message = f"the server failed on this {event!r} event; it logged the details"
    emit("error", error_body("internal_error", message))
    args = request.event["args"]
    return error_ack(seq_of(args[0] if args else None), "internal_error", message)
