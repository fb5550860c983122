"""The photo page end to end: choose a file, see each face boxed on the picture and described in a card.

Screenshots land in tests/browser/artifacts/ for a human to look at.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image

from browser.layout import VIEWPORTS, Rect, overlaps_between
from helpers import ASTRONAUT_FACE, box_iou

try:
    from playwright.sync_api import expect
except ImportError:  # the `playwright` fixture skips these tests (or fails them under CI)
    expect = None

# Analysing a photo on a small CPU-only machine can take seconds (more on the first request).
ANALYSIS_TIMEOUT_MS = 90_000

ASTRONAUT_SIZE = 512  # skimage.data.astronaut() is 512 x 512; ASTRONAUT_FACE is the face box in it


# ---------- Test pictures (the photos come from tests/conftest.py) ----------

@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return tmp_path_factory.mktemp("pictures")


@pytest.fixture(scope="module")
def astronaut_png(pictures, astronaut):
    path = pictures / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def gradient_png(pictures):
    """A smooth colour gradient: nothing that looks like a face."""
    x = np.linspace(0, 255, 640)
    y = np.linspace(0, 255, 480)[:, None]
    rgb = np.stack([np.broadcast_to(x, (480, 640)), np.broadcast_to(y, (480, 640)),
                    np.full((480, 640), 160.0)], axis=-1)
    path = pictures / "gradient.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def text_named_jpg(pictures):
    path = pictures / "notes.jpg"
    path.write_text("This is a shopping list, not a picture.\n")
    return path


@pytest.fixture(scope="module")
def crowd_jpg(pictures, astronaut, grace_hopper):
    """A 5 x 4 grid of portraits (the astronaut and Grace Hopper, cropped around the face): 20 faces."""
    tile = 256
    portraits = [Image.fromarray(astronaut).crop((74, 0, 374, 300)),
                 Image.fromarray(grace_hopper).crop((65, 30, 465, 430))]
    portraits = [p.resize((tile, tile), Image.LANCZOS) for p in portraits]
    grid = Image.new("RGB", (5 * tile, 4 * tile))
    for row in range(4):
        for col in range(5):
            grid.paste(portraits[(row + col) % 2], (col * tile, row * tile))
    path = pictures / "crowd.jpg"
    grid.save(path, quality=92)
    return path


# ---------- Helpers ----------

def open_photo_page(page, base_url):
    page.goto(f"{base_url}/")
    expect(page.get_by_role("heading", name="Analyse a photo")).to_be_visible()


def upload(page, path) -> str:
    """Chooses `path` in the file input, waits for the analysis; returns the final status kind."""
    page.set_input_files("#file-input", str(path))
    status = page.locator("#status")
    expect(status).to_have_attribute("data-kind", re.compile("success|error"), timeout=ANALYSIS_TIMEOUT_MS)
    return status.get_attribute("data-kind")


def analyse(page, path):
    kind = upload(page, path)
    assert kind == "success", f"analysis failed: {page.locator('#status').inner_text()}"


def as_corners(bounding_box) -> tuple[float, float, float, float]:
    x, y = bounding_box["x"], bounding_box["y"]
    return x, y, x + bounding_box["width"], y + bounding_box["height"]


def to_screen(box, image, image_width):
    """A box in picture pixels -> page coordinates, given the picture's on-screen bounding box."""
    scale = image["width"] / image_width
    x1, y1, x2, y2 = box
    return image["x"] + x1 * scale, image["y"] + y1 * scale, image["x"] + x2 * scale, image["y"] + y2 * scale


# ---------- Tests ----------

def test_page_loads_cleanly(page, page_log, live_server):
    open_photo_page(page, live_server)
    page.wait_for_load_state("networkidle")

    expect(page).to_have_title(re.compile("Photo"))
    nav = page.get_by_role("navigation", name="Main")
    for name, href in [("Photo", "/"), ("Video", "/video"), ("Live", "/live")]:
        expect(nav.get_by_role("link", name=name)).to_have_attribute("href", href)
    expect(nav.get_by_role("link", name="Photo")).to_have_attribute("aria-current", "page")
    expect(page.locator("footer")).to_contain_text(re.compile(r"Inference on \S+"))
    expect(page.get_by_label(re.compile("drop a photo here", re.I))).to_be_attached()

    assert page_log.console_errors == []
    assert page_log.failed_responses == []


