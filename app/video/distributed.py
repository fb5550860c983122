"""Video jobs spread over processes and hosts (``REDIS_URL`` set): the web processes queue them on Celery
(Redis as the broker) and read their state from Redis; ``faceapp worker`` processes run them
(``app/video/worker.py``). Job files sit in the shared ``VIDEO_DIR``.

A job is acknowledged to the broker only when its run ends (``acks_late``), and a worker holds a lease
on the job it runs (app/video/store.py). A worker killed mid-job lets its lease lapse; the first process
that notices (any worker's maintenance thread, or a web process reading the job's status) queues the job
again as its next attempt, or fails it with the reason after ``VIDEO_MAX_ATTEMPTS`` runs: never stuck
"running". Each message carries the attempt it is for, so a late redelivery of an old one is dropped.
"""
from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from app.video.jobs import (FAILED, QUEUED, RUNNING, QueueFull, VideoJob, VideoOptions, remove_folder,
                            valid_job_id)
from app.video.store import QueueUnavailable, RedisJobStore

log = logging.getLogger(__name__)

TASK_NAME = "faceapp.video.process"
QUEUE_NAME = "videos"
ORPHAN_FOLDER_S = 3600  # a folder without state this old was left by an upload that never became a job


def redis_client(url: str):
    """A client that gives up quickly when Redis is away (the web answers 503 instead of hanging)."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)


def make_celery(config) -> "celery.Celery":  # noqa: F821
    """The Celery app, configured from the Flask config (no task registered: workers add theirs)."""
    from celery import Celery

    app = Celery("faceapp", broker=config["REDIS_URL"], set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE_NAME,
        task_acks_late=True,  # acknowledged when the job ends: a worker that dies leaves it unacknowledged
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker reserves only the job it runs, never one behind it
        task_ignore_result=True,  # the job store holds the outcome
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis however long it is away
        broker_transport_options={
            # Redis redelivers an unacknowledged message after this: longer than the longest job.
            "visibility_timeout": config["VIDEO_VISIBILITY_TIMEOUT_S"],
            "global_keyprefix": f"{config['REDIS_KEY_PREFIX']}celery:",
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        worker_enable_remote_control=False,  # no broadcast channel: nothing here uses it
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


class CeleryJobQueue:
    """The :class:`~app.video.jobs.VideoQueue` of distributed mode. Every method raises
    :class:`QueueUnavailable` while Redis does not answer."""

    def __init__(self, store: RedisJobStore, celery, max_queue: int = 8, ttl_hours: float = 24.0,
                 max_attempts: int = 2, on_progress: Callable[[VideoJob], None] | None = None):
        self.store = store
        self.root = store.root
        self.celery = celery
        self.max_queue = max(1, int(max_queue))
        self.ttl_s = float(ttl_hours) * 3600
        self.max_attempts = max(1, int(max_attempts))
        self.on_progress = on_progress

    @classmethod
    def from_config(cls, config, root: Path, on_progress=None) -> "CeleryJobQueue":
        store = RedisJobStore(root, redis_client(config["REDIS_URL"]), config["REDIS_KEY_PREFIX"])
        return cls(store, make_celery(config), max_queue=config["VIDEO_MAX_QUEUE"],
                   ttl_hours=config["VIDEO_TTL_HOURS"], max_attempts=config["VIDEO_MAX_ATTEMPTS"],
                   on_progress=on_progress)

    # -- VideoQueue --------------------------------------------------------------------------------
    def new_job(self, original_filename: str, options: VideoOptions, suffix: str = ".mp4") -> VideoJob:
        """A fresh job folder on the shared volume; its state reaches Redis when it is submitted, so an
        upload that fails half-way leaves no job behind. Refused at once while Redis is away."""
        if not self.store.ping():
            raise QueueUnavailable("Redis does not answer")
        job_id = uuid.uuid4().hex
        folder = self.store.folder(job_id)
        folder.mkdir(parents=True)
        return VideoJob(id=job_id, folder=str(folder), input_name=f"input{suffix}",
                        original_filename=original_filename, options=options)

    def submit(self, job: VideoJob) -> None:
        """Saves the job as waiting and sends its message; ``QueueFull`` when too many wait. Accepted
        (the caller answers 202) only once both are in Redis."""
        job.status, job.attempt = QUEUED, 1
        if not self.store.enqueue(job, self.max_queue):
            raise QueueFull()
        try:
            self._send(job)
        except QueueUnavailable:
            self._forget(job.id)
            raise

    def get(self, job_id: str) -> VideoJob | None:
        job = self.store.get(job_id)
        if job is not None and job.status == RUNNING:
            job = self.reap(job)
        return job

    def position(self, job_id: str) -> int | None:
        return self.store.position(job_id)

    def delete(self, job_id: str) -> bool:
        """Forgets the job (a worker running it stops at its next chunk) and removes its files."""
        if not valid_job_id(job_id):
            return False
        folder = self.store.folder(job_id)
        known = self.store.get(job_id) is not None
        if not known and not folder.is_dir():
            return False
        self.store.remove(job_id)
        remove_folder(folder)  # the worker removes it once more when it stops (app/video/worker.py)
        return True

    def cleanup(self, now: float | None = None) -> int:
        """Removes finished jobs older than the TTL, and folders that never became jobs; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for job_id in self.store.all_ids_before(now - self.ttl_s):
            job = self.store.get(job_id)
            if job is not None and job.finished and now - job.updated > self.ttl_s:
                self.delete(job_id)
                removed += 1
        for folder in list(self.root.iterdir()):
            try:
                stale = now - folder.stat().st_mtime > max(ORPHAN_FOLDER_S, self.ttl_s)
            except OSError:
                continue
            if stale and valid_job_id(folder.name) and self.store.get(folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    # -- faults ------------------------------------------------------------------------------------
    def reap(self, job: VideoJob) -> VideoJob:
        """``job`` as it stands once a lapsed lease is dealt with: a running job whose worker stopped
        renewing its lease is queued again as the next attempt, or fails with the reason after
        ``max_attempts`` runs. One process acts (``claim_reap``); the others see its outcome."""
        if job.status != RUNNING or self.store.lease_holder(job.id) is not None:
            return job
        if not self.store.claim_reap(job.id, job.attempt):
            return self.store.get(job.id) or job
        current = self.store.get(job.id)
        if (current is None or current.status != RUNNING or current.attempt != job.attempt
                or self.store.lease_holder(job.id) is not None):
            return current or job
        job, previous = current, current.attempt
        if previous >= self.max_attempts or not job.input_path.is_file():
            runs = "once" if previous == 1 else f"{previous} times"
            job.status, job.eta_s = FAILED, None
            job.error = (f"the worker running it stopped mid-job ({runs}: killed, or out of memory) "
                         if job.input_path.is_file() else "its input was lost when its worker stopped ")
            job.error = job.error.rstrip() + "; upload it again to retry"
            if self.store.update(job, previous):
                self.store.release(job.id, holder="")
                job.input_path.unlink(missing_ok=True)
            log.warning("video job %s failed: %s", job.id, job.error)
        else:
            job.status, job.progress, job.frames_done, job.eta_s, job.started = QUEUED, 0.0, 0, None, None
            job.attempt = previous + 1
            job.notes = [*job.notes, "started over: the worker running it stopped mid-job"]
            if self.store.requeue(job, previous):
                self._send(job)
                log.warning("video job %s: its worker stopped mid-job; queued again (attempt %d)",
                            job.id, job.attempt)
        self._push(job)
        return job

    def reap_all(self) -> None:
        """Every running job whose lease lapsed (a worker's maintenance thread calls this)."""
        for job_id in self.store.running_ids():
            job = self.store.get(job_id)
            if job is None:
                self.store.release(job_id, holder="")
            elif job.status == RUNNING:
                self.reap(job)
            elif job.finished:  # its worker ended it; a queued one may be starting (lease taken, status not yet written)
                self.store.release(job_id, holder="")

    # -- helpers -----------------------------------------------------------------------------------
    def _send(self, job: VideoJob) -> None:
        try:
            self.celery.send_task(TASK_NAME, args=[job.id, job.attempt], queue=QUEUE_NAME, retry=True)
        except Exception as exc:  # kombu's OperationalError and redis' errors: the broker is away
            raise QueueUnavailable(str(exc)) from exc

    def _forget(self, job_id: str) -> None:
        try:
            self.store.remove(job_id)
        except QueueUnavailable:
            log.warning("video job %s: could not remove its state (Redis away)", job_id)

    def _push(self, job: VideoJob) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(job)
            except Exception:  # a push failure must not fail the job
                log.exception("video progress push failed")
