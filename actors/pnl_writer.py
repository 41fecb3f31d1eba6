"""PnLWriterActor: the PnL cache writer and the portfolio's running valuation.

It values every open position itself: the index tells it each ``PriceBatch``, and it keeps, per
instrument, the basis of each open position (from the position events) and its marks (peak,
high-water mark — from the events and from the trackers' ``PnLMarked``, sent when a mark moves).
On each ``Flush`` it writes what changed to the cache in one round trip and tells the supervisor
the day's net PnL (realised plus unrealised, after fees) for the kill switch. A cache outage
costs only the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.dispatch import SingletonActor
from actors.metrics import Metrics
from actors.protocol import Flush, PortfolioValued
from models.common import Instrument
from models.marks import Basis, basis_of, net_at, pct_at
from models.messages import PnLMarked, PositionChanged, PositionClosed, PositionOpened, PriceBatch
from models.policy import ExitPolicy
from models.position import CLOSED, PRICED, Position
from models.rules import pnl
from store.pnl_cache import PnLCache, PnLEntry


class _Held:
    """The writer's copy of what it needs to value one open position."""

    __slots__ = ("basis", "hwm", "peak", "position")

    def __init__(self, position: Position, basis: Basis | None) -> None:
        self.position, self.basis = position, basis
        self.hwm, self.peak = position.hwm_pnl, position.peak_price


class PnLWriterActor(SingletonActor):
    trace_kind = "pnl"

    def __init__(self, cache: PnLCache, policy: ExitPolicy, metrics: Metrics,
                 clock: Callable[[], datetime], supervisor: ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.cache, self.policy, self.metrics, self.clock = cache, policy, metrics, clock
        self.supervisor = supervisor
        self.held: dict[Instrument, dict[str, _Held]] = {}
        self.by_id: dict[str, _Held] = {}
        self.dirty: dict[str, PnLEntry] = {}
        self.deletes: set[str] = set()
        self.open_net: dict[str, Decimal] = {}
        self.closed_net: dict[str, Decimal] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case PriceBatch():
                self._priced(message)
            case PnLMarked():
                self._marked(message)
            case PositionOpened() | PositionChanged() | PositionClosed():
                self._position(message.position)
            case Flush():
                self._flush(message.at)
            case _:
                logger.warning("pnl writer ignores {}", type(message).__name__)
        return None

    def set_supervisor(self, supervisor: ActorRef[Any]) -> None:
        self.supervisor = supervisor

    def seed(self, open_positions: list[Position], closed_today: list[Position]) -> None:
        """Start-up: the open positions, and those closed earlier today (the day's PnL)."""
        for position in open_positions:
            self._position(position)
        for position in closed_today:
            self.closed_net[position.position_id] = pnl(position, None, self.policy).net

    def _position(self, position: Position) -> None:
        pid = position.position_id
        book = self.held.setdefault(_instrument(position), {})
        if position.status in CLOSED:
            book.pop(pid, None)
            self.by_id.pop(pid, None)
            self.dirty.pop(pid, None)
            self.deletes.add(pid)
            self.open_net.pop(pid, None)
            self.closed_net[pid] = pnl(position, None, self.policy).net
            return
        self.closed_net.pop(pid, None)
        self.deletes.discard(pid)
        book[pid] = self.by_id[pid] = _Held(position, basis_of(position, self.policy))

    def _priced(self, batch: PriceBatch) -> None:
        for instrument, mark in batch.prices:
            book = self.held.get(instrument)
            if not book:
                continue
            for pid, held in book.items():
                if held.basis is None or held.position.status not in PRICED:
                    continue
                net = net_at(held.basis, mark.ltp)
                self.open_net[pid] = net
                self.dirty[pid] = PnLEntry(
                    position_id=pid, pnl=net, pnl_pct=pct_at(held.basis, mark.ltp),
                    ltp=mark.ltp, hwm_pnl=max(held.hwm, net, Decimal(0)),
                    peak_price=held.peak, updated_at=batch.sent_at)

    def _marked(self, message: PnLMarked) -> None:
        pid = message.position_id
        if pid in self.closed_net:
            return  # a price that raced the close: the position is no longer valued
        held = self.by_id.get(pid)
        if held is not None:
            held.hwm, held.peak = message.hwm_pnl, message.peak_price
        self.open_net[pid] = message.pnl
        self.dirty[pid] = PnLEntry(
            position_id=pid, pnl=message.pnl, pnl_pct=message.pnl_pct, ltp=message.ltp,
            hwm_pnl=message.hwm_pnl, peak_price=message.peak_price, updated_at=message.sent_at)

    def day_net(self) -> Decimal:
        return sum(self.open_net.values(), Decimal(0)) + sum(self.closed_net.values(), Decimal(0))

    def _flush(self, at: datetime) -> None:
        if self.dirty or self.deletes:
            entries, deletes = list(self.dirty.values()), sorted(self.deletes)
            self.dirty, self.deletes = {}, set()
            before = self.cache.roundtrips
            self.cache.write(entries, deletes)
            self.metrics.incr("redis_roundtrips", self.cache.roundtrips - before)
        if self.supervisor is not None:
            self.supervisor.tell(PortfolioValued(net=self.day_net(), at=at))


def _instrument(position: Position) -> Instrument:
    return Instrument(segment=position.segment, security_id=position.security_id)
