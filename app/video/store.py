"""Where video jobs' state lives: one interface, two stores.

- :class:`FileJobStore` (embedded mode, ``REDIS_URL`` unset): ``job.json`` in each job's folder, as
  always; one process reads and writes it.
- :class:`RedisJobStore` (``REDIS_URL`` set): one JSON string per job in Redis, which every web process
  and worker reads; the job's files stay in its folder on the shared ``VIDEO_DIR``. Besides the state it
  keeps the indexes a queue spread over processes needs: every job by creation time (cleanup), the
  waiting ones in order (queue positions, the bound on waiting jobs), the running ones and a lease per
  running job (a key with a time-to-live that the worker renews: a killed worker's lease lapses).

Writes from workers are conditional (:meth:`RedisJobStore.update`): a job deleted meanwhile, or queued
again for another attempt after its worker was taken for dead, is not written over by the old run.
"""
from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from app.video.jobs import JOB_FILE, VideoJob, valid_job_id

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The shared store or broker (Redis) does not answer; the caller answers 503."""


class JobStore(ABC):
    """The state of every job, keyed by id; its files live in ``root/<id>/`` whatever the store."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    @abstractmethod
    def save(self, job: VideoJob) -> None:
        """Creates or overwrites the job's state."""

    @abstractmethod
    def get(self, job_id: str) -> VideoJob | None:
        """The job, or None when unknown, malformed or unreadable."""

    @abstractmethod
    def remove(self, job_id: str) -> None:
        """Forgets the job's state (its folder is the caller's)."""

    @abstractmethod
    def jobs(self) -> Iterator[VideoJob]:
        """Every readable job, in no particular order."""


class FileJobStore(JobStore):
    """``job.json`` in the job's folder, written atomically (:meth:`VideoJob.save`)."""

    def save(self, job: VideoJob) -> None:
        job.save()

    def get(self, job_id: str) -> VideoJob | None:
        if not valid_job_id(job_id) or not (self.root / job_id / JOB_FILE).is_file():
            return None
        try:
            return VideoJob.load(self.root / job_id)
        except (OSError, ValueError, TypeError):
            return None

    def remove(self, job_id: str) -> None:
        if valid_job_id(job_id):
            (self.root / job_id / JOB_FILE).unlink(missing_ok=True)

    def jobs(self) -> Iterator[VideoJob]:
        for folder in list(self.root.iterdir()):
            if not (folder / JOB_FILE).is_file():
                continue
            try:
                yield VideoJob.load(folder)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("unreadable video job in %s: %s", folder, exc)


