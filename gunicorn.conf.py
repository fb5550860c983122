"""gunicorn settings, read by every ``gunicorn ... wsgi:app`` started in the repository root (``make run``,
the Dockerfile, ``tests/serving.py``); command-line options still override them.

gunicorn answers some malformed requests itself, before the app sees them: a request line over
``limit_request_line`` (414), headers over ``limit_request_field_size`` or ``limit_request_fields``
(431), an invalid request line, method or header (400). Its answers are HTML; here they take the app's
JSON error shape (``app/errors.py``) instead, so that every answer of the server is JSON for API clients.
"""
import json
import re

from gunicorn import util

# gunicorn's defaults, stated: a 4 KB request line, 100 header fields of at most 8 KB each.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


def _write_json_error(sock, status_int, reason, mesg):
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    util.write_nonblock(sock, head + body)


# gunicorn's workers call util.write_error for these answers (gunicorn/workers/base.py: handle_error).
util.write_error = _write_json_error
