"""gunicorn settings and server hooks, one file for every way the app is served: ``faceapp serve`` passes
``-c python:app.gunicorn_hooks``, and a plain ``gunicorn ... wsgi:app`` in the repository root reads
``gunicorn.conf.py``, which imports this module. Command-line options still override the settings.

gunicorn answers some malformed requests itself, before the app sees them: a request line over
``limit_request_line`` (414), headers over ``limit_request_field_size`` or ``limit_request_fields``
(431), an invalid request line, method or header (400). Its answers are HTML; here they take the app's
JSON error shape (``app/errors.py``) instead, so that every answer of the server is JSON for API clients.
"""
import json
import logging
import re

from gunicorn import util

from app.config import Config

# gunicorn's defaults, stated: a 4 KB request line, 100 header fields of at most 8 KB each.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# A thread per request (gthread): enough for every socket and upload the app admits, and 32 more
# (app/config.py, app/connections.py).
threads = Config.THREADS
# Spare threads under which idle or slow clients could keep /healthz and pages waiting.
MIN_SPARE_THREADS = 4


def _write_json_error(sock, status_int, reason, mesg):
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    util.write_nonblock(sock, head + body)


# gunicorn's workers call util.write_error for these answers (gunicorn/workers/base.py: handle_error).
util.write_error = _write_json_error


def post_worker_init(worker):
    """Tell the app where it listens, so that its ready line names the address; warn when the threads
    leave too few spare beyond the sockets and uploads the app admits."""
    held = Config.MAX_SOCKET_CONNECTIONS + Config.MAX_CONCURRENT_UPLOADS
    if worker.cfg.threads - held < MIN_SPARE_THREADS:
        logging.getLogger("app.connections").warning(
            "%d threads, and sockets (MAX_SOCKET_CONNECTIONS %d) and uploads (MAX_CONCURRENT_UPLOADS %d) may hold "
            "%d of them: idle or slow clients can keep other requests waiting; give at least %d threads",
            worker.cfg.threads, Config.MAX_SOCKET_CONNECTIONS, Config.MAX_CONCURRENT_UPLOADS, held,
            held + MIN_SPARE_THREADS)
    announce = getattr(worker.wsgi, "announce", None)
    if announce is not None and worker.sockets:
        announce(str(worker.sockets[0]))
