"""Serving while the models load (app/startup.py) and the `faceapp` command (app/main.py)."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo
from werkzeug.test import Client

from app import create_app
from app import main as faceapp
from app.startup import DeferredApp
from helpers import TestConfig, encode
from serving import REPO_ROOT, free_port, serve_command


def _deferred(service, release: threading.Event, **kwargs) -> DeferredApp:
    def factory():
        release.wait(30)
        return create_app(TestConfig, service=service)

    return DeferredApp(factory, **kwargs)


def test_answers_503_while_loading_then_serves_the_app(service, caplog):
    release = threading.Event()
    deferred = _deferred(service, release)
    client = Client(deferred)

    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json["error"]["code"] == "not_ready" and r.json["error"]["message"].endswith(".")
    assert client.get("/api/v1/models").json["error"]["code"] == "not_ready"
    assert client.get("/healthz").json == {"status": "ok"}
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503 and page.mimetype == "text/html" and b'http-equiv="refresh"' in page.data

    with caplog.at_level(logging.INFO, logger="app"):
        deferred.announce("http://127.0.0.1:5000")
        assert "ready on" not in caplog.text  # said once the app is built, not before
        release.set()
        assert deferred.built.wait(30)
    assert "ready on http://127.0.0.1:5000 (device cpu" in caplog.text
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready"
    assert client.get("/").status_code == 200


def test_announce_after_loading_still_says_ready(service, caplog):
    release = threading.Event()
    release.set()
    deferred = _deferred(service, release)
    assert deferred.built.wait(30)
    with caplog.at_level(logging.INFO, logger="app"):
        deferred.announce("http://0.0.0.0:8080")
    assert caplog.text.count("ready on http://0.0.0.0:8080 (device cpu") == 1


def test_a_failed_build_stops_the_server(caplog):
    failures = []
    done = threading.Event()

    def factory():
        raise FileNotFoundError("models/weights/emotion.pt")

    def on_failure(exc):
        failures.append(exc)
        done.set()

    deferred = DeferredApp(factory, on_failure=on_failure)
    assert done.wait(10)
    assert isinstance(failures[0], FileNotFoundError) and deferred.app is None
    assert "could not be built" in caplog.text


def test_faceapp_serve_answers_503_until_ready_and_logs_the_address():
    """The real `faceapp serve` (gunicorn): while the models load, /readyz answers at once with 503."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    statuses = []
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(serve_command(port, threads=4), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "FACEAPP_DEVICE": "cpu"})
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                        statuses.append(response.status)
                        break
                except urllib.error.HTTPError as exc:  # answered: 503 while loading
                    statuses.append(exc.code)
                    assert json.load(exc)["error"]["code"] == "not_ready"
                except (urllib.error.URLError, ConnectionError):
                    pass  # not listening yet
                time.sleep(0.05)
            # the worker logs its ready line just after the app is built
            for _ in range(50):
                log.seek(0)
                output = log.read().decode(errors="replace")
                if "ready on" in output:
                    break
                time.sleep(0.1)
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert statuses and statuses[-1] == 200, output[-3000:]
    assert 503 in statuses and set(statuses) == {503, 200}
    assert f"ready on {url} (device cpu" in output


def test_faceapp_serve_stops_when_the_models_cannot_be_loaded(tmp_path):
    missing = tmp_path / "emotion.pt"
    result = subprocess.run(serve_command(free_port(), threads=2), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=180, env={**os.environ, "FACEAPP_DEVICE": "cpu",
                                              "FACEAPP_EMOTION_WEIGHTS": str(missing)})
    assert result.returncode == 3, result.stderr[-3000:]  # gunicorn: "Worker failed to boot", not 503 for ever
    assert "could not be built" in result.stderr and str(missing) in result.stderr


def test_pyproject_installs_the_faceapp_command():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module, _, attr = pyproject["project"]["scripts"]["faceapp"].partition(":")
    assert (module, attr) == ("app.main", "cli")
    assert sorted(faceapp.cli.list_commands(None)) == ["analyze", "serve", "worker"]


def test_faceapp_analyze_prints_csv_with_faces_numbered_from_one(service, tmp_path, side_by_side):
    path = tmp_path / "pair.jpg"
    path.write_bytes(encode(side_by_side))
    info = ScriptInfo(create_app=lambda: create_app(TestConfig, service=service))
    result = CliRunner().invoke(faceapp.cli, ["analyze", "--format", "csv", str(path)], obj=info)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["face"] for row in rows] == ["1", "2"]


def test_faceapp_refuses_to_run_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(faceapp, "ROOT", tmp_path)
    result = CliRunner().invoke(faceapp.cli, ["serve"])
    assert result.exit_code == 1 and "pip install -e ." in result.output


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["analyze", "--help"], ["worker", "--help"]])
def test_faceapp_help(args):
    result = subprocess.run([sys.executable, "-m", "app.main", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Usage: " in result.stdout
