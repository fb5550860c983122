"""Fixtures for the browser tests: the real app under gunicorn, driven by Chromium through Playwright.

Run them with ``pytest tests/browser``. They use Debian's Chromium (``/usr/bin/chromium``, or the
path in ``FACEAPP_CHROMIUM``); without it they are skipped, except under CI (``CI`` set), where
that is a failure. ``FACEAPP_BASE_URL=http://host:port`` runs them against a server that is
already running instead of starting one.

Other browser tests reuse ``launch_chromium``, e.g. a webcam test::

    launch_chromium(playwright, tmp_path, extra_args=[
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serving import ServerDidNotStart, gunicorn

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("FACEAPP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP_VIEWPORT = {"width": 1280, "height": 800}
SERVER_READY_TIMEOUT_S = 90


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine that lacks a prerequisite; under CI the tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


def launch_chromium(playwright, user_data_dir: Path, extra_args=(), **context_options):
    """A fresh Chromium with its own profile directory; returns the (persistent) BrowserContext."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_ARGS, *extra_args],
        **context_options,
    )


@pytest.fixture(scope="session")
def live_server():
    """Base URL of the real app, started with gunicorn for this test session."""
    if os.environ.get("FACEAPP_BASE_URL"):
        yield os.environ["FACEAPP_BASE_URL"].rstrip("/")
        return

    try:
        with gunicorn(threads=8, timeout_s=SERVER_READY_TIMEOUT_S) as (base_url, _ready):
            yield base_url
    except ServerDidNotStart as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def playwright():
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Playwright is not installed")
    with sync_playwright() as instance:
        yield instance


@pytest.fixture
def browser_context(playwright, tmp_path_factory):
    """A fresh browser with an empty profile for each test."""
    context = launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"),
                              viewport=DESKTOP_VIEWPORT, accept_downloads=True)
    yield context
    context.close()


@dataclass
class PageLog:
    """What a page reported while a test used it."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_responses: list[str] = field(default_factory=list)


@pytest.fixture
def page_log():
    return PageLog()


@pytest.fixture
def page(browser_context, page_log):
    """A page that records console errors, uncaught exceptions and HTTP errors in ``page_log``.

    An uncaught exception in the page's scripts fails any test.
    """
    def on_console(message):
        if message.type == "error":
            page_log.console_errors.append(message.text)

    def on_response(response):
        if response.status >= 400:
            page_log.failed_responses.append(f"{response.status} {response.url}")

    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", on_console)
    page.on("pageerror", lambda error: page_log.page_errors.append(str(error)))
    page.on("response", on_response)
    yield page
    assert page_log.page_errors == [], f"uncaught errors in the page: {page_log.page_errors}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots for people to look at (git-ignored)."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
