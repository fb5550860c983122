"""A pixel budget shared by the requests of a process: pictures decoded and analysed at once may hold
at most ``budget`` pixels between them (counted at full size, what a decoder may touch), so that 16
large uploads at once cost what a few do instead of 16 times as much. A request that does not fit waits
for others to finish, up to ``wait_s``, and is then refused (503). When the last request lets go after
large pictures, the C heap's free memory goes back to the system at once (``app/heap.py``): glibc otherwise
keeps it in its per-thread arenas, and idle RSS stays at its peak."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from app.heap import release_free_memory


class BudgetExceeded(Exception):
    """The picture did not fit in the budget within the wait; the caller answers 503."""


class PixelBudget:
    def __init__(self, budget: int, wait_s: float = 30.0, trim_after_pixels: int = 8_000_000):
        if budget < 1:
            raise ValueError("the pixel budget must be positive")
        self.budget = int(budget)
        self.wait_s = float(wait_s)
        self.trim_after_pixels = int(trim_after_pixels)
        self.in_use = 0
        self._since_trim = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int):
        """Holds ``pixels`` (at most the whole budget: one picture always fits alone) for the block."""
        pixels = max(1, min(int(pixels), self.budget))
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self.in_use + pixels > self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetExceeded()
                self._changed.wait(left)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._since_trim += pixels
                trim = self.in_use == 0 and self._since_trim >= self.trim_after_pixels
                if trim:
                    self._since_trim = 0
                self._changed.notify_all()
            if trim:
                release_free_memory()
