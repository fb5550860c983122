"""The lock on the door: optional API keys (header, browser session, Socket.IO auth), rate limits per
key or address (Flask-Limiter), and security headers on every response.

With ``API_KEYS`` unset the app is open, as on a workstation. With keys set:
- ``/api/...`` needs ``Authorization: Bearer <key>`` (or the browser session below), else 401;
- the pages redirect to ``/login``, where a key is entered once; the browser then holds a signed,
  HttpOnly, SameSite=Strict session cookie that names the key (by its id, never the key itself), and
  the pages' own API calls and sockets are authenticated by that cookie;
- Socket.IO connections need the key in their auth payload (``{"token": key}``), the header, or the
  session cookie; else the connection is refused (``connect_error`` with ``data.code == "unauthorized"``).
``/healthz``, ``/readyz``, ``/api/v1/openapi.yaml``, static files and ``/login`` stay open.
"""
from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass

from flask import (Blueprint, Flask, Request, current_app, g, redirect, render_template, request, session,
                   url_for)
from flask_limiter import HeaderNames, Limiter
from flask_limiter.util import get_remote_address

from app.errors import error_response

SESSION_KEY = "api_key_id"
UNAUTHORIZED = "a valid API key is required: send 'Authorization: Bearer <key>'"
_OPEN_PATHS = ("/healthz", "/readyz", "/login", "/logout", "/api/v1/openapi.yaml", "/favicon.ico")
_OPEN_PREFIXES = ("/static/", "/vendor/")

# One policy for every response; no 'unsafe-inline': every script and style is a file under static/
# or /vendor/. img/media blob: and data: for pictures the pages make themselves (uploads, snapshots).
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers that predate CSP 2
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "camera=(self), microphone=(), geolocation=()"),
)

bp = Blueprint("auth", __name__)


def key_id(key: str) -> str:
    """What logs, sessions, job owners and rate-limit counters hold instead of a key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ApiKeys:
    ids: dict[str, str]  # key id -> key

    @classmethod
    def parse(cls, raw: str | tuple | list | None) -> "ApiKeys":
        keys = raw.split(",") if isinstance(raw, str) else list(raw or ())
        keys = [k.strip() for k in keys if k and k.strip()]
        if any(len(k) < 16 for k in keys):
            raise ValueError("every key in API_KEYS must be at least 16 characters")
        return cls({key_id(k): k for k in keys})

    @property
    def enabled(self) -> bool:
        return bool(self.ids)

    def identify(self, presented: str | None) -> str | None:
        """The id of the key presented, or None; compared in constant time."""
        if not presented:
            return None
        found = None
        for kid, key in self.ids.items():
            if hmac.compare_digest(presented.encode(), key.encode()):
                found = kid
        return found


def api_keys() -> ApiKeys:
    return current_app.extensions["api_keys"]


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def current_key_id(auth: object = None) -> str | None:
    """The key this request (or Socket.IO connect, with its ``auth`` payload) is made with: the
    Authorization header, the auth payload's ``token``, or the browser session; None without keys."""
    keys = api_keys()
    if not keys.enabled:
        return None
    if auth is None and "key_id" in g:
        return g.key_id
    token = auth.get("token") if isinstance(auth, dict) and isinstance(auth.get("token"), str) else None
    found = keys.identify(token) or keys.identify(_bearer())
    if found is None and session.get(SESSION_KEY) in keys.ids:
        found = session[SESSION_KEY]
    if auth is None:
        g.key_id = found
    return found


def socket_allowed(auth: object) -> bool:
    """For Socket.IO ``connect`` handlers."""
    return not api_keys().enabled or current_key_id(auth) is not None


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


def require_key():
    if not api_keys().enabled or _is_open(request.path) or current_key_id() is not None:
        return None
    if request.path.startswith("/api/"):
        return error_response(401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": 'Bearer realm="faceapp"'})
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no //host): a login link cannot send anyone elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if not api_keys().enabled:
        return redirect("/")
    target = _safe_next(request.values.get("next"))
    if request.method == "POST":
        found = api_keys().identify(request.form.get("key", "").strip())
        if found is not None:
            session.clear()
            session[SESSION_KEY] = found
            session.permanent = True
            return redirect(target)
        return render_template("login.html", next=target, error="That key is not valid."), 401
    return render_template("login.html", next=target, error=None)


@bp.post("/logout")
def logout():
    session.pop(SESSION_KEY, None)
    return redirect(url_for("auth.login"))


class SecurityHeaders:
    """WSGI middleware: the headers on every response, Socket.IO's (answered outside Flask) included."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [(n, v) for n, v in SECURITY_HEADERS if n.lower() not in present]
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


class InMemoryUploadsRequest(Request):
    """Uploads are parsed into memory (werkzeug spools a body over 500 KB to a temporary file): photos
    and live frames never touch the disk. Bodies are bounded by MAX_CONTENT_LENGTH. Videos, which
    become jobs on disk anyway and may be 500 MB, keep werkzeug's spooling."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        if self.blueprint == "video_api":
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        return io.BytesIO()


RATE_LIMIT_RETRY_AFTER = "X-RateLimit-Retry-After"


def _retry_after_on_429(response):
    if response.status_code == 429 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = response.headers.get(RATE_LIMIT_RETRY_AFTER, "60")
    return response


def rate_limit_key() -> str:
    """Per key when the request has one, else per client address."""
    return current_key_id() or get_remote_address()


def rate_limit_storage(config) -> str:
    """RATELIMIT_STORAGE_URI; unset: REDIS_URL when set (the web processes count together), else memory."""
    return config["RATELIMIT_STORAGE_URI"] or config["REDIS_URL"] or "memory://"


def init_app(app: Flask) -> Limiter:
    """Keys, the login page, rate limits and the headers; call after ``socketio.init_app(app)`` (the
    headers wrap Socket.IO's middleware too) and before the blueprints are registered."""
    app.request_class = InMemoryUploadsRequest
    app.extensions["api_keys"] = ApiKeys.parse(app.config["API_KEYS"])
    app.register_blueprint(bp)
    app.before_request(require_key)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)
    # Flask-Limiter puts its Retry-After on every response, which would override the one of a 503 and
    # tell a client of a 200 to wait: it goes in its own header, and becomes Retry-After on a 429 only.
    # Registered before the limiter, so that it runs after the limiter's own after_request.
    app.after_request(_retry_after_on_429)
    storage_uri = rate_limit_storage(app.config)
    shared = not storage_uri.startswith("memory://")
    # On Redis: the counters under REDIS_KEY_PREFIX, quick to give up; and while Redis is away each process
    # counts in memory instead of failing requests, so photos and live frames go on through its restart.
    on_redis = storage_uri.startswith(("redis://", "rediss://"))
    storage_options = ({"key_prefix": f"{app.config['REDIS_KEY_PREFIX']}limits", "socket_connect_timeout": 2,
                        "socket_timeout": 5} if on_redis else {})
    limiter = Limiter(rate_limit_key, app=app, storage_uri=storage_uri, storage_options=storage_options,
                      headers_enabled=True, strategy="moving-window", in_memory_fallback_enabled=shared,
                      header_name_mapping={HeaderNames.RETRY_AFTER: RATE_LIMIT_RETRY_AFTER})
    limiter.limit(app.config["LOGIN_RATE_LIMIT"], methods=["POST"])(bp)
    return limiter
