"""The video page end to end: upload a generated clip, follow the job's progress, then play the
annotated video and see one card per face. A screenshot lands in tests/browser/artifacts/."""
from __future__ import annotations

import pytest

from browser.layout import VIEWPORTS, Rect
from video_clips import moving_face_frames, write_clip

try:
    from playwright.sync_api import expect
except ImportError:  # the `playwright` fixture skips these tests (or fails them under CI)
    expect = None

JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def face_clip(astronaut, tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "face.mp4", moving_face_frames(astronaut, frames=36))


def test_upload_follow_progress_and_play(page, page_log, live_server, face_clip, artifacts_dir):
    page.goto(f"{live_server}/video")
    expect(page.get_by_role("heading", name="Analyse a video")).to_be_visible()
    page.set_input_files("#video-input", str(face_clip))

    expect(page.locator("#job progress")).to_be_visible()
    expect(page.locator("#video-results")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    assert page.locator("#job-progress").evaluate("p => p.value") == 1
    assert "#job=" in page.url  # a reload would find the job again

    video = page.locator("#annotated")
    page.wait_for_function("() => document.getElementById('annotated').readyState >= 2", timeout=20_000)
    video.evaluate("v => v.play()")
    page.wait_for_function("() => document.getElementById('annotated').currentTime > 0.3", timeout=20_000)

    cards = page.locator(".track-card")
    expect(cards).to_have_count(1)
    expect(cards.first.locator("h3")).to_contain_text("Face #1")
    expect(cards.first.locator("canvas")).to_be_visible()
    assert cards.first.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    expect(page.locator("#downloads a")).to_have_count(4)

    video.evaluate("v => { v.pause(); v.currentTime = 1.0; }")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "video-page.png"), full_page=True)

    page.reload()  # the job id in the URL brings the results back
    expect(page.locator(".track-card")).to_have_count(1, timeout=20_000)
    assert page_log.console_errors == [] and page_log.failed_responses == []


VIDEO_LAYOUT_JS = """() => {
  const rect = (e) => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; };
  const card = document.querySelector('.track-card');
  return {
    options: [...document.querySelectorAll('.video-options label')].map((l) => ({
      label: rect(l), text: rect(l.querySelector('span')), input: rect(l.querySelector('input'))})),
    grid: rect(document.getElementById('tracks')), card: rect(card),
    chart: rect(card.querySelector('canvas')), head: rect(card.querySelector('.track-card__head')),
    video: rect(document.getElementById('annotated')),
    overflow: document.documentElement.scrollWidth - innerWidth,
  };
}"""


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_layout_progress_text_and_timeline(page, live_server, face_clip, artifacts_dir, viewport):
    page.set_viewport_size(VIEWPORTS[viewport])
    page.goto(f"{live_server}/video")
    page.evaluate("""() => {  // every text the progress line shows
        const text = document.getElementById('job-text');
        window.__progressTexts = [];
        new MutationObserver(() => window.__progressTexts.push(text.textContent))
            .observe(text, { childList: true, characterData: true, subtree: true });
    }""")
    page.set_input_files("#video-input", str(face_clip))
    expect(page.locator("#video-results")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".track-card canvas")).to_be_visible()
    page.wait_for_function("() => window.Chart && Chart.getChart(document.querySelector('.track-card canvas'))")
    layout = page.evaluate(VIDEO_LAYOUT_JS)
    page.screenshot(path=str(artifacts_dir / f"video-{viewport}.png"), full_page=True)

    texts = page.evaluate("() => window.__progressTexts")
    assert any(t.startswith("Analysing frame") for t in texts) or any(t.startswith("Done") for t in texts), texts
    assert all(not t.rstrip().endswith(("·", ":")) for t in texts), texts  # no dangling separator

    assert layout["overflow"] <= 0
    for option in layout["options"]:  # each input beside its text (not wrapped under it), covering none of it
        text, number = Rect.of(option["text"]), Rect.of(option["input"])
        middle = number.y + number.height / 2
        assert number.x >= text.x + text.width and text.y <= middle <= text.y + text.height, option
    # One face: its card takes the whole width, and its timeline the card's width.
    grid, card, chart = Rect.of(layout["grid"]), Rect.of(layout["card"]), Rect.of(layout["chart"])
    assert card.width == pytest.approx(grid.width, abs=1)
    assert chart.width >= card.width - 40 and chart.height >= 180, (chart, card)
    assert Rect.of(layout["head"]).overlap(chart) == 0
