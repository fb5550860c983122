"""The /live Socket.IO namespace: frames in, tracked faces out, per-client state, and every bad input.

Most tests use Flask-SocketIO's test client (events run synchronously, one at a time). What needs
real concurrency (a flood of frames, clients streaming at once, the client limit) runs python-socketio
clients over websockets against the app served in-process by werkzeug's threaded server.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import socketio as socketio_client

from app import create_app, socketio
from app.imaging import decode_image
from app.inference.keyframes import KeyframeDetector
from app.live.namespace import NAMESPACE, LiveNamespace
from app.live.protocol import FrameError
from app.live.sessions import LiveSessions
from app.tracking import FaceTracker
from models.emotion import EMOTION_CLASSES
from helpers import TestConfig
from helpers import ASTRONAUT_FACE, box_iou, encode
from serving import serve

FACE_KEYS = {"box", "score", "landmarks", "emotion", "age", "gender", "track_id", "quality"}


class TwoClientsConfig(TestConfig):
    MAX_LIVE_CLIENTS = 2


@pytest.fixture(scope="module")
def astronaut_jpeg(astronaut) -> bytes:
    return encode(astronaut, quality=90)


@pytest.fixture(scope="module")
def hopper_jpeg(grace_hopper) -> bytes:
    return encode(grace_hopper, quality=90)


def live_namespace(app) -> LiveNamespace:
    return app.extensions["socketio"].server.namespace_handlers[NAMESPACE]


# ---------- Sessions, without sockets ----------

def test_sessions_have_a_capacity_and_one_frame_in_flight_each():
    sessions = LiveSessions(capacity=2, new_tracker=FaceTracker,
                            new_detector=lambda: KeyframeDetector(service=None, search_every=3))
    assert sessions.open("a") and sessions.open("b") and not sessions.open("c")
    with sessions.frame_slot("a") as session_a:
        with pytest.raises(FrameError) as dropped:
            with sessions.frame_slot("a"):
                pass
        assert dropped.value.code == "busy_dropped"
        with sessions.frame_slot("b") as session_b:  # another client is not held up
            assert session_b.tracker is not session_a.tracker
    with pytest.raises(RuntimeError), sessions.frame_slot("a"):
        raise RuntimeError("the analysis failed")
    with sessions.frame_slot("a"):  # a failed frame gave its slot back
        pass
    sessions.close("a")
    assert "a" not in sessions and len(sessions) == 1 and sessions.open("c")
    with pytest.raises(FrameError) as unknown, sessions.frame_slot("a"):
        pass
    assert unknown.value.code == "no_session"


def test_the_page_loads_its_script_and_the_client_library(client):
    page = client.get("/live")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-namespace="/live"' in html and 'data-default-alpha="0.3"' in html
    assert "/vendor/socket.io.min.js" in html and "js/live.js" in html
    assert client.get("/vendor/socket.io.min.js").status_code == 200
    assert client.get("/static/js/live.js").status_code == 200


# ---------- Through Flask-SocketIO's test client ----------

@pytest.fixture
def live(app):
    client = socketio.test_client(app, namespace=NAMESPACE)
    assert client.is_connected(NAMESPACE)
    yield client
    if client.is_connected(NAMESPACE):
        client.disconnect(namespace=NAMESPACE)


def send(client, payload) -> dict:
    return client.emit("frame", payload, callback=True, namespace=NAMESPACE)


def test_namespace_is_registered_once_per_app(service):
    for _ in range(3):
        app = create_app(TestConfig, service=service)
    # Each app gets a fresh server with one /live handler; nothing piles up on the unbound SocketIO.
    assert socketio.namespace_handlers == []
    assert isinstance(live_namespace(app), LiveNamespace)
    # /videos is the video mode's progress namespace (app/video/events.py).
    assert app.extensions["socketio"].server.namespace_handlers.keys() == {NAMESPACE, "/videos"}


def test_frames_come_back_with_their_seq_and_a_track_that_persists(live, astronaut_jpeg):
    acks = [send(live, {"seq": seq, "image": astronaut_jpeg}) for seq in (7, 8, 9)]
    assert [a["seq"] for a in acks] == [7, 8, 9]
    track_ids = set()
    for ack in acks:
        assert set(ack) == {"seq", "faces", "timings_ms"}
        (face,) = ack["faces"]
        assert set(face) == FACE_KEYS
        assert box_iou(face["box"], ASTRONAUT_FACE) > 0.6
        assert len(face["landmarks"]) == 5
        assert set(ack["timings_ms"]) == {"decode", "detect", "align", "models", "track", "total"}
        track_ids.add(face["track_id"])
    assert track_ids == {1}


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_detecting_on_a_downscaled_frame_finds_the_same_face(service, request, photo):
    """The live mode detects on frames downscaled to LIVE_DETECTOR_MAX_SIDE: same box, same landmarks
    (within 3% of the face's size) as at full resolution, so the heads see the same crops."""
    image = request.getfixturevalue(photo)
    (full,) = service.detect(image)
    (small,) = service.detect(image, max_side=TestConfig.LIVE_DETECTOR_MAX_SIDE)
    assert max(image.shape[:2]) > TestConfig.LIVE_DETECTOR_MAX_SIDE  # it really was downscaled
    assert box_iou(full.box, small.box) > 0.85
    face_size = full.box[2] - full.box[0]
    assert np.linalg.norm(full.landmarks - small.landmarks, axis=1).max() < 0.03 * face_size


def test_concurrent_detections_each_get_their_own_faces(service, astronaut, grace_hopper):
    """Live clients' frames are detected together in batches, mixed with photos at full resolution."""
    calls = [(image, max_side) for image in (astronaut, grace_hopper) for max_side in (None, 320)] * 3
    alone = [service.detect(image, max_side) for image, max_side in calls]
    with ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(lambda call: service.detect(*call), calls))
    boxes = lambda detections: np.array([d.box for d in detections])  # noqa: E731
    for a, b in zip(alone, together):
        assert len(a) == len(b) == 1 and np.allclose(boxes(a), boxes(b), atol=0.5)


