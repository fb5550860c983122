"""The pages under the security headers (a CSP without 'unsafe-inline'), the sign-in page when the
server has API keys, and the video page's Cancel, which needs the upload's delete token."""
from __future__ import annotations

import pytest

from serving import ServerDidNotStart, gunicorn
from video_clips import moving_face_frames, write_clip

try:
    from playwright.sync_api import expect
except ImportError:  # the `playwright` fixture skips these tests (or fails them under CI)
    expect = None

KEY = "browser-test-key-0123456789"
# Collects what the CSP blocks; an init script runs before the page's own scripts and is not subject to it.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture(scope="module")
def long_clip(astronaut, tmp_path_factory):
    """Long enough (10 s) to still be running when Cancel is pressed."""
    return write_clip(tmp_path_factory.mktemp("clips") / "long.mp4", moving_face_frames(astronaut, frames=120))


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    env = {"API_KEYS": KEY, "UPLOAD_FOLDER": str(tmp_path_factory.mktemp("uploads"))}
    try:
        with gunicorn(env=env, threads=8) as (base_url, _ready):
            yield base_url
    except ServerDidNotStart as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.parametrize("path", ["/", "/video", "/live"])
def test_pages_run_under_the_csp(page, page_log, live_server, path):
    page.add_init_script(RECORD_VIOLATIONS)
    response = page.goto(f"{live_server}{path}")
    csp = response.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__cspViolations") == []
    assert page_log.console_errors == []


def cancel_a_running_upload(page, clip) -> str:
    page.set_input_files("#video-input", str(clip))
    expect(page.locator("#job-cancel")).to_be_visible(timeout=30_000)
    page.wait_for_function("() => location.hash.startsWith('#job=')")
    job_id = page.evaluate("location.hash.slice(5)")
    page.locator("#job-cancel").click()
    expect(page.locator("#status")).to_contain_text("cancelled")
    return job_id


def test_cancel_uses_the_delete_token(page, live_server, long_clip):
    page.goto(f"{live_server}/video")
    job_id = cancel_a_running_upload(page, long_clip)
    assert page.request.get(f"{live_server}/api/v1/videos/{job_id}").status == 404


def test_sign_in_then_upload_and_cancel(page, page_log, keyed_server, long_clip, artifacts_dir):
    page.goto(f"{keyed_server}/video")
    expect(page).to_have_url(f"{keyed_server}/login?next=/video")
    page.fill("#key", "a wrong key, long enough")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.screenshot(path=str(artifacts_dir / "login-page.png"), full_page=True)
    page.fill("#key", KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{keyed_server}/video")
    job_id = cancel_a_running_upload(page, long_clip)  # the upload, its progress socket and the delete
    assert page.request.get(f"{keyed_server}/api/v1/videos/{job_id}").status == 404
    assert page_log.console_errors == [e for e in page_log.console_errors if "401" in e]  # only the wrong key
