"""DhanHQ's rate limits (SPEC §10), one limiter per bucket with every window.

=========  ==========================================
bucket     windows
=========  ==========================================
orders     10/s, 250/min, 1,000/h, 7,000/day
quote      1/s
reads      20/s (order book, trades, positions, …)
=========  ==========================================

Built on the ``limits`` library's moving-window strategy in memory. A request counts against
every window of its bucket or none: the windows are tested first and hit only when all have room,
under one lock, so a refused request never uses up a window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class Bucket(StrEnum):
    ORDERS = "orders"
    QUOTE = "quote"
    READS = "reads"


DHAN_LIMITS: Mapping[Bucket, str] = {
    Bucket.ORDERS: "10/second;250/minute;1000/hour;7000/day",
    Bucket.QUOTE: "1/second",
    Bucket.READS: "20/second",
}


class RateLimits:
    """``try_acquire(bucket)`` takes a slot now (0.0) or says how many seconds to wait."""

    def __init__(self, limits: Mapping[Bucket, str] = DHAN_LIMITS, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._items: dict[Bucket, Sequence[RateLimitItem]] = {
            bucket: parse_many(spec) for bucket, spec in limits.items()}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._lock = threading.Lock()
        self._sleep = sleep

    def try_acquire(self, bucket: Bucket) -> float:
        """0.0 when the request may go now (and it is counted); else the seconds until the
        fullest window has room (nothing is counted)."""
        items = self._items.get(bucket, ())
        with self._lock:
            full = [item for item in items if not self._limiter.test(item, bucket.value)]
            if not full:
                for item in items:
                    self._limiter.hit(item, bucket.value)
                return 0.0
            now = time.time()
            resets = (self._limiter.get_window_stats(item, bucket.value).reset_time
                      for item in full)
            return max(0.001, max(reset - now for reset in resets))

    def acquire(self, bucket: Bucket, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot; False (nothing counted) when none came."""
        deadline = time.monotonic() + timeout
        while True:
            wait = self.try_acquire(bucket)
            if wait == 0.0:
                return True
            left = deadline - time.monotonic()
            if wait > left:
                return False
            self._sleep(wait)
