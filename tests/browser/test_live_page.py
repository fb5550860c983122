"""The live page end to end: Chromium's fake camera plays a clip of the astronaut, the page streams it to
/live, and the overlay shows her face boxed and labelled.

Screenshots land in tests/browser/artifacts/ for a human to look at.
"""
from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
import socketio as socketio_client
from PIL import Image

from app import create_app
from app.live.namespace import NAMESPACE
from browser.conftest import DESKTOP_VIEWPORT, launch_chromium
from browser.layout import VIEWPORTS, Rect, overlaps_between
from helpers import TestConfig
from helpers import ASTRONAUT_FACE, box_iou
from redis_parts import SHARED_REDIS_URL, delete_prefixed, shared_redis, unique_prefix
from serving import serve

try:
    from playwright.sync_api import expect
except ImportError:  # the `playwright` fixture skips these tests (or fails them under CI)
    expect = None

# The first frames pay for connecting and for warm caches on a small CPU-only machine.
FIRST_FACE_TIMEOUT_MS = 20_000
CLIP_FRAMES = 45  # 3 s at 15 fps; Chromium loops the clip
TRACK_1_COLOR = [0xFA, 0xCC, 0x15]  # the first colour of the palette in static/js/faces.js


def write_y4m(path, rgb: np.ndarray, frames: int, fps: int = 15) -> None:
    """A still picture as an uncompressed YUV4MPEG2 clip, the format Chromium's fake camera plays."""
    height, width = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # the Y plane, then U, then V: what a FRAME holds
    with open(path, "wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            clip.write(b"FRAME\n")
            clip.write(i420.tobytes())


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("camera") / "astronaut.y4m"
    write_y4m(path, astronaut, CLIP_FRAMES)
    return path


@pytest.fixture(scope="module")
def pair_clip(tmp_path_factory, side_by_side):
    """Two faces (the astronaut and Grace Hopper side by side), downscaled to a 640 px camera."""
    height, width = side_by_side.shape[:2]
    small = np.asarray(Image.fromarray(side_by_side).resize((640, round(640 * height / width / 2) * 2)))
    path = tmp_path_factory.mktemp("camera") / "pair.y4m"
    write_y4m(path, small, CLIP_FRAMES)
    return path


@pytest.fixture
def camera_clip(request, astronaut_clip, pair_clip):
    """The fake camera's clip: the astronaut, or (parametrized indirectly with "pair") two faces."""
    return pair_clip if getattr(request, "param", "astronaut") == "pair" else astronaut_clip


@pytest.fixture
def browser_context(playwright, tmp_path_factory, camera_clip):
    """Overrides conftest's: a browser whose camera plays ``camera_clip``, allowed without asking."""
    context = launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"), extra_args=[
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera_clip}",
    ], viewport=DESKTOP_VIEWPORT, accept_downloads=True)
    yield context
    context.close()


def open_live_page(page, base_url):
    page.goto(f"{base_url}/live")
    expect(page.get_by_role("heading", name="Live camera")).to_be_visible()


def live_state(page) -> dict:
    return page.evaluate("() => window.__liveState")


def wait_for_faces(page, count: int, answered_after: int = 0):
    page.wait_for_function(
        "([count, after]) => window.__liveState.answered > after && window.__liveState.faces.length === count",
        arg=[count, answered_after], timeout=FIRST_FACE_TIMEOUT_MS)


def test_page_loads_cleanly(page, page_log, live_server):
    open_live_page(page, live_server)
    page.wait_for_load_state("networkidle")
    expect(page).to_have_title(re.compile("Live"))
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Live")).to_have_attribute(
        "aria-current", "page")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.locator("#alpha-value")).to_have_text("α 0.30")  # LIVE_DEFAULT_ALPHA
    assert live_state(page)["phase"] == "idle"
    assert page_log.console_errors == [] and page_log.failed_responses == []


