"""Real Redis for the tests of REDIS_URL mode: the machine's server (own database number and key prefix,
cleaned up after), or a ``redis-server`` of the test's own on a free port (the restart case). Where
neither is there the tests skip with the reason, except under CI (env ``CI`` set), where that fails."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from serving import free_port

# Database 11 of the machine's server: the app's default (0) and other projects' stay untouched.
SHARED_REDIS_URL = os.environ.get("FACEAPP_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where every part must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the Redis tests must run)")
    pytest.skip(reason)


def shared_redis() -> redis.Redis:
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"no Redis answers at {SHARED_REDIS_URL} ({exc})")
    return client


def unique_prefix() -> str:
    """A key prefix of this test run alone."""
    return f"faceapp-test-{uuid.uuid4().hex[:12]}:"


def delete_prefixed(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, its data in ``folder`` with an
    append-only file synced at every write (so a stop and start loses nothing, as a production
    Redis for jobs should be set up: compose.yaml)."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (needed to stop and start a Redis of the test's own)")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: Redis closes its clients and syncs its files, as a restart does."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
