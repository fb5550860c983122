"""The micro-batcher: items gather into batches, results go back to their own callers."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.inference.batching import MicroBatcher, QueueFullError


def test_results_return_to_their_callers_in_batches():
    seen_sizes = []

    def square(items):
        seen_sizes.append(len(items))
        return [x * x for x in items]

    batcher = MicroBatcher(square, max_batch_size=8, max_wait_ms=50)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.submit(x).result(timeout=5), range(40)))
    batcher.close()
    assert results == [x * x for x in range(40)]
    assert max(seen_sizes) <= 8
    assert len(seen_sizes) < 40  # concurrent callers really shared batches
    assert batcher.stats.items == 40 and batcher.stats.largest == max(seen_sizes)


def test_a_full_batch_leaves_without_waiting():
    batcher = MicroBatcher(lambda xs: xs, max_batch_size=4, max_wait_ms=10_000)
    t0 = time.monotonic()
    futures = batcher.submit_many(range(4))
    assert [f.result(timeout=2) for f in futures] == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 2
    batcher.close()


def test_a_lone_item_waits_at_most_max_wait():
    batcher = MicroBatcher(lambda xs: xs, max_batch_size=64, max_wait_ms=30)
    t0 = time.monotonic()
    assert batcher.submit("x").result(timeout=2) == "x"
    assert time.monotonic() - t0 < 1.0
    batcher.close()


def test_failure_reaches_every_caller_and_the_worker_survives():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("bad batch")
        return items

    batcher = MicroBatcher(flaky, max_batch_size=2, max_wait_ms=200)
    a, b = batcher.submit("ok"), batcher.submit("boom")
    for f in (a, b):
        with pytest.raises(ValueError, match="bad batch"):
            f.result(timeout=2)
    assert batcher.submit("later").result(timeout=2) == "later"
    batcher.close()


def test_wrong_number_of_results_is_an_error_not_a_misalignment():
    batcher = MicroBatcher(lambda xs: xs[:-1], max_batch_size=2, max_wait_ms=200)
    futures = batcher.submit_many([1, 2])
    for f in futures:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            f.result(timeout=2)
    batcher.close()


def test_bounded_queue_refuses_work_when_full():
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    batcher = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=2)
    first = batcher.submit(0)
    time.sleep(0.1)  # the worker holds item 0; the queue has room for 2 more
    batcher.submit(1)
    batcher.submit(2)
    with pytest.raises(QueueFullError):
        batcher.submit(3)
    release.set()
    assert first.result(timeout=5) == 0
    batcher.close()


def test_close_finishes_queued_work():
    batcher = MicroBatcher(lambda xs: [x + 1 for x in xs], max_batch_size=4, max_wait_ms=1000)
    futures = batcher.submit_many(range(6))
    batcher.close()
    assert [f.result(timeout=2) for f in futures] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_queue": 0}])
def test_arguments_are_checked(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, **kwargs)
