"""Replay speed (SPEC §9, second wave): a quiet day and a busy day through the real actors.

- **Quiet day**: 30 DhanHQ order updates between 10:02 and 15:30 for 6 positions, no ticks (the
  day of issue 19: 2 min 53 s when the clock stepped through every second). Target < 3 s.
- **Busy day**: 500 positions entered over the first minutes, 200 instruments ticking once a
  second each from 09:15 to 15:30, prices on a seeded random walk that crosses stops, trailing
  stops and targets; the rest squared off at 15:15. Target >= 60x real time.

The generators write ordinary inputs (DhanHQ frames, tape ticks): ``write_day`` puts them in a
folder as ``orders.jsonl`` and ``ticks.csv`` for ``run.py replay``. The busy day's 4.5 million
ticks are generated as the replay consumes them, never held at once.

Baseline in the same run (full run only): the quiet day replayed the old way, a timer every
simulated second (``Replayer(stepped=True)``).

- **Event-driven = stepped** (full run only): a long day (``long_day``: every exit rule of
  ``LONG_POLICY``, parts, repeats, cancels, closes by hand; ticks at irregular instants)
  replayed both ways: identical report and exit orders, and how long each took.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from loguru import logger

from actors.system import Parts, System
from app.clocks import ManualClock
from app.replay import (
    Event,
    Replayer,
    TickEvent,
    UpdateEvent,
    merge,
    read_orders,
    read_ticks,
    replay_exchange,
)
from bench.report import at_least, below, figure
from broker.paper.market import TapeMarket, to_tick
from models.common import IST, Instrument, Segment
from models.policy import RiskConfig, risk_config_from_mapping
from models.report import build_report
from store.pnl_cache import InMemoryPnLCache
from store.sqlite import SqliteStore

DAY = date(2026, 11, 23)  # a Monday
QUIET_TARGET_S = 3.0
BUSY_TARGET_X = 60.0


def at(clock: str, day: date = DAY) -> datetime:
    hours, minutes, *seconds = (int(part) for part in clock.split(":"))
    return datetime(day.year, day.month, day.day, hours, minutes, seconds[0] if seconds else 0,
                    tzinfo=IST)


def frame(order_no: str, txn: str, security: str, qty: int, price: Decimal | None,
          when: datetime, *, status: str = "TRADED", traded: int | None = None,
          segment: str = "D") -> str:
    """A DhanHQ order frame; ``segment`` in DhanHQ's letters (D: NSE_FNO, E: NSE_EQ)."""
    data: dict[str, Any] = {
        "OrderNo": order_no, "Status": status, "TxnType": txn, "Quantity": qty,
        "TradedQty": qty if traded is None else traded, "SecurityId": security,
        "Exchange": "NSE", "Segment": segment, "Product": "I", "OrderType": "MKT",
        "LastUpdatedTime": when.strftime("%Y-%m-%d %H:%M:%S")}
    if price is not None:
        data["AvgTradedPrice"] = str(price)
    return json.dumps({"Type": "order_alert", "Data": data})


def quiet_day(day: date = DAY) -> list[str]:
    """30 frames, 10:02 to 15:30: six entries (a pending frame, a fill, a duplicate), four of
    them closed by hand from the broker's app later in the day (a pending frame and a fill);
    the other two are left to the 15:15 square-off. No ticks."""
    frames: list[str] = []
    start = at("10:02", day)
    for n in range(6):
        when = start + timedelta(minutes=37 * n)
        qty, price = 25 * (n + 1), Decimal(100 + 10 * n)
        frames.append(frame(f"Q{n}", "B", str(50100 + n), qty, None, when, status="PENDING",
                            traded=0))
        frames.append(frame(f"Q{n}", "B", str(50100 + n), qty, price,
                            when + timedelta(seconds=1)))
        frames.append(frame(f"Q{n}", "B", str(50100 + n), qty, price,
                            when + timedelta(seconds=2)))  # the socket repeats itself
    for n in range(4):
        when = at("14:00", day) + timedelta(minutes=19 * n)
        qty, price = 25 * (n + 1), Decimal(101 + 10 * n)
        frames.append(frame(f"M{n}", "S", str(50100 + n), qty, None, when, status="PENDING",
                            traded=0))
        frames.append(frame(f"M{n}", "S", str(50100 + n), qty, price,
                            when + timedelta(seconds=3)))
    frames += [frame("X1", "B", "59999", 10, None, at("15:29", day), status="REJECTED",
                     traded=0),
               frame("X2", "B", "59998", 10, None, at("15:30", day), status="CANCELLED",
                     traded=0),
               frame("Q0", "B", "50100", 25, Decimal(100), at("15:30", day)),  # late repeats
               frame("Q1", "B", "50101", 50, Decimal(110), at("15:30", day))]
    assert len(frames) == 30
    return frames


