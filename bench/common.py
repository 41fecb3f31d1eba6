"""What several benchmarks share: the services, a wall clock in session, a broker adapter that
stamps orders with that clock, mailbox depths, percentiles and the process's memory.

Nothing here changes what the system under test does: the adapters only choose *which* clock and
which store it is given, as the composition root would.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pykka import ActorRef

from actors.runtime.pykka_compat import inbox_of
from actors.system import Parts, System
from app.clocks import SessionClock
from bench.workload import T0
from broker.paper.exchange import PaperExchange
from broker.ports import QuoteApi
from models.common import Instrument, TxnType
from models.policy import RiskConfig
from store.factory import open_store
from store.pnl_cache import open_pnl_cache
from store.ports import PnLCache, Store

PG = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def services() -> tuple[str | None, str | None]:
    """The PostgreSQL and Redis URLs that answer (None for one that does not)."""
    pg: str | None = PG
    rd: str | None = REDIS
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=2).close()
    except Exception:  # any failure means "not available": the bench falls back
        pg = None
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception:  # as above
        rd = None
    return pg, rd


def fresh_pg(url: str) -> str:
    """A new, empty schema on the server of ``url``; the URL that selects it."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    _schemas.append((url, schema))
    return f"{url}?options=-csearch_path%3D{schema}"


_schemas: list[tuple[str, str]] = []


def checkpoint(url: str | None) -> bool:
    """Have the server write out what earlier work left in its buffers (``CHECKPOINT``), so a
    timed benchmark does not pay for the writes of the one before it. False (and a warning)
    where the server refuses: the benchmark runs anyway."""
    if url is None:
        return False
    import psycopg
    from loguru import logger

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as error:
        logger.warning("CHECKPOINT before the benchmark refused: {}", error)
        return False
    return True


def drop_schemas() -> None:
    """Drop the schemas this process created (the benchmark leaves the database as it was)."""
    import psycopg

    while _schemas:
        url, schema = _schemas.pop()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except psycopg.Error as error:
            print(f"could not drop schema {schema}: {error}")


def fresh_store(pg: str | None, scratch: Path) -> tuple[Store, str]:
    """An empty, migrated store: a fresh PostgreSQL schema, or an SQLite file in ``scratch``."""
    url = fresh_pg(pg) if pg else f"sqlite:///{scratch / f'b{os.urandom(4).hex()}.db'}"
    return open_store(url, scratch), url


def fresh_cache(rd: str | None) -> PnLCache:
    if rd:
        import redis

        redis.Redis.from_url(rd).flushdb()
    return open_pnl_cache(rd)


def session_clock() -> Callable[[], datetime]:
    """Wall time, as an aware IST datetime, shifted by a constant into a trading session.

    The rules fire only in session (SPEC §3.4) and the machine's wall time may be at night, so
    the clock starts at the workload's 10:00 IST and then runs with ``time.monotonic``: the age
    of a price mark, a latency, a timeout are all real wall-clock durations.
    """
    return SessionClock(T0 + timedelta(milliseconds=1))


class ClockedGateway:
    """The paper exchange with zero latency, fed the benchmark's clock at every placement, so a
    ``PaperOrder.placed_at`` is the moment the order reached the broker."""

    def __init__(self, exchange: PaperExchange, clock: Callable[[], datetime]) -> None:
        self.exchange, self.clock = exchange, clock

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        return self.exchange.place_order(client_id=client_id, instrument=instrument,
                                         txn_type=txn_type, quantity=quantity, product=product,
                                         now=self.clock())

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no, now=self.clock())

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self.exchange.subscribe(sink)


def start_system(store: Store, cache: PnLCache, clock: Callable[[], datetime], gateway: Any, *,
                 quotes: QuoteApi | None = None, config: RiskConfig | None = None) -> System:
    """The system as ``run.py`` wires it, without the ticker: the benchmark drives time."""
    return System(Parts(store=store, cache=cache, gateway=gateway, quotes=quotes,
                        config=config or RiskConfig(), clock=clock)).start(ticker=False)


class Depths:
    """Samples every mailbox of a running system: the dispatcher's run queue, each singleton's
    inbox, and the largest and total tracker inboxes."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.trackers: list[ActorRef[Any]] = (
            system.supervisor.proxy().tracker_refs().get(timeout=30))
        self.singletons: dict[str, ActorRef[Any]] = {
            "batcher": system.batcher, "index": system.index, "supervisor": system.supervisor,
            "pnl": system.pnl, "orders": system.orders}

    def sample(self, *, trackers: bool = True) -> dict[str, int]:
        """``trackers=False`` leaves out the tracker inboxes: scanning a thousand of them
        holds the interpreter ~0.5 ms, which right after a flush is taken from the very
        pipeline being measured."""
        out = {name: depth(ref) for name, ref in self.singletons.items()}
        out["dispatcher_pending"] = self.system.dispatcher.pending()
        if trackers:
            sizes = [depth(ref) for ref in self.trackers]
            out["tracker_max"] = max(sizes, default=0)
            out["trackers_total"] = sum(sizes)
        return out


def depth(ref: ActorRef[Any]) -> int:
    """Messages in an actor's inbox (both inbox kinds here have ``qsize``)."""
    size: int = inbox_of(ref).qsize()
    return size


def total(sample: dict[str, int]) -> int:
    """Messages waiting anywhere (tracker_max is part of trackers_total)."""
    return sum(v for k, v in sample.items() if k not in ("tracker_max", "dispatcher_pending"))


def peak(samples: Sequence[dict[str, int]]) -> dict[str, int]:
    keys = samples[0].keys() if samples else ()
    return {k: max(s[k] for s in samples) for k in keys}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a value that was observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values, default=math.nan)}


def rss_mib() -> dict[str, float]:
    """Resident and peak resident memory of this process, MiB (Linux ``/proc``)."""
    found: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return {"rss_mib": found.get("VmRSS", math.nan), "peak_mib": found.get("VmHWM", math.nan)}


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.001) -> float:
    """Seconds until ``done()``; raises ``TimeoutError`` past ``timeout``."""
    began = time.perf_counter()
    while not done():
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(poll)
    return time.perf_counter() - began


def child_main(measure: Callable[[str | None, str | None, Path], dict[str, Any]]) -> int:
    """The body of a benchmark run in its own process: quiet logs, services, a scratch folder,
    schemas dropped afterwards, and the row printed as JSON for the parent."""
    import json
    import sys
    import tempfile

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    pg, rd = services()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            row = measure(pg, rd, Path(scratch))
    finally:
        drop_schemas()
    print(json.dumps(row, default=str))
    return 0


@contextmanager
def scratch_schema(prefix: str, server: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL schema on ``server`` (default ``PG``), dropped afterwards; yields the
    URL that selects it (by ``search_path``) for every process given it."""
    import psycopg

    server = PG if server is None else server
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
