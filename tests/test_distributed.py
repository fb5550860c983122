"""REDIS_URL mode with real parts on loopback: two web processes (``faceapp serve``, gunicorn) on two
ports, Celery worker processes (``faceapp worker``), and a ``redis-server`` of this module's own on a
free port (the Redis-restart case stops and starts it; a shared server must not be). Without
redis-server the module skips with the reason, except under CI, where that fails.

The processes load their models side by side once for the module; the clips are the video tests'
moving face (tests/video_clips.py), long enough that a job is seen running.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import socketio

from helpers import encode
from redis_parts import RedisServer
from serving import REPO_ROOT, WebServer, WorkerProcess, free_port, readiness, stop_all
from video_clips import moving_face_frames, write_clip

JOB_TIMEOUT_S = 180  # a job's end, restarts and a replacement worker's model loading included


@dataclass
class Topology:
    redis: RedisServer
    a: WebServer
    b: WebServer
    env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale-out")
    (folder / "redis").mkdir()
    redis_server = RedisServer(folder / "redis")
    env = {"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "faceapp-test:", "VIDEO_DIR": str(folder / "videos"),
           "UPLOAD_FOLDER": str(folder / "uploads"), "VIDEO_LEASE_S": "3", "LOG_LEVEL": "INFO"}
    topology = Topology(redis_server, WebServer(env, threads=8), WebServer(env, threads=8), env,
                        [WorkerProcess(env)])
    try:
        for process in (topology.a, topology.b, *topology.workers):
            process.wait_ready()
        yield topology
    finally:  # the tests replace killed processes in ``topology``: stop what it holds now
        stop_all([topology.a, topology.b, *topology.workers])
        redis_server.stop()


@pytest.fixture(scope="module")
def clips(astronaut, tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {n: write_clip(folder / f"face-{n}.mp4", moving_face_frames(astronaut, frames=n)) for n in (96, 240, 480)}


def submit(base_url: str, clip: Path) -> dict:
    response = requests.post(f"{base_url}/api/v1/videos", files={"video": (clip.name, clip.read_bytes())}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def status(base_url: str, job_id: str) -> dict | None:
    """The job's status, or None while the web process cannot read it (503: Redis away)."""
    response = requests.get(f"{base_url}/api/v1/videos/{job_id}", timeout=10)
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def wait_finished(base_url: str, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = status(base_url, job_id)
        if current is not None and current["status"] in ("done", "failed", "cancelled"):
            return current
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {timeout_s} s: {current}")


def download(base_url: str, job_id: str, name: str) -> bytes:
    response = requests.get(f"{base_url}/api/v1/videos/{job_id}/{name}", timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_progress_of_a_video_sent_to_b_reaches_a_client_of_a_and_results_download_from_both(topology, clips):
    events: list[dict] = []
    finished = threading.Event()

    def on_progress(data):
        events.append(data)
        if data["status"] in ("done", "failed", "cancelled"):
            finished.set()

    client = socketio.Client(reconnection=False)
    client.on("progress", on_progress, namespace="/videos")
    client.connect(topology.a.base_url, namespaces=["/videos"], transports=["websocket"], wait_timeout=10)
    try:
        created = submit(topology.b.base_url, clips[240])
        watched = client.call("watch", created["id"], namespace="/videos", timeout=10)
        assert watched["id"] == created["id"] and watched["status"] in ("queued", "running")
        assert finished.wait(JOB_TIMEOUT_S), events[-3:]
    finally:
        client.disconnect()
    assert events[-1]["status"] == "done" and events[-1]["frames_done"] == 240, events[-1]
    assert any(e["status"] == "running" and 0 < e["progress"] < 1 for e in events), events
    assert [e["frames_done"] for e in events] == sorted(e["frames_done"] for e in events)

    for name in ("summary.json", "annotated.mp4", "frames.csv"):
        from_a, from_b = (download(server.base_url, created["id"], name) for server in (topology.a, topology.b))
        assert from_a == from_b and len(from_a) > 100
    summary = requests.get(f"{topology.a.base_url}/api/v1/videos/{created['id']}/summary.json", timeout=10).json()
    assert summary["frames"] == 240 and len(summary["tracks"]) == 1


def test_while_redis_restarts_photos_and_live_frames_go_on_videos_get_503_and_no_job_is_lost(
        topology, clips, astronaut):
    accepted = [submit(topology.b.base_url, clips[96])["id"] for _ in range(2)]
    live = socketio.Client(reconnection=False)
    live.connect(topology.a.base_url, namespaces=["/live"], transports=["websocket"], wait_timeout=10)
    jpeg = encode(astronaut)
    topology.redis.stop()
    try:
        refused = requests.post(f"{topology.a.base_url}/api/v1/videos",
                                files={"video": ("face.mp4", clips[96].read_bytes())}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_unavailable", refused.text
        assert "Redis" in refused.json()["error"]["message"] and refused.headers["Retry-After"]
        photo = requests.post(f"{topology.a.base_url}/api/v1/images", files={"image": ("a.jpg", jpeg)}, timeout=60)
        assert photo.status_code == 200 and len(photo.json()["images"][0]["faces"]) == 1, photo.text
        frame = live.call("frame", {"seq": 1, "image": jpeg}, namespace="/live", timeout=60)
        assert frame["seq"] == 1 and len(frame["faces"]) == 1, frame
        assert requests.get(f"{topology.b.base_url}/readyz", timeout=10).status_code == 200
    finally:
        live.disconnect()
        topology.redis.start()
    for job_id in accepted:
        finished = wait_finished(topology.a.base_url, job_id)
        assert finished["status"] == "done" and finished["frames_done"] == 96, finished
        assert download(topology.b.base_url, job_id, "summary.json")
    # Submission works again.
    assert wait_finished(topology.a.base_url, submit(topology.a.base_url, clips[96])["id"])["status"] == "done"


def test_a_web_process_killed_and_restarted_loses_no_job(topology, clips):
    created = submit(topology.b.base_url, clips[96])
    topology.b.process.send_signal(signal.SIGKILL)  # the gunicorn master; its worker goes with it
    topology.b.process.wait(timeout=10)
    topology.b.stop()
    topology.b = WebServer(topology.env, threads=8)  # restarted, as a supervisor would
    assert wait_finished(topology.a.base_url, created["id"])["status"] == "done"
    topology.b.wait_ready()
    assert status(topology.b.base_url, created["id"])["status"] == "done"
    assert download(topology.b.base_url, created["id"], "annotated.mp4") == \
        download(topology.a.base_url, created["id"], "annotated.mp4")


def test_a_worker_killed_mid_job_is_taken_up_by_another(topology, clips):
    created = submit(topology.a.base_url, clips[480])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (current := status(topology.a.base_url, created["id"]))["frames_done"] < 16:
        assert current["status"] in ("queued", "running") and time.monotonic() < deadline, current
        time.sleep(0.05)
    assert current["status"] == "running" and current["progress"] < 0.9, current
    topology.workers[0].kill()
    replacement = WorkerProcess(topology.env)  # as a supervisor (compose's restart: always) would
    topology.workers.append(replacement)
    replacement.wait_ready()
    finished = wait_finished(topology.a.base_url, created["id"])
    assert finished["status"] == "done" and finished["frames_done"] == 480, finished
    assert any("worker running it stopped" in note for note in finished["notes"]), finished
    summary = requests.get(f"{topology.b.base_url}/api/v1/videos/{created['id']}/summary.json", timeout=10).json()
    assert summary["frames"] == 480


@pytest.fixture
def nginx(topology, tmp_path):
    """deploy/nginx.conf in front of the two web processes (its upstream host replaced by their ports,
    its port by a free one, its files in tmp_path); skipped where nginx is not installed."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (the deployment's proxy configuration is tested with it)")
    port = free_port()
    config = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"server 127.0.0.1:{server.port}; " for server in (topology.a, topology.b))
    config = config.replace("server web:5000;", servers).replace("listen 80;", f"listen 127.0.0.1:{port};")
    temp_paths = "".join(f"{name}_temp_path {tmp_path / name};\n" for name in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    config = config.replace("http {\n", "http {\n" + temp_paths + f"access_log {tmp_path / 'access.log'};\n", 1)
    (tmp_path / "nginx.conf").write_text(config)
    # As root, nginx's workers would run as nobody, who cannot write request bodies into tmp_path.
    user = "user root; " if os.geteuid() == 0 else ""
    process = subprocess.Popen([binary, "-c", str(tmp_path / "nginx.conf"), "-g",
                                f"{user}daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while readiness(base_url) is None:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "nginx did not answer"
        time.sleep(0.2)
    yield base_url
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_through_the_deployments_nginx_websockets_and_long_polling_both_work(nginx, clips, transports):
    """deploy/nginx.conf: the websocket upgrade goes through; long-polling (no Upgrade header: the
    sticky ip_hash upstream) keeps its session on one web process, so its requests are not refused."""
    events, finished = [], threading.Event()

    def on_progress(data):
        events.append(data)
        if data["status"] == "done":
            finished.set()

    client = socketio.Client(reconnection=False)
    client.on("progress", on_progress, namespace="/videos")
    client.connect(nginx, namespaces=["/videos"], transports=transports, wait_timeout=10)
    try:
        assert client.transport() == transports[0]
        created = submit(nginx, clips[240])
        assert client.call("watch", created["id"], namespace="/videos", timeout=10)["id"] == created["id"]
        assert finished.wait(JOB_TIMEOUT_S), events[-3:]
    finally:
        client.disconnect()
    assert any(e["status"] == "running" for e in events)
    assert download(nginx, created["id"], "summary.json")
