"""One error shape for the whole app: ``{"error": {"code", "message"}}`` for API callers (and any
client that prefers JSON), an HTML page for browsers. Nothing escapes as an unhandled 500."""
from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad input from a client; ``status`` is the HTTP status it deserves, ``code`` the API error code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _default_code(status: int) -> str:
    return re.sub(r"[^a-z0-9]+", "_", HTTP_STATUS_CODES.get(status, "error").lower()).strip("_")


# "<_io.BytesIO object at 0x7ff9...>" and the like, as some library messages quote their arguments.
_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def client_message(message: str) -> str:
    """A message fit for a client: object reprs (memory addresses, internal types) removed."""
    return re.sub(r"\s{2,}", " ", _OBJECT_REPR.sub("", message)).replace(" ()", "").strip()


def error_body(code: str, message: str) -> dict:
    """The one error shape, for HTTP responses and Socket.IO answers alike."""
    return {"error": {"code": code, "message": client_message(message)}}


def error_response(status: int, message: str | None = None, code: str | None = None, headers=None):
    """The JSON error response every API failure goes through."""
    body = error_body(code or _default_code(status), message or HTTP_STATUS_CODES.get(status, "Unknown error"))
    response = jsonify(body)
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def bad_request(message: str, code: str = "bad_request"):
    return error_response(400, message, code)


def wants_json() -> bool:
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException):
        message = exc.description
        if exc.code == 413:
            # The video routes set their own, larger, per-request limit (app/video).
            limit_mb = app.config["MAX_VIDEO_MB" if request.blueprint == "video_api" else "MAX_UPLOAD_MB"]
            message = f"the upload is larger than the {limit_mb:g} MB limit"
        # The exception's own headers say what the status needs (405: Allow, 416: Content-Range, ...).
        headers = [(k, v) for k, v in exc.get_headers(request.environ) if k.lower() != "content-type"]
        if wants_json():
            return error_response(exc.code or 500, message, headers=headers)
        page = render_template("error.html", status=exc.code, title=exc.name, message=message)
        return page, exc.code, headers

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return error_response(500, "internal error; the server logged the details", "internal_error")
        return render_template("error.html", status=500, title="Internal error",
                               message="Something went wrong; the server logged the details."), 500


def socket_error(exc: Exception):
    """An unexpected failure in a Socket.IO handler (every namespace without a handler of its own):
    logged, told to the client as an ``error`` event and as the acknowledgement when the event asked
    for one. The connection stays up; a failed ``connect`` is refused."""
    from flask_socketio import emit

    event, namespace = request.event["message"], request.namespace
    log.error("socket.io %r handler failed on %s for client %s", event, namespace, request.sid, exc_info=exc)
    if event == "connect":
        return False
    body = error_body("internal_error", f"the server failed on this {event!r} event; it logged the details")
    emit("error", body, namespace=namespace)
    return body
