"""A position's life through the real actors, with fakes of our own ports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.prices.index import IndexActor, OpenPositions
from actors.protocol import Snapshot
from actors.runtime.metrics import Metrics
from actors.supervisor.actor import RiskSupervisor, Supervision
from actors.tracker.actor import Peers, TrackerActor
from actors.tracker.keeper import KeeperContext
from models.common import IST, Instrument, Segment, Side, TxnType, exit_client_id
from models.messages import (
    ApplyOrderUpdate,
    CreatePosition,
    ExitRequested,
    PriceBatch,
    RequestExit,
)
from models.orders import OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.position import ExitReason, OrderRole, PositionStatus, new_position
from models.rules import PriceMark
from tests.fakes import FakeGateway, FakeStore

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)  # a Monday, in session
INSTRUMENT = Instrument(segment=Segment.NSE_FNO, security_id="47012")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Sink(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Snapshot):
            return list(self.got)
        self.got.append(message)
        return None


class System:
    def __init__(self, store: FakeStore, gateway: FakeGateway,
                 config: RiskConfig | None = None,
                 supervision: Supervision | None = None) -> None:
        self.store, self.gateway, self.clock = store, gateway, Clock()
        self.ctx = KeeperContext(store=store, config=config or RiskConfig(), clock=self.clock,
                                 metrics=Metrics())
        self.sink = Sink.start()
        self.index = IndexActor.start(None)
        self.supervisor = RiskSupervisor.start(self.ctx, gateway,
                                               supervision=supervision
                                               or Supervision(max_restarts=2))
        peers = Peers(supervisor=self.supervisor, index=self.index, pnl=self.sink,
                      batcher=None, orders=self.sink)
        self.supervisor.proxy().wire(peers).get(timeout=5)

    def settle(self) -> None:
        """FIFO mailboxes: asking every actor in the chain, in order, drains what was told."""
        for _ in range(4):
            self.supervisor.ask(Snapshot(), timeout=5)
            for gateway in self.supervisor.proxy().gateway_refs.get(timeout=5):
                gateway.ask(Snapshot(), timeout=5)
            self.supervisor.ask(Snapshot(), timeout=5)  # the gateway's answers
            self.index.ask(OpenPositions(), timeout=5)
            for ref in self.supervisor.proxy().tracker_refs().get(timeout=5):
                try:
                    ref.ask(Snapshot(), timeout=5)
                except pykka.ActorDeadError:
                    continue  # crashed: its failure report is on the way to the supervisor
            self.sink.ask(Snapshot(), timeout=5)


@pytest.fixture
def system() -> Iterator[System]:
    built = System(FakeStore(), FakeGateway())
    yield built
    pykka.ActorRegistry.stop_all()


def hold_tracker(monkeypatch: pytest.MonkeyPatch, holds: Callable[[TrackerActor, Any], bool],
                 *, breaks: bool = False) -> threading.Event:
    """Patch the trackers: a message ``holds`` picks waits until the returned gate opens (then
    raises, with ``breaks``), so what a test tells meanwhile queues up behind it."""
    original = TrackerActor.on_receive
    gate = threading.Event()

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if holds(self, message):
            self._current = message
            gate.wait(5)
            if breaks:
                raise RuntimeError("tracker bug on a held message")
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)
    return gate


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def entry(order_no: str = "E1", qty: int = 100, price: str = "200", status: OrderStatus =
          OrderStatus.TRADED) -> OrderUpdate:
    return OrderUpdate(order_no=order_no, status=status, segment=Segment.NSE_FNO,
                       security_id="47012", txn_type=TxnType.BUY, quantity=qty, traded_qty=qty,
                       avg_traded_price=Decimal(price), updated_at=T0)


def open_position(system: System, update: OrderUpdate) -> str:
    position = new_position(update, position_id="P" + update.order_no, side=Side.LONG,
                            created_at=T0)
    ids = {"correlation_id": "c1", "sent_at": T0}
    system.supervisor.tell(CreatePosition(position=position, **ids))
    system.supervisor.tell(ApplyOrderUpdate(position_id=position.position_id, update=update,
                                            role=OrderRole.ENTRY, **ids))
    system.settle()
    return position.position_id


def price(system: System, ltp: str) -> None:
    mark = PriceMark(ltp=Decimal(ltp), at=system.clock.now)
    system.index.tell(PriceBatch(prices=((INSTRUMENT, mark),), correlation_id="p",
                                 sent_at=system.clock.now))
    system.settle()


def test_when_entry_fills_then_position_active_and_persisted(system: System) -> None:
    pid = open_position(system, entry())
    stored = system.store.positions[pid]
    assert stored.status is PositionStatus.ACTIVE
    assert stored.entry_price == Decimal("200")
    assert system.index.ask(OpenPositions(INSTRUMENT), block=True, timeout=5)[0].position_id == pid


def test_when_stop_hit_then_exit_order_placed_and_exit_fill_closes_at_real_price(
        system: System) -> None:
    pid = open_position(system, entry())
    price(system, "176")  # -12 %
    client_id = exit_client_id(pid, 1)
    assert client_id in system.gateway.placed
    order_no, _, txn, qty = system.gateway.placed[client_id]
    assert (txn, qty) == (TxnType.SELL, 100)
    assert system.store.positions[pid].status is PositionStatus.EXITING
    fill = OrderUpdate(order_no=order_no, status=OrderStatus.TRADED, segment=Segment.NSE_FNO,
                       security_id="47012", txn_type=TxnType.SELL, quantity=100, traded_qty=100,
                       avg_traded_price=Decimal("175.50"), correlation_id=client_id,
                       updated_at=T0 + timedelta(seconds=1))
    system.supervisor.tell(ApplyOrderUpdate(position_id=pid, update=fill, role=OrderRole.EXIT,
                                            attempt=1, correlation_id="c2", sent_at=T0))
    system.settle()
    final = system.store.positions[pid]
    assert final.status is PositionStatus.EXITED
    assert final.exit_reason is ExitReason.STOP_LOSS
    assert final.exit_price == Decimal("175.50")
    assert system.store.attempts[(pid, 1)].outcome == "PLACED"


def test_a_tracker_tells_its_gateway_actor_the_exit_itself_and_it_is_placed_once(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order goes from the tracker (its intent stored) to the position's gateway actor
    without waiting for the supervisor, which only hears of it and places nothing."""
    pid = open_position(system, entry())
    held, release = threading.Event(), threading.Event()
    original = RiskSupervisor._dispatch

    def dispatch(self: RiskSupervisor, message: Any) -> Any:
        if isinstance(message, ExitRequested):
            assert message.placed
            held.set()
            release.wait(5)
        return original(self, message)

    monkeypatch.setattr(RiskSupervisor, "_dispatch", dispatch)
    mark = PriceMark(ltp=Decimal("176"), at=system.clock.now)
    system.index.tell(PriceBatch(prices=((INSTRUMENT, mark),), correlation_id="p",
                                 sent_at=system.clock.now))
    client_id = exit_client_id(pid, 1)
    assert held.wait(5)
    wait_for(lambda: client_id in system.gateway.placed)  # the supervisor is still held
    assert system.store.attempts[(pid, 1)].client_id == client_id  # stored before it went
    release.set()
    system.settle()
    assert system.gateway.calls == [client_id]
    assert system.store.positions[pid].status is PositionStatus.EXITING


