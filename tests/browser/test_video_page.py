"""The video page end to end: upload a generated clip, follow the job's progress, then play the
annotated video and see one card per face. A screenshot lands in tests/browser/artifacts/."""
from __future__ import annotations

import pytest

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
