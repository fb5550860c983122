"""The photo page's "Why this emotion?" toggle (static/js/photo-explain.js): a heat map over each face."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from helpers import ASTRONAUT_FACE

try:
    from playwright.sync_api import expect
except ImportError:  # the `playwright` fixture skips these tests (or fails them under CI)
    expect = None

ANALYSIS_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("explain") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


def test_the_toggle_overlays_a_heat_map_on_the_face(page, page_log, live_server, astronaut_png, artifacts_dir):
    page.goto(f"{live_server}/")
    page.set_input_files("#file-input", str(astronaut_png))
    expect(page.locator("#status")).to_have_attribute("data-kind", "success", timeout=ANALYSIS_TIMEOUT_MS)
    maps = page.locator(".explain-layer .explain-map")
    expect(maps).to_have_count(0)  # off until asked for

    with page.expect_response(re.compile(r"/api/v1/images\?explain=true")) as answer:
        page.get_by_label("Why this emotion?").check()
    assert answer.value.ok
    expect(maps).to_have_count(1, timeout=ANALYSIS_TIMEOUT_MS)
    expect(maps.first).to_have_attribute("data-label", "happy")
    page.wait_for_function("document.querySelector('.explain-map').complete")

    # The map lies on the face box, at the picture's displayed scale.
    image = page.locator("#preview-image").bounding_box()
    drawn = maps.first.bounding_box()
    scale = image["width"] / 512
    assert drawn["x"] - image["x"] == pytest.approx(ASTRONAUT_FACE[0] * scale, abs=6 * scale)
    assert drawn["y"] - image["y"] == pytest.approx(ASTRONAUT_FACE[1] * scale, abs=6 * scale)
    assert drawn["width"] == pytest.approx((ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]) * scale, abs=8 * scale)
    page.locator(".preview").screenshot(path=str(artifacts_dir / "photo_explain_on.png"))
    page.screenshot(path=str(artifacts_dir / "photo_explain_page.png"), full_page=True)

    page.get_by_label("Why this emotion?").uncheck()
    expect(page.locator(".explain-layer")).to_be_hidden()
    assert page_log.console_errors == [] and page_log.failed_responses == []