def busy_instruments(count: int) -> list[Instrument]:
    return [Instrument(segment=Segment.NSE_FNO, security_id=str(70000 + n))
            for n in range(count)]


def busy_entries(positions: int, on: list[Instrument], start: datetime, *,
                 seed: int = 5) -> list[str]:
    """One entry per position, 600 ms apart from ``start``, each instrument on one side."""
    rng = random.Random(seed)
    sides = {instrument: "B" if n % 2 == 0 else "S" for n, instrument in enumerate(on)}
    frames = []
    for n in range(positions):
        instrument = on[n % len(on)]
        when = start + timedelta(milliseconds=600 * n)
        frames.append(frame(f"BE{n}", sides[instrument], instrument.security_id,
                            rng.choice((25, 50, 75)), Decimal(100), when))
    return frames


def busy_ticks(on: list[Instrument], start: datetime, end: datetime, *, every: timedelta =
               timedelta(seconds=1), seed: int = 9, volatility: float = 0.0008
               ) -> Iterator[TickEvent]:
    """Every instrument once per ``every`` from ``start`` to ``end``, all at the same instants,
    on a seeded random walk from 100 (about 5 % an hour: trailing stops arm and fire, a few
    stops and targets are crossed through the day, the rest is squared off at 15:15)."""
    rng = random.Random(seed)
    prices = {instrument: 100.0 for instrument in on}
    # The tick price of each rounded float, made once: prices stay between 20 and 500, so at
    # most 48,000 of them, where the day asks for 4.5 million (the replay, not the
    # generator, is what is measured).
    ticks: dict[float, Decimal] = {}
    moment, line = start, 1
    while moment <= end:
        for instrument in on:
            price = prices[instrument] * (1 + rng.gauss(0, volatility))
            prices[instrument] = price = min(max(price, 20.0), 500.0)
            line += 1
            rounded = round(price, 2)
            ltp = ticks.get(rounded)
            if ltp is None:
                ltp = ticks[rounded] = to_tick(Decimal(repr(rounded)))
            yield TickEvent(at=moment, line=line, instrument=instrument, ltp=ltp)
        moment += every


MIXED_POLICY = {"policy": {"max_hold_minutes": 10, "exit_at": "15:00",
                           "square_off": {"NSE_FNO": "15:15"}}}
"""The time rules a mixed day exercises, besides the price rules."""


