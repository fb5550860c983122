"""``faceapp worker`` (or ``flask --app app worker``): a Celery worker that runs video jobs (REDIS_URL set).

Each worker process builds its own inference service (its own device: ``FACEAPP_DEVICE=cuda:1`` for a
second GPU) and runs jobs with Celery's ``solo`` pool, or ``threads`` with ``--concurrency N``: the job runs
in the process that loaded the models. Celery's default ``prefork`` pool would fork after the models are
loaded, which CUDA does not survive and which would copy the models into every child; and one job already
keeps every core busy (decoding threads, intra-op threads, the micro-batcher), so more jobs at once in one
process only help on a GPU, where the threads pool lets several jobs share its batches.

Progress goes to the browsers through Flask-SocketIO's external-process emitter over Redis, whichever web
process holds a watcher's socket.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time

import click
from flask import current_app, has_app_context
from flask.cli import ScriptInfo

from app.config import Config
from app.video.distributed import TASK_NAME, CeleryJobQueue
from app.video.events import EVENT, NAMESPACE
from app.video.jobs import VideoJob, execute
from app.video.processing import process_video
from app.video.store import QueueUnavailable

log = logging.getLogger(__name__)

NO_REDIS = "the worker takes jobs from Redis: set REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
FINAL_WRITE_PATIENCE_S = 600  # how long a finished run waits for Redis to store its outcome


class VideoWorker:
    """Runs one delivery of a job at a time per thread: claims the job's lease, runs it, stores every
    chunk's progress while it still owns the job, and keeps the lease alive from a heartbeat thread."""

    def __init__(self, queue: CeleryJobQueue, service, lease_s: float, emit=None):
        self.queue = queue
        self.store = queue.store
        self.service = service
        self.lease_s = float(lease_s)
        self.emit = emit  # (job) -> None: the progress event to the job's watchers
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, job_id: str, attempt: int) -> str:
        """The task's body; returns what happened, for the log. Raises only what should requeue the
        message (Redis away before the job started)."""
        job = self._wait_for_redis(lambda: self.store.get(job_id))
        if job is None:
            return "deleted"
        if job.attempt != attempt or job.status != "queued":
            return f"skipped: the job is {job.status} at attempt {job.attempt}"  # an old or repeated delivery
        holder = f"{self.name}:{threading.get_ident()}:{attempt}"
        if not self.store.acquire_lease(job_id, holder, self.lease_s):
            return "skipped: another worker holds it"
        outcome = _Ownership()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, holder, outcome), daemon=True,
                                name=f"lease-{job_id[:8]}")
        beat.start()
        try:
            execute(job, lambda j, cancelled, report: process_video(j, self.service, cancelled, report),
                    is_cancelled=lambda: outcome.lost is not None,
                    report=lambda j: self._report(j, attempt, outcome),
                    keep_input=lambda: outcome.lost == "taken over")
        finally:
            outcome.ended.set()
            beat.join(timeout=5)
            try:
                self.store.release(job_id, holder)
            except QueueUnavailable:
                pass  # the lease lapses by itself
        if outcome.lost == "deleted":
            shutil.rmtree(job.path, ignore_errors=True)  # files written after the delete's rmtree
        return outcome.lost or job.status

    def _report(self, job: VideoJob, attempt: int, outcome: "_Ownership") -> None:
        """Stores the job's progress (the final state: waiting for Redis if it is away) and pushes it."""
        deadline = time.monotonic() + (FINAL_WRITE_PATIENCE_S if job.finished else 0)
        while True:
            try:
                written = self.store.update(job, attempt)
                break
            except QueueUnavailable as exc:
                if time.monotonic() >= deadline:
                    log.warning("video job %s: progress not stored, Redis away (%s)", job.id, exc)
                    return
                time.sleep(1)
        if not written:
            outcome.lost = outcome.lost or ("deleted" if self.store.get(job.id) is None else "taken over")
            return
        if self.emit is not None:
            try:
                self.emit(job)
            except Exception:  # a push failure must not fail the job
                log.exception("video progress push failed")

    def _heartbeat(self, job_id: str, holder: str, outcome: "_Ownership") -> None:
        while not outcome.ended.wait(self.lease_s / 3):
            try:
                if not self.store.renew_lease(job_id, holder, self.lease_s):
                    outcome.lost = outcome.lost or "taken over"
            except QueueUnavailable:
                pass  # Redis away: renewed when it is back (or taken again if nobody took it)

    def _wait_for_redis(self, read, patience_s: float = 30.0):
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return read()
            except QueueUnavailable:
                if time.monotonic() >= deadline:
                    from celery.exceptions import Reject

                    raise Reject("Redis does not answer", requeue=True) from None
                time.sleep(1)

    def maintain(self, stop: threading.Event, cleanup_every_s: float = 600.0) -> None:
        """Every half lease: jobs whose worker died are queued again; every 10 minutes, the TTL cleanup."""
        last_cleanup = 0.0
        while not stop.wait(self.lease_s / 2):
            try:
                self.queue.reap_all()
                if time.monotonic() - last_cleanup > cleanup_every_s:
                    last_cleanup = time.monotonic()
                    self.queue.cleanup()
            except QueueUnavailable:
                continue
            except Exception:
                log.exception("video job maintenance failed")


