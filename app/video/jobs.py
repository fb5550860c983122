"""Video jobs: a job's state (:class:`VideoJob`), one run of it start to end (:func:`execute`), and the
embedded mode's bounded queue whose threads run them (:class:`JobQueue`, state in ``job.json`` so a job
survives page reloads and restarts). With ``REDIS_URL`` set, ``app/video/distributed.py`` offers the same
queue interface (:class:`VideoQueue`) over Celery workers; routes and processing never know which."""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
JOB_FILE = "job.json"
# Files a finished job offers for download, by the name the API uses.
OUTPUTS = ("annotated.mp4", "frames.jsonl", "frames.csv", "summary.json")


class QueueFull(Exception):
    """Every queue slot is taken; the caller answers 503."""


class JobCancelled(Exception):
    """Raised inside processing when the job was cancelled between chunks."""


@dataclass
class VideoOptions:
    stride: int = 1  # analyse every ``stride``-th frame; frames between reuse the last analysis
    alpha: float = 0.3  # weight of the newest frame in each track's moving average
    # A full face search every ``search_every``-th analysed frame; faces are followed in between
    # (app/inference/keyframes.py). 1: search every analysed frame.
    search_every: int = 5


@dataclass
class VideoJob:
    id: str
    folder: str
    input_name: str = "input.mp4"
    original_filename: str = ""
    status: str = QUEUED
    progress: float = 0.0
    frames_done: int = 0
    frames_total: int = 0
    eta_s: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "padded to even size"
    options: VideoOptions = field(default_factory=VideoOptions)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    # Who may delete the job: the holder of the token returned at creation (stored hashed), or a request
    # made with the API key that created it (its id, app/security.py). Neither is ever reported.
    delete_token_sha256: str | None = None
    owner: str | None = None
    # Runs started (distributed mode): a job whose worker died is queued again as the next attempt, and
    # writes of an older attempt are refused (app/video/store.py).
    attempt: int = 0

    @property
    def path(self) -> Path:
        return Path(self.folder)

    @property
    def input_path(self) -> Path:
        return self.path / self.input_name

    def output(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def save(self) -> None:
        """Atomic write: a reader never sees half a file (write a temp file, then rename)."""
        self.updated = time.time()
        tmp = self.path / f"{JOB_FILE}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.path / JOB_FILE)

    def new_delete_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.delete_token_sha256 = hashlib.sha256(token.encode()).hexdigest()
        return token

    def may_delete(self, token: str | None, key_id: str | None) -> bool:
        if key_id is not None and self.owner is not None and hmac.compare_digest(key_id, self.owner):
            return True
        if not token or self.delete_token_sha256 is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.delete_token_sha256)

    @classmethod
    def load(cls, folder: Path) -> "VideoJob":
        return cls.from_dict(json.loads((Path(folder) / JOB_FILE).read_text()))

    @classmethod
    def from_dict(cls, data: dict, folder: str | None = None) -> "VideoJob":
        """From ``asdict(job)``; ``folder`` overrides the stored one (each host mounts the shared folder
        at its own path)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["options"] = VideoOptions(**data.get("options", {}))
        if folder is not None:
            data["folder"] = folder
        return cls(**data)

    def to_dict(self) -> dict:
        """What the status endpoint reports (paths stay private)."""
        return {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "error": self.error,
            "notes": list(self.notes),
            "options": asdict(self.options),
            "filename": self.original_filename,
            "created": self.created,
            "started": self.started,  # this run's start (null while queued): running time = updated - started once done
            "updated": self.updated,
        }


Runner = Callable[[VideoJob, Callable[[], bool], Callable[[VideoJob], None]], None]


class VideoQueue(Protocol):
    """What the routes use: :class:`JobQueue` (threads in this process) or
    ``app.video.distributed.CeleryJobQueue`` (Celery workers, state in Redis)."""

    def new_job(self, original_filename: str, options: VideoOptions, suffix: str = ".mp4") -> VideoJob: ...

    def submit(self, job: VideoJob) -> None: ...

    def get(self, job_id: str) -> VideoJob | None: ...

    def position(self, job_id: str) -> int | None: ...

    def delete(self, job_id: str) -> bool: ...

    def cleanup(self, now: float | None = None) -> int: ...


def execute(job: VideoJob, runner: Runner, is_cancelled: Callable[[], bool], report: Callable[[VideoJob], None],
            keep_input: Callable[[], bool] = lambda: False) -> None:
    """One run of ``job``: running -> done, failed with the reason, or cancelled; never left running.
    The input is deleted when the run ends (only the outputs are kept, until the TTL) unless
    ``keep_input()`` says another run still needs it."""
    job.status, job.started = RUNNING, time.time()
    report(job)
    try:
        runner(job, is_cancelled, report)
        job.status, job.progress, job.eta_s = DONE, 1.0, 0.0
    except JobCancelled:
        job.status = CANCELLED
    except Exception as exc:  # any failure ends the job with a reason, never a stuck "running"
        if is_cancelled():
            # Deleted while running: its files went from under it; that is the delete, not a failure.
            job.status = CANCELLED
        else:
            log.warning("video job %s failed: %s", job.id, exc, exc_info=not isinstance(exc, ValueError))
            job.status, job.error = FAILED, str(exc) or type(exc).__name__
    finally:
        if job.status == RUNNING:  # e.g. KeyboardInterrupt / SystemExit
            job.status, job.error = FAILED, "interrupted"
        if job.status != DONE:
            job.eta_s = None
        if job.status == CANCELLED:
            log.info("video job %s cancelled", job.id)
        if not keep_input():
            try:  # the upload has served its purpose; only the outputs are kept (until the TTL)
                job.input_path.unlink(missing_ok=True)
            except OSError:
                log.exception("could not remove the input of video job %s", job.id)
        report(job)


class JobQueue:
    """Runs video jobs on ``workers`` threads, at most ``max_queue`` waiting.

    Jobs live in ``root/<id>/``. Threads start on the first submit (or at start-up when jobs of a
    previous process are recovered), so building an app (as every test does) starts none.
    ``runner(job, is_cancelled, report)`` does the work and calls ``report(job)`` after each chunk; the
    queue saves the job and forwards it to ``on_progress``. A job's input is deleted when the job ends;
    its outputs stay until ``ttl_hours`` after that.
    """

    def __init__(self, root: str | Path, runner: Runner, max_queue: int = 8, workers: int = 1,
                 ttl_hours: float = 24.0, on_progress: Callable[[VideoJob], None] | None = None):
        from app.video.store import FileJobStore  # it imports this module

        self.store = FileJobStore(root)
        self.root = self.store.root
        self.runner = runner
        self.workers = max(1, int(workers))
        self.max_queue = max(1, int(max_queue))
        self.ttl_s = float(ttl_hours) * 3600
        self.on_progress = on_progress
        # Ids in queue order. A deleted job leaves it at once, so its slot is free for the next upload.
        self._waiting: collections.deque[str] = collections.deque()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._last_cleanup = 0.0
        self.recover()

    # -- startup -----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Jobs a previous process left queued or running are queued again, in the order they were
        created (a running one starts over: its partial outputs are rewritten); returns their ids.
        They were accepted once, so they may take the queue past ``max_queue``."""
        unfinished = [job for job in self.store.jobs() if job.status in (QUEUED, RUNNING)]
        for job in sorted(unfinished, key=lambda j: j.created):
            if not job.input_path.is_file():
                job.status, job.error, job.eta_s = FAILED, "its input was lost when the server restarted", None
                self.store.save(job)
                continue
            restarted = job.status == RUNNING
            job.status, job.progress, job.frames_done, job.eta_s, job.started = QUEUED, 0.0, 0, None, None
            if restarted:
                job.notes = [*job.notes, "started over: the server restarted while it ran"]
            self.store.save(job)
            with self._lock:
                self._waiting.append(job.id)
        self.cleanup()
        recovered = list(self._waiting)
        if recovered:
            log.info("video jobs recovered from a previous run, queued again: %s", ", ".join(recovered))
            self._start()
        return recovered

    # -- public API --------------------------------------------------------------------------------
    def new_job(self, original_filename: str, options: VideoOptions, suffix: str = ".mp4") -> VideoJob:
        """A fresh job folder (the caller saves the upload into ``job.input_path`` and submits)."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True)
        job = VideoJob(id=job_id, folder=str(folder), input_name=f"input{suffix}",
                       original_filename=original_filename, options=options)
        self.store.save(job)
        return job

    def submit(self, job: VideoJob) -> None:
        """Saves and queues the job; raises ``QueueFull`` (and leaves the job for the caller to delete)."""
        self.store.save(job)
        self._start()
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job.id)
            self._work_ready.notify()

    def get(self, job_id: str) -> VideoJob | None:
        return self.store.get(job_id)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when not waiting."""
        with self._lock:
            return self._waiting.index(job_id) + 1 if job_id in self._waiting else None

    def delete(self, job_id: str) -> bool:
        """Cancels the job (a running one stops at its next chunk) and removes its files."""
        if not valid_job_id(job_id) or not (self.root / job_id).is_dir():
            return False
        job = self.get(job_id)
        with self._lock:
            if job_id in self._waiting:
                self._waiting.remove(job_id)
            elif job is None or not job.finished:
                # Running (or about to be): it stops at its next chunk, and _work forgets the mark then.
                self._cancelled.add(job_id)
        # The worker removes the folder once more when the job stops (see _run).
        remove_folder(self.root / job_id)
        return True

    def cleanup(self, now: float | None = None) -> int:
        """Removes finished jobs older than the TTL; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for folder in list(self.root.iterdir()):
            job = self.get(folder.name)
            if job is not None and job.finished and now - job.updated > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    # -- workers -----------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._work, name=f"video-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _next(self) -> str:
        with self._work_ready:
            while not self._waiting:
                self._work_ready.wait()
            return self._waiting.popleft()

    def _work(self) -> None:
        while True:
            job_id = self._next()
            if job_id not in self._cancelled:
                self._run(job_id)
            with self._lock:
                self._cancelled.discard(job_id)  # the mark has done its work; without this the set only grows
            # Cleanup at most every 10 minutes, between jobs: cheap, and no extra thread.
            if time.time() - self._last_cleanup > 600:
                self._last_cleanup = time.time()
                try:
                    self.cleanup()
                except OSError:
                    log.exception("video job cleanup failed")

    def _run(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        execute(job, self.runner, lambda: job_id in self._cancelled, self._report)
        if job_id in self._cancelled:
            # Deleted while running: delete()'s rmtree can race with files the job was still
            # writing (then the folder survives it); the job has stopped now, so remove it again.
            shutil.rmtree(job.path, ignore_errors=True)

    def _report(self, job: VideoJob) -> None:
        if job.id in self._cancelled or not job.path.is_dir():
            return  # deleted: do not recreate its folder
        try:
            self.store.save(job)
        except OSError:
            return
        if self.on_progress is not None:
            try:
                self.on_progress(job)
            except Exception:  # a push failure must not fail the job
                log.exception("video progress callback failed")


def remove_folder(folder: Path, within_s: float = 5.0) -> None:
    """Removes a job's folder. A job still running may be writing a file while rmtree walks the folder,
    which then survives it: retry briefly, so the folder is gone when the request returns."""
    deadline = time.monotonic() + within_s
    shutil.rmtree(folder, ignore_errors=True)
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)


def valid_job_id(job_id: str) -> bool:
    """Job ids are uuid4 hex: anything else could escape the jobs folder."""
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
