"""The kill switch: latched in the store, flattens everything, keeps exiting new positions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from actors.protocol import Flush, PortfolioValued, Snapshot
from actors.system import Parts
from actors.system import System as Running
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import exit_client_id
from models.lifecycle import apply_update, request_exit
from models.orders import OrderStatus, OrderUpdate
from models.policy import PortfolioLimits, RiskConfig
from models.position import ExitReason, OrderRole, PositionStatus, Side, new_position
from store.pnl_cache import InMemoryPnLCache
from tests.actors.test_tracker_flow import T0, System, entry, open_position
from tests.fakes import FakeGateway, FakeStore


@pytest.fixture
def system() -> Iterator[System]:
    limits = PortfolioLimits(daily_loss_limit=Decimal(5000))
    built = System(FakeStore(), FakeGateway(), RiskConfig(portfolio=limits))
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_day_loss_reaches_limit_then_halted_latched_and_all_exit(system: System) -> None:
    first = open_position(system, entry(order_no="A"))
    second = open_position(system, entry(order_no="B"))
    system.supervisor.tell(PortfolioValued(net=Decimal("-4999.99"), at=T0))
    system.settle()
    assert system.supervisor.ask(Snapshot(), timeout=5)["trading_state"] == "RUNNING"

    system.supervisor.tell(PortfolioValued(net=Decimal("-5000"), at=T0))
    system.settle()
    assert system.supervisor.ask(Snapshot(), timeout=5)["trading_state"] == "HALTED"
    assert system.store.kill_switch() is not None
    for pid in (first, second):
        assert system.store.positions[pid].exit_reason is ExitReason.KILL_SWITCH
        assert exit_client_id(pid, 1) in system.gateway.placed

    late = open_position(system, entry(order_no="C"))
    assert system.store.positions[late].status is PositionStatus.EXITING
    assert system.store.positions[late].exit_reason is ExitReason.KILL_SWITCH


def test_when_restarted_then_losses_closed_earlier_today_still_count() -> None:
    store = FakeStore()
    update = entry(order_no="OLD", qty=100, price="200")
    position = new_position(update, position_id="POLD", side=Side.LONG, created_at=T0)
    position = apply_update(position, update, OrderRole.ENTRY).position
    position = request_exit(position, ExitReason.STOP_LOSS, T0).position
    sold = OrderUpdate(order_no="X1", status=OrderStatus.TRADED, quantity=100, traded_qty=100,
                       avg_traded_price=Decimal("150"), updated_at=T0)
    store.save_position(apply_update(position, sold, OrderRole.EXIT, attempt=1).position)
    limits = PortfolioLimits(daily_loss_limit=Decimal(4000))  # the closed loss was 5,000
    clock = ManualClock(T0 + timedelta(minutes=5))
    running = Running(Parts(store=store, cache=InMemoryPnLCache(),
                            gateway=PaperExchange(TapeMarket([])), quotes=None,
                            config=RiskConfig(portfolio=limits), clock=clock)).start(ticker=False)
    running.pnl.ask(Flush(at=clock()), timeout=5)
    running.settle()
    assert running.status()["trading_state"] == "HALTED"
    assert store.kill_switch() is not None
    running.stop()
