"""Latency at 1,000 positions / 200 instruments, every instrument's price changing 10x/s.

Every 100 ms of wall time the driver ticks every instrument through ``System.tick`` and then
flushes with ``System.step(now, timer=False)`` (what the ticker does every 50 ms in a live run).
The prices follow ``price_path.Plan``: a known set of positions crosses its stop loss at known
steps. Three steps later each stopped-out position is replaced by a new one, opened through the
order flow (a filled entry order told to ``System.order_frame``), so the book stays at 1,000.

What is measured, all on one clock (wall time in session, ``common.session_clock``):

- *price-in*: the clock read just before the crossing ``tick`` call (it is also the mark's time);
- *exit decision*: ``exit_attempts.requested_at``, the clock the tracker read when the rule fired
  and before it persisted anything (``PositionKeeper._exit``);
- *exit order at the broker*: ``PaperOrder.placed_at``, the clock read as the order reached the
  paper exchange (``ClockedGateway``; zero exchange latency);
- beside the run, on PostgreSQL: a side process's one-row commits every 10 ms on the same
  server (``commit_monitor``), since every exit order waits for one durable commit. A
  ``CHECKPOINT`` first writes out what the benchmarks before this one left in the server's
  buffers, so this one does not pay for their writes.

Mailboxes are sampled just after each flush (peak; the singletons' and the dispatcher's queue
only, as scanning every tracker's inbox there would hold up the pipeline being timed) and just
before the next ticks (every inbox: what one step left for the next; growth shows there).
Baselines in the same run: the *floor* evaluating each price as it arrives, and evaluating a
conflated batch per step (the actors' structure), both in a plain loop; and the *old design*,
whose best-case decision latency is one of its cycles.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.commit_monitor import CommitMonitor
from bench.common import (
    ClockedGateway,
    Depths,
    checkpoint,
    child_main,
    fresh_cache,
    fresh_pg,
    fresh_store,
    peak,
    session_clock,
    start_system,
    summary_ms,
    total,
    wait_until,
)
from bench.price_path import Plan, crash_span, floor, instrument_of, make_plan, sides
from bench.report import below, figure
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Instrument, Side
from models.orders import OrderStatus, OrderUpdate
from models.position import PositionStatus
from models.wire import to_dhan_frame

CRASHES = 40
"""Instruments crashing through their positions' stop loss over a run, at most."""
CRASH_EVERY = 7
"""Steps between crashes at least (a 30 s run at 10 changes/s has 285 steps for 40)."""


@dataclass
class Drive:
    tick_at: dict[Instrument, datetime] = field(default_factory=dict)
    carry: list[dict[str, int]] = field(default_factory=list)
    after: list[dict[str, int]] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0


def drive(system: Any, plan: Plan, clock: Any, market: TapeMarket, depths: Depths) -> Drive:
    side = sides(plan)
    out = Drive()
    began = time.perf_counter()
    for step in range(plan.steps):
        delay = began + step * plan.period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        out.late_ms.append(max(0.0, -delay) * 1000)
        out.carry.append(depths.sample())
        for instrument, ltp in plan.step_prices(step, side):
            now = clock()
            if plan.crash_at.get(instrument) == step:
                market.set_price(instrument, ltp, now)  # the exit fills at the crashed price
                out.tick_at[instrument] = now
            system.tick(instrument, ltp, now)
        system.step(clock(), timer=False)
        for instrument in plan.refills(step):
            _refill(system, plan, instrument, side.get(instrument, Side.LONG), step, clock())
        out.after.append(depths.sample(trackers=False))
    out.seconds = time.perf_counter() - began
    return out


def _refill(system: Any, plan: Plan, instrument: Instrument, side: Side, step: int,
            now: datetime) -> None:
    """New positions through the order flow: one filled entry order per stopped-out one."""
    for n, position in enumerate(p for p in plan.book if instrument_of(p) == instrument
                                 and p.position_id in plan.expected):
        qty = position.quantity
        system.order_frame(to_dhan_frame(OrderUpdate(
            order_no=f"R{step}-{instrument.security_id}-{n}", status=OrderStatus.TRADED,
            segment=instrument.segment, security_id=instrument.security_id,
            txn_type=side.entry_txn, product="I", quantity=qty, traded_qty=qty,
            avg_traded_price=plan.price(instrument, step, side), updated_at=now)))


