"""Sustained load: 10,000 positions / 2,000 instruments, every price changing once a second.

Every 100 ms of wall time a tenth of the instruments tick and the batcher is flushed, so each
instrument changes once a second and each position must see a new price once a second: the
system must keep up with ``positions`` price checks per second (the index checks each price
against each position's band, ``price_checks``) and handle every price it told a tracker
(``price_deliveries``, minus those a newer one replaced in the mailbox). Before every step the
driver samples how far behind it is on both, and, once a second, every mailbox. It runs in its
own process (``python -m bench.sustained``) so that its RSS is its own.

Baseline in the same run: the floor's capacity, a plain loop evaluating every position once.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    ClockedGateway,
    Depths,
    child_main,
    fresh_cache,
    fresh_store,
    peak,
    rss_mib,
    session_clock,
    start_system,
    total,
    wait_until,
)
from bench.cycle import Floor
from bench.report import below, figure
from bench.workload import instruments, positions, quiet_prices
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Instrument

PERIOD = 0.1
SLICES = 10
"""Steps per second; each step ticks one slice of the instruments."""


def run(pg: str | None, rd: str | None, scratch: Path, *, count: int, instrument_count: int,
        seconds: float) -> dict[str, Any]:
    rss0 = rss_mib()
    on = instruments(instrument_count)
    book = positions(count, on)
    floor = Floor(book)
    floor.cycle(quiet_prices(on, 0))  # warm: bases and guards made, as the trackers' are
    floor_s = min(_timed(lambda: floor.cycle(quiet_prices(on, 1))) for _ in range(3))
    store, _ = fresh_store(pg, scratch)
    store.save_positions(book)
    clock = session_clock()
    exchange = PaperExchange(TapeMarket([]), latency=timedelta(0))
    system = start_system(store, fresh_cache(rd), clock, ClockedGateway(exchange, clock))
    rss_started = rss_mib()
    per_instrument: dict[Instrument, int] = {}
    for position in book:
        key = Instrument(segment=position.segment, security_id=position.security_id)
        per_instrument[key] = per_instrument.get(key, 0) + 1
    metrics = system.parts.metrics
    base = metrics.get("price_checks")
    depths = Depths(system)
    samples, behind, trackers_behind = [], [], []
    owed = 0

    def backlog() -> int:
        return (metrics.get("price_deliveries") - metrics.get("prices_handled")
                - system.dispatcher.conflated)

    steps = round(seconds / PERIOD)
    began, cpu0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        delay = began + step * PERIOD - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        behind.append(owed - (metrics.get("price_checks") - base))
        trackers_behind.append(backlog())
        if step % SLICES == 0:  # once a second: sampling 10,000 inboxes is not free
            samples.append(depths.sample())
        ticking = on[step % SLICES::SLICES]
        prices = quiet_prices(ticking, step // SLICES)
        for instrument, ltp in prices.items():
            system.tick(instrument, ltp, clock())
            owed += per_instrument.get(instrument, 0)
        system.step(clock(), timer=False)
    driven = time.perf_counter() - began
    done_in_drive = metrics.get("price_checks") - base
    rss_end = rss_mib()
    try:
        drain = wait_until(lambda: metrics.get("price_checks") - base >= owed
                           and backlog() <= 0, timeout=120, poll=0.005)
    except TimeoutError:
        drain = float("nan")
    told = {name: metrics.get(name) for name in ("price_deliveries", "prices_handled",
                                                  "evaluations")}
    told["conflated"] = system.dispatcher.conflated
    cpu = time.process_time() - cpu0
    # No quote API here: an instrument a tracker found stale (and asked a quote for) stays in
    # the batcher's ``asked`` set. A stale price fires no price rule (models/rules.py).
    stale = len(system.batcher.proxy().asked.get(timeout=60))
    system.stop()
    store.close()
    row = _row(count, instrument_count, seconds=driven, owed=owed, done=done_in_drive,
               drain=drain, cpu=cpu, behind=behind, samples=samples, floor_s=floor_s,
               rss={"start": rss0, "started": rss_started, "end": rss_end,
                    "stopped": rss_mib()})
    row["instruments_seen_stale"] = stale
    row.update(told)
    row["trackers_behind_by_second"] = _per_second(trackers_behind)
    q2, q4 = _growth(trackers_behind)
    row["figures"][1]["ratio"] += f"; {stale:,} instruments' prices were stale when checked"
    row["figures"].insert(2, figure(
        "prices told to trackers and not yet handled, mean 2nd → 4th quarter", q4, "msgs",
        ratio=f"{q2:,.0f} → {q4:,.0f}; told {told['price_deliveries']:,} "
              f"({told['price_deliveries'] / max(1, owed):.1%} of the checks), replaced by a "
              f"newer price {told['conflated']:,}",
        target="bounded", met=q4 <= q2 * 1.1 + count / SLICES,
        miss="" if q4 <= q2 * 1.1 + count / SLICES else f"grew {q2:,.0f} → {q4:,.0f}"))
    return row


def _timed(fn: Any) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _per_second(values: list[int]) -> list[int]:
    return [max(values[k:k + SLICES]) for k in range(0, len(values), SLICES)]


def _growth(values: list[int]) -> tuple[float, float]:
    """Mean of the second quarter and of the last quarter (the first is warm-up)."""
    quarter = max(1, len(values) // 4)
    second, last = values[quarter:2 * quarter] or values, values[-quarter:]
    return sum(second) / len(second), sum(last) / len(last)


def _row(count: int, instrument_count: int, *, seconds: float, owed: int, done: int,
         drain: float, cpu: float, behind: list[int], samples: list[dict[str, int]],
         floor_s: float, rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    rate = owed / (seconds + drain)
    expected = float(count)  # every position is evaluated once a second
    deepest = peak(samples)
    totals = [total(s) for s in samples]
    floor_rate = count / floor_s
    cpu_us, floor_us = cpu / owed * 1e6, floor_s / count * 1e6
    owed_q2, owed_q4 = _growth(behind)
    box_q2, box_q4 = _growth(totals)
    step_msgs = count // SLICES * 2 + instrument_count // SLICES
    """At most what one step puts in the mailboxes: a price and a valuation per position, the
    ticks."""
    kept_up = owed_q4 <= count and owed_q4 <= owed_q2 * 1.1 + count / SLICES
    bounded = box_q4 <= box_q2 * 1.1 + step_msgs
    return {
        "benchmark": f"sustained, {count:,} positions / {instrument_count:,} instruments, "
                     f"1 change/s each",
        "seconds": seconds, "checks_owed": owed, "checks_done_while_driving": done,
        "checks_per_s": rate, "expected_per_s": expected, "drain_s": drain,
        "behind_by_second": _per_second(behind), "mailboxes_by_second": totals,
        "mailbox_peak": deepest, "floor_evaluations_per_s": floor_rate, "rss_mib": rss,
        "cpu_s": cpu, "cpu_us_per_price": cpu_us, "floor_us_per_evaluation": floor_us,
        "cores_busy": cpu / (seconds + drain),
        "figures": [
            figure("price checks per second kept up", rate, "/s",
                   baseline=f"floor capacity {floor_rate:,.0f}/s (1 thread)",
                   ratio=f"{rate / expected:.0%} of the {expected:,.0f}/s owed",
                   target="sustained", met=kept_up,
                   miss="" if kept_up else f"backlog {owed_q2:,.0f} → {owed_q4:,.0f} "
                                           f"checks (2nd → 4th quarter)"),
            figure("price checks owed, mean 2nd → 4th quarter", owed_q4, "checks",
                   ratio=f"{owed_q2:,.0f} → {owed_q4:,.0f}; max {max(behind, default=0):,}; "
                         f"drain {drain:.2f} s"),
            figure("all mailboxes, mean 2nd → 4th quarter", box_q4, "msgs",
                   ratio=f"{box_q2:,.0f} → {box_q4:,.0f}; max {max(totals, default=0):,} "
                         f"(pnl {deepest.get('pnl', 0):,}, dispatcher "
                         f"{deepest.get('dispatcher_pending', 0):,})",
                   target="bounded", met=bounded,
                   miss="" if bounded else f"grew {box_q4 / max(box_q2, 1):.1f}x"),
            figure("CPU per position price (all threads)", cpu_us, "µs",
                   baseline=f"floor {floor_us:.1f} µs", ratio=f"{cpu_us / floor_us:.1f}x floor; "
                   f"{cpu / (seconds + drain):.2f} cores busy"),
            below("peak RSS (VmHWM)", rss["stopped"]["peak_mib"], 1024, "MiB",
                  ratio=f"RSS {rss['start']['rss_mib']:.0f} → {rss['started']['rss_mib']:.0f} "
                        f"(started) → {rss['end']['rss_mib']:.0f} MiB"),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sustained")
    parser.add_argument("--positions", type=int, default=10_000)
    parser.add_argument("--instruments", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    return child_main(lambda pg, rd, scratch: run(
        pg, rd, scratch, count=args.positions, instrument_count=args.instruments,
        seconds=args.seconds))


if __name__ == "__main__":
    sys.exit(main())
