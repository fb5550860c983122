"""Connections that a few idle or slow clients cannot exhaust (WSGI middleware, outermost).

The server runs a thread per request (gunicorn's gthread worker), and a Socket.IO connection holds its
thread for as long as it lives (a websocket; a long-poll for up to its ping interval). So:

- Socket.IO connections, on every namespace or none, are bounded all together (``MAX_SOCKET_CONNECTIONS``,
  256), and one client address holds at most ``MAX_SOCKETS_PER_ADDRESS`` (32) of them; beyond either a
  connection attempt is answered at once with 503 ``busy``.
- Requests whose body is being received are bounded the same way (``MAX_CONCURRENT_UPLOADS``, 64;
  ``MAX_UPLOADS_PER_ADDRESS``, 16; a slot is free again as soon as the body is in): beyond it 503 ``busy``
  before any of the body is read.
- A request body must keep arriving: a read that waits more than ``REQUEST_BODY_TIMEOUT_S`` for the next
  bytes ends the request with 408 ``request_timeout`` (gunicorn reads bodies with no timeout of its own).
- A Socket.IO connection that has joined no namespace ``SOCKET_JOIN_GRACE_S`` after it opened is closed.

gunicorn's threads are sized for both bounds and 32 more (``THREADS``, app/config.py; a thread blocked
on an idle socket costs little memory: README, Benchmarks, Connections), and those keep answering
``/healthz``, pages, quick API calls and new live clients whatever idle or slow clients do.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from werkzeug.exceptions import RequestTimeout

log = logging.getLogger(__name__)

UPLOAD_SLOT_WAIT_S = 0.0


class _Slots:
    """``size`` slots, of which one client address holds at most ``per_address`` (0: no such bound)."""

    def __init__(self, size: int, per_address: int = 0):
        self.size = int(size)
        self.per_address = int(per_address)
        self.used = 0
        self.by_address: dict[str, int] = {}
        self._freed = threading.Condition()

    def _full_for(self, address: str) -> bool:
        return self.used >= self.size or 0 < self.per_address <= self.by_address.get(address, 0)

    def take(self, address: str, wait_s: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_s
        with self._freed:
            while self._full_for(address):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._freed.wait(left)
            self.used += 1
            self.by_address[address] = self.by_address.get(address, 0) + 1
            return True

    def give(self, address: str) -> None:
        with self._freed:
            self.used -= 1
            held = self.by_address.pop(address) - 1
            if held:
                self.by_address[address] = held
            self._freed.notify_all()  # waiters may be of several addresses


class _Once:
    """Gives a slot back once, whichever comes first: the body fully read, or the request's end."""

    def __init__(self, slots: _Slots, address: str):
        self._slots, self._address, self._done, self._lock = slots, address, False, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._slots.give(self._address)


class _TimedInput:
    """wsgi.input whose reads raise 408 (an HTTPException, answered as JSON by the app) when the socket
    timeout set on the connection expires, and which gives its upload slot back once the body is in."""

    def __init__(self, stream, length: int | None, on_complete):
        self._stream, self._left, self._on_complete = stream, length, on_complete

    def _call(self, method, *args):
        try:
            data = getattr(self._stream, method)(*args)
        except (socket.timeout, TimeoutError):
            raise RequestTimeout("the request body stopped arriving; send it without pauses") from None
        if isinstance(data, (bytes, bytearray)):
            if self._left is not None:
                self._left -= len(data)
            if not data or (self._left is not None and self._left <= 0):
                self._on_complete()
        return data

    def read(self, *args):
        return self._call("read", *args)

    def readline(self, *args):
        return self._call("readline", *args)

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _busy(start_response, message: str):
    body = json.dumps({"error": {"code": "busy", "message": message}}).encode()
    start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json"), ("Retry-After", "5"),
                                               ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]


@dataclass(frozen=True)
class ConnectionLimits:
    max_sockets: int
    max_uploads: int
    body_timeout_s: float
    sockets_per_address: int = 0  # 0: no bound per client address
    uploads_per_address: int = 0

    @classmethod
    def from_config(cls, config) -> "ConnectionLimits":
        return cls(max_sockets=int(config["MAX_SOCKET_CONNECTIONS"]),
                   max_uploads=int(config["MAX_CONCURRENT_UPLOADS"]),
                   body_timeout_s=float(config["REQUEST_BODY_TIMEOUT_S"]),
                   sockets_per_address=int(config["MAX_SOCKETS_PER_ADDRESS"]),
                   uploads_per_address=int(config["MAX_UPLOADS_PER_ADDRESS"]))

    @property
    def threads_held(self) -> int:
        """The most gunicorn threads that sockets and uploads can hold at once."""
        return self.max_sockets + self.max_uploads