def test_faces_are_searched_every_few_frames_and_followed_in_between(app, live, astronaut, grace_hopper):
    """LIVE_SEARCH_EVERY = 3: frames 0, 3 and 6 are searched, the others followed, and a followed face is
    the same face (box, track) as a searched one; a frame of another size starts over with a search."""
    assert TestConfig.LIVE_SEARCH_EVERY == 3
    jpeg = encode(astronaut, quality=90)
    acks = [send(live, {"seq": seq, "image": jpeg}) for seq in range(7)]
    (session,) = live_namespace(app).sessions._sessions.values()
    assert (session.detector.frames_seen, session.detector.searches) == (7, 3)
    for ack in acks:
        (face,) = ack["faces"]
        assert face["track_id"] == 1 and box_iou(face["box"], ASTRONAUT_FACE) > 0.6
    # Followed (O-net on the full frame) vs searched (all of MTCNN on the 320-pixel copy): the same face,
    # within the few pixels by which the resampling of a 320-pixel search moves a box.
    assert box_iou(acks[1]["faces"][0]["box"], acks[0]["faces"][0]["box"]) > 0.85
    ack = send(live, {"seq": 7, "image": encode(grace_hopper, quality=90)})  # another camera, another size
    assert len(ack["faces"]) == 1 and (session.detector.frames_seen, session.detector.searches) == (1, 1)


def test_a_frame_without_faces_answers_an_empty_list(live):
    ack = send(live, {"seq": 0, "image": encode(np.full((240, 320, 3), 90, np.uint8))})
    assert ack["seq"] == 0 and ack["faces"] == []


