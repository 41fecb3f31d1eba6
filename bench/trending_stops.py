"""The stop writer in a trending market: 200 positions whose trailing stops tighten in every
price batch (SPEC §11.5: each tightened stop durable before the position's next batch moves
it), ``python -m bench.trending_stops``.

200 positions on 200 instruments (one each, long and short in turn), entered at 100 and already
past the trailing stop's activation. Every 100 ms of wall time the driver ticks every
instrument 0.05 further in its position's favour (a new peak, so a tighter stop, for every
position in every batch) and flushes, as the ticker does; a timer every second. Every
``DIP_EVERY`` batches one instrument instead falls 5 % against its position: its trailing stop
fires, and the position exits at the paper exchange (zero latency).

Measured: stops stored per second and store writes per second by the stop writer (metrics
``stops_stored`` and ``stop_writes``; ideally one write per batch, holding every position), and
the decision latency of the exits among them (the dip's tick → ``exit_attempts.requested_at``,
as in ``bench/latency.py``). No target: SPEC §9 sets none for this row; the ratio says how close
the writer came to one write per batch. The machine's load average is recorded beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import suppress
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import (
    ClockedGateway,
    child_main,
    fresh_cache,
    fresh_store,
    percentile,
    session_clock,
    start_system,
    summary_ms,
    wait_until,
)
from bench.report import figure
from bench.workload import instruments, positions
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Instrument, Side
from models.position import PositionStatus

POSITIONS = 200
PERIOD = 0.1
"""Seconds between price batches (10 changes a second per instrument)."""
START = Decimal("4.5")
"""Points in the position's favour at the start: past the 3.5 % activation of the default
trailing stop (entered at 100)."""
STEP = Decimal("0.05")
DIP_EVERY = 5
DIP = Decimal("0.05")
"""A dip: the price falls this fraction against the position, well past its 2.5 % trail."""


def _price(side: Side, moved: Decimal) -> Decimal:
    return Decimal(100) + moved if side is Side.LONG else Decimal(100) - moved


def run(pg: str | None, rd: str | None, scratch: Path, *, seconds: float) -> dict[str, Any]:
    on = instruments(POSITIONS)
    book = positions(POSITIONS, on)
    side = {Instrument(segment=p.segment, security_id=p.security_id): p.side for p in book}
    store, _ = fresh_store(pg, scratch)
    store.save_positions(book)
    clock = session_clock()
    market = TapeMarket([])
    exchange = PaperExchange(market, latency=timedelta(0))
    system = start_system(store, fresh_cache(rd), clock, ClockedGateway(exchange, clock))
    metrics = system.parts.metrics
    steps = max(DIP_EVERY * 2, round(seconds / PERIOD))
    dips: dict[Instrument, datetime] = {}
    late: list[float] = []
    before = (metrics.get("stop_writes"), metrics.get("stops_stored"))
    began = time.perf_counter()
    for step in range(steps):
        delay = began + step * PERIOD - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        late.append(max(0.0, -delay) * 1000)
        moved = START + STEP * step
        dip = on[(step // DIP_EVERY) % POSITIONS] if step % DIP_EVERY == DIP_EVERY - 1 \
            else None
        for instrument in on:
            if instrument in dips:
                continue  # exited: nothing left to price
            now = clock()
            ltp = _price(side[instrument], moved)
            if instrument is dip:
                ltp = _price(side[instrument], moved - ltp * DIP)
                market.set_price(instrument, ltp, now)  # the exit fills at the dip's price
                dips[instrument] = now
            system.tick(instrument, ltp, now)
        system.step(clock(), timer=step % round(1 / PERIOD) == 0)
    driven = time.perf_counter() - began
    writes, stored = (metrics.get("stop_writes") - before[0],
                      metrics.get("stops_stored") - before[1])
    closed = _drain(store, len(dips))
    decided = _decisions(store, book, dips)
    system.stop()
    store.close()
    return _row(pg, steps, driven, writes, stored, decided, len(dips), closed, late)


def _drain(store: Any, expected: int) -> int:
    def done() -> bool:
        return len(store.list_positions(PositionStatus.EXITED)) >= expected

    with suppress(TimeoutError):  # what did not close by then is what the row reports
        wait_until(done, timeout=30, poll=0.01)
    return len(store.list_positions(PositionStatus.EXITED))


def _decisions(store: Any, book: list[Any], dips: dict[Instrument, datetime]) -> list[float]:
    where = {p.position_id: Instrument(segment=p.segment, security_id=p.security_id)
             for p in book}
    decided = [(a.requested_at - dips[where[a.position_id]]).total_seconds() * 1000
               for a in store.exit_attempts()
               if a.attempt == 1 and where.get(a.position_id) in dips]
    return decided + [math.inf] * (len(dips) - len(decided))  # an exit never decided


def _row(pg: str | None, steps: int, driven: float, writes: int, stored: int,
         decided: list[float], dips: int, closed: int, late: list[float]) -> dict[str, Any]:
    ideal = steps / driven
    decision = summary_ms(decided)
    load = os.getloadavg()
    return {
        "benchmark": f"stop writer, trending market: {POSITIONS} positions, every trailing "
                     f"stop tightening in every batch ({'PostgreSQL' if pg else 'SQLite'})",
        "steps": steps, "seconds": driven, "stop_writes": writes, "stops_stored": stored,
        "exits_expected": dips, "positions_closed": closed, "decision_ms": decision,
        "driver_late_ms": summary_ms(late), "load_average": load,
        "figures": [
            figure("stops stored per second", stored / driven, "/s",
                   ratio=f"{stored / max(1, steps):.0f} per batch of {POSITIONS} positions"),
            figure("stop writer's store writes per second", writes / driven, "/s",
                   baseline=f"one per batch: {ideal:.1f} /s",
                   ratio=f"{writes / max(1, steps):.2f} writes per batch"),
            figure("p99 price → exit decision, stops moving", decision["p99"], "ms",
                   ratio=f"p50 {decision['p50']:.2f} ms, {dips} exits; driver late p99 "
                         f"{percentile(late, 99):.1f} ms; load {load[0]:.1f}"),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trending_stops")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    return child_main(lambda pg, rd, scratch: run(pg, rd, scratch, seconds=args.seconds))


if __name__ == "__main__":
    sys.exit(main())
