"""Exits that do not end by themselves (SPEC §11.6, §10 outcomes): an order that rests unfilled
is looked up, cancelled and placed anew; an unknown outcome is looked up, never placed twice; a
slow broker holds up neither order updates nor other positions' exits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from broker.ports import OrderView
from models.common import Instrument, Segment, TxnType, exit_client_id
from models.orders import OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.position import PositionStatus
from models.wire import to_dhan_frame
from store.pnl_cache import InMemoryPnLCache
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore

INSTRUMENT = Instrument(segment=Segment.NSE_FNO, security_id="47012")


class Rig:
    """The system on a manual clock over a paper exchange, behind ``wrap`` (the network)."""

    def __init__(self, wrap: Callable[[PaperExchange], Any] | None = None) -> None:
        self.clock = ManualClock(T0)
        self.market = TapeMarket([])
        self.market.set_price(INSTRUMENT, Decimal("200"), T0)
        self.exchange = PaperExchange(self.market, latency=timedelta(0), order_prefix="X",
                                      start=T0)
        self.gateway = wrap(self.exchange) if wrap is not None else self.exchange
        self.store = FakeStore()
        self.system = System(Parts(store=self.store, cache=InMemoryPnLCache(),
                                   gateway=self.gateway, quotes=None, config=RiskConfig(),
                                   clock=self.clock))
        if wrap is not None:
            self.exchange.subscribe(self.system.order_frame)
        self.system.start(ticker=False)

    def enter(self, order_no: str) -> str:
        self.system.order_frame(to_dhan_frame(OrderUpdate(
            order_no=order_no, status=OrderStatus.TRADED, segment=INSTRUMENT.segment,
            security_id=INSTRUMENT.security_id, txn_type=TxnType.BUY, product="I",
            quantity=100, traded_qty=100, avg_traded_price=Decimal("200"), updated_at=T0)))
        self.system.settle()
        return f"P{order_no}"

    def at(self, moment: datetime, ltp: str | None = None) -> None:
        self.clock.set(moment)
        self.exchange.advance(moment)
        if ltp is not None:
            self.market.set_price(INSTRUMENT, Decimal(ltp), moment)
            self.system.tick(INSTRUMENT, Decimal(ltp), moment)
        self.system.step(moment, timer=True)
        self.system.settle()
        self.exchange.advance(moment)
        self.system.settle()

    def exits(self) -> list[tuple[str, OrderStatus]]:
        return [(o.client_id, o.status) for o in self.exchange.orders()
                if o.client_id.startswith("X-")]


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.system.stop()
    pykka.ActorRegistry.stop_all()


def test_an_exit_that_rests_unfilled_is_looked_up_cancelled_and_placed_anew(rig: Rig) -> None:
    pid = rig.enter("E1")
    rig.exchange.rest_next(1)
    rig.at(T0 + timedelta(seconds=1), "170")  # stop loss: attempt 1 rests at the exchange
    assert rig.exits() == [(exit_client_id(pid, 1), OrderStatus.PENDING)]
    assert rig.store.positions[pid].status is PositionStatus.EXITING
    for second in range(2, 12):  # the 10 s time-out passes; one live exit at a time meanwhile
        rig.at(T0 + timedelta(seconds=second))
        live = [c for c, status in rig.exits() if not status.terminal]
        assert len(live) <= 1
    rig.at(T0 + timedelta(seconds=13), "170")  # the market goes on: the rule fires again
    assert rig.exits() == [(exit_client_id(pid, 1), OrderStatus.CANCELLED),
                           (exit_client_id(pid, 2), OrderStatus.TRADED)]
    position = rig.store.positions[pid]
    assert (position.status, position.exit_reason.value if position.exit_reason else None) == (
        PositionStatus.EXITED, "STOP_LOSS")
    assert rig.system.books().agree


class LosesAnswers:
    """The paper exchange behind a network that loses the first placement's answer: the order
    is taken, the caller gets a time-out."""

    def __init__(self, exchange: PaperExchange) -> None:
        self.exchange = exchange
        self.lost = 1

    def place_order(self, **order: object) -> str:
        order_no = self.exchange.place_order(**order)  # type: ignore[arg-type]
        if self.lost:
            self.lost -= 1
            raise TimeoutError("read timed out")
        return order_no

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        return self.exchange.find_order(client_id)

    def subscribe(self, sink: object) -> None:
        pass  # the rig subscribes the system to the exchange itself


def test_an_unknown_placement_outcome_is_looked_up_and_never_placed_twice() -> None:
    rig = Rig(LosesAnswers)
    rig.exchange.rest_next(1)  # and it rests, so only the broker's book can tell
    try:
        pid = rig.enter("E1")
        rig.at(T0 + timedelta(seconds=1), "170")
        assert len(rig.exits()) == 1
        for second in range(2, 16):
            rig.at(T0 + timedelta(seconds=second), "170")
            assert len([c for c, s in rig.exits() if not s.terminal]) <= 1
        clients = [c for c, _ in rig.exits()]
        assert clients.count(exit_client_id(pid, 1)) == 1  # attempt 1 placed once
        assert rig.store.positions[pid].status is PositionStatus.EXITED
        assert rig.system.books().agree
    finally:
        rig.system.stop()
        pykka.ActorRegistry.stop_all()


class Slow:
    """A broker that takes 500 ms per placement."""

    def __init__(self, exchange: PaperExchange) -> None:
        self.exchange = exchange
        self.calls: list[float] = []

    def place_order(self, **order: object) -> str:
        self.calls.append(time.perf_counter())
        time.sleep(0.5)
        return self.exchange.place_order(**order)  # type: ignore[arg-type]

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        return self.exchange.find_order(client_id)

    def subscribe(self, sink: object) -> None:
        pass


def test_a_slow_broker_delays_neither_order_updates_nor_other_positions_exits() -> None:
    rig = Rig(Slow)
    slow = rig.gateway
    assert isinstance(slow, Slow)
    try:
        pids = [rig.enter(f"E{n}") for n in range(1, 5)]
        started = time.perf_counter()
        rig.system.tick(INSTRUMENT, Decimal("170"), T0 + timedelta(seconds=1))
        rig.clock.set(T0 + timedelta(seconds=1))
        rig.system.step(T0 + timedelta(seconds=1), timer=False)
        # While placements are in flight, a new entry's update is applied at once.
        rig.system.order_frame(to_dhan_frame(OrderUpdate(
            order_no="E9", status=OrderStatus.TRADED, segment=INSTRUMENT.segment,
            security_id="47013", txn_type=TxnType.BUY, product="I", quantity=10,
            traded_qty=10, avg_traded_price=Decimal("50"), updated_at=T0)))
        deadline = time.perf_counter() + 5
        while "PE9" not in rig.store.positions and time.perf_counter() < deadline:
            time.sleep(0.01)
        applied_after = time.perf_counter() - started
        while len(slow.calls) < len(pids) and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert applied_after < 0.4  # not behind any 500 ms placement
        # Four positions' exits went out on the gateway actors side by side, not one by one.
        assert len(slow.calls) == len(pids)
        assert max(slow.calls) - min(slow.calls) < 0.45
    finally:
        rig.system.stop()
        pykka.ActorRegistry.stop_all()
