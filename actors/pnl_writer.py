"""PnLWriterActor: the PnL cache writer and the portfolio's running valuation.

Trackers tell it every valuation; it keeps the latest per position and, on each ``Flush``, writes
them to the cache in one round trip and tells the supervisor the day's net PnL (realised plus
unrealised, after fees) for the kill switch. A cache outage costs only the cache.
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
from models.messages import PnLMarked, PositionChanged, PositionClosed, PositionOpened
from models.policy import ExitPolicy
from models.position import Position
from models.rules import pnl
from store.pnl_cache import PnLCache, PnLEntry


class PnLWriterActor(SingletonActor):
    trace_kind = "pnl"

    def __init__(self, cache: PnLCache, policy: ExitPolicy, metrics: Metrics,
                 clock: Callable[[], datetime], supervisor: ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.cache, self.policy, self.metrics, self.clock = cache, policy, metrics, clock
        self.supervisor = supervisor
        self.dirty: dict[str, PnLMarked] = {}
        """The latest valuation per position since the last flush (made into entries then)."""
        self.deletes: set[str] = set()
        self.open_net: dict[str, Decimal] = {}
        self.closed_net: dict[str, Decimal] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case PnLMarked():
                self._marked(message)
            case PositionClosed():
                pid = message.position.position_id
                self.dirty.pop(pid, None)
                self.deletes.add(pid)
                self.open_net.pop(pid, None)
                self.closed_net[pid] = pnl(message.position, None, self.policy).net
            case PositionOpened() | PositionChanged():
                self.closed_net.pop(message.position.position_id, None)
            case Flush():
                self._flush(message.at)
            case _:
                logger.warning("pnl writer ignores {}", type(message).__name__)
        return None

    def set_supervisor(self, supervisor: ActorRef[Any]) -> None:
        self.supervisor = supervisor

    def seed_closed(self, positions: list[Position]) -> None:
        """Start-up: positions closed earlier today count toward the day's PnL."""
        for position in positions:
            self.closed_net[position.position_id] = pnl(position, None, self.policy).net

    def _marked(self, message: PnLMarked) -> None:
        pid = message.position_id
        if pid in self.closed_net:
            return  # a price that raced the close: the position is no longer valued
        self.open_net[pid] = message.pnl
        self.dirty[pid] = message

    def day_net(self) -> Decimal:
        return sum(self.open_net.values(), Decimal(0)) + sum(self.closed_net.values(), Decimal(0))

    def _flush(self, at: datetime) -> None:
        if self.dirty or self.deletes:
            entries = [PnLEntry(position_id=m.position_id, pnl=m.pnl, pnl_pct=m.pnl_pct,
                                ltp=m.ltp, hwm_pnl=m.hwm_pnl, peak_price=m.peak_price,
                                updated_at=m.sent_at) for m in self.dirty.values()]
            deletes = sorted(self.deletes)
            self.dirty, self.deletes = {}, set()
            before = self.cache.roundtrips
            self.cache.write(entries, deletes)
            self.metrics.incr("redis_roundtrips", self.cache.roundtrips - before)
        if self.supervisor is not None:
            self.supervisor.tell(PortfolioValued(net=self.day_net(), at=at))
