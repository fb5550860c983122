"""Keeping the C heap from holding memory the process no longer uses.

glibc keeps freed memory in its arenas for reuse and returns it only from the top of each heap, and by
default it serves ever larger blocks from the arenas after large ones are freed (its mmap threshold
rises with them, up to 32 MB). A long-running server that allocates frames, crops and tensors of many
sizes from many threads then holds more than it uses: under the soak (``bench/soak.py``, read with a
debug hook) the arenas were ~350 MB for ~250 MB in use, and each ``malloc_trim`` gave back ~50 MB. (The soak's steady creep,
~3 MB a minute, was not this but OpenCV's per-thread state: ``app/inference/service.py``.)

- :func:`set_mmap_threshold`: blocks from this size up get their own mapping, unmapped when freed, and
  the threshold stays put (the service sets 128 KiB: a frame, a crop batch, a tensor);
- :func:`release_free_memory`: one ``malloc_trim(0)``, the free pages of every arena back to the system,
  now (``app/budget.py`` calls it after large pictures; under the soak a call gave back ~50 MB in 4-40 ms);
- :class:`HeapTrimmer`: a thread that trims every ``interval_s`` while the process is working, and
  once it stops working, has the inference service give back its runtimes' pools.

README ("Benchmarks", "Soak") has the measurements. Not glibc (musl, macOS): these do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


def _libc(name: str, argtypes: list, restype):
    """glibc's function ``name``, or None where the C library has none (musl, macOS)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@dataclass(frozen=True)
class HeapStats:
    """glibc's own account of the C heap (``mallinfo2``), for benchmarks and tests."""

    arena_bytes: int  # the arenas' size (what they hold from the system, in use or free)
    in_use_bytes: int  # allocated from the arenas
    mapped_blocks: int  # blocks with a mapping of their own
    mapped_bytes: int


_TRIM = _libc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_MALLINFO2 = _libc("mallinfo2", [], _MallInfo2)  # glibc 2.33 and later
_MALLOPT = _libc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def set_mmap_threshold(size: int) -> bool:
    """Allocations of ``size`` bytes and more get a mapping of their own, given back when freed; glibc
    no longer moves the threshold. 0 leaves glibc's default (dynamic) alone. False where it cannot be set."""
    if size < 0:
        raise ValueError(f"the mmap threshold must be >= 0 bytes, got {size}")
    if size == 0 or _MALLOPT is None:
        return False
    return _MALLOPT(M_MMAP_THRESHOLD, int(size)) == 1


def heap_stats() -> HeapStats | None:
    """The C heap now; None without glibc 2.33's ``mallinfo2``."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return HeapStats(arena_bytes=info.arena, in_use_bytes=info.uordblks, mapped_blocks=info.hblks,
                     mapped_bytes=info.hblkhd)


def release_free_memory() -> bool:
    """Gives the C heap's free pages back to the system; False where there is no ``malloc_trim``."""
    if _TRIM is None:
        return False
    _TRIM(0)  # ctypes lets go of the GIL for the call: other threads keep running
    return True


class HeapTrimmer:
    """Trims the heap every ``interval_s`` seconds, but only after work, and once the work stops, gives
    back what its peaks left held. ``activity()`` returns a counter that grows with the work done (e.g.
    items through the inference batchers): when it has not moved since the last trim there is nothing
    new to give back, and an idle server is left alone. When it has not moved for ``idle_after_s``
    seconds after moving, ``when_idle()`` runs once (the inference service's
    :meth:`~app.inference.service.InferenceService.release_memory`: pools such as ONNX Runtime's arenas
    keep their high-water mark, and shrinking them while work runs would only make it grow them again).

    Args:
        activity: a counter of work done.
        interval_s: seconds between trims; 0: no trims.
        when_idle: called once per quiet spell; None: nothing.
        idle_after_s: how long the counter must stay put to count as a quiet spell; 0: never.
        start: False: no thread, the caller drives the rounds (tests). With neither trims nor an idle
            release, no thread is started either.
    """

    def __init__(self, activity: Callable[[], int], interval_s: float, when_idle: Callable[[], object] | None = None,
                 idle_after_s: float = 0.0, start: bool = True):
        if interval_s < 0 or idle_after_s < 0:
            raise ValueError(f"the heap trim interval and idle time must be >= 0 seconds, "
                             f"got {interval_s} and {idle_after_s}")
        self._activity = activity
        self.interval_s = float(interval_s)
        self.idle_after_s = float(idle_after_s) if when_idle is not None else 0.0
        self._when_idle = when_idle
        self.trims = 0
        self.idle_releases = 0
        self._last_seen: int | None = None  # the counter at the last trim round
        self._idle_seen: int | None = None  # the counter at the last idle check...
        self._moved_at = 0.0  # ...when it last moved
        self._released = True  # this quiet spell's release is done (none before the first work)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        trims = self.interval_s > 0 and _TRIM is not None
        if start and (trims or self.idle_after_s > 0):
            ticks = [t for t in (self.interval_s if trims else 0, self.idle_after_s / 2) if t > 0]
            self._tick = min(ticks)
            self._thread = threading.Thread(target=self._run, args=(trims,), name="heap-trimmer", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def trim_if_busy(self) -> bool:
        """One round: trims when the activity counter moved since the last round; True if it trimmed."""
        seen = self._activity()
        if seen == self._last_seen:
            return False
        self._last_seen = seen
        if release_free_memory():
            self.trims += 1
            return True
        return False

    def release_if_idle(self, now: float) -> bool:
        """One check at monotonic time ``now``: runs ``when_idle`` if the counter moved before and has
        stayed put for ``idle_after_s`` since; True if it ran."""
        seen = self._activity()
        if seen != self._idle_seen:
            self._idle_seen, self._moved_at, self._released = seen, now, False
            return False
        if self._released or self.idle_after_s <= 0 or now - self._moved_at < self.idle_after_s:
            return False
        self._released = True
        self._when_idle()
        self.idle_releases += 1
        return True

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, trims: bool) -> None:
        next_trim = time.monotonic() + self.interval_s
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            try:
                if trims and now >= next_trim:
                    next_trim = now + self.interval_s
                    self.trim_if_busy()
                self.release_if_idle(now)
            except Exception:  # noqa: BLE001 - a failed round must not end the thread or the process
                log.exception("giving memory back failed")
