"""The app as `make run` serves it (gunicorn, reading gunicorn.conf.py): what the server itself answers."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from serving import gunicorn


@pytest.fixture(scope="module")
def server():
    with gunicorn(threads=8) as (base_url, _ready):
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
