"""Dynamic micro-batching: callers submit one item and get one Future; a worker thread runs the
batched function on whatever has gathered.

Policy (chosen on purpose, in the spirit of Triton's delayed batching): a batch leaves as soon as it
holds ``max_batch_size`` items, or when its *oldest* item has waited ``max_wait_ms``, whichever comes
first. So no request waits in the queue longer than ``max_wait_ms`` plus the batches in flight before
it, and a lone request on an idle service pays at most ``max_wait_ms``. The queue is bounded: when
``max_queue`` items of a source are waiting, ``submit`` refuses its new work at once
(``QueueFullError``) instead of letting latency grow without limit.

Sources share the worker fairly (:class:`FairQueue`): each item names its source (the service uses
"photo", "live", "video"), and the batch that leaves next is led by the source that has had the least
of the worker's time (weighted). A plain FIFO gave the worker to whoever queued most: a video job, which
asks for a chunk of frames and waits for the answer before the next, waited behind every live client's
frame at each step, and took 56x its time alone under 16 live clients (bench/soak.py).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Mapping, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_SOURCE = "default"


class QueueFullError(RuntimeError):
    """The batcher's queue is full: the service is overloaded, try again shortly."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down; no more work is accepted."""


@dataclass
class _Request(Generic[T]):
    item: T
    future: Future
    source: Hashable = DEFAULT_SOURCE
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class _SourceState:
    weight: float
    pending: deque = field(default_factory=deque)  # of (arrival number, request)
    start: float = 0.0  # virtual time at which its next batch may start
    finish: float = 0.0  # virtual time at which the work it has had so far ends


class FairQueue(Generic[T]):
    """Start-time fair queuing (Goyal et al., 1996) between sources, with batches as the unit of service.

    Each source has a virtual clock that its own work advances by ``cost / weight``. The next batch is
    led by the waiting source whose clock is earliest (ties: the one whose oldest item came first). A
    source that was idle joins at the virtual time of the batch in service, so it can bank no credit
    while idle, and is served after at most the batch in flight: a source that asks for a few items at
    a time (a video job, chunk by chunk) is not made to wait behind everyone else's backlog. Between sources that all have work waiting, the worker's time is shared in proportion to
    their weights.

    With ``mix_sources`` a batch that its leader does not fill is topped up from the other sources
    (by the same order), each charged its items' share of the batch's cost: batching across callers is
    kept where a fuller batch is cheaper per item (the face heads). Without it a batch holds one
    source's items (the detector: a video's search does not wait for the live searches batched with it,
    and 16 live clients' frames still share a batch).

    Not thread-safe; :class:`MicroBatcher` holds a lock around it. No clock inside: costs are given.
    """

    def __init__(self, max_per_source: int, weights: Mapping[Hashable, float] | None = None,
                 mix_sources: bool = True):
        self.max_per_source = int(max_per_source)
        self.weights = dict(weights or {})
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError("source weights must be > 0")
        self.mix_sources = mix_sources
        self.vtime = 0.0  # the start of the batch in service (or last served)
        self._sources: dict[Hashable, _SourceState] = {}
        self._arrivals = itertools.count()
        self._in_service: dict[Hashable, tuple[float, int]] = {}  # source -> (its start, its items)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, request: _Request[T]) -> bool:
        """Queues ``request`` under its source; False (and nothing queued) when that source is full.
        A source's weight (default 1) is its share of the worker against the others'."""
        state = self._sources.get(request.source)
        if state is None:
            state = self._sources[request.source] = _SourceState(weight=float(self.weights.get(request.source, 1.0)))
        if len(state.pending) >= self.max_per_source:
            return False
        if not state.pending:
            state.start = max(self.vtime, state.finish)
        state.pending.append((next(self._arrivals), request))
        self._size += 1
        return True

    def oldest(self) -> _Request[T] | None:
        heads = [s.pending[0] for s in self._sources.values() if s.pending]
        return min(heads, key=lambda head: head[0])[1] if heads else None

    def take(self, max_items: int) -> list[_Request[T]]:
        """The next batch: up to ``max_items`` requests, led by the earliest source. Call :meth:`charge`
        with its cost before the next ``take``."""
        order = sorted(((key, s) for key, s in self._sources.items() if s.pending),
                       key=lambda ks: (ks[1].start, ks[1].pending[0][0]))
        if not order:
            return []
        self.vtime = order[0][1].start
        batch: list[_Request[T]] = []
        self._in_service = {}
        for key, state in order if self.mix_sources else order[:1]:
            n = min(len(state.pending), max_items - len(batch))
            batch.extend(state.pending.popleft()[1] for _ in range(n))
            self._in_service[key] = (state.start, n)
            if len(batch) >= max_items:
                break
        self._size -= len(batch)
        return batch

    def charge(self, cost: float) -> None:
        """Advances the clocks of the sources of the last batch by their share of its ``cost`` (seconds)."""
        total = sum(n for _, n in self._in_service.values())
        for source, (start, n) in self._in_service.items():
            state = self._sources[source]
            state.finish = start + cost * n / total / state.weight
            if state.pending:
                state.start = max(state.start, state.finish)
        self._in_service = {}


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
        max_queue: most items waiting per source; beyond it ``submit`` raises ``QueueFullError``.
        name: the worker thread's name, for logs.
        weights: each source's share of the worker when several have work waiting (default 1 each).
        mix_sources: whether one batch may hold items of several sources (see :class:`FairQueue`).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, name: str = "batcher",
                 weights: Mapping[Hashable, float] | None = None, mix_sources: bool = True):
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
        self.max_queue = int(max_queue)
        self._queue: FairQueue[T] = FairQueue(self.max_queue, weights, mix_sources)
        self._changed = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, source: Hashable = DEFAULT_SOURCE) -> Future:
        """Queue one item of ``source``; the returned Future resolves to its result (or its batch's exception)."""
        request = _Request(item=item, future=Future(), source=source)
        with self._changed:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            if not self._queue.push(request):
                raise QueueFullError(f"inference queue is full ({self.max_queue} items of {source!r} waiting)")
            self._changed.notify()
        return request.future

    def submit_many(self, items: Sequence[T], source: Hashable = DEFAULT_SOURCE) -> list[Future]:
        return [self.submit(item, source) for item in items]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting work, finish what is queued, stop the worker."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request[T]] | None:
        """Waits for a batch to leave (full, or its oldest item has waited ``max_wait_s``, or closing);
        None once closed and drained."""
        with self._changed:
            while not len(self._queue):
                if self._closed:
                    return None
                self._changed.wait()
            deadline = self._queue.oldest().enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._queue.take(self.max_batch_size)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            t0 = time.monotonic()
            self._execute(batch)
            with self._changed:
                self._queue.charge(time.monotonic() - t0)

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