def test_the_clients_alpha_drives_the_moving_average(live, service, astronaut):
    """Two different looks at one face (same box, other colours): with alpha 0.5 the second answer's
    emotion is the mean of the two raw predictions, and its age and gender the track's combined estimate
    (app/tracking.py: TraitEstimate), all computed here through the same service."""
    from app.tracking import TraitEstimate

    recoloured = np.ascontiguousarray(astronaut[..., ::-1])  # RGB -> BGR: same face, new pixels
    frames = [astronaut, recoloured]
    raw, detections, traits = [], [], TraitEstimate()
    for image in frames:
        pixels = decode_image(encode(image), max_pixels=10**7).pixels  # what the server will see
        # The first frame is searched, the second followed (LIVE_SEARCH_EVERY > 1; no motion yet).
        detections = (service.detect(pixels, max_side=TestConfig.LIVE_DETECTOR_MAX_SIDE) if not detections
                      else service.follow(pixels, detections))
        raw.append(service.analyze_detections(pixels, detections)[0])
        traits.add(raw[-1])
    acks = [send(live, {"seq": i, "image": encode(image), "alpha": 0.5}) for i, image in enumerate(frames)]
    first, second = acks[0]["faces"][0], acks[1]["faces"][0]
    assert first["age"]["years"] == pytest.approx(raw[0].age.years, abs=0.06)
    for name in EMOTION_CLASSES:
        expected = (raw[0].emotion.probabilities[name] + raw[1].emotion.probabilities[name]) / 2
        assert second["emotion"]["probabilities"][name] == pytest.approx(expected, abs=2e-4)
    assert second["age"]["years"] == pytest.approx(traits.age().years, abs=0.06)
    assert second["gender"]["probability"] == pytest.approx(traits.gender().probability, abs=2e-4)
    assert second["track_id"] == first["track_id"]


def test_alpha_is_clamped_not_refused(live, astronaut_jpeg):
    for seq, alpha in enumerate((0, 0.0001, 1, 7, 0.3)):
        ack = send(live, {"seq": seq, "image": astronaut_jpeg, "alpha": alpha})
        assert "faces" in ack, ack


def test_a_disconnect_frees_the_clients_state(app, astronaut_jpeg):
    namespace = live_namespace(app)
    client = socketio.test_client(app, namespace=NAMESPACE)
    send(client, {"seq": 0, "image": astronaut_jpeg})
    assert len(namespace.sessions) == 1
    client.disconnect(namespace=NAMESPACE)
    assert len(namespace.sessions) == 0
    # A new connection starts from scratch.
    client = socketio.test_client(app, namespace=NAMESPACE)
    assert send(client, {"seq": 0, "image": astronaut_jpeg})["faces"][0]["track_id"] == 1
    client.disconnect(namespace=NAMESPACE)


def jpeg_of_size(width: int, height: int) -> bytes:
    return encode(np.full((height, width, 3), 128, np.uint8))


BAD_FRAMES = {
    "not an object": ("a picture", None, "invalid_payload"),
    "a list": ([1, 2], None, "invalid_payload"),
    "missing seq": ({"image": "JPEG"}, None, "invalid_seq"),
    "negative seq": ({"seq": -1, "image": "JPEG"}, None, "invalid_seq"),
    "seq as text": ({"seq": "3", "image": "JPEG"}, None, "invalid_seq"),
    "seq as bool": ({"seq": True, "image": "JPEG"}, None, "invalid_seq"),
    "fractional seq": ({"seq": 1.5, "image": "JPEG"}, None, "invalid_seq"),
    "missing image": ({"seq": 4}, 4, "invalid_payload"),
    "image as text": ({"seq": 4, "image": "/9j/4AAQSkZJRg=="}, 4, "invalid_payload"),
    "PNG bytes": ({"seq": 4, "image": "PNG"}, 4, "not_jpeg"),
    "empty bytes": ({"seq": 4, "image": b""}, 4, "not_jpeg"),
    "truncated JPEG": ({"seq": 4, "image": b"\xff\xd8\xff\xe0 not the rest"}, 4, "corrupt_image"),
    "over 2 MB": ({"seq": 4, "image": b"\xff\xd8\xff" + bytes(2 * 1024 * 1024)}, 4, "frame_too_large"),
    "too wide": ({"seq": 4, "image": "1300x200"}, 4, "frame_too_large"),
    "too many pixels": ({"seq": 4, "image": "1400x1400"}, 4, "frame_too_large"),
    "alpha as text": ({"seq": 4, "image": "JPEG", "alpha": "strong"}, 4, "invalid_payload"),
    "alpha not finite": ({"seq": 4, "image": "JPEG", "alpha": float("nan")}, 4, "invalid_payload"),
}


