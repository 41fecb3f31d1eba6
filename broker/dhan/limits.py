"""DhanHQ's rate limits (SPEC §10), one limiter per bucket with every window.

=========  ==========================================
bucket     windows
=========  ==========================================
orders     10/s, 250/min, 1,000/h, 7,000/day
quote      1/s
reads      20/s (order book, trades, positions, …)
=========  ==========================================

A sliding-window log of our own. DhanHQ counts a request when it *arrives*; we can only count
it when we send it, and the two differ by the request's transit. A limiter that frees a slot
``window`` seconds after the request left lets the next one leave at the very edge of the
window and arrive inside the broker's (measured at the fake: 13 order requests in one second
against 10/s). So a slot is *held* from ``acquire`` until the caller ``release``\\ s it with the
answer in hand (the request has surely arrived by then), and stays in every window for
``window + margin`` seconds after that. A request counts against every window of its bucket or
none: the windows are tested first and taken only when all have room, under one lock.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum


class Bucket(StrEnum):
    ORDERS = "orders"
    QUOTE = "quote"
    READS = "reads"


DHAN_LIMITS: Mapping[Bucket, str] = {
    Bucket.ORDERS: "10/second;250/minute;1000/hour;7000/day",
    Bucket.QUOTE: "1/second",
    Bucket.READS: "20/second",
}

MARGIN = 0.010
"""Seconds a slot stays counted beyond its window after the answer came back."""

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_WINDOW = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


class _Window:
    """``count`` requests in any ``seconds``: the answer times of finished requests still in
    the window (oldest first), and how many requests are out (held, counted all along)."""

    __slots__ = ("count", "done", "held", "seconds")

    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds = count, seconds
        self.done: deque[float] = deque()
        self.held = 0

    def wait(self, now: float, span: float) -> float:
        """0.0 when one more fits at ``now``; else the seconds until one does (a guess of a
        full span when only held requests fill it: they free nothing before their answer)."""
        done = self.done
        while done and done[0] + span <= now:
            done.popleft()
        excess = self.held + len(done) - self.count + 1
        if excess <= 0:
            return 0.0
        if excess > len(done):
            return span
        return done[excess - 1] + span - now


def parse_windows(spec: str) -> list[tuple[int, float]]:
    """``"10/second;250/minute"`` → ``[(10, 1.0), (250, 60.0)]``."""
    windows = []
    for part in spec.split(";"):
        matched = _WINDOW.match(part)
        if matched is None:
            raise ValueError(f"not a rate limit: {part!r} (want e.g. '10/second')")
        windows.append((int(matched.group(1)), _UNITS[matched.group(2)]))
    return windows


class RateLimits:
    """``try_acquire(bucket)`` takes a slot now (0.0) or says how many seconds to wait; a taken
    slot is held until ``release(bucket)``, then counted ``window + margin`` longer."""

    def __init__(self, limits: Mapping[Bucket, str] = DHAN_LIMITS, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, margin: float = MARGIN) -> None:
        self._windows: dict[Bucket, list[_Window]] = {
            bucket: [_Window(count, seconds) for count, seconds in parse_windows(spec)]
            for bucket, spec in limits.items()}
        self._lock = threading.Lock()
        self._sleep, self._clock, self.margin = sleep, clock, margin

    def try_acquire(self, bucket: Bucket) -> float:
        """0.0 when the request may go now (its slot is taken and held); else the seconds until
        the fullest window has room (nothing is counted)."""
        windows = self._windows.get(bucket, ())
        with self._lock:
            now = self._clock()
            wait = max((w.wait(now, w.seconds + self.margin) for w in windows), default=0.0)
            if wait > 0.0:
                return max(0.001, wait)
            for window in windows:
                window.held += 1
            return 0.0

    def release(self, bucket: Bucket) -> None:
        """A request of ``bucket`` got its answer (or failed): its slot stays counted for each
        window's length (plus the margin) from now."""
        with self._lock:
            now = self._clock()
            for window in self._windows.get(bucket, ()):
                if window.held > 0:
                    window.held -= 1
                    window.done.append(now)

    def acquire(self, bucket: Bucket, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot; False (nothing counted) when none came.
        A slot that frees before the wait ends is taken: waits are short, so the wait is
        re-checked at least every 50 ms (a held slot's answer frees room at any moment)."""
        deadline = self._clock() + timeout
        while True:
            wait = self.try_acquire(bucket)
            if wait == 0.0:
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._sleep(min(wait, left, 0.05))

    @contextmanager
    def slot(self, bucket: Bucket, timeout: float) -> Iterator[bool]:
        """``with limits.slot(bucket, timeout) as taken:`` the request inside, released (its
        answer in hand) on leaving; ``taken`` False: nothing was counted, do not send."""
        taken = self.acquire(bucket, timeout)
        try:
            yield taken
        finally:
            if taken:
                self.release(bucket)
