"""Counters the report and the benchmarks read (SPEC §7 ``metrics``).

Shared by every actor, so each increment takes a small lock: it guards these integers only,
never domain state.
"""

from __future__ import annotations

import threading
from collections import Counter

NAMES = ("price_batches", "evaluations", "db_queries", "redis_roundtrips", "quote_api_calls",
         "actor_restarts", "dead_letters", "rejected_updates")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        return {**{name: 0 for name in NAMES}, **counts}