def test_the_camera_face_is_boxed_labelled_and_followed(page, page_log, live_server, artifacts_dir):
    open_live_page(page, live_server)
    page.get_by_role("button", name="Start").click()
    wait_for_faces(page, 1)
    expect(page.locator("#connection")).to_have_text("Connected")

    first = live_state(page)
    (face,) = first["faces"]
    assert first["frame"] == {"width": 512, "height": 512}  # the clip's size: under 640, sent as it is
    assert box_iou(face["box"], ASTRONAUT_FACE) > 0.6, face["box"]
    # More frames: the same track, answers in order, and the HUD has figures.
    page.wait_for_function("n => window.__liveState.answered >= n", arg=first["answered"] + 4,
                           timeout=FIRST_FACE_TIMEOUT_MS)
    later = live_state(page)
    assert [f["track_id"] for f in later["faces"]] == [face["track_id"]]
    assert later["answeredSeq"] > first["answeredSeq"]
    expect(page.locator("#hud-fps")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(page.locator("#hud-latency")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#hud-faces")).to_have_text("1")

    # The overlay lies exactly on the video, and the face's tag is drawn just above its box.
    overlay = page.locator("#overlay")
    on_screen = overlay.bounding_box()
    assert on_screen == pytest.approx(page.locator("#video").bounding_box())
    # (what was drawn and the canvas's pixel, read at once: the next answer redraws it)
    drawn, pixel = overlay.evaluate("""(canvas) => {
        const { boxes: [box], tags: [tag] } = window.__liveState.layout;
        const ratio = window.devicePixelRatio || 1;
        const at = [Math.round((tag.x + 3) * ratio), Math.round((tag.y + tag.height / 2) * ratio)];
        return [{ box, tag }, Array.from(canvas.getContext('2d').getImageData(...at, 1, 1).data.slice(0, 3))];
    }""")
    assert drawn["tag"]["y"] + drawn["tag"]["height"] <= drawn["box"]["y"] <= drawn["tag"]["y"] + drawn["tag"]["height"] + 4
    assert abs(drawn["tag"]["x"] - drawn["box"]["x"]) <= 1
    assert pixel == pytest.approx(TRACK_1_COLOR, abs=8)
    page.screenshot(path=artifacts_dir / "live-astronaut.png", full_page=True)

    page.get_by_label("Landmarks").check()
    page.get_by_label("Emotion bars").check()
    wait_for_faces(page, 1, live_state(page)["answered"])
    page.locator("#stage").screenshot(path=artifacts_dir / "live-astronaut-extras.png")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Snapshot").click()
    download = download_info.value
    assert re.fullmatch(r"faceapp-live-.+\.png", download.suggested_filename)
    snapshot = Image.open(io.BytesIO(download.path().read_bytes()))
    assert snapshot.format == "PNG" and snapshot.size == (512, 512)
    snapshot.save(artifacts_dir / "live-snapshot.png")

    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#connection")).to_have_text("Not connected")
    assert live_state(page)["phase"] == "stopped"
    assert page_log.console_errors == []


@pytest.mark.parametrize("error_name, message", [
    ("NotAllowedError", "Camera access was denied"),
    ("NotFoundError", "No camera was found"),
])
def test_a_camera_problem_is_explained(page, live_server, artifacts_dir, error_name, message):
    # Make the browser's camera fail the way a person's refusal or a missing camera does.
    page.add_init_script(f"""
        navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('test', '{error_name}'));
    """)
    open_live_page(page, live_server)
    page.get_by_role("button", name="Start").click()
    status = page.locator("#status")
    expect(status).to_contain_text(message)
    expect(status).to_have_attribute("data-kind", "error")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    assert live_state(page)["connection"] == "offline"  # no server slot taken without a camera
    page.screenshot(path=artifacts_dir / f"live-{error_name}.png")


class OneClientConfig(TestConfig):
    MAX_LIVE_CLIENTS = 1


@pytest.fixture
def one_client_server(service):
    """(base URL, app) of the app with room for one live client, served in this process."""
    app = create_app(OneClientConfig, service=service)
    with serve(app) as url:
        yield url, app


def record_connection_badge(page):
    """From now on, window.__badgeHistory lists every text the connection badge shows."""
    page.evaluate("""() => {
        const badge = document.getElementById('connection');
        window.__badgeHistory = [badge.textContent];
        new MutationObserver(() => window.__badgeHistory.push(badge.textContent))
            .observe(badge, { childList: true, characterData: true, subtree: true });
    }""")


def test_a_busy_server_and_a_lost_connection_are_shown_and_recovered(page, one_client_server, artifacts_dir):
    url, app = one_client_server
    open_live_page(page, url)
    record_connection_badge(page)

    other = socketio_client.Client(reconnection=False)
    other.connect(url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10)
    try:  # the only place is taken: the page is refused, and says so
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#connection")).to_have_text("Server busy")
        expect(page.locator("#status")).to_have_text(
            "The server is busy: it already serves its maximum of 1 live client. Trying again in 5 s.")
        page.screenshot(path=artifacts_dir / "live-busy.png")
    finally:
        other.disconnect()
    # It tries again by itself and gets the place that became free.
    wait_for_faces(page, 1)
    expect(page.locator("#status")).to_be_hidden()

    # The server drops the connection: the page reconnects by itself and goes on.
    server = app.extensions["socketio"].server
    (sid,) = [sid for sid, _ in server.manager.get_participants(NAMESPACE, None)]
    answered = live_state(page)["answered"]
    server.disconnect(sid, namespace=NAMESPACE)
    wait_for_faces(page, 1, answered_after=answered + 1)
    history = page.evaluate("() => window.__badgeHistory")
    assert history[:3] == ["Not connected", "Connecting…", "Server busy"], history
    assert history[-3:] == ["Connected", "Reconnecting…", "Connected"], history


LIVE_LAYOUT_JS = """() => {
  const rect = (e) => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; };
  return {canvas: rect(document.getElementById('overlay')), stage: rect(document.getElementById('stage')),
          hud: rect(document.getElementById('hud')), main: rect(document.querySelector('.live')),
          footer: rect(document.querySelector('footer')), drawn: window.__liveState.layout};
}"""


@pytest.mark.parametrize("camera_clip", ["astronaut", "pair"], indirect=True)
@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_overlays_cover_no_face_nor_each_other(page, live_server, artifacts_dir, viewport, camera_clip):
    faces_in_clip = 2 if camera_clip.stem == "pair" else 1
    page.set_viewport_size(VIEWPORTS[viewport])
    open_live_page(page, live_server)
    before = page.evaluate(LIVE_LAYOUT_JS)
    page.get_by_label("Landmarks").check()
    page.get_by_label("Emotion bars").check()
    page.get_by_role("button", name="Start").click()
    wait_for_faces(page, faces_in_clip)
    wait_for_faces(page, faces_in_clip, live_state(page)["answered"])  # drawn at the stage's streaming size
    layout = page.evaluate(LIVE_LAYOUT_JS)
    page.screenshot(path=artifacts_dir / f"live-layout-{camera_clip.stem}-{viewport}.png")

    canvas = Rect.of(layout["canvas"])
    drawn = layout["drawn"]
    assert len(drawn["boxes"]) == len(drawn["tags"]) == len(drawn["panels"]) == faces_in_clip

    def on_page(d):  # canvas units are CSS pixels from the canvas's corner
        return Rect(canvas.x + d["x"], canvas.y + d["y"], d["width"], d["height"])

    faces = {f"face {i + 1}": on_page(b) for i, b in enumerate(drawn["boxes"])}
    labels = {**{f"tag {i + 1}": on_page(t) for i, t in enumerate(drawn["tags"])},
              **{f"emotion bars {i + 1}": on_page(p) for i, p in enumerate(drawn["panels"])}}
    assert all(label.inside(canvas) for label in labels.values()), (labels, canvas)
    hud = Rect.of(layout["hud"])
    assert hud.width > 0 and hud.overlap(canvas) == 0, (hud, canvas)  # the readout sits under the video
    problems = overlaps_between(labels, faces) + overlaps_between(labels, labels)
    assert problems == [], problems

    # The stage is centred, keeps its height from before Start, and the page fits the desktop screen.
    stage, main = Rect.of(layout["stage"]), Rect.of(layout["main"])
    left, right = stage.x - main.x, main.x + main.width - (stage.x + stage.width)
    assert abs(left - right) <= 2, (left, right)
    assert abs(layout["stage"]["height"] - before["stage"]["height"]) <= 2, (before["stage"], layout["stage"])
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0  # no sideways scroll
    if viewport == "desktop":
        footer = before["footer"]
        assert footer["y"] + footer["height"] <= VIEWPORTS["desktop"]["height"], footer


def test_in_scale_out_mode_the_page_uses_websockets_only(service, page, page_log, tmp_path):
    """REDIS_URL set (Socket.IO through the real Redis): the page connects with the websocket transport
    alone, so a load balancer needs no sticky sessions, and the live frames are answered."""
    client, prefix = shared_redis(), unique_prefix()

    class ScaleOut(TestConfig):
        REDIS_URL = SHARED_REDIS_URL
        REDIS_KEY_PREFIX = prefix
        VIDEO_DIR = str(tmp_path / "videos")

    socket_requests = []
    page.on("request", lambda request: socket_requests.append(request.url) if "/socket.io/" in request.url else None)
    websockets = []
    page.on("websocket", lambda ws: websockets.append(ws.url))
    try:
        with serve(create_app(ScaleOut, service=service)) as url:
            open_live_page(page, url)
            page.get_by_role("button", name="Start").click()
            wait_for_faces(page, 1)
            page.get_by_role("button", name="Stop").click()
    finally:
        delete_prefixed(client, prefix)
    assert websockets and all("transport=websocket" in u for u in websockets), websockets
    assert not [u for u in socket_requests if "transport=polling" in u], socket_requests
    assert page_log.console_errors == []
