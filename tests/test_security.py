"""The door: API keys (header, browser session, Socket.IO auth), deletes by the creator only, rate
limits, security headers on every response, and photos that never touch the disk."""
from __future__ import annotations

import io
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import create_app, socketio
from helpers import TestConfig, encode, upload
from test_video import delete_video, post_video
from video_clips import moving_face_frames, write_clip

KEY_A, KEY_B = "a-key-for-tests-0001", "b-key-for-tests-0002"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(astronaut, tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "face.mp4", moving_face_frames(astronaut, frames=12))


@pytest.fixture
def keyed_app(service, tmp_path):
    class Keyed(TestConfig):
        API_KEYS = f"{KEY_A}, {KEY_B}"
        UPLOAD_FOLDER = str(tmp_path / "uploads")

    return create_app(Keyed, service=service)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# -- headers -------------------------------------------------------------------------------------
def test_security_headers_on_every_response(client):
    responses = [client.get(path) for path in ("/", "/live", "/video", "/healthz", "/api/v1/models",
                                               "/static/css/app.css", "/vendor/socket.io.min.js", "/nope",
                                               "/api/v1/nope")]
    responses.append(client.get("/socket.io/?EIO=4&transport=polling"))  # answered by Socket.IO, not Flask
    responses.append(client.post("/api/v1/images", data={"image": upload(b"nope")}))
    for r in responses:
        csp = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (r.request.path, r.headers)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Frame-Options"] == "DENY"


def test_templates_have_no_inline_code():
    """The CSP has no 'unsafe-inline': every script and style must be a file."""
    for template in (REPO / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", text), template
        assert not re.search(r"<style\b", text), template
        assert not re.search(r"\sstyle\s*=", text), template
        assert not re.search(r"\son[a-z]+\s*=", text), template
    for script in (REPO / "static" / "js").glob("*.js"):
        text = script.read_text()
        assert not re.search(r"setAttribute\(\s*['\"]style|style=|\.cssText|\beval\(|new Function\(", text), script


# -- keys ----------------------------------------------------------------------------------------
def test_without_keys_everything_is_open(client):
    assert client.get("/api/v1/models").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/login").status_code == 302


def test_api_needs_a_key_when_keys_are_set(keyed_app):
    client = keyed_app.test_client()
    for headers in ({}, bearer("wrong-key-wrong-key"), {"Authorization": f"Basic {KEY_A}"}):
        r = client.get("/api/v1/models", headers=headers)
        assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized", headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert KEY_A not in r.get_data(as_text=True)
    assert client.get("/api/v1/models", headers=bearer(KEY_A)).status_code == 200
    assert client.get("/api/v1/models", headers=bearer(KEY_B)).status_code == 200
    for path in ("/healthz", "/readyz", "/api/v1/openapi.yaml", "/static/css/app.css"):
        assert client.get(path).status_code == 200, path


def test_pages_sign_in_once_with_a_session_cookie(keyed_app):
    client = keyed_app.test_client()
    r = client.get("/video")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=/video")
    assert client.get("/login?next=/video").status_code == 200
    r = client.post("/login", data={"key": "not-the-key-at-all", "next": "/video"})
    assert r.status_code == 401 and b"not valid" in r.data
    r = client.post("/login", data={"key": KEY_A, "next": "/video"})
    assert r.status_code == 302 and r.headers["Location"] == "/video"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY_A not in cookie
    assert client.get("/video").status_code == 200
    assert client.get("/api/v1/models").status_code == 200  # the pages' own API calls ride on the cookie
    client.post("/logout")
    assert client.get("/api/v1/models").status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_off_site(keyed_app, target):
    r = keyed_app.test_client().post("/login", data={"key": KEY_A, "next": target})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_sockets_need_a_key_when_keys_are_set(keyed_app):
    for namespace in ("/live", "/videos"):
        refused = socketio.test_client(keyed_app, namespace=namespace)
        assert not refused.is_connected(namespace)
        wrong = socketio.test_client(keyed_app, namespace=namespace, auth={"token": "wrong-key-wrong-key"})
        assert not wrong.is_connected(namespace)
        allowed = socketio.test_client(keyed_app, namespace=namespace, auth={"token": KEY_A})
        assert allowed.is_connected(namespace)
        allowed.disconnect(namespace=namespace)
        with_header = socketio.test_client(keyed_app, namespace=namespace, headers=bearer(KEY_B))
        assert with_header.is_connected(namespace)
        with_header.disconnect(namespace=namespace)
    browser = keyed_app.test_client()
    browser.post("/login", data={"key": KEY_A})
    with_cookie = socketio.test_client(keyed_app, namespace="/live", flask_test_client=browser)
    assert with_cookie.is_connected("/live")
    with_cookie.disconnect(namespace="/live")


def test_other_namespaces_are_refused(client):
    app = client.application
    for namespace in ("/", "/other"):
        sio = socketio.test_client(app, namespace=namespace)
        assert not sio.is_connected(namespace), namespace


def test_keys_must_be_long_enough(service):
    class Short(TestConfig):
        API_KEYS = "short"

    with pytest.raises(ValueError, match="16 characters"):
        create_app(Short, service=service)


# -- who may delete a video job ------------------------------------------------------------------
def test_only_the_creator_deletes_a_job(service, tmp_path, clip):
    class Config(TestConfig):
        UPLOAD_FOLDER = str(tmp_path / "uploads")

    client = create_app(Config, service=service).test_client()
    created = post_video(client, clip.read_bytes(), "face.mp4").get_json()
    path = f"/api/v1/videos/{created['id']}"
    assert client.delete(path).status_code == 403
    r = client.delete(path, headers={"X-Delete-Token": "x" * 32})
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    assert client.get(path).status_code == 200
    assert "delete_token" not in client.get(path).json and "owner" not in client.get(path).json
    assert delete_video(client, created).status_code == 204


def test_the_key_that_made_a_job_deletes_it(keyed_app, clip):
    client = keyed_app.test_client()
    response = client.post("/api/v1/videos", data={"video": (io.BytesIO(clip.read_bytes()), "face.mp4")},
                           headers=bearer(KEY_A), content_type="multipart/form-data")
    assert response.status_code == 202
    path = f"/api/v1/videos/{response.json['id']}"
    assert client.delete(path, headers=bearer(KEY_B)).status_code == 403
    assert client.delete(path, headers=bearer(KEY_A)).status_code == 204


# -- rate limits ---------------------------------------------------------------------------------
def test_uploads_are_rate_limited_per_key_and_address(service, astronaut):
    class Limited(TestConfig):
        UPLOAD_RATE_LIMIT = "2 per minute"
        API_KEYS = f"{KEY_A},{KEY_B}"

    client = create_app(Limited, service=service).test_client()
    data = encode(astronaut[:64, :64])

    def post(key, address="10.0.0.1"):
        return client.post("/api/v1/images", data={"image": upload(data)}, headers=bearer(key),
                           environ_base={"REMOTE_ADDR": address})

    first = post(KEY_A)
    assert first.status_code == 200 and "Retry-After" not in first.headers  # nothing to wait for
    assert post(KEY_A).status_code == 200
    refused = post(KEY_A)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) > 0
    assert post(KEY_B).status_code == 200  # another key counts apart, from the same address
    assert client.get("/api/v1/models", headers=bearer(KEY_A)).status_code == 200  # GETs have their own limit


