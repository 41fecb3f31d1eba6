"""CacheWriterActor: the PnL cache's round trips, on a thread of their own.

The PnL writer values the positions and makes the cache entries; this actor owns the cache
adapter and makes each write's one round trip. So the PnL writer (which also values the day for
the kill switch) never waits on Redis (SPEC §6: risk evaluation never waits on the cache), and
while a write is on the wire and in Redis, the next prices are already being handled. The PnL
writer keeps at most one write in flight: what falls due meanwhile waits for a later flush, so a
slow Redis delays the cache and queues nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from store.ports import PnLCache
from store.records import PnLEntry


@dataclass(frozen=True, slots=True)
class WriteCache:
    """PnL writer → cache writer (asked): one write, ``PnLCache.write``'s arguments."""

    entries: tuple[PnLEntry, ...]
    deletes: tuple[str, ...] = ()


class CacheWriterActor(SingletonActor):
    trace_kind = "cache"

    def __init__(self, cache: PnLCache, metrics: Metrics) -> None:
        super().__init__()
        self.cache, self.metrics = cache, metrics

    def on_receive(self, message: object) -> bool | None:
        if isinstance(message, WriteCache):
            before = self.cache.roundtrips
            done = self.cache.write(message.entries, message.deletes)  # never raises
            self.metrics.incr("redis_roundtrips", self.cache.roundtrips - before)
            return done
        return None
