"""Start-up with N open positions in the store, until every one is supervised and priced.

The positions are saved to a fresh schema first (not timed). Then, timed from zero in a fresh
process (``python -m bench.startup``): open the store, ``System(...).start(ticker=False)``, ask the
index until it reports every position open, push one price per instrument (the market feed) and
flush, and wait until every tracker has evaluated that price (``evaluations`` ≥ N).

A second start on the same store prices through the quote API instead (no feed yet), under
DhanHQ's limits (1,000 instruments a call, one call a second), flushing every 50 ms as the ticker
does. Baseline in the same run: reading the N positions from the store alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import (
    ClockedGateway,
    child_main,
    fresh_cache,
    fresh_store,
    rss_mib,
    session_clock,
    start_system,
    wait_until,
)
from bench.report import below, figure
from bench.workload import instruments, positions
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from broker.paper.quotes import PaperQuoteApi
from models.common import Instrument
from store.factory import open_store


def _start(url: str, rd: str | None, scratch: Path, clock: Callable[[], datetime],
           market: TapeMarket, quotes: PaperQuoteApi | None) -> tuple[Any, Any, dict[str, float]]:
    marks: dict[str, float] = {}
    began = time.perf_counter()
    store = open_store(url, scratch)
    marks["store_opened"] = time.perf_counter() - began
    exchange = PaperExchange(market, latency=timedelta(0))
    system = start_system(store, fresh_cache(rd), clock, ClockedGateway(exchange, clock),
                          quotes=quotes)
    marks["started"] = time.perf_counter() - began
    marks["_began"] = began
    return store, system, marks


def _supervised(system: Any, count: int, marks: dict[str, float]) -> None:
    wait_until(lambda: len(system.open_positions()) >= count, timeout=60, poll=0.01)
    marks["indexed"] = time.perf_counter() - marks["_began"]


def by_feed(url: str, rd: str | None, scratch: Path, on: list[Instrument],
            count: int) -> dict[str, float]:
    clock = session_clock()
    store, system, marks = _start(url, rd, scratch, clock, TapeMarket([]), None)
    _supervised(system, count, marks)
    metrics = system.parts.metrics
    for instrument in on:
        system.tick(instrument, Decimal("100.05"), clock())
    system.step(clock(), timer=False)
    wait_until(lambda: metrics.get("evaluations") >= count, timeout=60)
    marks["priced"] = time.perf_counter() - marks.pop("_began")
    marks["trackers"] = len(system.supervisor.proxy().tracker_refs().get(timeout=30))
    system.stop()
    store.close()
    return marks


def by_quotes(url: str, rd: str | None, scratch: Path, on: list[Instrument],
              count: int) -> dict[str, float]:
    clock = session_clock()
    market = TapeMarket([])
    for instrument in on:
        market.set_price(instrument, Decimal("100.10"), clock())
    quotes = PaperQuoteApi(market)  # DhanHQ's limits, on the monotonic clock
    store, system, marks = _start(url, rd, scratch, clock, market, quotes)
    _supervised(system, count, marks)
    metrics = system.parts.metrics
    began = marks.pop("_began")
    while metrics.get("evaluations") < count:
        system.step(clock(), timer=False)
        time.sleep(0.05)
        if time.perf_counter() - began > 60:
            break
    marks["priced"] = time.perf_counter() - began
    marks["quote_calls"] = metrics.get("quote_api_calls")
    system.stop()
    store.close()
    return marks


def run(pg: str | None, rd: str | None, scratch: Path, *, count: int) -> dict[str, Any]:
    on = instruments(max(1, count // 5))
    store, url = fresh_store(pg, scratch)
    store.save_positions(positions(count, on))
    began = time.perf_counter()
    loaded = len(store.load_open_positions())
    read_s = time.perf_counter() - began
    store.close()
    feed = by_feed(url, rd, scratch, on, count)
    rss = rss_mib()
    quoted = by_quotes(url, rd, scratch, on, count)
    total = feed["priced"]
    return {
        "benchmark": f"start-up, {count:,} open positions in {'PostgreSQL' if pg else 'SQLite'}",
        "positions": count, "loaded": loaded, "read_only_s": read_s, "by_feed_s": feed,
        "by_quote_api_s": quoted, "rss_after_start_mib": rss,
        "figures": [
            below("supervised and priced (feed)", total, 3, "s",
                  baseline=f"read alone {read_s:.2f} s", ratio=f"{total / read_s:.1f}x read; "
                  f"store {feed['store_opened']:.2f}, start() {feed['started']:.2f}, indexed "
                  f"{feed['indexed']:.2f} s"),
            figure("supervised and priced (quote API, 1/s)", quoted["priced"], "s",
                   ratio=f"{quoted['quote_calls']:.0f} quote calls for {len(on):,} instruments"),
            figure("trackers running", feed["trackers"], "", ratio=f"of {count:,} positions"),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--positions", type=int, default=10_000)
    args = parser.parse_args(argv)
    return child_main(lambda pg, rd, scratch: run(pg, rd, scratch, count=args.positions))


if __name__ == "__main__":
    sys.exit(main())
