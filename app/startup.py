"""Serving while the models load: gunicorn's target (``wsgi:app``) answers at once.

Building the app loads and warms up every model, which takes seconds (longer on a cold disk). Done
on the worker's import, the port would accept connections and answer nothing until then.
:class:`DeferredApp` builds the app on a thread instead and, meanwhile, answers ``/healthz`` (the
process is up), ``503 not_ready`` as JSON to the API and ``/readyz``, and a page that reloads itself
to browsers. When the app is built it logs one line, ``ready on http://HOST:PORT (device ...)``.
If building fails (a missing or corrupt weight file) the process exits with gunicorn's
"worker failed to boot" status, so the server stops instead of answering 503 for ever.
Not for gunicorn's ``--preload``: the loading thread would start in the master and not survive the fork.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable, Iterable

from flask import Flask

log = logging.getLogger(__name__)

# gunicorn's Arbiter.WORKER_BOOT_ERROR: the master halts instead of starting a new worker.
WORKER_BOOT_ERROR = 3
RETRY_AFTER_S = 2

_LOADING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Loading models…</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3rem auto; max-width: 32rem; padding: 0 1rem">
<h1>Loading models…</h1><p>The server has started and is loading its models. This page reloads itself.</p>
</body></html>"""


class DeferredApp:
    """A WSGI app that builds the real one with ``factory`` on a thread and stands in until then."""

    def __init__(self, factory: Callable[[], Flask],
                 on_failure: Callable[[BaseException], None] | None = None):
        self._factory = factory
        self._on_failure = on_failure or _exit_worker
        self._lock = threading.Lock()
        self._app: Flask | None = None
        self._url: str | None = None
        self.built = threading.Event()
        log.info("loading models; the server answers 503 until they are ready")
        threading.Thread(target=self._build, name="app-loader", daemon=True).start()

    @property
    def app(self) -> Flask | None:
        """The built app, or None while it is loading."""
        return self._app

    def announce(self, url: str) -> None:
        """Where the server listens (gunicorn's ``post_worker_init`` hook calls this): the ready line
        names it, now or once the app is built."""
        with self._lock:
            self._url = url
            app = self._app
        if app is not None:
            _log_ready(app, url)

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        app = self._app
        if app is not None:
            return app(environ, start_response)
        return _while_loading(environ, start_response)

    def _build(self) -> None:
        try:
            app = self._factory()
        except BaseException as exc:  # noqa: BLE001 - any failure stops the server, said in the log
            log.exception("the app could not be built; stopping")
            self._on_failure(exc)
            return
        with self._lock:
            self._app = app
            url = self._url
        if url is not None:
            _log_ready(app, url)
        self.built.set()


def _log_ready(app: Flask, url: str) -> None:
    device = app.extensions["inference"].device_description
    logging.getLogger("app").info("ready on %s (device %s)", url, device)


def _while_loading(environ: dict, start_response) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _respond(start_response, "200 OK", "application/json", {"status": "ok"})
    headers = [("Retry-After", str(RETRY_AFTER_S))]
    wants_page = ("text/html" in environ.get("HTTP_ACCEPT", "") and not path.startswith("/api/")
                  and path != "/readyz")
    if wants_page:
        return _respond(start_response, "503 Service Unavailable", "text/html; charset=utf-8",
                        _LOADING_PAGE.format(retry=RETRY_AFTER_S), headers)
    error = {"error": {"code": "not_ready", "message": "The models are still loading; try again in a few seconds."}}
    return _respond(start_response, "503 Service Unavailable", "application/json", error, headers)


def _respond(start_response, status: str, mimetype: str, body, headers=()) -> list[bytes]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    start_response(status, [("Content-Type", mimetype), ("Content-Length", str(len(data))), *headers])
    return [data]


def _exit_worker(_exc: BaseException) -> None:
    logging.shutdown()
    os._exit(WORKER_BOOT_ERROR)
