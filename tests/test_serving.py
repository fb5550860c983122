"""The app as `make run` serves it (gunicorn, reading gunicorn.conf.py): what the server itself answers."""
from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import socketio
import websocket

from serving import gunicorn


THREADS, SOCKETS, UPLOADS, BODY_TIMEOUT_S, JOIN_GRACE_S = 8, 3, 2, 2.0, 3.0


@pytest.fixture(scope="module")
def server():
    env = {"MAX_SOCKET_CONNECTIONS": str(SOCKETS), "MAX_CONCURRENT_UPLOADS": str(UPLOADS),
           "REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "SOCKET_JOIN_GRACE_S": str(JOIN_GRACE_S)}
    with gunicorn(env=env, threads=THREADS) as (base_url, _ready):
        yield urlsplit(base_url)


def raw_get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path, headers, status, code", [
    ("/api/v1/" + "x" * 5000, None, 414, "uri_too_long"),
    ("/healthz", {"X-Big": "y" * 9000}, 431, "request_header_fields_too_large"),
    ("/healthz", {f"X-H{i}": "1" for i in range(120)}, 431, "request_header_fields_too_large"),
])
def test_requests_gunicorn_refuses_itself_get_json_errors(server, path, headers, status, code):
    got, response_headers, body = raw_get(server, path, headers)
    assert got == status
    assert response_headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code


def stalled_upload(server) -> socket.socket:
    """A request that announces 1,000 bytes of body and sends 10."""
    sock = socket.create_connection((server.hostname, server.port), timeout=10)
    sock.sendall(b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 1000\r\n\r\n--b\r\nabcde")
    return sock


def idle_websocket(server) -> websocket.WebSocket | None:
    """An engine.io websocket that joins no namespace and sends nothing; None when refused."""
    try:
        return websocket.create_connection(f"ws://{server.hostname}:{server.port}/socket.io/?EIO=4&transport=websocket",
                                           timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 503
        return None


def healthz_seconds(server) -> float:
    t0 = time.perf_counter()
    status, _headers, _body = raw_get(server, "/healthz")
    assert status == 200
    return time.perf_counter() - t0


def test_a_stalled_body_ends_with_408(server):
    with stalled_upload(server) as sock:
        t0 = time.perf_counter()
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
        waited = time.perf_counter() - t0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= waited < BODY_TIMEOUT_S + 5


def test_socket_connections_are_bounded_on_every_namespace(server):
    sockets = [idle_websocket(server) for _ in range(SOCKETS + 2)]
    try:
        assert sum(s is not None for s in sockets) == SOCKETS
        assert healthz_seconds(server) < 2
    finally:
        for s in sockets:
            if s is not None:
                s.close()
    time.sleep(0.5)
    again = idle_websocket(server)  # closed ones free their slots
    assert again is not None
    again.close()


def test_healthz_answers_with_idle_sockets_and_stalled_uploads_open(server):
    """As many idle websockets as the server has threads, and stalled uploads up to their bound: /healthz
    still answers at once. (A flood of stalled uploads beyond the bound is refused, but each refusal
    holds a gunicorn thread for seconds while gunicorn closes the connection: see README.)"""
    sockets = [idle_websocket(server) for _ in range(THREADS)]
    uploads = [stalled_upload(server) for _ in range(UPLOADS)]
    try:
        time.sleep(0.5)
        assert max(healthz_seconds(server) for _ in range(5)) < 2
    finally:
        for s in sockets:
            if s is not None:
                s.close()
        for u in uploads:
            u.close()


def test_sockets_that_join_no_namespace_are_closed(server):
    """Idle connections cannot keep the socket slots: one in no namespace is closed after the grace."""
    ws = idle_websocket(server)
    assert ws is not None
    ws.settimeout(JOIN_GRACE_S + 5)
    t0 = time.perf_counter()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            frame = ws.recv()  # engine.io's open packet, then pings, until the server closes
            if frame == "" or frame is None:
                raise websocket.WebSocketConnectionClosedException("closed")
    assert JOIN_GRACE_S * 0.8 < time.perf_counter() - t0 < JOIN_GRACE_S + 5
    ws.shutdown()  # close() skips the socket of a connection the server closed
    live = socketio.Client(reconnection=False)
    live.connect(f"http://{server.hostname}:{server.port}", namespaces=["/live"], transports=["websocket"])
    time.sleep(JOIN_GRACE_S + 0.5)
    assert live.connected  # a client in a namespace stays
    live.disconnect()
