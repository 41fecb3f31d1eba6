"""The price path of the latency benchmark, and the floor on it.

``Plan``: N positions on M instruments whose prices wiggle inside every rule's band, except that a
known set of instruments drops (longs) or jumps (shorts) 13 % at known steps, beyond the 12 % stop
loss; the positions on them must exit, and nothing else. ``floor``: a plain loop (no actors, no
I/O) evaluating the same rules on the same prices, with the decision latency of each exit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bench.workload import instruments, positions, quiet_prices
from models.bands import Quiet, quiet
from models.common import Instrument, Side
from models.marks import Basis, basis_of
from models.policy import RiskConfig
from models.position import Position
from models.rules import PriceMark, evaluate, update_marks

PERIOD = 0.1
"""Seconds between price changes by default: 10 per second per instrument."""
WARM_STEPS = 10
CROSS = Decimal("0.13")
"""Beyond the default stop loss of 12 %."""
CONFIG = RiskConfig()
REFILL_AFTER = 3


@dataclass
class Plan:
    on: list[Instrument]
    book: list[Position]
    steps: int
    period: float = PERIOD
    crash_at: dict[Instrument, int] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)

    def price(self, instrument: Instrument, step: int, side: Side) -> Decimal:
        at = self.crash_at.get(instrument)
        base = Decimal(100)
        if at is not None and step >= at:
            base = base * (1 - side.sign * CROSS)
        return quiet_prices([instrument], step, base)[instrument]

    def step_prices(self, step: int, side: dict[Instrument, Side]) -> list[tuple[Instrument,
                                                                                Decimal]]:
        """Every instrument's price at ``step``, in tick order: made before a step's ticks, so
        generating the workload is not timed as part of the pipeline."""
        return [(i, self.price(i, step, side.get(i, Side.LONG))) for i in self.on]

    def refills(self, step: int) -> list[Instrument]:
        """Instruments whose stopped-out positions are replaced now (``REFILL_AFTER`` steps
        after their crash), so the book stays at its size for the whole run."""
        return [i for i, at in self.crash_at.items() if at + REFILL_AFTER == step]


def crash_span(steps: int) -> int:
    """Steps a run's crashes are spread over: after the warm-up, before the last few."""
    return max(1, steps - WARM_STEPS - 5)


def make_plan(count: int, instrument_count: int, seconds: float, crashes: int, *,
              period: float = PERIOD) -> Plan:
    on = instruments(instrument_count)
    book = positions(count, on)
    steps = round(seconds / period)
    plan = Plan(on=on, book=book, steps=steps, period=period)
    span = crash_span(steps)
    stride = max(1, len(on) // crashes)
    for k in range(crashes):  # spread over the list (tick order) and over time
        instrument = on[(k * stride + k // 3) % len(on)]
        plan.crash_at[instrument] = WARM_STEPS + k * span // crashes
    side = sides(plan)
    plan.expected = {p.position_id for p in book
                     if instrument_of(p) in plan.crash_at and p.side is side[instrument_of(p)]}
    return plan


def sides(plan: Plan) -> dict[Instrument, Side]:
    """The side a crash on each instrument stops out: that of its first position."""
    out: dict[Instrument, Side] = {}
    for position in plan.book:
        out.setdefault(instrument_of(position), position.side)
    return out


def instrument_of(position: Position) -> Instrument:
    return Instrument(segment=position.segment, security_id=position.security_id)


def floor(plan: Plan, clock: Any, *, batched: bool) -> list[float]:
    """Decision latencies (ms) of a plain loop on the same prices: each price evaluated as it
    arrives, or (``batched``) the step's prices conflated and then evaluated in one pass. Each
    position keeps its basis and quiet guard between prices, as a tracker does."""
    side = sides(plan)
    book: dict[Instrument, list[_Kept]] = {}
    for position in plan.book:
        book.setdefault(instrument_of(position), []).append(
            (position, basis_of(position, CONFIG.policy), None))
    latencies: list[float] = []
    for step in range(plan.steps):
        arrived: dict[Instrument, tuple[float, Decimal]] = {}
        for instrument, ltp in plan.step_prices(step, side):
            arrived[instrument] = (time.perf_counter(), ltp)
            if not batched:
                _fold(book, instrument, arrived.pop(instrument), clock, latencies)
        for instrument, seen in arrived.items():
            _fold(book, instrument, seen, clock, latencies)
    return latencies


_Kept = tuple[Position, Basis | None, Quiet | None]


def _fold(book: dict[Instrument, list[_Kept]], instrument: Instrument,
          seen: tuple[float, Decimal], clock: Any, latencies: list[float]) -> None:
    began, ltp = seen
    now = clock()
    mark = PriceMark(ltp=ltp, at=now)
    kept: list[_Kept] = []
    for position, basis, guard in book.get(instrument, ()):
        marked = update_marks(position, ltp, CONFIG.policy, basis)
        if guard is not None and guard.holds(marked, ltp, True, now):
            kept.append((marked, basis, guard))
        elif evaluate(marked, mark, now, CONFIG) is None:
            guard = quiet(marked, basis, now, CONFIG) if basis is not None else None
            kept.append((marked, basis, guard))
        else:
            latencies.append((time.perf_counter() - began) * 1000)
    book[instrument] = kept