def run(pg: str | None, rd: str | None, scratch: Path, *, seconds: float,
        old_cycle_ms: float | None = None, changes_per_s: int = 10,
        dashboard: bool = False) -> dict[str, Any]:
    """SPEC §9's row at 10 changes/s; another rate is a diagnostic (no targets): the same
    pipeline with headroom, to tell its own latency from queueing. ``dashboard``: the same
    row with the operator console's dashboard open in a browser throughout (issue 18's load
    check: the page must not slow the price path)."""
    period = 1 / changes_per_s
    # One crash (five stop losses) every CRASH_EVERY steps at most, whatever the rate and
    # length: otherwise a short or slow run packs its crashes into a few steps, a burst of
    # simultaneous exits rather than this row's load.
    crashes = max(1, min(CRASHES, crash_span(round(seconds / period)) // CRASH_EVERY))
    plan = make_plan(1_000, 200, seconds, crashes=crashes, period=period)
    store, _ = fresh_store(pg, scratch)
    store.save_positions(plan.book)
    clock = session_clock()
    market = TapeMarket([])
    exchange = PaperExchange(market, latency=timedelta(0))
    system = start_system(store, fresh_cache(rd), clock, ClockedGateway(exchange, clock))
    depths = Depths(system)
    evals0 = system.parts.metrics.get("evaluations")
    checkpointed = checkpoint(pg)  # the benchmarks before this one wrote a great deal
    with CommitMonitor(fresh_pg(pg) if pg else None) as monitor, _viewer(
            system, dashboard, len(plan.book)) as viewed:
        driven = drive(system, plan, clock, market, depths)
    drain_s = _drain(system, store, plan)
    evaluations = system.parts.metrics.get("evaluations") - evals0
    still_open = len(system.open_positions())
    # With no quote API, instruments a tracker found stale (and asked a quote for) stay here.
    stale = len(system.batcher.proxy().asked.get(timeout=30))
    system.stop()
    row = _measure(plan, driven, store, exchange)
    row.update(open_at_end=still_open, instruments_seen_stale=stale)
    store.close()
    row.update(drain_s=drain_s, evaluations=evaluations,
               evaluations_per_s=evaluations / driven.seconds, seconds=driven.seconds)
    row["server_commit_ms"] = monitor.summary()
    row["checkpoint_before"] = checkpointed
    row["floor_immediate_ms"] = summary_ms(floor(plan, clock, batched=False))
    row["floor_batched_ms"] = summary_ms(floor(plan, clock, batched=True))
    row["figures"] = _figures(row, old_cycle_ms)
    if dashboard:
        row["dashboard"] = viewed
        row["benchmark"] += ", dashboard open"
        row["figures"].append(_page_cost(viewed))
    if changes_per_s != 10:
        row["benchmark"] = row["benchmark"].replace("10 changes/s", f"{changes_per_s} changes/s")
        row["benchmark"] += " (diagnostic: below SPEC load)"
        for fig in row["figures"]:
            fig.update(target="", met=None, miss="")
    return row


@contextmanager
def _viewer(system: Any, dashboard: bool, rows: int) -> Iterator[dict[str, Any]]:
    if not dashboard:
        yield {}
        return
    from bench.dashboard import dashboard_open

    with dashboard_open(system, rows) as seen:
        yield seen


def _drain(system: Any, store: Any, plan: Plan) -> float:
    """Seconds after the last step until every expected exit has closed its position."""
    def closed() -> bool:
        return sum(1 for p in store.list_positions(PositionStatus.EXITED)) >= len(plan.expected)

    try:
        return wait_until(closed, timeout=30, poll=0.01)
    except TimeoutError:
        return float("nan")


def _measure(plan: Plan, driven: Drive, store: Any, exchange: PaperExchange) -> dict[str, Any]:
    where = {p.position_id: instrument_of(p) for p in plan.book}
    decided: dict[str, float] = {}
    for attempt in store.exit_attempts():
        if attempt.attempt == 1 and attempt.position_id in plan.expected:
            tick = driven.tick_at[where[attempt.position_id]]
            decided[attempt.position_id] = (attempt.requested_at - tick).total_seconds() * 1000
    clients = {a.client_id: a.position_id for a in store.exit_attempts()}
    placed: list[float] = []
    for order in exchange.orders():
        pid = clients.get(order.client_id)
        if pid in plan.expected:
            placed.append((order.placed_at - driven.tick_at[where[pid]]).total_seconds() * 1000)
    never = [math.inf] * (len(plan.expected) - len(decided))  # an exit never decided
    exited = {p.position_id for p in store.list_positions(PositionStatus.EXITED)}
    carry_totals = [total(s) for s in driven.carry]
    per_s = max(1, round(1 / plan.period))
    quarter = max(1, len(carry_totals) // 4)
    return {
        "benchmark": "latency, 1,000 positions / 200 instruments, 10 changes/s each",
        "steps": plan.steps, "exits_expected": len(plan.expected), "exits_decided": len(decided),
        "exit_orders_placed": len(placed), "positions_closed": len(exited & plan.expected),
        "unexpected_exits": len({a.position_id for a in store.exit_attempts()} - plan.expected),
        "decision_ms": summary_ms(list(decided.values()) + never),
        "order_ms": summary_ms(placed + [math.inf] * (len(plan.expected) - len(placed))),
        "driver_late_ms": summary_ms(driven.late_ms),
        "mailbox_peak_after_flush": peak(driven.after),
        "tracker_inbox_max": max((s["tracker_max"] for s in driven.carry), default=0),
        "mailbox_peak_before_ticks": peak(driven.carry),
        "carried_by_second": [max(carry_totals[k:k + per_s]) for k in
                              range(0, len(carry_totals), per_s)],
        "carried_mean_q2": _mean(carry_totals[quarter:2 * quarter]),
        "carried_mean_q4": _mean(carry_totals[-quarter:]),
        "carried_max": max(carry_totals, default=0),
    }


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _figures(row: dict[str, Any], old_cycle_ms: float | None) -> list[dict[str, Any]]:
    dec, order = row["decision_ms"], row["order_ms"]
    now_f, batch_f = row["floor_immediate_ms"], row["floor_batched_ms"]
    old = f"; old ≥ {old_cycle_ms:,.0f} ms" if old_cycle_ms else ""
    old_ratio = f"; old/actors ≥ {old_cycle_ms / dec['p99']:.1f}x" if old_cycle_ms else ""
    base = (f"floor {now_f['p99']:.3f} ms (batched {batch_f['p99']:.1f} ms){old}")
    ratio = (f"{dec['p99'] / now_f['p99']:,.0f}x floor, {dec['p99'] / batch_f['p99']:.1f}x "
             f"batched{old_ratio}")
    q2, q4 = row["carried_mean_q2"], row["carried_mean_q4"]
    per_step = 200 + 2 * 1_000  # ticks, then a price and a valuation per position
    steady = q4 <= q2 * 1.1 + per_step / 10
    peak_after = row["mailbox_peak_after_flush"]
    missing = row["exits_expected"] - row["exits_decided"]
    why = (f"{missing} of {row['exits_expected']} stop losses never decided (price stale when "
           "evaluated)") if missing else ""
    return [
        below("p99 price-in → exit decision", dec["p99"], 10, "ms", baseline=base, ratio=ratio,
              why=why),
        figure("p50 / p95 price-in → exit decision", dec["p50"], "ms",
               baseline=f"floor {now_f['p50']:.3f} ms; batched {batch_f['p50']:.1f} ms",
               ratio=f"p95 {dec['p95']:.1f} ms"),
        below("p99 price-in → exit order at broker", order["p99"], 20, "ms",
              ratio=f"p50 {order['p50']:.1f}, p95 {order['p95']:.1f} ms",
              why=why or _commit_stalls(order["p99"], row.get("server_commit_ms"))),
        *_server_commits(row.get("server_commit_ms")),
        figure("exits decided / expected (closed)", row["exits_decided"], "",
               ratio=f"of {row['exits_expected']} ({row['positions_closed']} closed, "
                     f"{row['unexpected_exits']} unexpected); {row['open_at_end']:,} open; "
                     f"{row['instruments_seen_stale']} instruments seen stale"),
        figure("mailboxes left for next step, mean q2→q4", q4, "msgs",
               ratio=f"{q2:,.0f} → {q4:,.0f}; max {row['carried_max']:,} "
                     f"({row['carried_max'] / per_step:.1f} steps of work)",
               target="no growth", met=steady,
               miss="" if steady else f"grew {q2:,.0f} → {q4:,.0f} msgs"),
        figure("peak after flush: dispatcher / tracker inbox", peak_after["dispatcher_pending"],
               "tasks", ratio=f"tracker max {row['tracker_inbox_max']} (before ticks), batcher "
                              f"{peak_after['batcher']}, index {peak_after['index']}"),
        figure("evaluations per second", row["evaluations_per_s"], "/s",
               ratio=f"driver late p99 {row['driver_late_ms']['p99']:.1f} ms"),
    ]


def _page_cost(seen: dict[str, Any]) -> dict[str, Any]:
    """What the open page cost the machine the price path runs on (``bench.dashboard``)."""
    work = seen.get("page_work_ms_per_s", {})
    return figure("the page: browser CPU", seen.get("browser_cpu_s_per_s", math.nan), "cores",
                  ratio=f"main thread {work.get('all', math.nan):.0f} ms/s (layout "
                        f"{work.get('layout', math.nan):.0f}); {seen.get('rows_in_document')} of "
                        f"{seen.get('rows_shown')} rows in the document; "
                        f"{seen.get('pushes_during')} pushes")


def with_and_without(watched: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's row beside the row without it, from the same run of ``python -m
    bench``: the page must leave the price path as it was (issue 18), within this machine's
    noise (compare the run's two rows, not one row across runs)."""
    seen, alone = watched["decision_ms"], plain["decision_ms"]
    return figure("p99 decision with / without the page", seen["p99"] / alone["p99"], "x",
                  baseline=f"without {alone['p99']:.2f} ms (p50 {alone['p50']:.2f})",
                  ratio=f"with {seen['p99']:.2f} ms (p50 {seen['p50']:.2f}, "
                        f"{seen['p50'] / alone['p50']:.2f}x)")


def _commit_stalls(p99: float, commits: dict[str, float] | None) -> str:
    """The miss of the exit-order row, with the side process's worst commit beside it: each
    exit waits for one durable commit, so a stall of the disk's shows in both."""
    miss = f"{p99 / 20:.1f}x the limit (+{p99 - 20:,.4g} ms)"
    if commits:
        miss += f"; the side process's commits stalled up to {commits['max']:.0f} ms meanwhile"
    return miss


def _server_commits(commits: dict[str, float] | None) -> list[dict[str, Any]]:
    """The side process's commits during the run (``commit_monitor``): an exit's order waits
    for one durable commit, so a stall of the server's or the disk's shows in both."""
    if not commits:
        return []
    return [figure("p99 one-row commit on the same server, side process", commits["p99"],
                   "ms", ratio=f"p50 {commits['p50']:.2f}, max {commits['max']:.0f} ms over "
                               f"{commits['n']:,} commits during the run")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--changes-per-s", type=int, default=10)
    parser.add_argument("--old-cycle-ms", type=float, default=None)
    parser.add_argument("--dashboard", action="store_true",
                        help="with the console's dashboard open in headless chromium")
    args = parser.parse_args(argv)
    return child_main(lambda pg, rd, scratch: run(
        pg, rd, scratch, seconds=args.seconds, old_cycle_ms=args.old_cycle_ms,
        changes_per_s=args.changes_per_s, dashboard=args.dashboard))


if __name__ == "__main__":
    sys.exit(main())
