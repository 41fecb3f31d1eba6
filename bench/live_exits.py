"""Live against the fake DhanHQ (issue 17): 200 positions, their stop losses fired in waves.

``run.py live`` runs as a subprocess (the program as a user runs it: one code path) against the
loopback fake DhanHQ served from this process (``broker.fake_dhan.venue``): a still paper
market whose every price goes out on the feed every 100 ms (2,000 ticks/s at 200 instruments,
SPEC §9's load) and a paper exchange. Before the session starts, 200 entries (one instrument
each, LONG 75 at 100) are filled at the exchange; the session finds them by reconcile and
subscribes their prices. The feed then goes quiet for 16 s (``FakeDhan.muted``): the
session's prices go stale and the quote API prices the book (counted at the fake, <= 1/s).
Then the market crashes the instruments to 94 (-6 %: the 5 % stop
loss fires) in waves of 20, 2.5 s apart: each wave is twice the order limiter's 10/s (SPEC §10),
so in each about 10 exits get a slot at once and the rest wait for the window to turn, and the
window is empty again when the next wave comes.

Measured at the fake, on this process's ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for
both processes on Linux, though only this process reads it):

- per exit: from the tick that crossed the stop going out on the feed's socket
  (``FakeDhan.wired``: the first time that price was written) to the first ``POST
  /v2/orders`` for that instrument arriving at the fake (``Recorded.arrived``: the kernel's
  receive timestamp of the packet holding its last byte, with the placement's
  ``securityId``). The fake's one event loop serves the feed's 2,000 ticks/s and every
  request, one thing at a time (the paper exchange's work is on a worker thread), so its read
  of a request may come some ms after the request arrived (a capture: 0.9 / 3.9 / 8.3 ms at
  p50 / p90 / p99, BENCHMARKS); the kernel's stamp does not wait for it. The tick's end is
  still the fake's write, before the kernel sends it: that end counts the fake's delay, if
  any, against the session. The same exits are also measured to the loop's read of the
  request (``Recorded.at``), and the fake's first way, from the tick handed to the feeds
  (``FakeDhan.published``) to the request's handler starting (``Recorded.handled``): the
  differences are the fake's own queue;
- *limiter slot free*: the exits for which the order limiter had room all along, from the tick
  to their request: at the tick and at every order request that arrived in between, fewer than
  10 order requests had arrived in the 1.05 s before (the fake's arrivals stand in for the
  limiter's slots, held until the answer and 10 ms more), and the session's own log says the
  placement waited at most 1 ms for its slot ("slot wait" on the gateway's "placed" line). An
  exit that waited for a slot is never in this set; one that was lucky may be left out. SPEC
  §10 makes the rest wait: their latency is DhanHQ's rate limit, not our path, so the < 25 ms
  target is for this set;
- order requests (placements, modifications, cancels) in any 1 s and any 60 s at the fake
  against the limits (10/s, 250/min); quote calls in any 1 s (<= 1).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.tracing.recorder import iter_records
from app.settings import DhanSettings
from bench.common import checkpoint, child_main, fresh_pg, summary_ms
from bench.live_stages import stages
from bench.report import below, figure
from broker.dhan.limits import Bucket
from broker.fake_dhan.server import Recorded
from broker.fake_dhan.venue import LiveRun, Venue, wait_until
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus

LOT = 75
START = Decimal("100")
CRASH = Decimal("94")
ORDERS_PER_S, ORDERS_PER_MIN, QUOTES_PER_S = 10, 250, 1
QUIET = 16.0
"""Seconds the feed is quiet before the crash: a quote call each time the quote API's
prices are stale again (5 s), 3 or 4 in all."""
POLICY = """
[policy]
stop_loss_pct = 0.05
take_profit_pct = 0.50

