"""One price cycle at N positions: this system against the old design and the floor.

- *floor*: a plain loop folding the prices into the positions and evaluating the rules with
  the trackers' own pure core (basis, quiet guard, valuation), every position every cycle;
- *old design* (SPEC §1): per cycle, query the active positions from the database, read each
  position's PnL from Redis one by one, one quote call per segment, several passes over the
  positions, write each PnL back;
- *actors*: every instrument's price changes, ticks go through the batcher, the index fans out,
  every tracker evaluates; the cycle ends when the last tracker has evaluated.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis

from actors.prices.index import OpenPositions
from actors.runtime.metrics import Metrics
from actors.system import Parts, System
from app.clocks import ManualClock
from bench.report import at_least, figure
from bench.workload import QUIET_PERIOD, T0, instruments, positions, quiet_prices
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from broker.paper.quotes import PaperQuoteApi
from models.bands import Quiet, quiet
from models.common import Instrument, Segment
from models.marks import Basis, basis_of, net_at, pct_at
from models.policy import RiskConfig
from models.position import Position, PositionStatus
from models.rules import PriceMark, evaluate, update_marks
from store.ports import PnLCache, Store
from store.records import PnLEntry

CONFIG = RiskConfig()


class Floor:
    """The floor: the trackers' pure core in one plain loop over every position, no actors, no
    I/O. Like a tracker, each position keeps its basis and quiet guard between prices (the
    rules run in full only near a trigger) and is valued for the cache at every price."""

    def __init__(self, book: list[Position]) -> None:
        self.state: list[tuple[Instrument, Position, Basis | None, Quiet | None]] = [
            (Instrument(segment=p.segment, security_id=p.security_id), p,
             basis_of(p, CONFIG.policy), None) for p in book]

    def cycle(self, prices: dict[Instrument, Decimal], now: datetime = T0) -> int:
        """Fold one price per instrument into every position; the number of exits decided."""
        marks = {instrument: PriceMark(ltp=ltp, at=now) for instrument, ltp in prices.items()}
        exits, state = 0, []
        for instrument, position, basis, guard in self.state:
            mark = marks[instrument]
            position = update_marks(position, mark.ltp, CONFIG.policy, basis)
            if basis is not None:
                net_at(basis, mark.ltp), pct_at(basis, mark.ltp)  # the cache's valuation
            if guard is None or not guard.holds(position, mark.ltp, True, now):
                if evaluate(position, mark, now, CONFIG) is not None:
                    exits += 1
                guard = quiet(position, basis, now, CONFIG) if basis is not None else None
            state.append((instrument, position, basis, guard))
        self.state = state
        return exits


class OldDesign:
    """The old RiskManagerService loop, on the same PostgreSQL and Redis."""

    def __init__(self, store_url: str, redis_url: str, quotes: PaperQuoteApi) -> None:
        import psycopg

        self.conn = psycopg.connect(store_url, autocommit=True)
        self.redis = redis.Redis.from_url(redis_url)
        self.quotes = quotes
        self.db_queries = self.redis_roundtrips = 0

    def cycle(self) -> None:
        rows = self.conn.execute("SELECT data FROM positions WHERE status IN "
                                 "('ACTIVE', 'EXITING')").fetchall()
        book = [Position.model_validate_json(row[0]) for row in rows]
        self.db_queries += 1
        self.redis_roundtrips += 2 * len(book)  # one HGETALL and one HSET per position
        pnl = {p.position_id: self.redis.hgetall(f"pnl:tracker:{p.position_id}") for p in book}
        by_segment: dict[Segment, list[int]] = {}
        for position in book:  # pass 1: instruments per segment
            by_segment.setdefault(position.segment, []).append(int(position.security_id))
        prices: dict[Instrument, Decimal] = {}
        for segment, ids in by_segment.items():  # one quote call per segment
            prices.update(self.quotes.ltp({segment: sorted(set(ids))}))
        marked = []
        for position in book:  # pass 2: marks
            instrument = Instrument(segment=position.segment, security_id=position.security_id)
            marked.append(update_marks(position, prices[instrument], CONFIG.policy))
        for position in marked:  # pass 3: rules
            instrument = Instrument(segment=position.segment, security_id=position.security_id)
            evaluate(position, PriceMark(ltp=prices[instrument], at=T0), T0, CONFIG)
        for position in marked:  # pass 4: PnL back to Redis, one call each
            self.redis.hset(f"pnl:tracker:{position.position_id}",
                            mapping={"ltp": str(prices[Instrument(
                                segment=position.segment, security_id=position.security_id)]),
                                     "seen": str(len(pnl))})

    def close(self) -> None:
        self.conn.close()
        self.redis.close()


class CountingCache:
    """The PnL cache, keeping the round trips of each ``write``: the PnL writer writes once per
    ``Flush`` (when anything changed), so these are the round trips per flush."""

    def __init__(self, inner: PnLCache) -> None:
        self.inner = inner
        self.per_write: list[int] = []

    def write(self, entries: Sequence[PnLEntry], deletes: Sequence[str] = ()) -> bool:
        before = self.inner.roundtrips
        done = self.inner.write(entries, deletes)
        self.per_write.append(self.inner.roundtrips - before)
        return done

    def read(self, position_id: str) -> PnLEntry | None:
        return self.inner.read(position_id)

    def read_all(self) -> dict[str, PnLEntry]:
        return self.inner.read_all()

    @property
    def roundtrips(self) -> int:
        return self.inner.roundtrips

    @property
    def failures(self) -> int:
        return self.inner.failures

    def close(self) -> None:
        self.inner.close()


class CycleMetrics(Metrics):
    """The system's counters, and a wake-up when the trackers have handled a given number of
    prices: the rig waits on it once per cycle, where polling the counters (every 0.2 ms)
    took the interpreter from the trackers it was waiting for, adding ~1 ms to a cycle."""

    def __init__(self) -> None:
        super().__init__()
        self._target: int | None = None
        self._reached = threading.Event()

    def incr(self, name: str, amount: int = 1) -> None:
        super().incr(name, amount)
        target = self._target
        if target is not None and name == "prices_handled" and self.get(name) >= target:
            self._reached.set()

    def wait_handled(self, target: int, *, timeout: float) -> None:
        self._reached.clear()
        self._target = target
        try:
            if self.get("prices_handled") < target and not self._reached.wait(timeout):
                raise TimeoutError(f"trackers handled {self.get('prices_handled')} of "
                                   f"{target} prices in {timeout}s")
        finally:
            self._target = None


class ActorRig:
    """The system under the cycle benchmark: one price per instrument per cycle, the clock
    moving ``period`` a cycle (a market changing 10 times a second). With
    ``cache_each_cycle`` the PnL cache is written at the end of every cycle; without, at the
    product's own cadence (``Parts.cache_every``, once a second)."""

    def __init__(self, store: Store, cache: PnLCache, book: list[Position], *,
                 cache_each_cycle: bool = True, period: timedelta = timedelta(seconds=0.1)
                 ) -> None:
        store.save_positions(book)
        self.store, self.cache = store, CountingCache(cache)
        self.clock = ManualClock(T0)
        self.period, self.cache_each_cycle = period, cache_each_cycle
        market = TapeMarket([])
        metrics = CycleMetrics()
        parts = Parts(store=store, cache=self.cache,
                      gateway=PaperExchange(market, latency=timedelta(0)), quotes=None,
                      config=CONFIG, clock=self.clock, workers=4, metrics=metrics)
        if cache_each_cycle:
            parts.cache_every = timedelta(0)
        self.system = System(parts).start(ticker=False)
        self.metrics = metrics
        self.count = len(book)
        self.batcher = self.system.batcher.proxy()  # made once: a proxy introspects the actor
        self.pnl = self.system.pnl.proxy()

    def cycle(self, prices: dict[Instrument, Decimal]) -> dict[str, int]:
        db0, rt0, w0 = self.store.queries, self.cache.roundtrips, len(self.cache.per_write)
        self.clock.set(self.clock() + self.period)
        for instrument, ltp in prices.items():
            self.system.tick(instrument, ltp, self.clock())
        self.system.step(self.clock(), timer=False)
        # Done when the batch is fanned out, every tracker told a price has handled it, and
        # the PnL writer (told the batch and the flush after the fan-out) has handled both.
        self.batcher.pending.get(timeout=30)
        self.system.index.ask(OpenPositions(instrument=None), timeout=30)
        self.metrics.wait_handled(self.metrics.get("price_deliveries"), timeout=30)
        if self.cache_each_cycle:
            self.system.pnl.ask(_flush(self.clock(), complete=True), timeout=30)
        else:  # the step's own flush is ahead of this ask: one flush a cycle, as in a live run
            self.pnl.day_net().get(timeout=30)
        writes = self.cache.per_write[w0:]
        return {"db_queries": self.store.queries - db0,
                "redis_roundtrips": self.cache.roundtrips - rt0,
                "roundtrips_per_flush": max(writes, default=0), "cache_writes": len(writes)}

    def stop(self) -> None:
        self.system.stop()


