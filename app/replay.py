"""Replay of a recorded session through the real actors on a simulated clock (SPEC §7).

Order-update lines are delivered in file order (the broker's delivery order); an update's time is
the later of its ``LastUpdatedTime`` and the previous update's time, so the clock never runs
backwards. Tape rows and updates are merged by time, updates first on a tie. Between events the
clock advances second by second with a timer, so time rules fire as they would live. After each
event the system is settled, so the same inputs give the same decisions every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.clocks import ManualClock
from broker.paper.market import TapeError, read_tape
from models.common import Instrument
from models.wire import parse_order_update


class ReplayInputError(ValueError):
    """A replay input file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class UpdateEvent:
    at: datetime
    line: int
    raw: str


@dataclass(frozen=True)
class TickEvent:
    at: datetime
    line: int
    instrument: Instrument
    ltp: Decimal


Event = UpdateEvent | TickEvent


def read_orders(path: Path) -> list[UpdateEvent]:
    """Every non-blank line is delivered, even one the parser will reject (it is stored raw)."""
    events: list[UpdateEvent] = []
    last: datetime | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ReplayInputError(f"{path}: cannot read: {error}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed = parse_order_update(line)
        at = getattr(parsed, "updated_at", None)
        if at is None and last is None:
            try:
                json.loads(line)
            except json.JSONDecodeError:
                raise ReplayInputError(f"{path}:{number}: not a JSON order update, and no "
                                       "earlier update gives it a time") from None
            raise ReplayInputError(f"{path}:{number}: the first order update has no time")
        at = max(at, last) if at is not None and last is not None else at or last
        assert at is not None
        last = at
        events.append(UpdateEvent(at=at, line=number, raw=line))
    return events


def read_ticks(path: Path) -> list[TickEvent]:
    try:
        rows = read_tape(path)
    except TapeError as error:
        raise ReplayInputError(str(error)) from None
    return [TickEvent(at=at, line=number, instrument=instrument, ltp=ltp)
            for number, (instrument, ltp, at) in enumerate(rows, 2)]


def merge(updates: list[UpdateEvent], ticks: list[TickEvent]) -> list[Event]:
    """By time; on a tie, updates first; within a kind, file order."""
    keyed = [((e.at, 0, e.line), e) for e in updates] + [((e.at, 1, e.line), e) for e in ticks]
    return [event for _, event in sorted(keyed, key=lambda pair: pair[0])]


def seconds_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Whole-second timer instants in (start, end]."""
    first = start.replace(microsecond=0) + timedelta(seconds=1)
    moment = first
    while moment <= end:
        yield moment
        moment += timedelta(seconds=1)


class Replayer:
    """Plays merged events into a started system on a ``ManualClock``."""

    def __init__(self, system: Any, clock: ManualClock, market: Any, exchange: Any) -> None:
        self.system, self.clock, self.market, self.exchange = system, clock, market, exchange

    def play(self, events: list[Event], *, tail: timedelta = timedelta(seconds=5)) -> datetime:
        now = self.clock()
        for event in events:
            self._advance(now, event.at)
            now = max(now, event.at)
            if isinstance(event, UpdateEvent):
                self.system.order_frame(event.raw)
            else:
                self.market.set_price(event.instrument, event.ltp, event.at)
                self.system.tick(event.instrument, event.ltp, event.at)
                self.system.step(now, timer=False)
            self.system.settle()
            self._exchange(now)
        end = now + tail
        self._advance(now, end)
        return end

    def _advance(self, start: datetime, end: datetime) -> None:
        for moment in seconds_between(start, end):
            self.clock.set(moment)
            self._exchange(moment)
            self.system.step(moment, timer=True)
            self.system.settle(rounds=2)
        self.clock.set(end)

    def _exchange(self, now: datetime) -> None:
        """Exits placed meanwhile fill on the paper exchange at the tape's price."""
        self.market.advance(now)
        self.exchange.advance(now)
        self.system.settle(rounds=2)
