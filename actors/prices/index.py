"""IndexActor: the sole owner of ``(segment, security_id) → open positions`` (SPEC §2).

Ownership replaces the old design's locks: only this actor reads or writes the index, and
everyone else talks to it with messages. A price batch becomes one ``PriceUpdate`` per
instrument, told only to the owners of positions on that instrument, and among those only to the
ones it can concern: each tracker keeps the index informed of its ``Band`` (``BandChanged``),
the prices inside which no rule of its position fires and no mark moves. A price outside the
band is told at once, ahead of the rest of the batch (those positions may be exiting); a price
inside it only as a refresh (every 40 to 80 % of ``stale_after``, spread by position), so the
tracker's own price does not go stale while its market is live. A position without a known band
gets every price. The whole batch then goes to the PnL writer, which values every position
itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.prices.edges import PriceEdges
from actors.protocol import BandChanged, Flush, Route, Unroute, Watch
from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from actors.runtime.pool import UrgentAhead
from models.bands import CROSSING, MARKS, QUIET, BandWatch, Reach
from models.common import Instrument
from models.messages import (
    PositionChanged,
    PositionClosed,
    PositionOpened,
    PriceBatch,
    PriceUpdate,
    new_id,
)
from models.position import CLOSED, Position
from models.rules import PriceMark


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """Start-up: every open position and the actor that owns it, in one message."""

    routes: tuple[tuple[Position, ActorRef[Any]], ...]


@dataclass(frozen=True, slots=True)
class OpenPositions:
    """Ask: the open positions, optionally on one instrument."""

    instrument: Instrument | None = None


@dataclass(frozen=True, slots=True)
class MarkedPositions:
    """Ask: every open position, and the last price of each instrument priced so far, for
    the operator console. Two copies made in one step each, so that the index is back on
    prices at once; the console pairs them on its own thread."""


class IndexActor(SingletonActor):
    trace_kind = "index"

    def __init__(self, batcher: ActorRef[Any] | None = None, *,
                 refresh: timedelta = timedelta(seconds=2.5),
                 metrics: Metrics | None = None,
                 gate: Callable[[], None] | None = None,
                 edges: PriceEdges | None = None, ahead: UrgentAhead | None = None) -> None:
        super().__init__()
        self.batcher = batcher
        self.ahead = ahead
        """Told when a batch counted on its way here (``PriceBatch.ahead``) has told its
        possible exits: the trackers' dispatcher, whose ``wait_for_urgent`` waits for it."""
        self.edges = edges
        """Where each instrument's exit edges are published for the feed (None: nowhere)."""
        self.gate = gate
        """Called before the ordinary part of a fan-out: ``Dispatcher.yield_to_urgent``."""
        self.pnl: ActorRef[Any] | None = None
        self.refresh = refresh
        self.metrics = metrics
        self.watches: dict[str, BandWatch] = {}
        self.last_marks: dict[Instrument, PriceMark] = {}
        """The last price of each instrument, for a band that changes between batches."""
        self.routes: dict[Instrument, dict[str, ActorRef[Any]]] = {}
        self._exits_told = False
        """Possible exits were told since the last flush went on to the PnL writer."""
        self.reach: dict[Instrument, Reach] = {}
        """Each instrument's ``Reach``; dropped when a band or an owner changes, made again
        at the instrument's next price."""
        self.positions: dict[str, Position] = {}
        self.owners: dict[str, ActorRef[Any]] = {}
        """Each position's owner, kept after it closes: a late entry fill may re-open it."""

    def on_receive(self, message: Any) -> Any:
        match message:
            case PriceBatch():
                if not message.ahead or self.ahead is None:
                    self._fan_out(message)
                    return None
                arrived = [False]
                try:
                    self._fan_out(message, arrived)
                finally:
                    if not arrived[0]:
                        self.ahead.urgent_arrived()
            case Flush():
                if self.pnl is not None:  # behind this flush's batch (see LTPBatcherActor)
                    exits, self._exits_told = self._exits_told, False
                    self.pnl.tell(replace(message, exits=True) if exits else message)
            case BandChanged():
                self._band_changed(message)
            case PositionOpened() | PositionChanged() | PositionClosed():
                self._track(message.position)
            case Route():
                self._route(message.position_id, message.instrument, message.ref)
            case Unroute():
                self._unroute(message.position_id, message.instrument)
            case BulkLoad():
                self._bulk_load(message)
            case OpenPositions():
                return self._open(message.instrument)
            case MarkedPositions():
                return list(self.positions.values()), dict(self.last_marks)
            case _:
                logger.warning("index ignores {}", type(message).__name__)
        return None

    def set_pnl(self, pnl: ActorRef[Any]) -> None:
        self.pnl = pnl

    def _band_changed(self, message: BandChanged) -> None:
        """A new band is checked against the instrument's last price at once: a band that
        tightened (a fill moved the stop, a failed exit made the rules apply again) while that
        price was on its way must not leave the position without it until the next one."""
        watch = self.watches.get(message.position_id)
        if watch is None:
            return
        watch.band = message.band
        self._drop_reach(watch.instrument)
        if self.edges is not None and watch.instrument in self.routes:
            self._reach(watch.instrument)  # its edges published again at once
        mark = self.last_marks.get(watch.instrument)
        ref = self.routes.get(watch.instrument, {}).get(message.position_id)
        if mark is None or ref is None:
            return
        verdict = watch.verdict(mark.ltp, mark.at)
        if verdict in (CROSSING, MARKS):
            watch.told_at = mark.at
            _tell(ref, PriceUpdate(instrument=watch.instrument, mark=mark,
                                   urgent=verdict == CROSSING, sent_at=mark.at,
                                   correlation_id=message.correlation_id or new_id(),
                                   causation_id=message.causation_id))

    def _fan_out(self, batch: PriceBatch, arrived: list[bool] | None = None) -> None:
        """Possible exits first: the instruments whose price is beyond their ``Reach`` are
        checked position by position (and their exits told) before any other instrument; then
        the rest; then, after every possible exit of the batch, the ordinary prices.
        ``arrived``: a batch counted on its way (``PriceBatch.ahead``), said arrived once its
        possible exits are told (``arrived[0]`` set), before the wait for urgent work."""
        later: list[tuple[ActorRef[Any], PriceUpdate]] = []
        refresh: list[tuple[ActorRef[Any], PriceUpdate]] = []
        inside: list[tuple[Instrument, PriceMark, dict[str, ActorRef[Any]], Reach]] = []
        told = checked = 0
        last_marks, reaches = self.last_marks, self.reach
        for instrument, mark in batch.prices:
            last_marks[instrument] = mark
            reach = reaches.get(instrument)
            if reach is None:
                if not self.routes.get(instrument):
                    continue
                reach = self._reach(instrument)
            owners = reach.owners
            checked += len(owners)
            verdict = reach.verdict(mark.ltp, mark.at)
            if verdict == CROSSING:
                told += self._cross(batch, instrument, mark, owners, later, refresh, reach)
            elif verdict == MARKS:
                inside.append((instrument, mark, owners, reach))
        if told:
            self._exits_told = True
            # Let the trackers just told a possible exit take the interpreter now: a woken
            # thread otherwise waits for the rest of the fan-out or the 5 ms switch interval.
            time.sleep(0)
        if arrived is not None and self.ahead is not None:
            arrived[0] = True  # before the gate: this batch must not wait for itself
            self.ahead.urgent_arrived()
        if self.gate is not None and (inside or later or refresh):
            # the ordinary prices wait while those exits are decided (a batch of exits alone
            # goes on at once: nothing is left of it to hold back)
            self.gate()
        for instrument, mark, owners, reach in inside:
            told += self._cross(batch, instrument, mark, owners, later, refresh, reach)
        for ref, update in later + refresh:
            told += _tell(ref, update)
        if self.metrics is not None:
            self.metrics.incr("price_checks", checked)
            self.metrics.incr("price_deliveries", told)
        if self.pnl is not None:
            self.pnl.tell(batch)

    def _reach(self, instrument: Instrument) -> Reach:
        """The instrument's ``Reach``, made from its owners' bands; its exit edges published."""
        owners = self.routes[instrument]
        reach = self.reach[instrument] = Reach(owners, [self.watches.get(pid) for pid in owners])
        if self.edges is not None:
            if reach.open:  # a position without a band: every price goes to it anyway
                self.edges.withdraw(instrument)
            else:
                self.edges.publish(instrument, reach.low, reach.high)
        return reach

    def _drop_reach(self, instrument: Instrument) -> None:
        self.reach.pop(instrument, None)
        if self.edges is not None:
            self.edges.withdraw(instrument)

    def _cross(self, batch: PriceBatch, instrument: Instrument, mark: PriceMark,
               owners: dict[str, ActorRef[Any]], later: list[tuple[ActorRef[Any], PriceUpdate]],
               refresh: list[tuple[ActorRef[Any], PriceUpdate]], reach: Reach) -> int:
        """Tell ``mark`` at once, marked urgent, to the owners for whom it may be an exit; queue
        it in ``later`` for those whose marks it moves, in ``refresh`` for those whose refresh
        is due. Each owner hears it once. ``reach`` learns when the next refresh is due."""
        ltp, at = mark.ltp, mark.at
        verdicts: dict[ActorRef[Any], int] = {}
        refresh_at: datetime | None = None
        for position_id, ref in owners.items():
            watch = self.watches.get(position_id)
            verdict = CROSSING if watch is None else watch.verdict(ltp, at)
            if verdict != QUIET:
                if watch is not None:
                    watch.told_at = at
                verdicts[ref] = max(verdict, verdicts.get(ref, QUIET))
            if watch is not None:
                told_at = watch.told_at
                due = at if told_at is None else told_at + watch.refresh
                if refresh_at is None or due < refresh_at:
                    refresh_at = due
        reach.refresh_at = refresh_at
        if not verdicts:
            return 0
        correlation_id, causation_id = batch.correlation_id, batch.message_id
        told, ordinary = 0, None
        for ref, verdict in verdicts.items():
            if verdict == CROSSING:
                told += _tell(ref, PriceUpdate(
                    instrument=instrument, mark=mark, urgent=True, sent_at=batch.sent_at,
                    correlation_id=correlation_id, causation_id=causation_id))
                continue
            if ordinary is None:
                ordinary = PriceUpdate(instrument=instrument, mark=mark, sent_at=batch.sent_at,
                                       correlation_id=correlation_id, causation_id=causation_id)
            (later if verdict == MARKS else refresh).append((ref, ordinary))
        return told

    def _track(self, position: Position) -> None:
        if position.status in CLOSED:
            self.positions.pop(position.position_id, None)
            self._unroute(position.position_id, _instrument(position))
        else:
            self.positions[position.position_id] = position
            owner = self.owners.get(position.position_id)
            routed = self.routes.get(_instrument(position), {})
            if owner is not None and position.position_id not in routed:
                self._route(position.position_id, _instrument(position), owner)

    def _route(self, position_id: str, instrument: Instrument, ref: ActorRef[Any]) -> None:
        owners = self.routes.setdefault(instrument, {})
        if not owners:
            self._watch((instrument,), watching=True)
        owners[position_id] = ref
        self.owners[position_id] = ref
        self._drop_reach(instrument)
        # A new owner (a restart, a quarantine) starts with every price, until it says otherwise.
        self.watches[position_id] = BandWatch(position_id, instrument, self.refresh)

    def _unroute(self, position_id: str, instrument: Instrument) -> None:
        owners = self.routes.get(instrument)
        if owners is None or owners.pop(position_id, None) is None:
            return
        self.watches.pop(position_id, None)
        self._drop_reach(instrument)
        if not owners:
            del self.routes[instrument]
            self._watch((instrument,), watching=False)

    def _bulk_load(self, message: BulkLoad) -> None:
        fresh: list[Instrument] = []
        for position, ref in message.routes:
            instrument = _instrument(position)
            if instrument not in self.routes:
                fresh.append(instrument)
            self.routes.setdefault(instrument, {})[position.position_id] = ref
            self._drop_reach(instrument)
            self.owners[position.position_id] = ref
            self.watches[position.position_id] = BandWatch(position.position_id, instrument,
                                                        self.refresh)
            self.positions[position.position_id] = position
        if fresh:
            self._watch(tuple(fresh), watching=True)
        logger.info("index loaded {} open positions on {} instruments", len(message.routes),
                    len(self.routes))

    def _watch(self, instruments: tuple[Instrument, ...], *, watching: bool) -> None:
        if self.batcher is not None:
            self.batcher.tell(Watch(instruments=instruments, watching=watching))

    def _open(self, instrument: Instrument | None) -> list[Position]:
        if instrument is None:
            return list(self.positions.values())
        owners = self.routes.get(instrument, {})
        return [self.positions[pid] for pid in owners if pid in self.positions]


def _tell(ref: ActorRef[Any], update: PriceUpdate) -> int:
    try:
        ref.tell(update)
    except ActorDeadError:
        return 0  # a tracker between crash and restart; its next price will come
    return 1


def _instrument(position: Position) -> Instrument:
    return Instrument(segment=position.segment, security_id=position.security_id)