def test_without_keys_limits_are_per_address(service, astronaut):
    class Limited(TestConfig):
        UPLOAD_RATE_LIMIT = "1 per minute"

    client = create_app(Limited, service=service).test_client()
    data = encode(astronaut[:64, :64])
    codes = [client.post("/api/v1/images", data={"image": upload(data)}, environ_base={"REMOTE_ADDR": a}).status_code
             for a in ("10.0.0.1", "10.0.0.1", "10.0.0.2")]
    assert codes == [200, 429, 200]


# -- photos stay in memory -----------------------------------------------------------------------
_opened: list[tuple[str, str]] = []
_recording = threading.Event()


def _audit(event, args):
    if _recording.is_set() and event == "open" and args:
        path, mode, flags = (list(args) + [None, None])[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writes:
            _opened.append((str(path), str(mode)))


def test_photos_are_never_written_to_disk(client):
    """A photo larger than werkzeug's in-memory threshold (500 KB) would otherwise be spooled to a
    temporary file; every file opened for writing while photos are analysed is recorded."""
    if not getattr(sys, "_faceapp_audit_hook", False):
        sys.addaudithook(_audit)  # hooks cannot be removed: this one records only while the event is set
        sys._faceapp_audit_hook = True
    rng = np.random.default_rng(0)
    big = encode(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8), "PNG")  # ~1.4 MB of noise
    assert len(big) > 600_000
    # The bodies are encoded beforehand: the test client would spool a large one to a temporary file itself.
    def file(name):
        return FileStorage(io.BytesIO(big), filename=name, content_type="image/png")

    bodies = [encode_multipart({"image": file("big.png")}), encode_multipart({"image": [file("a.png"), file("b.png")]})]
    _opened.clear()
    _recording.set()
    try:
        responses = [client.post("/api/v1/images", input_stream=io.BytesIO(body),
                                 content_type=f"multipart/form-data; boundary={boundary}",
                                 content_length=len(body)) for boundary, body in bodies]
    finally:
        _recording.clear()
    assert [r.status_code for r in responses] == [200, 200]
    assert _opened == [], _opened