def _flush(at: Any, *, complete: bool) -> Any:
    from actors.protocol import Flush

    return Flush(at=at, complete=complete)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        out.append((time.perf_counter() - began) * 1000)
    return out


def _actors(store: Store, cache: PnLCache, book: list[Position], on: list[Instrument],
            repeats: int, *, cache_each_cycle: bool) -> tuple[list[float], list[dict[str, int]]]:
    """Cycle times (ms) of the actors, one warm-up cycle first, and each cycle's counts."""
    rig = ActorRig(store, cache, book, cache_each_cycle=cache_each_cycle)
    counts: list[dict[str, int]] = []
    step = iter(range(10**9))
    for _ in range(QUIET_PERIOD):  # warm-up: every tracker priced, every peak set
        rig.cycle(quiet_prices(on, next(step)))
    try:
        return timed(lambda: counts.append(rig.cycle(quiet_prices(on, next(step)))),
                     repeats), counts
    finally:
        rig.stop()


def compare(count: int, *, store: Store, store_url: str | None, cache: PnLCache,
            redis_url: str | None, repeats: int, store2: Store | None = None) -> dict[str, Any]:
    """``store2``, a second fresh store, adds the variant that writes the cache every cycle."""
    on = instruments(max(1, count // 5))
    book = positions(count, on)
    floor_loop = Floor(book)
    floor_step = iter(range(10**9))
    for _ in range(QUIET_PERIOD):  # the same warm-up as the actors'
        floor_loop.cycle(quiet_prices(on, next(floor_step)))
    floor = timed(lambda: floor_loop.cycle(quiet_prices(on, next(floor_step))), repeats)
    actors, counts = _actors(store, cache, book, on, repeats, cache_each_cycle=False)
    written, written_counts = _actors(store2, cache, book, on, repeats,
                                      cache_each_cycle=True) if store2 is not None else ([], [])
    # Round trips per flush are read where every cycle writes the cache; at the product's
    # cadence most cycles write nothing.
    steady = counts + written_counts
    row: dict[str, Any] = {"positions": count, "instruments": len(on),
                           "floor_ms": statistics.median(floor),
                           "actors_ms": statistics.median(actors),
                           "actors_mean_ms": statistics.mean(actors[1:] or actors),
                           "actors_cache_each_cycle_ms": statistics.median(written)
                           if written else None,
                           "db_queries_per_cycle": max(c["db_queries"] for c in steady),
                           "redis_roundtrips_per_cycle": max(c["redis_roundtrips"]
                                                             for c in steady),
                           "redis_roundtrips_per_flush": max(c["roundtrips_per_flush"]
                                                             for c in steady)}
    if store_url is not None and redis_url is not None:
        market = TapeMarket([])
        for instrument in on:
            market.set_price(instrument, Decimal(100), T0)
        old = OldDesign(store_url, redis_url, PaperQuoteApi(market, min_interval_seconds=0))
        row["old_ms"] = statistics.median(timed(old.cycle, repeats))
        row["old_db_queries"] = old.db_queries // repeats
        row["old_redis_roundtrips"] = old.redis_roundtrips // repeats
        old.close()
        row["old_vs_actors"] = row["old_ms"] / row["actors_ms"]
    row["actors_vs_floor"] = row["actors_ms"] / row["floor_ms"]
    assert all(p.status is PositionStatus.ACTIVE for p in store.load_open_positions())
    row["figures"] = figures(row)
    return row


def figures(row: dict[str, Any]) -> list[dict[str, Any]]:
    old = row.get("old_ms")
    base = f"floor {row['floor_ms']:.2f} ms" + (f"; old {old:,.1f} ms" if old else "")
    ratio = f"{row['actors_vs_floor']:.1f}x floor"
    out = [figure("cycle time (median)", row["actors_ms"], "ms", baseline=base,
                  ratio=ratio + (f"; old/actors {row['old_vs_actors']:.1f}x" if old else "")
                  + f"; mean {row['actors_mean_ms']:.2f} ms (cache written once a second)")]
    each = row.get("actors_cache_each_cycle_ms")
    if each:
        out.append(figure("cycle time, cache written every cycle (median)", each, "ms",
                          baseline=base, ratio=f"{each / row['floor_ms']:.1f}x floor" + (
                              f"; old/actors {old / each:.1f}x" if old else "")))
    if old and row["positions"] >= 1_000:
        out.append(at_least("old design / actors, cycle time", row["old_vs_actors"], 50, "x",
                            baseline=f"old {old:,.1f} ms", ratio=f"actors {row['actors_ms']:.1f}"
                            f" ms; floor {row['floor_ms']:.1f} ms"))
    db, rt = row["db_queries_per_cycle"], row["redis_roundtrips_per_flush"]
    out.append(figure("db queries per cycle (steady, max)", db, "", target="= 0", met=db == 0,
                      baseline=f"old: {row.get('old_db_queries', 'n/a')}",
                      miss="" if db == 0 else f"{db} queries"))
    out.append(figure("redis round trips per flush (max)", rt, "", target="<= 1", met=rt <= 1,
                      baseline=f"old: {row.get('old_redis_roundtrips', 'n/a')} per cycle",
                      ratio=f"{row['redis_roundtrips_per_cycle']} per price cycle "
                            "(2 flushes: the step's, the closing one)",
                      miss="" if rt <= 1 else f"{rt} round trips"))
    return out
