"""Browser tests (Playwright + Chromium). A package, so its conftest doesn't shadow tests/conftest.py."""