[policy.trailing]
mode = "off"
"""
"""The stop loss at 5 %, nothing else that could fire; every ``[dhan]`` key at its default."""


def instruments(count: int) -> list[Instrument]:
    return [Instrument(segment=Segment.NSE_FNO, security_id=str(60_000 + n))
            for n in range(count)]


def run(pg: str | None, rd: str | None, scratch: Path, *, positions: int = 200,
        wave: int = 20, gap: float = 2.5, packets: int = 1,
        quiet: float = QUIET, trace: Path | None = None,
        launch: bool | None = None) -> dict[str, Any]:
    """``packets``: ticker packets per feed message (DhanHQ may send several in one);
    ``quiet``: seconds the feed goes quiet before the crash (the quote API prices meanwhile);
    ``launch``: ``[dhan] launch_exits`` (False: each exit sent by its gateway actor); None:
    the setting's default, as a user runs it."""
    if launch is None:
        launch = DhanSettings().launch_exits
    book = instruments(positions)
    with Venue({instrument: START for instrument in book}) as venue:
        venue.fake.packets_per_message = packets
        for instrument in book:
            venue.enter(instrument, TxnType.BUY, LOT)
        wait_until(lambda: all(o.status is OrderStatus.TRADED
                               for o in venue.exchange.orders()), 30, "the entries filled")
        checkpoint(pg)
        if rd:
            import redis

            redis.Redis.from_url(rd).flushdb()
        port = _free_port()
        load_before = os.getloadavg()
        policy = POLICY + f"\n[dhan]\nlaunch_exits = {'true' if launch else 'false'}\n"
        live = LiveRun(venue, scratch / "live", policy=policy, duration=3600,
                       database_url=fresh_pg(pg) if pg else None, redis_url=rd,
                       http=f"127.0.0.1:{port}", trace=trace)
        try:
            began = time.monotonic()
            live.wait_log("reconcile:", 120)
            live.wait_log(f"({positions} subscribed)", 60)
            started_s = time.monotonic() - began
            time.sleep(2.0)  # every tracker priced by the feed, its band known to the index
            _quiet(venue, quiet)
            crashed = _crash(venue, book, wave, gap)
            wait_until(lambda: len(_first_exits(venue.fake.requests_in(Bucket.ORDERS)))
                       >= positions, 120, "an exit order for every position")
            wait_until(lambda: sum(o.status is OrderStatus.TRADED for o in venue.exits())
                       >= positions, 60, "every exit filled")
            time.sleep(1.5)  # the last fills reach the trackers
            inside = _inside(port)
            load_after = os.getloadavg()
            report = live.stop()
            waits = slot_waits(live.log())
        except BaseException:
            live.kill()
            raise
        orders = venue.fake.requests_in(Bucket.ORDERS)
        quotes = venue.fake.requests_in(Bucket.QUOTE)
        published, wired = dict(venue.fake.published), dict(venue.fake.wired)
    row = measure(book, crashed, wired, orders, quotes, waits, handed=published)
    if trace is not None:
        first = _first_exits(orders)
        row["where_the_time_goes"] = stages(
            iter_records(trace), str(CRASH),
            {i.security_id: at for i, (price, at) in wired.items() if price == CRASH},
            {sid: (r.received, r.at, r.handled) for sid, r in first.items()},
            set(row["slot_free_security_ids"]))
    exited = [p for p in report["positions"] if p["status"] == "EXITED"]
    gateway = report.get("gateway", {})
    row.update(positions=positions, wave=wave, gap_s=gap, packets_per_message=packets,
               launch_exits=launch, launched=gateway.get("launched"),
               start_s=started_s,
               exited=len(exited),
               stop_losses=report["summary"]["exits_by_reason"].get("STOP_LOSS", 0),
               books_agree=report["books"]["agree"],
               placements=gateway.get("placements"), rejections=gateway.get("rejections"),
               unknown=gateway.get("unknown"), modifications=gateway.get("modifications"),
               last_gateway_error=gateway.get("last_error"), inside=inside,
               load_avg_1m=[round(load_before[0], 2), round(load_after[0], 2)])
    row["figures"] = figures(row)
    row["note"] = NOTE
    return row