def test_when_price_is_quiet_then_no_exit(system: System) -> None:
    pid = open_position(system, entry())
    price(system, "201")
    assert system.gateway.placed == {}
    assert system.store.positions[pid].status is PositionStatus.ACTIVE


def test_when_exit_refused_then_back_to_active_and_retried_with_same_rule(system: System) -> None:
    pid = open_position(system, entry())
    system.gateway.refuse = 1
    price(system, "176")
    assert system.store.positions[pid].status is PositionStatus.ACTIVE
    outcome = system.store.attempts[(pid, 1)].outcome
    assert outcome is not None and outcome.startswith("FAILED")
    system.clock.now += timedelta(seconds=1)
    price(system, "175")
    assert exit_client_id(pid, 2) in system.gateway.placed
    assert len(system.gateway.placed) == 1


def test_when_operator_asks_then_manual_exit(system: System) -> None:
    pid = open_position(system, entry())
    system.supervisor.tell(RequestExit(reason=ExitReason.MANUAL, position_id=pid,
                                       correlation_id="op", sent_at=T0))
    system.settle()
    assert system.store.positions[pid].exit_reason is ExitReason.MANUAL
    assert exit_client_id(pid, 1) in system.gateway.placed


def test_when_late_entry_fill_reopens_closed_position_then_it_is_priced_again(
        system: System) -> None:
    pid = open_position(system, entry(qty=50, status=OrderStatus.PENDING))
    system.supervisor.tell(RequestExit(reason=ExitReason.MANUAL, position_id=pid,
                                       correlation_id="op", sent_at=T0))
    system.settle()
    order_no = system.gateway.placed[exit_client_id(pid, 1)][0]
    sold = OrderUpdate(order_no=order_no, status=OrderStatus.TRADED, quantity=50,
                       traded_qty=50, avg_traded_price=Decimal("201"), updated_at=T0)
    system.supervisor.tell(ApplyOrderUpdate(position_id=pid, update=sold, role=OrderRole.EXIT,
                                            attempt=1, correlation_id="x", sent_at=T0))
    system.settle()
    assert system.store.positions[pid].status is PositionStatus.EXITED
    system.supervisor.tell(ApplyOrderUpdate(position_id=pid, update=entry(qty=100),
                                            role=OrderRole.ENTRY, correlation_id="late",
                                            sent_at=T0))
    system.settle()
    assert system.store.positions[pid].status is PositionStatus.ACTIVE
    assert system.index.ask(OpenPositions(INSTRUMENT), block=True, timeout=5)[0].position_id == pid
    price(system, "170")  # the re-opened 50 are protected: stop loss fires again
    assert exit_client_id(pid, 2) in system.gateway.placed


def test_when_the_index_breaks_on_one_batch_then_the_next_prices_still_protect_positions(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = open_position(system, entry())
    original = IndexActor._fan_out
    broken = [True]

    def fan_out(self: IndexActor, batch: PriceBatch) -> None:
        if broken.pop() if broken else False:
            raise RuntimeError("index bug on one batch")
        original(self, batch)

    monkeypatch.setattr(IndexActor, "_fan_out", fan_out)
    price(system, "199")  # breaks the index's fan-out once
    price(system, "176")  # -12 %: the stop loss must still fire
    assert system.index.is_alive()
    assert exit_client_id(pid, 1) in system.gateway.placed
    assert system.store.positions[pid].exit_reason is ExitReason.STOP_LOSS
