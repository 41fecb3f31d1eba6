"""Counters the report and the benchmarks read (SPEC §7 ``metrics``), latency histograms the
operator console exports (SPEC §12), and the latest alarms (``actors/anomalies.py``).

Shared by every actor, so each increment takes a small lock: it guards these integers only,
never domain state. A counter named ``family.label`` (``gateway_errors.DH-904``) is one
labelled member of a family for the console's ``/metrics``.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from dataclasses import dataclass

NAMES = ("price_batches", "evaluations", "db_queries", "redis_roundtrips", "quote_api_calls",
         "actor_restarts", "dead_letters", "rejected_updates", "anomalies")

ALARMS_KEPT = 100
"""The most recent alarms kept for the status and the report (all are logged)."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0)
"""Upper bounds in seconds: fine below the 10 / 20 ms targets of SPEC §9, coarse above."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """A copy of one histogram: per-bucket counts (not cumulative; the last is +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


class _Series:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._series: dict[str, _Series] = {}
        self._alarms: deque[str] = deque(maxlen=ALARMS_KEPT)

    def alarm(self, text: str) -> None:
        """An alarm an operator must see: in the status and the report (``alarms``)."""
        with self._lock:
            self._alarms.append(text)

    def alarms(self) -> list[str]:
        with self._lock:
            return list(self._alarms)

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

    def observe(self, name: str, seconds: float) -> None:
        """One latency sample, in seconds (a negative one, from a clock step, counts as 0)."""
        value = max(0.0, seconds)
        index = bisect.bisect_left(LATENCY_BUCKETS, value)
        with self._lock:
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _Series()
            series.counts[index] += 1
            series.total += value
            series.count += 1

    def histograms(self) -> dict[str, Histogram]:
        with self._lock:
            return {name: Histogram(bounds=LATENCY_BUCKETS, counts=tuple(s.counts),
                                    total=s.total, count=s.count)
                    for name, s in self._series.items()}