def materialise(payload, astronaut_jpeg):
    """Stand-ins in BAD_FRAMES -> real bytes (built here so the table stays readable)."""
    if not isinstance(payload, dict):
        return payload
    images = {"JPEG": astronaut_jpeg, "PNG": encode(np.zeros((8, 8, 3), np.uint8), "PNG"),
              "1300x200": jpeg_of_size(1300, 200), "1400x1400": jpeg_of_size(1400, 1400)}
    image = payload.get("image")
    return {**payload, "image": images.get(image, image)} if "image" in payload else payload


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_a_bad_frame_gets_an_error_answer_and_the_connection_stays_usable(live, astronaut_jpeg, name):
    payload, seq, code = BAD_FRAMES[name]
    ack = send(live, materialise(payload, astronaut_jpeg))
    assert set(ack) == {"seq", "error"}
    assert ack["seq"] == seq
    assert ack["error"]["code"] == code and ack["error"]["message"]
    assert live.is_connected(NAMESPACE)
    assert len(send(live, {"seq": 5, "image": astronaut_jpeg})["faces"]) == 1


def test_a_frame_event_without_arguments_gets_an_error_answer(live):
    ack = live.emit("frame", callback=True, namespace=NAMESPACE)
    assert ack["error"]["code"] == "invalid_payload"


def test_a_failing_handler_sends_an_error_event_and_keeps_serving(app, live, astronaut_jpeg, monkeypatch):
    namespace = live_namespace(app)
    healthy = namespace._analyze
    monkeypatch.setattr(namespace, "_analyze", lambda jpeg: 1 / 0)
    ack = send(live, {"seq": 3, "image": astronaut_jpeg})
    assert ack["seq"] == 3 and ack["error"]["code"] == "internal_error"
    (event,) = live.get_received(NAMESPACE)
    assert event["name"] == "error" and event["args"][0]["error"]["code"] == "internal_error"
    monkeypatch.setattr(namespace, "_analyze", healthy)
    # Answered, not "busy_dropped": the failed frame gave its slot back.
    assert len(send(live, {"seq": 4, "image": astronaut_jpeg})["faces"]) == 1


# ---------- Real clients over websockets ----------

@pytest.fixture
def server(service):
    """(base URL, app) of the app, with room for two live clients, served in this process."""
    app = create_app(TwoClientsConfig, service=service)
    with serve(app) as url:
        yield url, app