class ConnectionGuard:
    def __init__(self, wsgi_app, limits: ConnectionLimits, socketio_path: str = "/socket.io/"):
        self.wsgi_app = wsgi_app
        self.limits = limits
        self.sockets = _Slots(limits.max_sockets, limits.sockets_per_address)
        self.uploads = _Slots(limits.max_uploads, limits.uploads_per_address)
        self.body_timeout_s = float(limits.body_timeout_s)
        self.socketio_path = socketio_path

    def __call__(self, environ, start_response):
        address = environ.get("REMOTE_ADDR") or ""
        if environ.get("PATH_INFO", "").startswith(self.socketio_path):
            if not self.sockets.take(address):
                return _busy(start_response, "the server holds its maximum of socket connections (in all, or from "
                                             "your address); try again shortly")
            return self._run(environ, start_response, _Once(self.sockets, address))
        if _has_body(environ):
            sock = environ.get("gunicorn.socket")
            if sock is not None:  # also for a refusal: gunicorn may read the unread body before closing
                sock.settimeout(self.body_timeout_s)
            # A burst of uploads waits a moment for a slot; slots free as soon as bodies are in.
            if not self.uploads.take(address, wait_s=UPLOAD_SLOT_WAIT_S):
                return _busy(start_response, "the server is receiving its maximum of uploads (in all, or from your "
                                             "address); try again shortly")
            release = _Once(self.uploads, address)
            length = environ.get("CONTENT_LENGTH") or ""
            environ["wsgi.input"] = _TimedInput(environ["wsgi.input"], int(length) if length.isdigit() else None,
                                                release)
            try:  # the view has read what it reads of the body once it returns
                return self.wsgi_app(environ, _closing_on_timeout(start_response))
            finally:
                release()
        return self.wsgi_app(environ, start_response)

    def _run(self, environ, start_response, release):
        try:
            result = self.wsgi_app(environ, start_response)
        except BaseException:
            release()
            raise
        return _Releasing(result, release)


class _Releasing:
    """The response iterable, giving the slot back when the server closes it (after the last byte)."""

    def __init__(self, result, release):
        self._result, self._release = result, release

    def __iter__(self):
        return iter(self._result)

    def close(self):
        try:
            if hasattr(self._result, "close"):
                self._result.close()
        finally:
            self._release()


def _closing_on_timeout(start_response):
    """A 408 leaves the rest of the body unread: the connection is closed, never kept alive."""
    def start(status, headers, exc_info=None):
        if status.startswith("408"):
            headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
        return start_response(status, headers, exc_info)
    return start


def _has_body(environ) -> bool:
    length = environ.get("CONTENT_LENGTH") or ""
    return (length.isdigit() and int(length) > 0) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def close_connections_without_namespace(server, namespaces: list[str], grace_s: float) -> None:
    """A Socket.IO connection that has joined none of ``namespaces`` ``grace_s`` after it opened (it
    joined none, or every join was refused: busy, unauthorized) is closed, so that idle connections
    cannot keep the socket slots from live clients. ``server`` is the python-socketio server."""
    connected = server._handle_eio_connect  # python-socketio's own engine.io connect handler

    def check(eio_sid: str) -> None:
        if _is_idle(server, eio_sid, namespaces):
            # engine.io's close can wait seconds on the client: on a thread of its own, not the sweeper's.
            threading.Thread(target=_close, args=(server, eio_sid), name="socket-close", daemon=True).start()

    deadlines = _JoinDeadlines(check, grace_s)

    def on_connect(eio_sid, environ, *args):
        result = connected(eio_sid, environ, *args)
        deadlines.add(eio_sid)
        return result

    server.eio.on("connect", on_connect)


class _JoinDeadlines:
    """One thread that calls ``check(eio_sid)`` ``grace_s`` after each connection opened. (A timer
    thread per connection cost a thread per idle client: 200 re-opened websockets held ~200 more.)"""

    def __init__(self, check, grace_s: float):
        self._check, self._grace_s = check, float(grace_s)
        self._due: deque[tuple[float, str]] = deque()  # in order: the grace is the same for all
        self._added = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, eio_sid: str) -> None:
        with self._added:
            self._due.append((time.monotonic() + self._grace_s, eio_sid))
            if self._thread is None:  # started on first use: after gunicorn forks its worker
                self._thread = threading.Thread(target=self._run, name="socket-join-deadlines", daemon=True)
                self._thread.start()
            self._added.notify()

    def _run(self) -> None:
        while True:
            with self._added:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._added.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, eio_sid = self._due.popleft()
            try:
                self._check(eio_sid)
            except Exception:  # noqa: BLE001 - a failed check must not stop the others
                log.exception("closing idle socket connection %s failed", eio_sid)


def _is_idle(server, eio_sid: str, namespaces: list[str]) -> bool:
    """Still open, and in none of ``namespaces``."""
    return (server.environ.get(eio_sid) is not None
            and not any(server.manager.sid_from_eio_sid(eio_sid, ns) for ns in namespaces))


def _close(server, eio_sid: str) -> None:
    environ = server.environ.get(eio_sid)
    if environ is None:
        return
    server.eio.disconnect(eio_sid)
    # engine.io's close waits for the client to close its side of a websocket, and the connection
    # keeps its thread meanwhile: an idle client never does, so the connection itself is shut.
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
