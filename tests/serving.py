"""Serving the app for tests and benchmarks that need real clients (python-socketio over websockets,
a browser):

- :func:`serve`: werkzeug's threaded server in this process, reusing the session's inference service;
- :func:`gunicorn`: the production server (``faceapp serve``: ``gunicorn -w 1 --threads N``) in a child
  process, as ``make run`` starts it (browser tests, ``bench/live_clients.py``);
- :class:`WebServer` and :class:`WorkerProcess`: the same server and ``faceapp worker`` as child processes
  started side by side (REDIS_URL mode: tests/test_distributed.py, ``bench/scale_out.py``).
"""
from __future__ import annotations

import json
import os
import signal
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


class ServerProcess:
    """A child process of the app (``faceapp serve`` or ``faceapp worker``), its output kept in a
    temporary file; started by the constructor, so several load their models side by side."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, name: str = "app server"):
        self.command, self.name = command, name
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=REPO_ROOT,
                                        env={**os.environ, "FACEAPP_DEVICE": "cpu", **(env or {})},
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_until(self, ready, timeout_s: float):
        """Polls ``ready()`` until it returns something other than None; raises ServerDidNotStart
        (with the end of the output) when the process exits or the time is up."""
        deadline = time.monotonic() + timeout_s
        while (result := ready()) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                state = (f"exited with status {self.process.returncode}" if self.process.poll() is not None
                         else f"was not ready after {timeout_s:.0f} s")
                raise ServerDidNotStart(f"the {self.name} {state}; the end of its output:\n{self.output()[-3000:]}")
            time.sleep(0.5)
        return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def stop_all(processes: list[ServerProcess]) -> None:
    """Stops them side by side: each gets SIGTERM at once, then each is waited for."""
    for process in processes:
        if process.process.poll() is None:
            process.process.terminate()
    for process in processes:
        process.stop()


class WebServer(ServerProcess):
    """``faceapp serve`` on a free loopback port."""

    def __init__(self, env: dict[str, str] | None = None, threads: int = 32):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(serve_command(self.port, threads), env)

    def wait_ready(self, timeout_s: float = 180) -> dict:
        return self.wait_until(lambda: readiness(self.base_url), timeout_s)


class WorkerProcess(ServerProcess):
    """``faceapp worker`` (REDIS_URL mode's video worker): ready when Celery says so (at INFO, whatever
    LOG_LEVEL says)."""

    def __init__(self, env: dict[str, str]):
        super().__init__([sys.executable, "-m", "app.main", "worker", "--loglevel", "INFO"], env, name="video worker")

    def wait_ready(self, timeout_s: float = 180) -> None:
        self.wait_until(lambda: True if " ready." in self.output() else None, timeout_s)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@contextmanager
def gunicorn(env: dict[str, str] | None = None, threads: int | None = None,
             timeout_s: float = 180) -> Iterator[tuple[str, dict]]:
    """The app under gunicorn on a free loopback port, on the CPU unless ``env`` says otherwise;
    yields (base URL, its /readyz answer) and stops the server on exit."""
    server = WebServer(env, threads)
    try:
        yield server.base_url, server.wait_ready(timeout_s)
    finally:
        server.stop()