def mixed_day(day: date = DAY, *, positions: int = 10, instruments: int = 5,
              seed: int = 3) -> tuple[list[str], list[TickEvent]]:
    """A long afternoon for proving that event-driven replay decides as the stepped one does:
    entries from 14:40 (some partly filled, one cancelled), ticks at irregular instants (whole
    and fractional seconds, gaps of up to a minute, two instruments sometimes at one instant),
    a random walk that crosses stops and trailing stops, and the time rules of
    ``MIXED_POLICY``: held 10 minutes, out at 15:00, square-off at 15:15."""
    rng = random.Random(seed)
    on = busy_instruments(instruments)
    frames: list[str] = []
    for n in range(positions):
        instrument = on[n % instruments]
        side = "B" if (n % instruments) % 2 == 0 else "S"
        when = at("14:40", day) + timedelta(seconds=67 * n + rng.randint(0, 30))
        qty = 25 * rng.randint(1, 4)
        if n == 5:
            frames.append(frame(f"ME{n}", side, instrument.security_id, qty, None, when,
                                status="CANCELLED", traded=0))
            continue
        if n % 4 == 1:  # filled in two parts, a minute apart
            frames.append(frame(f"ME{n}", side, instrument.security_id, qty, Decimal(100),
                                when, status="PENDING", traded=qty // 2 or 1))
            when += timedelta(minutes=1)
        frames.append(frame(f"ME{n}", side, instrument.security_id, qty, Decimal("100.5"),
                            when))
    ticks: list[TickEvent] = []
    prices = {instrument: 100.0 for instrument in on}
    moment, line = at("14:40", day), 1
    while moment < at("15:20", day):
        moment += timedelta(milliseconds=rng.choice((1000, 2500, 7000, 13250, 60000)))
        for instrument in rng.sample(on, rng.choice((1, 1, 2))):
            prices[instrument] *= 1 + rng.gauss(0, 0.015)
            line += 1
            ticks.append(TickEvent(at=moment, line=line, instrument=instrument,
                                   ltp=to_tick(Decimal(repr(round(prices[instrument], 2))))))
    return frames, ticks


LONG_POLICY = {"policy": {"stop_loss_pct": 0.03, "take_profit_pct": 0.025,
                          "max_hold_minutes": 30, "exit_at": "15:12",
                          "trailing": {"activation_pct": 0.012, "trail_pct": 0.006},
                          "square_off": {"NSE_FNO": "15:10"}}}
"""Every exit rule within a day: stop loss 3 %, target 2.5 %, a trailing stop armed at 1.2 %
(0.6 % behind the peak), out after 30 minutes, NSE_FNO squared off at 15:10 (SESSION_END),
everything else out at 15:12 (TIME_EXIT)."""


def policy_toml(mapping: dict[str, Any]) -> str:
    """A policy mapping (``LONG_POLICY``) as the TOML file ``run.py replay --policy`` reads."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items()
                     if not isinstance(value, dict))
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{name}.{key}", value)

    for name, values in mapping.items():
        table(name, values)
    return "\n".join(lines) + "\n"


def long_day(day: date = DAY, *, start: str = "09:15", end: str = "15:30", positions: int = 120,
             instruments: int = 12, seed: int = 19) -> tuple[list[str], list[TickEvent]]:
    """A whole trading day that exercises every rule of ``LONG_POLICY`` and the order path:
    entries through the day on both sides (in NSE_FNO and NSE_EQ) at the market's price, a
    fifth filled in two parts, some sent twice, some cancelled or rejected unfilled, a
    seventh closed (in full or in part) by hand at the broker some minutes later; ticks at
    irregular instants (fractional seconds, gaps of up to a minute and a half, up to three
    instruments at one instant) on a seeded random walk. For proving that event-driven replay
    decides exactly as the stepped one: a stepped replay of the whole day takes minutes, so a
    test replays a part of it (``start``, ``end``)."""
    rng = random.Random(seed)
    first, last = at(start, day), at(end, day)
    on = [Instrument(segment=Segment.NSE_FNO if n % 3 else Segment.NSE_EQ,
                     security_id=str(80000 + n)) for n in range(instruments)]
    ticks, prices = _long_ticks(rng, on, first, last)
    frames: list[tuple[datetime, str]] = []
    stop = min(last, at("15:05", day)) - timedelta(minutes=5)
    for n in range(positions):
        when = first + timedelta(seconds=30) + (stop - first) * (n / positions) + timedelta(
            milliseconds=rng.randint(0, 60_000))
        frames += _long_entry(rng, n, on[rng.randrange(instruments)], when, prices)
    frames.sort(key=lambda pair: pair[0])  # stable: a frame's parts stay in order
    return [raw for _, raw in frames], ticks


def _long_ticks(rng: random.Random, on: list[Instrument], first: datetime, last: datetime
                ) -> tuple[list[TickEvent], dict[Instrument, list[tuple[datetime, Decimal]]]]:
    """The tape, and each instrument's prices in time order (entries are priced from them)."""
    walk = {instrument: 100.0 + 20 * n for n, instrument in enumerate(on)}
    prices: dict[Instrument, list[tuple[datetime, Decimal]]] = {i: [] for i in on}
    ticks: list[TickEvent] = []
    moment, line, chosen = first, 1, list(on)  # every instrument priced at the start
    while moment <= last:
        for instrument in chosen:
            walk[instrument] = min(max(walk[instrument] * (1 + rng.gauss(0, 0.004)), 5.0),
                                   5000.0)
            ltp = to_tick(Decimal(repr(round(walk[instrument], 2))))
            line += 1
            ticks.append(TickEvent(at=moment, line=line, instrument=instrument, ltp=ltp))
            prices[instrument].append((moment, ltp))
        gap = 90_000 if rng.random() < 0.02 else rng.choice((250, 500, 1000, 1000, 1500, 2000,
                                                              3000, 5000, 7000, 12_750))
        moment += timedelta(milliseconds=gap)
        chosen = rng.sample(on, rng.choice((1, 1, 1, 2, 3)))
    return ticks, prices


def _price_at(prices: list[tuple[datetime, Decimal]], when: datetime) -> Decimal:
    earlier = [ltp for moment, ltp in prices if moment <= when]
    return earlier[-1] if earlier else prices[0][1]


def _long_entry(rng: random.Random, n: int, instrument: Instrument, when: datetime,
                prices: dict[Instrument, list[tuple[datetime, Decimal]]]
                ) -> list[tuple[datetime, str]]:
    """One entry's frames and, for some, the hand-made close that follows."""
    security = instrument.security_id
    letter = "D" if instrument.segment is Segment.NSE_FNO else "E"
    side, qty = rng.choice(("B", "S")), 25 * rng.randint(1, 4)
    price = _price_at(prices[instrument], when)
    order = f"LE{n}"
    if n % 17 == 3:  # cancelled or rejected before any fill: opens nothing
        status = "CANCELLED" if n % 2 else "REJECTED"
        return [(when, frame(order, side, security, qty, None, when, status="PENDING",
                             traded=0, segment=letter)),
                (when + timedelta(seconds=2), frame(order, side, security, qty, None,
                                                    when + timedelta(seconds=2), status=status,
                                                    traded=0, segment=letter))]
    out: list[tuple[datetime, str]] = []
    if n % 5 == 1:  # filled in two parts
        out.append((when, frame(order, side, security, qty, price, when, status="PENDING",
                                traded=qty // 2, segment=letter)))
        when += timedelta(seconds=rng.randint(5, 90))
        price = _price_at(prices[instrument], when)
    out.append((when, frame(order, side, security, qty, price, when, segment=letter)))
    if n % 4 == 2:  # the socket repeats itself
        out.append((when, frame(order, side, security, qty, price, when, segment=letter)))
    if n % 7 == 4:  # closed by hand at the broker, in full or in part
        later = when + timedelta(minutes=rng.randint(2, 25))
        manual = f"LM{n}"
        close = qty if n % 2 else qty // 2
        out += [(later, frame(manual, "S" if side == "B" else "B", security, close, None,
                              later, status="PENDING", traded=0, segment=letter)),
                (later + timedelta(seconds=1),
                 frame(manual, "S" if side == "B" else "B", security, close,
                       _price_at(prices[instrument], later), later + timedelta(seconds=1),
                       segment=letter))]
    return out


def merged(updates: list[UpdateEvent], ticks: Iterable[TickEvent]) -> Iterator[Event]:
    """``app.replay.merge`` for a stream of ticks in time order: by time, updates first on a
    tie."""
    pending = iter(updates)
    update = next(pending, None)
    for tick in ticks:
        while update is not None and update.at <= tick.at:
            yield update
            update = next(pending, None)
        yield tick
    while update is not None:
        yield update
        update = next(pending, None)


def write_day(folder: Path, frames: list[str], ticks: Iterable[TickEvent] = ()) -> None:
    """The day as ``run.py replay`` reads it: ``orders.jsonl`` and, with ticks, ``ticks.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orders.jsonl").write_text("\n".join(frames) + "\n", encoding="utf-8")
    rows = [f"{t.at.isoformat()},{t.instrument.segment},{t.instrument.security_id},{t.ltp}"
            for t in ticks]
    if rows:
        (folder / "ticks.csv").write_text("ts,segment,security_id,ltp\n" + "\n".join(rows)
                                          + "\n", encoding="utf-8")


def replay(events: Iterable[Event], first: datetime, config: RiskConfig, scratch: Path, *,
           stepped: bool = False) -> tuple[dict[str, Any], float, Replayer]:
    """One replay as ``run.py replay`` runs it (fresh SQLite store, in-process cache); the
    report and the wall-clock seconds of the play itself."""
    clock = ManualClock(first - timedelta(seconds=1))
    store = SqliteStore(scratch / f"replay-{time.monotonic_ns()}.sqlite3")
    store.migrate()
    market = TapeMarket([])
    exchange = replay_exchange(market, store)
    parts = Parts(store=store, cache=InMemoryPnLCache(), gateway=exchange, quotes=None,
                  config=config, clock=clock, deadlines=not stepped, settle_on_idle=True)
    system = System(parts).start(ticker=False)
    started = clock()
    replayer = Replayer(system, clock, market, exchange, stepped=stepped)
    began = time.perf_counter()
    ended = replayer.play(events)
    seconds = time.perf_counter() - began
    system.stop()
    report = build_report("replay", started, ended, store.list_positions(), config.policy,
                          parts.metrics.snapshot())
    store.close()
    return report, seconds, replayer


def decisions(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must not change between two replays of the same input."""
    return [(p["position_id"], p["status"], p["exit_reason"], p["exit_price"], p["exited_at"],
             p["realized_pnl"]) for p in report["positions"]] + [report["summary"]["net_pnl"]]


def outcome(report: dict[str, Any], replayer: Replayer) -> dict[str, Any]:
    """Everything a replay decided: its report without the metrics (the work it took, which
    differs by design between a stepped and an event-driven replay), and every order the
    exchange took (name, client id, status, filled quantity, average price, when placed)."""
    orders = [(o.order_no, o.client_id, str(o.status), o.filled_qty, o.avg_price,
               o.placed_at.isoformat()) for o in replayer.exchange.orders()]
    return {**{k: v for k, v in report.items() if k != "metrics"},
            "exchange": sorted(orders, key=lambda order: order[0])}


def _quiet_events(scratch: Path) -> list[Event]:
    folder = scratch / "quiet"
    write_day(folder, quiet_day())
    return merge(read_orders(folder / "orders.jsonl"), [])


def run_quiet(scratch: Path, *, baseline: bool) -> dict[str, Any]:
    config = RiskConfig()
    events = _quiet_events(scratch)
    report, seconds, replayer = replay(events, events[0].at, config, scratch)
    figures = [below("quiet day (30 updates, 10:02-15:30, no ticks)", seconds, QUIET_TARGET_S,
                     "s")]
    row: dict[str, Any] = {"benchmark": "replay of a quiet day", "seconds": seconds,
                           "timers": replayer.stats.timers,
                           "exits": report["summary"]["exits_by_reason"]}
    if baseline:
        old, old_seconds, old_replayer = replay(events, events[0].at, config, scratch,
                                                stepped=True)
        same = outcome(old, old_replayer) == outcome(report, replayer)
        figures[0].update(baseline=f"stepped {old_seconds:.1f} s",
                          ratio=f"{old_seconds / seconds:.0f}x faster")
        figures.append(figure("same decisions as the stepped replay", float(same),
                              target="1", met=same))
        row.update(stepped_seconds=old_seconds, stepped_timers=old_replayer.stats.timers,
                   same_decisions=same)
    row["figures"] = figures
    return row


def busy_events(positions: int, instruments: int, start: datetime,
                end: datetime) -> tuple[list[UpdateEvent], Iterator[Event]]:
    on = busy_instruments(instruments)
    folder_free = [UpdateEvent(at=start + timedelta(milliseconds=600 * n), line=n + 1, raw=raw)
                   for n, raw in enumerate(busy_entries(positions, on, start))]
    return folder_free, merged(folder_free, busy_ticks(on, start, end))


def run_busy(*, positions: int, instruments: int, start: datetime,
             end: datetime, scratch: Path, whole_day: bool = True) -> dict[str, Any]:
    """The busy day from ``start`` to ``end``. SPEC §9's target is for the whole day
    (``whole_day``); a part of it (the quick run's first 20 minutes, when all the entries come
    and most exits happen: the busiest part, about half the whole day's pace) is reported
    without a target."""
    updates, events = busy_events(positions, instruments, start, end)
    report, seconds, replayer = replay(events, updates[0].at, RiskConfig(), scratch)
    simulated = (end - start).total_seconds()
    speed = simulated / seconds
    name = (f"busy day ({positions} positions, {instruments} instruments x 1 tick/s, "
            f"{start:%H:%M}-{end:%H:%M})")
    baseline = f"{seconds:.0f} s for {simulated:,.0f} s"
    fig = (at_least(name, speed, BUSY_TARGET_X, "x real time", baseline=baseline) if whole_day
           else figure(name, speed, "x real time", baseline=baseline,
                       target="(whole day: >= 60)"))
    return {"benchmark": "replay of a busy day", "seconds": seconds, "simulated_s": simulated,
            "events": replayer.stats.events, "batches": replayer.stats.batches,
            "timers": replayer.stats.timers, "exits": report["summary"]["exits_by_reason"],
            "figures": [fig]}


def run_equivalence(scratch: Path, *, start: str = "09:15", end: str = "15:30",
                    positions: int = 120, instruments: int = 12) -> dict[str, Any]:
    """The long day (``long_day``, ``LONG_POLICY``) replayed event-driven and stepped (a timer
    every simulated second, one tick at a time): whether the two decided the same, to the
    report and every exit order (``outcome``), and how long each took."""
    frames, ticks = long_day(start=start, end=end, positions=positions,
                             instruments=instruments)
    folder = scratch / "long"
    write_day(folder, frames, ticks)
    config = risk_config_from_mapping(LONG_POLICY)
    events = merge(read_orders(folder / "orders.jsonl"), read_ticks(folder / "ticks.csv"))
    fast, fast_s, driven = replay(events, events[0].at, config, scratch)
    slow, slow_s, stepped = replay(events, events[0].at, config, scratch, stepped=True)
    same = outcome(fast, driven) == outcome(slow, stepped)
    name = (f"long day ({len(ticks):,} ticks, {len(frames)} updates, {start}-{end}): "
            "event-driven = stepped")
    return {"benchmark": "replay: event-driven = stepped", "identical": same,
            "event_driven_s": fast_s, "stepped_s": slow_s, "timers": driven.stats.timers,
            "stepped_timers": stepped.stats.timers, "exits": fast["summary"]["exits_by_reason"],
            "figures": [figure(name, float(same), target="= 1 (identical)", met=same,
                               baseline=f"stepped {slow_s:.0f} s, event-driven {fast_s:.1f} s",
                               ratio=f"{slow_s / fast_s:.0f}x faster")]}


def run(quick: bool, scratch: Path) -> list[dict[str, Any]]:
    rows = [run_quiet(scratch, baseline=not quick)]
    end = at("09:35") if quick else at("15:30")
    rows.append(run_busy(positions=500, instruments=200, start=at("09:15"), end=end,
                         scratch=scratch, whole_day=not quick))
    if not quick:  # the stepped replay of the long day takes minutes
        rows.append(run_equivalence(scratch))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_days")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--equivalence", action="store_true",
                        help="only the long day, event-driven and stepped")
    parser.add_argument("--write", type=Path, help="write the quiet day, a 30-minute busy "
                        "day and the long day (with its policy.toml) as replay folders here, "
                        "and replay nothing")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.write is not None:
        write_day(args.write / "quiet", quiet_day())
        on = busy_instruments(200)
        write_day(args.write / "busy", busy_entries(500, on, at("09:15")),
                  busy_ticks(on, at("09:15"), at("09:45")))
        write_day(args.write / "long", *long_day())
        (args.write / "long" / "policy.toml").write_text(policy_toml(LONG_POLICY),
                                                          encoding="utf-8")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run_equivalence(Path(scratch))] if args.equivalence else run(args.quick,
                                                                               Path(scratch))
        for row in rows:
            print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