# Writes the job only while it exists and is still at the attempt the writer runs (KEYS[1]: the job,
# ARGV[1]: its JSON, ARGV[2]: the attempt). -1: deleted; 0: queued again for another attempt; 1: written.
_UPDATE = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if cjson.decode(current)['attempt'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# Queues a job unless ``max`` are waiting already (KEYS: job, all, waiting; ARGV: JSON, created, now, max).
_ENQUEUE = """
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
return 1
"""

# KEYS[1]: the lease; ARGV: holder, milliseconds. 1: held by ARGV[1] for that long now; 0: someone else's.
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not current then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


class RedisJobStore(JobStore):
    """Job state in Redis under ``prefix``; every method raises :class:`QueueUnavailable` while Redis
    does not answer (the web answers 503, a worker retries)."""

    def __init__(self, root: str | Path, client, prefix: str):
        super().__init__(root)
        self.redis = client
        self.prefix = prefix
        self._update = client.register_script(_UPDATE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._renew = client.register_script(_RENEW)
        self.errors = _redis_errors()

    # Keys, all under the prefix.
    def key(self, job_id: str) -> str:
        return f"{self.prefix}video:job:{job_id}"

    def lease_key(self, job_id: str) -> str:
        return f"{self.prefix}video:lease:{job_id}"

    @property
    def all_key(self) -> str:
        return f"{self.prefix}video:all"  # id -> created

    @property
    def waiting_key(self) -> str:
        return f"{self.prefix}video:waiting"  # id -> queued at

    @property
    def running_key(self) -> str:
        return f"{self.prefix}video:running"

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except self.errors as exc:
            raise QueueUnavailable(str(exc)) from exc

    @staticmethod
    def _dumps(job: VideoJob) -> str:
        job.updated = time.time()
        return json.dumps(asdict(job))

    # -- JobStore ----------------------------------------------------------------------------------
    def save(self, job: VideoJob) -> None:
        data = self._dumps(job)
        with self.redis.pipeline() as pipe:
            pipe.set(self.key(job.id), data)
            pipe.zadd(self.all_key, {job.id: job.created})
            self._call(pipe.execute)

    def get(self, job_id: str) -> VideoJob | None:
        if not valid_job_id(job_id):
            return None
        raw = self._call(self.redis.get, self.key(job_id))
        if raw is None:
            return None
        try:
            return VideoJob.from_dict(json.loads(raw), folder=str(self.folder(job_id)))
        except (ValueError, TypeError) as exc:
            log.warning("unreadable video job %s in Redis: %s", job_id, exc)
            return None

    def remove(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(job_id), self.lease_key(job_id))
            pipe.zrem(self.all_key, job_id)
            pipe.zrem(self.waiting_key, job_id)
            pipe.srem(self.running_key, job_id)
            self._call(pipe.execute)

    def jobs(self) -> Iterator[VideoJob]:
        for job_id in self._call(self.redis.zrange, self.all_key, 0, -1):
            job = self.get(job_id.decode() if isinstance(job_id, bytes) else job_id)
            if job is not None:
                yield job

    # -- the queue's indexes -----------------------------------------------------------------------
    def enqueue(self, job: VideoJob, max_waiting: int) -> bool:
        """Saves ``job`` as waiting, last in line; False (nothing written) when ``max_waiting`` wait."""
        keys = [self.key(job.id), self.all_key, self.waiting_key]
        return bool(self._call(self._enqueue, keys=keys,
                               args=[self._dumps(job), job.created, time.time(), max_waiting, job.id]))

    def requeue(self, job: VideoJob, previous_attempt: int) -> bool:
        """Writes ``job`` (queued again for a new attempt) and puts it back in line, first (it was accepted
        before the others); False when it was deleted or another process requeued it meanwhile."""
        if self._call(self._update, keys=[self.key(job.id)], args=[self._dumps(job), previous_attempt]) != 1:
            return False
        with self.redis.pipeline() as pipe:
            pipe.srem(self.running_key, job.id)
            pipe.zadd(self.waiting_key, {job.id: job.created})
            self._call(pipe.execute)
        return True

    def position(self, job_id: str) -> int | None:
        rank = self._call(self.redis.zrank, self.waiting_key, job_id)
        return None if rank is None else rank + 1

    def running_ids(self) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in self._call(self.redis.smembers, self.running_key)]

    def all_ids_before(self, created: float) -> list[str]:
        ids = self._call(self.redis.zrangebyscore, self.all_key, "-inf", created)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    # -- a worker's side ---------------------------------------------------------------------------
    def update(self, job: VideoJob, attempt: int) -> bool:
        """Writes the job if it still exists at ``attempt``; False: deleted or taken over (stop)."""
        return self._call(self._update, keys=[self.key(job.id)], args=[self._dumps(job), attempt]) == 1

    def acquire_lease(self, job_id: str, holder: str, lease_s: float) -> bool:
        """Takes the job's lease unless someone holds it; marks the job running (out of the line)."""
        if not self._call(self.redis.set, self.lease_key(job_id), holder, nx=True, px=int(lease_s * 1000)):
            return False
        with self.redis.pipeline() as pipe:
            pipe.zrem(self.waiting_key, job_id)
            pipe.sadd(self.running_key, job_id)
            self._call(pipe.execute)
        return True

    def renew_lease(self, job_id: str, holder: str, lease_s: float) -> bool:
        """Extends the lease while ``holder`` has it, or takes it again if it lapsed and nobody took it
        (Redis was away longer than the lease); False when another holder has it (stop)."""
        return self._call(self._renew, keys=[self.lease_key(job_id)], args=[holder, int(lease_s * 1000)]) == 1

    def lease_holder(self, job_id: str) -> str | None:
        value = self._call(self.redis.get, self.lease_key(job_id))
        return None if value is None else value.decode()

    def release(self, job_id: str, holder: str) -> None:
        """The job ended: out of the running set, its lease dropped (if still ours)."""
        with self.redis.pipeline() as pipe:
            pipe.srem(self.running_key, job_id)
            pipe.get(self.lease_key(job_id))
            _, current = self._call(pipe.execute)
        if current is not None and current.decode() == holder:
            self._call(self.redis.delete, self.lease_key(job_id))

    def claim_reap(self, job_id: str, attempt: int) -> bool:
        """One process, of all that notice it, handles a lapsed lease of this attempt."""
        return bool(self._call(self.redis.set, f"{self.prefix}video:reaped:{job_id}:{attempt}", 1, nx=True, ex=3600))

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except self.errors:
            return False