def test_astronaut_face_is_boxed_and_described(page, live_server, astronaut_png, artifacts_dir):
    open_photo_page(page, live_server)
    analyse(page, astronaut_png)

    cards = page.locator(".face-card")
    boxes = page.locator("#overlay .face-box")
    expect(cards).to_have_count(1)
    expect(boxes).to_have_count(1)

    # The box drawn on screen covers the face, at the picture's displayed scale.
    image = page.locator("#preview-image").bounding_box()
    assert image["width"] == pytest.approx(image["height"], rel=0.01)  # square picture, not distorted
    face_on_screen = to_screen(ASTRONAUT_FACE, image, ASTRONAUT_SIZE)
    drawn = as_corners(page.locator("#overlay .face-box__rect").bounding_box())
    assert box_iou(drawn, face_on_screen) > 0.7, (drawn, face_on_screen)

    expect(boxes.first).to_contain_text(re.compile(r"^#1 \w+ · \d+ · [FM]$"))

    card = cards.first
    expect(card.locator(".face-badge")).to_have_text("#1")
    expect(card.locator(".face-facts__age")).to_have_text(re.compile(r"^\d+ ± \d+ years$"))
    expect(card.locator(".face-facts__age-group")).to_have_text(
        re.compile("^(child|teen|young adult|adult|senior)$"))
    expect(card.locator(".face-facts__gender-confidence")).to_have_text(re.compile(r"^\d+%$"))
    expect(card.locator(".emotion-bars li")).to_have_count(7)
    expect(card.locator(".emotion-bars li.is-top")).to_have_count(1)
    thumbnail_has_pixels = card.locator("canvas").evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0)")
    assert thumbnail_has_pixels
    expect(page.locator("#timings")).to_contain_text("detect")
    expect(page.locator("#no-faces")).to_be_hidden()

    page.screenshot(path=artifacts_dir / "photo-astronaut.png", full_page=True)


def test_download_json_saves_the_response(page, live_server, astronaut_png, tmp_path):
    open_photo_page(page, live_server)
    analyse(page, astronaut_png)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download JSON").click()
    download = download_info.value
    assert download.suggested_filename == "astronaut.faces.json"
    saved = json.loads(download.path().read_text())
    assert [len(image["faces"]) for image in saved["images"]] == [1]
    assert saved["images"][0]["width"] == ASTRONAUT_SIZE


def test_picture_without_faces_gets_a_friendly_message(page, live_server, gradient_png, artifacts_dir):
    open_photo_page(page, live_server)
    analyse(page, gradient_png)

    expect(page.locator("#no-faces")).to_be_visible()
    expect(page.locator("#no-faces")).to_contain_text("No faces found")
    expect(page.locator(".face-card")).to_have_count(0)
    expect(page.locator("#overlay .face-box")).to_have_count(0)
    expect(page.locator("#preview-image")).to_be_visible()

    page.screenshot(path=artifacts_dir / "photo-no-faces.png", full_page=True)


def test_api_error_is_shown_as_a_message(page, live_server, text_named_jpg, artifacts_dir):
    # What the API itself says about this file; the page must show that message.
    api_response = page.request.post(f"{live_server}/api/v1/images", multipart={
        "image": {"name": text_named_jpg.name, "mimeType": "image/jpeg", "buffer": text_named_jpg.read_bytes()}})
    assert api_response.status in (400, 415, 422)
    message = api_response.json()["error"]["message"]

    open_photo_page(page, live_server)
    assert upload(page, text_named_jpg) == "error"

    status = page.locator("#status")
    expect(status).to_contain_text("Could not analyse “notes.jpg”")
    # as a sentence: a capital first letter and a full stop
    sentence = message[0].upper() + message[1:] + ("" if message.endswith(".") else ".")
    expect(status).to_have_text(f"Could not analyse “notes.jpg”. {sentence}")
    expect(page.locator("#results")).to_be_hidden()

    page.screenshot(path=artifacts_dir / "photo-api-error.png", full_page=True)


