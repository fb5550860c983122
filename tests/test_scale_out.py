"""REDIS_URL mode in this process, against the machine's real Redis (database 11, a key prefix of this
run, removed after): shared rate limits, the shared queue's bound and positions, the lease that turns a
dead worker's job into a new attempt or a failure with the reason, the worker's run of a job, and 503
while Redis is away. The multi-process cases (web processes, a Celery worker, SIGKILL, a Redis restart)
are in tests/test_distributed.py."""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from app import create_app
from app.security import rate_limit_storage
from app.video.distributed import QUEUE_NAME, CeleryJobQueue
from app.video.jobs import FAILED, QUEUED, RUNNING, JobQueue, QueueFull, VideoJob, VideoOptions
from app.video.worker import VideoWorker
from helpers import TestConfig, encode
from redis_parts import SHARED_REDIS_URL, delete_prefixed, shared_redis, unique_prefix
from serving import free_port
from video_clips import moving_face_frames, write_clip


@pytest.fixture
def redis_config(tmp_path):
    client = shared_redis()
    prefix = unique_prefix()

    class RedisConfig(TestConfig):
        REDIS_URL = SHARED_REDIS_URL
        REDIS_KEY_PREFIX = prefix
        UPLOAD_FOLDER = str(tmp_path / "uploads")
        VIDEO_DIR = str(tmp_path / "shared-videos")
        VIDEO_LEASE_S = 2.0

    yield RedisConfig
    delete_prefixed(client, prefix)
    client.close()


def config_dict(config_class) -> dict:
    return {k: getattr(config_class, k) for k in dir(config_class) if k.isupper()}


def broker_messages(config_class) -> int:
    return shared_redis().llen(f"{config_class.REDIS_KEY_PREFIX}celery:{QUEUE_NAME}")


def test_the_switch_picks_the_queue_and_the_rate_limit_store(service, redis_config):
    assert isinstance(create_app(TestConfig, service=service).extensions["video_jobs"], JobQueue)
    app = create_app(redis_config, service=service)
    assert isinstance(app.extensions["video_jobs"], CeleryJobQueue)
    assert Path(redis_config.VIDEO_DIR).is_dir()
    assert rate_limit_storage({"RATELIMIT_STORAGE_URI": "", "REDIS_URL": ""}) == "memory://"
    assert rate_limit_storage({"RATELIMIT_STORAGE_URI": "", "REDIS_URL": "redis://h:1/2"}) == "redis://h:1/2"
    assert rate_limit_storage({"RATELIMIT_STORAGE_URI": "memory://", "REDIS_URL": "redis://h:1/2"}) == "memory://"


def test_rate_limits_are_counted_together_in_redis(service, redis_config):
    """Two apps (as two web processes) share one budget when REDIS_URL is set."""
    class Limited(redis_config):
        RATE_LIMIT = "3 per minute"

    first, second = (create_app(Limited, service=service).test_client() for _ in range(2))
    assert [c.get("/api/v1/models").status_code for c in (first, second, first)] == [200, 200, 200]
    assert first.get("/api/v1/models").status_code == 429
    assert second.get("/api/v1/models").status_code == 429
    assert list(shared_redis().scan_iter(match=f"{redis_config.REDIS_KEY_PREFIX}limits*"))

    class Apart(Limited):
        RATELIMIT_STORAGE_URI = "memory://"

    assert create_app(Apart, service=service).test_client().get("/api/v1/models").status_code == 200


def new_job(queue: CeleryJobQueue, input_bytes: bytes = b"video") -> VideoJob:
    job = queue.new_job("clip.mp4", VideoOptions())
    job.input_path.write_bytes(input_bytes)
    return job


