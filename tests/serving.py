"""Serving the app for tests and benchmarks that need real clients (python-socketio over websockets,
a browser):

- :func:`serve`: werkzeug's threaded server in this process, reusing the session's inference service;
- :func:`gunicorn`: the production server (``faceapp serve``: ``gunicorn -w 1 --threads N``) in a child
  process, as ``make run`` starts it (browser tests, ``bench/live_clients.py``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flask import Flask
from werkzeug.serving import make_server

REPO_ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serves ``app`` on a free loopback port; yields its base URL."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        thread.join(timeout=10)
        http.server_close()


class ServerDidNotStart(RuntimeError):
    """The gunicorn child exited or was not ready in time; the message ends with its output."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readiness(base_url: str) -> dict | None:
    """The /readyz answer, or None while the server is not up or still loading (503)."""
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError):  # HTTPError (503 while loading) is a URLError
        return None


def serve_command(port: int, threads: int | None = None) -> list[str]:
    """``faceapp serve`` on a loopback port (``threads``: its default unless given), without gunicorn's
    control socket (servers run side by side)."""
    return [sys.executable, "-m", "app.main", "serve", "--host", "127.0.0.1", "--port", str(port),
            *(["--threads", str(threads)] if threads else []), "--", "--no-control-socket"]


@contextmanager
def gunicorn(env: dict[str, str] | None = None, threads: int | None = None,
             timeout_s: float = 180) -> Iterator[tuple[str, dict]]:
    """The app under gunicorn on a free loopback port, on the CPU unless ``env`` says otherwise;
    yields (base URL, its /readyz answer) and stops the server on exit."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = serve_command(port, threads)
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "FACEAPP_DEVICE": "cpu", **(env or {})},
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while (ready := readiness(base_url)) is None:
                if server.poll() is not None or time.monotonic() > deadline:
                    state = (f"exited with status {server.returncode}" if server.poll() is not None
                             else f"was not ready after {timeout_s:.0f} s")
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise ServerDidNotStart(f"the app server {state}; the end of its output:\n{output[-3000:]}")
                time.sleep(0.5)
            yield base_url, ready
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