def test_dropped_file_is_analysed(page, live_server, astronaut_png):
    open_photo_page(page, live_server)
    transfer = page.evaluate_handle("""(base64) => {
        const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
        return transfer;
    }""", base64.b64encode(astronaut_png.read_bytes()).decode())

    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class(re.compile("is-dragover"))
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    expect(page.locator("#status")).to_have_attribute("data-kind", "success", timeout=ANALYSIS_TIMEOUT_MS)
    expect(page.locator("#dropzone")).not_to_have_class(re.compile("is-dragover"))
    expect(page.locator("#results-summary")).to_contain_text("dropped.png")
    expect(page.locator(".face-card")).to_have_count(1)


def test_too_large_file_is_refused_before_upload(page, live_server):
    open_photo_page(page, live_server)
    max_bytes = int(page.locator("#uploader").get_attribute("data-max-bytes"))
    uploads = []

    def record_upload(request):
        if "/api/v1/images" in request.url:
            uploads.append(request.url)

    page.on("request", record_upload)

    page.set_input_files("#file-input", files=[
        {"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * (max_bytes + 1)}])

    status = page.locator("#status")
    expect(status).to_have_attribute("data-kind", "error")
    expect(status).to_contain_text("limit")
    assert uploads == []


PHOTO_LAYOUT_JS = """() => {
  const rect = (e) => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; };
  return {
    picture: rect(document.getElementById('preview-image')),
    faces: [...document.querySelectorAll('#overlay .face-box')].map((g) => ({
      box: rect(g.querySelector('.face-box__rect')),
      tag: rect(g.querySelector('.face-box__tag')),
      lines: [...g.querySelectorAll('.face-box__text tspan')].map((t) => t.textContent),
    })),
  };
}"""


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_many_faces_each_get_the_full_label_covering_no_face(page, live_server, crowd_jpg, artifacts_dir, viewport):
    page.set_viewport_size(VIEWPORTS[viewport])
    open_photo_page(page, live_server)
    analyse(page, crowd_jpg)

    count = page.locator("#overlay .face-box").count()
    assert count >= 16, f"only {count} of the 20 faces found"
    expect(page.locator(".face-card")).to_have_count(count)

    page.screenshot(path=artifacts_dir / f"photo-crowd-{viewport}.png", full_page=True)
    layout = page.evaluate(PHOTO_LAYOUT_JS)
    picture = Rect.of(layout["picture"])
    faces = {f"face {i + 1}": Rect.of(f["box"]) for i, f in enumerate(layout["faces"])}
    tags = {f"tag {i + 1}": Rect.of(f["tag"]) for i, f in enumerate(layout["faces"])}
    for number, face in enumerate(layout["faces"], start=1):
        label = " · ".join(face["lines"])  # one line, or "#n emotion" and "age · F" on two
        assert re.fullmatch(rf"#{number} \w+ · \d+ · [FM]", label), label
        assert Rect.of(face["tag"]).inside(picture), (number, face["tag"], layout["picture"])
    # No tag covers a face, its own included, nor another tag.
    problems = overlaps_between(tags, faces) + overlaps_between(tags, tags)
    assert problems == [], problems



def test_phone_layout_has_no_horizontal_scroll(page, live_server, astronaut_png, artifacts_dir):
    page.set_viewport_size({"width": 390, "height": 844})
    open_photo_page(page, live_server)
    analyse(page, astronaut_png)

    expect(page.locator(".face-card")).to_have_count(1)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    image = page.locator("#preview-image").bounding_box()
    assert image["width"] <= 390

    page.screenshot(path=artifacts_dir / "photo-phone.png", full_page=True)