def test_the_bound_and_the_positions_are_shared(redis_config):
    queue = CeleryJobQueue.from_config(config_dict(redis_config) | {"VIDEO_MAX_QUEUE": 2},
                                       Path(redis_config.VIDEO_DIR))
    other_process = CeleryJobQueue.from_config(config_dict(redis_config) | {"VIDEO_MAX_QUEUE": 2},
                                               Path(redis_config.VIDEO_DIR))
    first, second = new_job(queue), new_job(other_process)
    queue.submit(first)
    other_process.submit(second)
    assert [other_process.position(first.id), queue.position(second.id)] == [1, 2]
    assert broker_messages(redis_config) == 2
    with pytest.raises(QueueFull):
        queue.submit(new_job(queue))
    assert other_process.delete(first.id) and not first.path.exists()
    assert queue.get(first.id) is None and queue.position(second.id) == 1
    queue.submit(new_job(queue))  # the deleted job's slot is free


def test_a_lapsed_lease_queues_the_job_again_then_fails_it_with_the_reason(redis_config):
    queue = CeleryJobQueue.from_config(config_dict(redis_config) | {"VIDEO_MAX_ATTEMPTS": 2},
                                       Path(redis_config.VIDEO_DIR))
    job = new_job(queue)
    queue.submit(job)
    store = queue.store
    # A worker took it (lease), started it, and was killed: the lease is not renewed and lapses.
    assert store.acquire_lease(job.id, "worker-1", lease_s=0.2)
    job = store.get(job.id)
    job.status, job.progress = RUNNING, 0.4
    assert store.update(job, attempt=1)
    assert queue.get(job.id).status == RUNNING  # the lease still holds: nothing to do
    time.sleep(0.3)

    again = queue.get(job.id)
    assert (again.status, again.attempt, again.progress) == (QUEUED, 2, 0.0)
    assert any("worker running it stopped" in note for note in again.notes)
    assert broker_messages(redis_config) == 2  # the first delivery (never acknowledged) and the new one
    assert not store.update(again, attempt=1)  # the killed run's writes are refused, should it wake up

    assert store.acquire_lease(job.id, "worker-2", lease_s=0.2)
    again.status = RUNNING
    assert store.update(again, attempt=2)
    time.sleep(0.3)
    failed = queue.get(job.id)
    assert failed.status == FAILED and "stopped mid-job (2 times" in failed.error
    assert not failed.input_path.exists() and store.running_ids() == []


def test_the_worker_runs_a_job_and_drops_repeated_deliveries(service, redis_config, astronaut, tmp_path):
    """The task's body in this process: the real processing, its state written to Redis."""
    queue = CeleryJobQueue.from_config(config_dict(redis_config), Path(redis_config.VIDEO_DIR))
    pushed = []
    worker = VideoWorker(queue, service, lease_s=2.0, emit=lambda job: pushed.append(job.status))
    clip = write_clip(tmp_path / "face.mp4", moving_face_frames(astronaut, frames=16))
    job = new_job(queue, clip.read_bytes())
    queue.submit(job)
    assert worker.run(job.id, 1) == "done"
    done = queue.get(job.id)
    assert done.status == "done" and done.frames_done == 16 and (done.path / "summary.json").is_file()
    assert not done.input_path.exists() and queue.store.lease_holder(job.id) is None
    assert pushed[0] == RUNNING and pushed[-1] == "done" and len(pushed) >= 3  # start, chunks, end
    assert worker.run(job.id, 1).startswith("skipped") and worker.run("0" * 32, 1) == "deleted"


def test_redis_away_answers_503_for_videos_and_photos_go_on(service, tmp_path, astronaut, redis_config):
    class Away(redis_config):
        REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    client = create_app(Away, service=service).test_client()
    clip = write_clip(tmp_path / "face.mp4", moving_face_frames(astronaut, frames=4))
    response = client.post("/api/v1/videos", data={"video": (io.BytesIO(clip.read_bytes()), "face.mp4")},
                           content_type="multipart/form-data")
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "queue_unavailable" and response.headers["Retry-After"]
    assert list(Path(Away.VIDEO_DIR).iterdir()) == []  # nothing half-made left behind
    assert client.get("/api/v1/videos/" + "a" * 32).status_code == 503
    photo = client.post("/api/v1/images", data={"image": (io.BytesIO(encode(astronaut)), "a.jpg")},
                        content_type="multipart/form-data")
    assert photo.status_code == 200 and len(photo.get_json()["images"][0]["faces"]) == 1
