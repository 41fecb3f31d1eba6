"""IndexActor: the sole owner of ``(segment, security_id) → open positions`` (SPEC §2).

Ownership replaces the old design's locks: only this actor reads or writes the index, and
everyone else talks to it with messages. A price batch becomes one ``PriceUpdate`` per
instrument, told only to the owners of positions on that instrument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.dispatch import SingletonActor
from actors.protocol import Route, Unroute, Watch
from models.common import Instrument
from models.messages import PositionChanged, PositionClosed, PositionOpened, PriceBatch, PriceUpdate
from models.position import CLOSED, Position


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """Start-up: every open position and the actor that owns it, in one message."""

    routes: tuple[tuple[Position, ActorRef[Any]], ...]


@dataclass(frozen=True, slots=True)
class OpenPositions:
    """Ask: the open positions, optionally on one instrument."""

    instrument: Instrument | None = None


class IndexActor(SingletonActor):
    trace_kind = "index"

    def __init__(self, batcher: ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.batcher = batcher
        self.routes: dict[Instrument, dict[str, ActorRef[Any]]] = {}
        self.positions: dict[str, Position] = {}
        self.owners: dict[str, ActorRef[Any]] = {}
        """Each position's owner, kept after it closes: a late entry fill may re-open it."""
        self.fanned_out = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case PriceBatch():
                self._fan_out(message)
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
            case _:
                logger.warning("index ignores {}", type(message).__name__)
        return None

    def _fan_out(self, batch: PriceBatch) -> None:
        ids = batch.caused()
        for instrument, mark in batch.prices:
            owners = self.routes.get(instrument)
            if not owners:
                continue
            update = PriceUpdate(instrument=instrument, mark=mark, sent_at=batch.sent_at, **ids)
            for ref in set(owners.values()):
                try:
                    ref.tell(update)
                except ActorDeadError:
                    continue  # a tracker between crash and restart; its next price will come
                self.fanned_out += 1

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

    def _unroute(self, position_id: str, instrument: Instrument) -> None:
        owners = self.routes.get(instrument)
        if owners is None or owners.pop(position_id, None) is None:
            return
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
            self.owners[position.position_id] = ref
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


def _instrument(position: Position) -> Instrument:
    return Instrument(segment=position.segment, security_id=position.security_id)
