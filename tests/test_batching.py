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


# -- fair sharing between sources (FairQueue: no clock, no threads; costs are given) ------------

def _request(source, item=None):
    from concurrent.futures import Future

    from app.inference.batching import _Request

    return _Request(item=item, future=Future(), source=source)


def _sources(batch):
    return [r.source for r in batch]


def test_a_source_asking_one_item_at_a_time_waits_only_for_the_batch_in_flight():
    """16 live clients always have a frame waiting (each sends its next one when answered); a video job
    asks for one follow at a time. Under FIFO each of its steps waited for every live frame queued
    before it; here each waits for the one batch in service, never more."""
    from app.inference.batching import FairQueue

    queue = FairQueue(max_per_source=64, mix_sources=False)
    for _ in range(16):
        queue.push(_request("live"))
    waited = []
    for _step in range(20):
        batch = queue.take(8)  # in service: 8 live frames
        assert _sources(batch) == ["live"] * 8
        queue.push(_request("video"))  # the video job's next step arrives meanwhile
        queue.charge(0.300)
        for _ in batch:  # the answered live clients send their next frames
            queue.push(_request("live"))
        batches_before_video = 0
        while _sources(batch := queue.take(8)) != ["video"]:
            batches_before_video += 1
            queue.charge(0.300)
            for _ in batch:
                queue.push(_request("live"))
        queue.charge(0.005)
        waited.append(batches_before_video)
    assert waited == [0] * 20


def test_sources_with_work_waiting_share_the_worker_by_weight():
    from app.inference.batching import FairQueue

    queue = FairQueue(max_per_source=1000, weights={"a": 1, "b": 3}, mix_sources=False)
    for _ in range(100):
        queue.push(_request("a"))
        queue.push(_request("b"))
    served = []
    for _ in range(40):
        served += _sources(queue.take(1))
        queue.charge(1.0)
    assert served.count("a") == 10 and served.count("b") == 30


def test_an_idle_source_banks_no_credit():
    """A source that had the worker to itself is not owed that time back by a newcomer: from the
    newcomer's arrival on, equal weights alternate."""
    from app.inference.batching import FairQueue

    queue = FairQueue(max_per_source=1000, mix_sources=False)
    for _ in range(50):
        queue.push(_request("a"))
    for _ in range(10):
        assert _sources(queue.take(1)) == ["a"]
        queue.charge(1.0)
    for _ in range(50):
        queue.push(_request("b"))
    served = []
    for _ in range(10):
        served += _sources(queue.take(1))
        queue.charge(1.0)
    assert served.count("a") == 5 and served.count("b") == 5


def test_mixed_batches_are_topped_up_from_other_sources_and_each_pays_its_share():
    from app.inference.batching import FairQueue

    queue = FairQueue(max_per_source=100, mix_sources=True)
    for _ in range(3):
        queue.push(_request("video"))
    for _ in range(10):
        queue.push(_request("live"))
    assert _sources(queue.take(8)) == ["video"] * 3 + ["live"] * 5
    queue.charge(8.0)  # video's clock moves by 3, live's by 5
    queue.push(_request("video"))
    assert _sources(queue.take(8)) == ["video"] + ["live"] * 5  # video's clock (3) is earlier than live's (5)


def test_a_full_source_does_not_take_the_queue_from_the_others():
    from app.inference.batching import FairQueue

    queue = FairQueue(max_per_source=2)
    assert queue.push(_request("video")) and queue.push(_request("video"))
    assert not queue.push(_request("video"))
    assert queue.push(_request("live"))
    assert len(queue) == 3


def test_the_batcher_serves_a_late_source_before_the_backlog_of_another():
    """Threads, but no timing: the first batch blocks until every item is queued."""
    started, release, order = threading.Event(), threading.Event(), []

    def run(items):
        order.append(sorted(set(items)))
        started.set()
        release.wait(5)
        return items

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=0, mix_sources=False)
    first = batcher.submit("live", source="live")
    assert started.wait(5)
    backlog = batcher.submit_many(["live"] * 16, source="live")
    late = batcher.submit("video", source="video")
    release.set()
    assert late.result(timeout=5) == "video" and first.result(timeout=5) == "live"
    assert [f.result(timeout=5) for f in backlog] == ["live"] * 16
    batcher.close()
    assert order == [["live"], ["video"], ["live"], ["live"]]