class _Ownership:
    """Whether a run still owns its job: ``lost`` becomes "deleted" or "taken over" when it does not."""

    def __init__(self):
        self.lost: str | None = None
        self.ended = threading.Event()


def progress_emitter(config):
    """Flask-SocketIO's external-process emitter: events published on Redis reach the browsers through
    whichever web process holds their socket."""
    from flask_socketio import SocketIO

    emitter = SocketIO(message_queue=config["REDIS_URL"], channel=socketio_channel(config))

    def emit(job: VideoJob) -> None:
        emitter.emit(EVENT, job.to_dict(), to=job.id, namespace=NAMESPACE)

    return emit


def socketio_channel(config) -> str:
    return f"{config['REDIS_KEY_PREFIX']}socketio"


@click.command("worker")
@click.option("--concurrency", type=click.IntRange(1), default=1, show_default=True,
              help="Jobs run at once in this process (1: Celery's solo pool; more: its threads pool, "
                   "all sharing this process's models: worth it on a GPU).")
@click.option("--loglevel", default=lambda: os.environ.get("LOG_LEVEL", "INFO"), show_default="$LOG_LEVEL or INFO")
@click.pass_context
def worker_command(ctx: click.Context, concurrency: int, loglevel: str) -> None:
    """Run video jobs from the Redis queue (REDIS_URL must be set): a Celery worker with its own models."""
    if not Config.REDIS_URL and not has_app_context():  # said before the models load
        raise click.ClickException(NO_REDIS)
    app = current_app._get_current_object() if has_app_context() else ctx.ensure_object(ScriptInfo).load_app()
    if not app.config["REDIS_URL"]:
        raise click.ClickException(NO_REDIS)
    ctx.with_resource(app.app_context())
    from app.video import get_queue

    queue = get_queue()
    worker = VideoWorker(queue, app.extensions["inference"], app.config["VIDEO_LEASE_S"],
                         emit=progress_emitter(app.config))
    queue.on_progress = worker.emit  # what this process reaps is pushed the same way
    celery = queue.celery

    @celery.task(name=TASK_NAME, acks_late=True)
    def process(job_id: str, attempt: int) -> str:
        outcome = worker.run(job_id, attempt)
        log.info("video job %s attempt %d: %s", job_id, attempt, outcome)
        return outcome

    stop = threading.Event()
    threading.Thread(target=worker.maintain, args=(stop,), name="video-maintenance", daemon=True).start()
    pool = ["--pool", "solo"] if concurrency == 1 else ["--pool", "threads", "--concurrency", str(concurrency)]
    log.info("video worker %s ready (device %s)", worker.name, app.extensions["inference"].device_description)
    try:
        celery.worker_main(["worker", *pool, "--loglevel", loglevel, "--without-mingle", "--without-gossip",
                            "--without-heartbeat", "--hostname", f"video@{worker.name}"])
    finally:
        stop.set()