def _quiet(venue: Venue, seconds: float) -> None:
    """The feed goes quiet for ``seconds`` (connected, sending nothing): past the policy's
    5 s the session's prices are stale and the quote API prices them, once a second at most.
    Then the feed speaks again, long enough before the crash for every price to be its."""
    if seconds <= 0:
        return
    venue.fake.muted = True
    try:
        time.sleep(seconds)
    finally:
        venue.fake.muted = False
    time.sleep(1.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


BUCKET = re.compile(r'^tracker_(\w+)_seconds_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\} ([0-9.e+]+)$',
                    re.M)  # other labels (the account) may come before or after ``le``


def _inside(port: int) -> dict[str, dict[str, float]]:
    """The session's own histograms (its console's ``/metrics``): from a price's arrival on
    its feed to the exit decision, and from the decision to the gateway actor sending the
    order (its limiter wait not included). Each quantile is the bucket bound it falls under."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8")
    cumulative: dict[str, list[tuple[float, float]]] = {}
    for name, bound, count in BUCKET.findall(text):
        cumulative.setdefault(name, []).append((float(bound), float(count)))
    out: dict[str, dict[str, float]] = {}
    for name in ("price_to_decision", "decision_to_order"):
        rows = sorted(cumulative.get(name, []))
        total = rows[-1][1] if rows else 0.0
        out[name] = {"n": total, **{f"p{q}_le_ms": next(
            (bound * 1000 for bound, count in rows if count >= q / 100 * total), math.nan)
            for q in (50, 99)}}
    return out


def _crash(venue: Venue, book: list[Instrument], wave: int, gap: float) -> list[Instrument]:
    """The crossing prices, ``wave`` instruments at a time, ``gap`` seconds apart."""
    done: list[Instrument] = []
    for start in range(0, len(book), wave):
        if start:
            time.sleep(gap)
        for instrument in book[start:start + wave]:
            venue.set_price(instrument, CRASH)
            done.append(instrument)
    return done


def _first_exits(orders: Sequence[Recorded]) -> dict[str, Recorded]:
    """Security id → the first exit placement (correlation id ``X-…``) that reached the fake."""
    first: dict[str, Recorded] = {}
    for request in orders:
        if request.method == "POST" and request.security_id is not None \
                and (request.correlation_id or "").startswith("X-"):
            first.setdefault(request.security_id, request)
    return first


def in_window(times: Sequence[float], at: float, seconds: float) -> int:
    """How many of the sorted ``times`` fall in ``(at - seconds, at]``."""
    return bisect.bisect_right(times, at) - bisect.bisect_right(times, at - seconds)


def max_in_window(times: Sequence[float], seconds: float) -> int:
    """The most of the sorted ``times`` in any window of ``seconds`` (half open: a window
    ending at each time, the fullest there is)."""
    return max((in_window(times, at, seconds) for at in times), default=0)


HELD_S = 1.05
"""The window a request fills in the limiter's count, as the fake can see it: the limiter holds
a slot from the send until the answer, and counts it a second and 10 ms more (``MARGIN``); the
fake sees the arrival only, a few ms before the answer. A window of 1.05 s from each arrival
covers both, so an exit that waited for the limiter's slot is not counted as slot free."""


def slot_free_throughout(arrivals: Sequence[float], tick: float, arrived: float,
                         limit: int = ORDERS_PER_S, held: float = HELD_S) -> bool:
    """Did the order limiter have room from ``tick`` until this request ``arrived``: at the
    tick and at each order request that arrived in between, fewer than ``limit`` in the
    ``held`` seconds before (``arrivals`` sorted, this request among them)?"""
    moments = [tick, *arrivals[bisect.bisect_left(arrivals, tick):
                               bisect.bisect_left(arrivals, arrived)]]
    return all(in_window(arrivals, at, held) < limit for at in moments)


PLACED = re.compile(r"exit (\S+) placed as order \S+: .*slot wait ([0-9.]+) ms")


def slot_waits(log: str) -> dict[str, float]:
    """Exit client id → ms its placement waited for the order limiter's slot, as the session
    logged it (the gateway's "exit … placed as order … slot wait … ms" line)."""
    return {client_id: float(ms) for client_id, ms in PLACED.findall(log)}


def measure(book: list[Instrument], crashed: list[Instrument],
            wired: dict[Instrument, tuple[Decimal, float]], orders: Sequence[Recorded],
            quotes: Sequence[Recorded], waits: dict[str, float] | None = None, *,
            handed: dict[Instrument, tuple[Decimal, float]] | None = None) -> dict[str, Any]:
    """``wired``: when each crossing tick was written to the feed's socket (``FakeDhan.wired``);
    a request's arrival: the kernel's receive time of its last byte (``Recorded.arrived``; its
    read, ``Recorded.at``, where the kernel gave no stamp). ``handed``: when the
    tick was handed to the feeds (``FakeDhan.published``), for the same exits measured the
    fake's own way, from that hand-over to the request's handler (``Recorded.handled``): what
    the fake's event loop adds at both ends. ``waits``: the session's own limiter waits
    (``slot_waits``); an exit whose placement waited more than 1 ms for a slot is not slot
    free, whatever the fake counted."""
    arrivals = sorted(r.arrived for r in orders)
    first = _first_exits(orders)
    every, free, free_read, free_handled = [], [], [], []
    free_ids: list[str] = []
    tick_to_request: list[tuple[float, float]] = []
    missing = waited_slot = 0
    for instrument in crashed:
        seen, request = wired.get(instrument), first.get(instrument.security_id)
        if seen is None or seen[0] != CRASH or request is None:
            missing += 1
            continue
        latency = (request.arrived - seen[1]) * 1000
        every.append(latency)
        tick_to_request.append((seen[1], latency))
        waited = (waits or {}).get(request.correlation_id or "", 0.0)
        if slot_free_throughout(arrivals, seen[1], request.arrived) and waited <= 1.0:
            free.append(latency)
            free_read.append((request.at - seen[1]) * 1000)
            free_ids.append(instrument.security_id)
            given = (handed or {}).get(instrument)
            if given is not None and given[0] == CRASH and request.handled is not None:
                free_handled.append((request.handled - given[1]) * 1000)
        elif waited > 1.0:
            waited_slot += 1
    queued_ticks = [(wired[i][1] - given[1]) * 1000 for i in crashed
                    if (given := (handed or {}).get(i)) is not None and i in wired
                    and given[0] == wired[i][0] == CRASH]
    queued_requests = [(r.handled - r.at) * 1000 for r in first.values()
                       if r.handled is not None]
    read_late = [(r.at - r.received) * 1000 for r in first.values() if r.received is not None]
    densest = max(arrivals, key=lambda at: in_window(arrivals, at, 1.0), default=0.0)
    quote_times = sorted(r.arrived for r in quotes)
    gaps = [b - a for a, b in itertools.pairwise(quote_times)]
    return {
        "benchmark": f"live vs the fake DhanHQ: {len(book)} positions, stop losses in waves",
        "all_ms": summary_ms(every + [math.inf] * missing),
        "slot_free_ms": summary_ms(free),
        "kernel_stamped": sum(1 for r in first.values() if r.received is not None),
        "slot_free_read_ms": summary_ms(free_read),
        "slot_free_handler_ms": summary_ms(free_handled),
        "slot_free_security_ids": free_ids,
        # The fake's own queue: a crossing tick from its hand-over to its write on the feed's
        # socket; an exit's placement from its arrival (the kernel's stamp) to the event loop's
        # read of it, and from that read to its handler starting.
        "fake_tick_queue_ms": summary_ms(queued_ticks),
        "fake_read_late_ms": summary_ms(read_late),
        "fake_request_queue_ms": summary_ms(queued_requests),
        "exits_measured": len(every), "exits_missing": missing,
        "waited_for_slot": waited_slot, "slot_waits_logged": len(waits or {}),
        "order_requests": len(arrivals),
        "exit_posts": sum(1 for r in orders if r.method == "POST"),
        "orders_max_1s": max_in_window(arrivals, 1.0),
        "orders_max_60s": max_in_window(arrivals, 60.0),
        "densest_second_ms": [round((at - densest + 1.0) * 1000, 1) for at in arrivals
                              if densest - 1.0 < at <= densest],
        "quote_calls": len(quote_times),
        "quotes_max_1s": max_in_window(quote_times, 1.0),
        "quote_min_gap_s": min(gaps, default=math.inf),
        # Where a wave's time goes: each wave's exits in the order their ticks went out, as
        # (ms after the wave's first tick, ms from the tick to the order's request).
        "waves": _waves(tick_to_request),
    }


def _waves(exits: list[tuple[float, float]], gap: float = 1.0) -> list[list[tuple[float, float]]]:
    """Exits grouped into waves (ticks less than ``gap`` seconds after the one before)."""
    waves: list[list[tuple[float, float]]] = []
    last = -math.inf
    for tick, latency in sorted(exits):
        if tick - last >= gap:
            waves.append([])
            first = tick
        waves[-1].append((round((tick - first) * 1000, 1), round(latency, 1)))
        last = tick
    return waves


NOTE = ("The < 25 ms target is for the exits whose order found the limiter's 10/s window "
        "free from the price to the request: that is our path (feed, batcher, index, tracker, "
        "the durable exit intent, supervisor, gateway actor, HTTP). The rest waited, by design "
        "(SPEC §10), for DhanHQ's rate limit: their latency is the limit's, shown beside it "
        "without a target.")


def figures(row: dict[str, Any]) -> list[dict[str, Any]]:
    every, free = row["all_ms"], row["slot_free_ms"]
    n = row["exits_measured"] + row["exits_missing"]
    inside = row.get("inside", {})
    p2d, d2o = inside.get("price_to_decision", {}), inside.get("decision_to_order", {})
    breakdown = (f"in the session: feed → decision p50 <= {p2d.get('p50_le_ms', math.nan):g}, "
                 f"p99 <= {p2d.get('p99_le_ms', math.nan):g} ms; decision → order sent p50 "
                 f"<= {d2o.get('p50_le_ms', math.nan):g} ms (histogram bounds); load average "
                 f"{row['load_avg_1m'][0]:.1f} on {os.cpu_count()} cores")
    why = (f"{row['exits_missing']} of {n} exits never reached the fake"
           if row["exits_missing"] else
           f"{free['p99'] / 25:.1f}x the limit (+{free['p99'] - 25:.0f} ms); {breakdown}")
    densest = row["densest_second_ms"]
    edges = (f"; its densest second: {sum(1 for t in densest if t <= 50)} in the first 50 ms, "
             f"{sum(1 for t in densest if t > 950)} in the last 50 ms (DhanHQ counts a "
             "request when it arrives; the limiter holds its slot until the answer)")
    orders_met = row["orders_max_1s"] <= ORDERS_PER_S and row["orders_max_60s"] <= ORDERS_PER_MIN
    return [
        below("p99 price → exit order at fake, slot free",
              free["p99"], 25, "ms", why=why,
              baseline=f"{free['n']} of {n} exits had a slot free throughout; the tick "
                       "written → the request's arrival (the kernel's receive stamp of "
                       f"its last byte: {row['kernel_stamped']} of {row['exits_measured']} "
                       "placements stamped)",
              ratio=f"p50 {free['p50']:.1f}, p95 {free['p95']:.1f}, max {free['max']:.1f} ms"),
        figure("p99 price → exit order, slot free, at the fake's read",
               row["slot_free_read_ms"]["p99"], "ms",
               baseline="the same exits, to the fake's event loop reading the request's last "
                        "byte: its loop's delay at that end included (read after arrival: "
                        f"p50 {row['fake_read_late_ms']['p50']:.1f}, "
                        f"p99 {row['fake_read_late_ms']['p99']:.1f} ms)",
               ratio=f"p50 {row['slot_free_read_ms']['p50']:.1f} ms"),
        figure("p99 price → exit order, slot free, at the fake's handlers",
               row["slot_free_handler_ms"]["p99"], "ms",
               baseline="the same exits, from the tick handed to the feeds to the request's "
                        "handler starting: the fake's event loop queue at both ends included",
               ratio=f"p50 {row['slot_free_handler_ms']['p50']:.1f} ms"),
        figure("p99 price → exit order, every exit", every["p99"], "ms",
               baseline=f"{row['exits_measured']} exits in waves of {row['wave']} "
                        f"every {row['gap_s']:g} s",
               ratio=f"p50 {every['p50']:.1f}, max {every['max']:.0f} ms (10/s: the 2nd "
                     "half of a wave waits ~1 s)"),
        figure("in the session: feed → decision p50", p2d.get("p50_le_ms", math.nan), "ms",
               baseline="bucket bound, from its /metrics", ratio=breakdown),
        figure("order requests in any 1 s, at the fake", row["orders_max_1s"], "",
               baseline=f"{row['order_requests']} requests ({row['exit_posts']} placements)",
               ratio=f"any 60 s: {row['orders_max_60s']} (limit {ORDERS_PER_MIN})",
               target=f"<= {ORDERS_PER_S}", met=orders_met,
               miss="" if orders_met else
               f"{row['orders_max_1s']} in one second at the fake{edges}"),
        figure("quote calls in any 1 s, at the fake", row["quotes_max_1s"], "",
               baseline=f"{row['quote_calls']} calls",
               ratio=f"closest two {row['quote_min_gap_s']:.3f} s apart"
               if row["quote_calls"] > 1 else "",
               target=f"<= {QUOTES_PER_S}", met=row["quotes_max_1s"] <= QUOTES_PER_S,
               miss="" if row["quotes_max_1s"] <= QUOTES_PER_S else
               f"{row['quotes_max_1s']} in one second"),
        figure("positions exited by stop loss", row["stop_losses"], "",
               ratio=f"of {row['positions']}; books agree: {row['books_agree']}; "
                     f"placements {row['placements']}, refused {row['rejections']}, "
                     f"unknown {row['unknown']}; session up in {row['start_s']:.1f} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_exits")
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--wave", type=int, default=20, help="stop losses fired at once")
    parser.add_argument("--gap", type=float, default=2.5, help="seconds between waves")
    parser.add_argument("--packets", type=int, default=1,
                        help="ticker packets per feed message (diagnostic)")
    parser.add_argument("--quiet", type=float, default=QUIET,
                        help="seconds the feed goes quiet before the crash (quote API)")
    parser.add_argument("--launch", choices=("on", "off"), default=None,
                        help="[dhan] launch_exits (default: the setting's default, on): a "
                             "wave's orders sent together by a child, or each by its "
                             "gateway actor")
    parser.add_argument("--trace", type=Path, default=None,
                        help="the session's message trace (JSONL), for where the time goes")
    args = parser.parse_args(argv)
    return child_main(lambda pg, rd, scratch: run(pg, rd, scratch, positions=args.positions,
                                                  wave=args.wave, gap=args.gap,
                                                  packets=args.packets, quiet=args.quiet,
                                                  trace=args.trace,
                                                  launch=None if args.launch is None
                                                  else args.launch == "on"))


if __name__ == "__main__":
    sys.exit(main())
