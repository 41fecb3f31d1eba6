"""Replay of a recorded session through the real actors on a simulated clock (SPEC §7).

Order-update lines are delivered in file order (the broker's delivery order); an update's time is
the later of its ``LastUpdatedTime`` and the previous update's time, so the clock never runs
backwards. Tape rows and updates are merged by time, updates first on a tie. After each event
the system is settled, so the same inputs give the same decisions every time.

Time between events is event-driven: live, a timer fires every second; here it fires only at the
whole seconds at which a timer can change something (``System.next_deadline``: a position not
evaluated since it changed, a time rule or session edge, an exit retry, a restart pause), so
simulated time in which nothing can happen costs nothing. Ticks of distinct instruments at the
same instant are fed as one batch (the batcher would conflate nothing among them). ``stepped``
replays the old way, a timer every second and one tick at a time: the same decisions, slower;
it is there to prove that.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import Market, TapeError, read_tape
from models.common import Instrument
from models.wire import parse_order_update
from store.ports import Store


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


def whole_second_from(moment: datetime) -> datetime:
    """The first whole second at or after ``moment``."""
    floor = moment.replace(microsecond=0)
    return floor if floor == moment else floor + timedelta(seconds=1)


def batches(events: Iterable[Event]) -> Iterator[list[Event]]:
    """Each update alone; ticks of distinct instruments at one instant together."""
    batch: list[Event] = []
    seen: set[Instrument] = set()
    for event in events:
        if batch and (isinstance(event, UpdateEvent) or isinstance(batch[0], UpdateEvent)
                      or event.at != batch[0].at or event.instrument in seen):
            yield batch
            batch, seen = [], set()
        batch.append(event)
        if isinstance(event, TickEvent):
            seen.add(event.instrument)
    if batch:
        yield batch


def replay_exchange(market: Market, store: Store) -> PaperExchange:
    """The paper exchange a replay's exits fill on, at once (latency 0), each exit order named
    by its client id: ``RX-<position>-<attempt>``. Numbered as they arrive, the exits decided
    at one instant would take their numbers in whichever order the gateway actors' threads
    ran, and two replays of one input would differ.

    A store kept from an earlier run (``--db``, e.g. a replay started again after a crash)
    knows that run's exit orders, and a position's attempt may be placed again on this run's
    exchange: its orders are named apart (``R<run>-X-…``), or an update of a new exit would be
    booked against an old one's order."""
    counts = store.counts()
    fresh = not counts.get("positions") and not counts.get("order_updates")
    prefix = "R" if fresh else f"R{uuid.uuid4().hex[:8]}-"
    return PaperExchange(market, latency=timedelta(0), order_prefix=prefix, numbering="client")


@dataclass
class ReplayStats:
    events: int = 0
    batches: int = 0
    timers: int = 0
    """Timer steps taken (a stepped replay takes one per second)."""


class Replayer:
    """Plays merged events into a started system on a ``ManualClock`` (see the module doc).

    Event-driven replay needs the system built with ``Parts(deadlines=True)``; a stepped one
    is quick only with ``Parts(settle_on_idle=True)``."""

    def __init__(self, system: Any, clock: ManualClock, market: Any, exchange: Any, *,
                 stepped: bool = False,
                 progress: Callable[[int], object] | None = None) -> None:
        """``progress`` hears the number of events of each batch once it is played."""
        self.system, self.clock, self.market, self.exchange = system, clock, market, exchange
        self.stepped, self.progress = stepped, progress
        self.stats = ReplayStats()

    def play(self, events: Iterable[Event], *,
             tail: timedelta = timedelta(seconds=5)) -> datetime:
        now = self.clock()
        for batch in ([e] for e in events) if self.stepped else batches(events):
            at = batch[0].at
            self._advance(now, at)
            now = max(now, at)
            self.stats.batches += 1
            self.stats.events += len(batch)
            # The exchange's time is the event's: an exit decided on it is stamped then.
            self.market.advance(now)
            self.exchange.advance(now)
            first = batch[0]
            if isinstance(first, UpdateEvent):
                self.system.order_frame(first.raw)
            else:
                for tick in batch:
                    assert isinstance(tick, TickEvent)
                    self.market.set_price(tick.instrument, tick.ltp, tick.at)
                    self.system.tick(tick.instrument, tick.ltp, tick.at)
                self.system.step(now, timer=False)
            self.system.settle()
            self._exchange(now)
            if self.progress is not None:
                self.progress(len(batch))
        end = now + tail
        self._advance(now, end)
        return end

    def _advance(self, start: datetime, end: datetime) -> None:
        if self.stepped:
            for moment in seconds_between(start, end):
                self._step(moment)
        else:
            moment = start.replace(microsecond=0) + timedelta(seconds=1)
            while moment <= end:
                due = self.system.next_deadline()
                if due is None:
                    break
                moment = max(moment, whole_second_from(due))
                if moment > end:
                    break
                self._step(moment)
                moment += timedelta(seconds=1)
        self.clock.set(end)

    def _step(self, moment: datetime) -> None:
        self.stats.timers += 1
        self.clock.set(moment)
        self._exchange(moment)
        self.system.step(moment, timer=True)
        self.system.settle(rounds=2)

    def _exchange(self, now: datetime) -> None:
        """Exits placed meanwhile fill on the paper exchange at the tape's price."""
        self.market.advance(now)
        self.exchange.advance(now)
        self.system.settle(rounds=2)