class LiveClient:
    """A python-socketio client of /live that records the events it gets."""

    def __init__(self, url: str):
        self.url = url
        self.sio = socketio_client.Client(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self.got_busy = threading.Event()
        self.sio.on("busy", self._on_busy, namespace=NAMESPACE)
        self.sio.on("error", lambda data: self.events.append(("error", data)), namespace=NAMESPACE)

    def _on_busy(self, data):
        self.events.append(("busy", data))
        self.got_busy.set()

    def __enter__(self) -> "LiveClient":
        self.sio.connect(self.url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10)
        return self

    def __exit__(self, *exc_info):
        self.sio.disconnect()

    def send(self, payload: dict) -> dict:
        return self.sio.call("frame", payload, namespace=NAMESPACE, timeout=60)

    def flood(self, payloads: list[dict], timeout: float = 60) -> list[tuple[float, dict]]:
        """Emits every frame without waiting; returns (arrival time, ack) in arrival order."""
        arrived: list[tuple[float, dict]] = []
        done = threading.Event()

        def on_ack(ack):
            arrived.append((time.monotonic(), ack))
            if len(arrived) == len(payloads):
                done.set()

        for payload in payloads:
            self.sio.emit("frame", payload, namespace=NAMESPACE, callback=on_ack)
        assert done.wait(timeout), f"only {len(arrived)} of {len(payloads)} answers arrived"
        return arrived


def test_a_flood_is_answered_with_drops_at_once_never_a_backlog(server, astronaut_jpeg):
    url, _ = server
    with LiveClient(url) as client:
        arrived = client.flood([{"seq": seq, "image": astronaut_jpeg} for seq in range(8)])
        analysed = [(t, ack) for t, ack in arrived if "faces" in ack]
        dropped = [(t, ack) for t, ack in arrived if "error" in ack]
        assert sorted(ack["seq"] for _, ack in arrived) == list(range(8))
        assert len(analysed) >= 1 and len(dropped) >= 1
        assert {ack["error"]["code"] for _, ack in dropped} == {"busy_dropped"}
        # Drops are answered while the first frame is still being analysed: nothing was queued.
        assert max(t for t, _ in dropped) < min(t for t, _ in analysed)
        # The connection is as good as before.
        assert len(client.send({"seq": 100, "image": astronaut_jpeg})["faces"]) == 1


def test_two_clients_never_see_each_others_tracks_or_averages(server, astronaut_jpeg, hopper_jpeg):
    url, _ = server
    answers: dict[str, list[dict]] = {}

    def stream(name: str, jpeg: bytes):
        with LiveClient(url) as client:
            answers[name] = [client.send({"seq": seq, "image": jpeg, "alpha": 0.3}) for seq in range(4)]

    threads = [threading.Thread(target=stream, args=args) for args in
               (("astronaut", astronaut_jpeg), ("hopper", hopper_jpeg))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers.keys() == {"astronaut", "hopper"}

    described = {}
    for name, acks in answers.items():
        assert [a["seq"] for a in acks] == [0, 1, 2, 3]
        faces = [a["faces"] for a in acks]
        assert all(len(f) == 1 for f in faces), faces
        # Each client numbers its own tracks from 1...
        assert {f[0]["track_id"] for f in faces} == {1}
        # ... and a still face averaged with itself keeps its values: nothing mixed in from the other client.
        # (Nearly: frames between two searches are followed, which frames the face a little differently; the
        # other client's face is decades apart, so 4 years still tells mixing from framing.)
        looks = [(f[0]["age"]["years"], f[0]["gender"]["label"], f[0]["emotion"]["label"]) for f in faces]
        assert all(abs(look[0] - looks[0][0]) < 4.0 and look[1:] == looks[0][1:] for look in looks), looks
        described[name] = looks[0]
    assert abs(described["astronaut"][0] - described["hopper"][0]) > 5, described


def test_a_disconnected_clients_state_is_freed(server, astronaut_jpeg):
    url, app = server
    namespace = live_namespace(app)
    with LiveClient(url) as client:
        client.send({"seq": 0, "image": astronaut_jpeg})
        assert len(namespace.sessions) == 1
    deadline = time.monotonic() + 10
    while len(namespace.sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(namespace.sessions) == 0


def test_beyond_the_client_limit_a_busy_event_and_a_refusal(server, astronaut_jpeg):
    url, _ = server
    with LiveClient(url), LiveClient(url) as second:
        refused = LiveClient(url)
        with pytest.raises(socketio_client.exceptions.ConnectionError):
            refused.__enter__()
        assert refused.got_busy.wait(5)
        assert refused.events == [("busy", {"message": "the server is busy: it already serves its maximum of "
                                                       "2 live clients"})]
        # Those already connected are served as before.
        assert len(second.send({"seq": 0, "image": astronaut_jpeg})["faces"]) == 1
    # Once a place is free, the next client gets in.
    with LiveClient(url) as later:
        assert later.send({"seq": 0, "image": astronaut_jpeg})["seq"] == 0


def test_live_work_counts_against_the_live_share_of_every_worker(live, service, astronaut_jpeg, monkeypatch):
    """The service's workers share their time between photo, live and video (app/inference/batching.py):
    a live frame's search, following and heads are submitted as live work."""
    from app.inference import LIVE

    kinds = []
    for batcher in (service._detector, service._follower, service._batcher):
        submit = batcher.submit
        monkeypatch.setattr(batcher, "submit", lambda item, source="default", submit=submit, name=batcher._thread.name:
                            kinds.append((name, source)) or submit(item, source))
    for seq in range(2):  # a search, then a follow
        assert len(send(live, {"seq": seq, "image": astronaut_jpeg})["faces"]) == 1
    assert set(kinds) == {("detector", LIVE), ("follower", LIVE), ("face-heads", LIVE)}
