"""The cyclic collector's full passes, moved to quiet moments (the live row, issue 17).

A full collection (generation 2) stops every thread while it walks every object it tracks:
9 to 15 ms in a live session with 200 positions, after ``System.start`` froze what start-up
made. CPython starts one when enough objects have survived the younger collections, that is
after bursts of allocation: a wave of exits is such a burst (decisions, orders, fills). Probed
in four live-row runs, each full collection mid-session began while a wave's work went on: two
25 and 70 ms after a wave's first tick, two 1.3 and 1.9 s after the first wave's, while its
second half was placed and filled.

``QuietCollector`` turns the automatic full passes off (the younger generations stay
automatic) and makes one every ``every`` seconds from a thread of its own, at a quiet moment:
when ``quiet()`` says no urgent work (a price that may be an exit) has run for a while. If no
quiet moment comes within ``patience`` seconds, it collects anyway, so cyclic garbage is
collected at the same pace as before, never later than ``every + patience``. Stopping it
gives the collector its automatic full passes back.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

from loguru import logger

from actors.runtime.metrics import Metrics

NEVER = 2**31 - 1
"""A third threshold that the collector's count of younger collections never reaches."""


class QuietCollector:
    def __init__(self, quiet: Callable[[], bool], *, every: float = 10.0,
                 patience: float = 10.0, poll: float = 0.005,
                 metrics: Metrics | None = None) -> None:
        self.quiet = quiet
        self.every, self.patience, self.poll = every, patience, poll
        self.metrics = metrics
        self.passes = 0
        """Full collections made."""
        self.impatient = 0
        """Of them, made without a quiet moment (``patience`` ran out)."""
        self.longest = 0.0
        """Seconds of the longest pause."""
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._thresholds: tuple[int, int, int] | None = None

    def start(self) -> QuietCollector:
        if self._thread is not None:
            return self
        young, middle, _ = self._thresholds = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        self._thread = threading.Thread(target=self._run, name="quiet-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._ended.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def _run(self) -> None:
        while not self._ended.wait(self.every):
            deadline = time.monotonic() + self.patience
            calm = self.quiet()
            while not calm and time.monotonic() < deadline:
                if self._ended.wait(self.poll):
                    return
                calm = self.quiet()
            self.collect(calm)

    def collect(self, calm: bool = True) -> float:
        """One full collection now; the pause in seconds."""
        began = time.perf_counter()
        found = gc.collect()
        pause = time.perf_counter() - began
        self.passes += 1
        self.impatient += not calm
        self.longest = max(self.longest, pause)
        if self.metrics is not None:
            self.metrics.incr("gc_full_passes")
        logger.debug("full collection{}: {:.1f} ms, {} unreachable", "" if calm else
                     " (no quiet moment)", pause * 1000, found)
        return pause
