"""The connection guard (app/connections.py) as WSGI middleware, without a server: slots are taken and
given back as requests start and end, in all and per client address."""
from __future__ import annotations

import io
import json

from app.connections import ConnectionGuard, ConnectionLimits


def _app(environ, start_response):
    if environ.get("CONTENT_LENGTH"):
        environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _guard(**limits) -> ConnectionGuard:
    settings = dict(max_sockets=4, max_uploads=4, body_timeout_s=5.0, sockets_per_address=2, uploads_per_address=1)
    return ConnectionGuard(_app, ConnectionLimits(**{**settings, **limits}))


def _call(guard, address: str, path: str = "/socket.io/", body: bytes = b""):
    """Starts a request; returns (status, response). A socket's slot is held until response.close()."""
    got = {}
    environ = {"PATH_INFO": path, "REMOTE_ADDR": address, "REQUEST_METHOD": "POST" if body else "GET",
               "wsgi.input": io.BytesIO(body)}
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    response = guard(environ, lambda status, headers, exc_info=None: got.setdefault("status", status))
    return got["status"], response


def test_one_address_holds_at_most_its_share_of_the_socket_slots():
    guard = _guard()
    held = [_call(guard, "10.0.0.1") for _ in range(2)]
    assert [status for status, _ in held] == ["200 OK"] * 2
    status, body = _call(guard, "10.0.0.1")
    assert status.startswith("503") and json.loads(b"".join(body))["error"]["code"] == "busy"
    assert _call(guard, "10.0.0.2")[0] == "200 OK"  # another client still gets in
    held[0][1].close()  # a connection that ends gives its slot back to its address
    assert _call(guard, "10.0.0.1")[0] == "200 OK"


def test_the_socket_slots_are_bounded_in_all_too():
    guard = _guard(sockets_per_address=0)
    for _ in range(4):
        assert _call(guard, "10.0.0.1")[0] == "200 OK"
    assert _call(guard, "10.0.0.9")[0].startswith("503")


def test_one_address_holds_at_most_its_share_of_the_upload_slots():
    guard = _guard()
    during = []

    def app_that_looks(environ, start_response):  # while this body is in, others try to upload
        if environ["REMOTE_ADDR"] == "10.0.0.1" and not during:
            during.append(_call(guard, "10.0.0.1", "/api/v1/images", b"x" * 10)[0])
            during.append(_call(guard, "10.0.0.2", "/api/v1/images", b"x" * 10)[0])
        return _app(environ, start_response)

    guard.wsgi_app = app_that_looks
    assert _call(guard, "10.0.0.1", "/api/v1/images", b"x" * 10)[0] == "200 OK"
    assert during[0].startswith("503") and during[1] == "200 OK"
    assert guard.uploads.used == 0 and guard.uploads.by_address == {}


def test_the_default_threads_leave_room_beyond_the_bounds_and_too_few_are_warned(caplog):
    from types import SimpleNamespace

    from app import gunicorn_hooks
    from app.config import Config

    assert gunicorn_hooks.threads == Config.THREADS
    assert Config.THREADS - Config.MAX_SOCKET_CONNECTIONS - Config.MAX_CONCURRENT_UPLOADS >= 32
    for threads, warned in ((Config.THREADS, False), (32, True)):
        caplog.clear()
        gunicorn_hooks.post_worker_init(SimpleNamespace(cfg=SimpleNamespace(threads=threads), wsgi=None, sockets=[]))
        assert any("idle or slow clients" in r.getMessage() for r in caplog.records) == warned
