"""Dynamic micro-batching: callers submit one item and get one Future; a worker thread runs the
batched function on whatever has gathered.

Policy (chosen on purpose, in the spirit of Triton's delayed batching): a batch leaves as soon as it
holds ``max_batch_size`` items, or when its *oldest* item has waited ``max_wait_ms``, whichever comes
first. So no request waits in the queue longer than ``max_wait_ms`` plus the batch in flight before
it, and a lone request on an idle service pays at most ``max_wait_ms``. The queue is bounded: when
``max_queue`` items are waiting, ``submit`` refuses new work at once (``QueueFullError``) instead of
letting latency grow without limit.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """The batcher's queue is full: the service is overloaded, try again shortly."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down; no more work is accepted."""


@dataclass
class _Request(Generic[T]):
    item: T
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher(Generic[T, R]):
    """Gathers single items from many threads into batches for one function.

    Args:
        fn: takes a list of items and returns one result per item, in order. A result list of
            another length is an error delivered to every caller of that batch, never a misalignment.
        max_batch_size: most items per call of ``fn``.
        max_wait_ms: longest an item waits for companions (0: take what is there, never wait).
        max_queue: most items waiting; beyond it ``submit`` raises ``QueueFullError``.
        name: the worker thread's name, for logs.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, name: str = "batcher"):
        if not callable(fn):
            raise TypeError("fn must be callable")
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if float(max_wait_ms) < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if int(max_queue) < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._queue: queue.Queue[_Request[T] | None] = queue.Queue(maxsize=int(max_queue))
        self._closed = threading.Event()
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future:
        """Queue one item; the returned Future resolves to its result (or its batch's exception)."""
        if self._closed.is_set():
            raise BatcherClosedError("the batcher is closed")
        request = _Request(item=item, future=Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError(f"inference queue is full ({self._queue.maxsize} items waiting)") from None
        return request.future

    def submit_many(self, items: Sequence[T]) -> list[Future]:
        return [self.submit(item) for item in items]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting work, finish what is queued, stop the worker."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)  # wake the worker
        self._thread.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drain_after_close()
                return
            batch = [first]
            deadline = first.enqueued + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._execute(batch)
            if stop:
                self._drain_after_close()
                return

    def _drain_after_close(self) -> None:
        leftovers = []
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                leftovers.append(req)
        for i in range(0, len(leftovers), self.max_batch_size):
            self._execute(leftovers[i:i + self.max_batch_size])

    def _execute(self, batch: list[_Request[T]]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        try:
            results = self._fn([r.item for r in live])
            if len(results) != len(live):
                raise RuntimeError(f"batched function returned {len(results)} results for {len(live)} items")
        except BaseException as exc:  # every caller gets the failure; the worker keeps serving
            log.exception("batched call failed for %d item(s)", len(live))
            for r in live:
                r.future.set_exception(exc)
            return
        for r, res in zip(live, results):
            r.future.set_result(res)
