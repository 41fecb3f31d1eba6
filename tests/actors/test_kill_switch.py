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
from models.common import Side, exit_client_id
from models.lifecycle import apply_update, request_exit
from models.orders import OrderStatus, OrderUpdate
from models.policy import PortfolioLimits, RiskConfig
from models.position import ExitReason, OrderRole, PositionStatus, new_position
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
    assert system.supervisor.ask(Snapshot(), block=True, timeout=5)["trading_state"] == "RUNNING"

    system.supervisor.tell(PortfolioValued(net=Decimal("-5000"), at=T0))
    system.settle()
    assert system.supervisor.ask(Snapshot(), block=True, timeout=5)["trading_state"] == "HALTED"
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


def _running(store: FakeStore, clock: ManualClock, **limits: object) -> Running:
    config = RiskConfig(portfolio=PortfolioLimits(daily_loss_limit=Decimal(4000), **limits))
    return Running(Parts(store=store, cache=InMemoryPnLCache(),
                         gateway=PaperExchange(TapeMarket([])), quotes=None, config=config,
                         clock=clock)).start(ticker=False)


def _closed_loss(store: FakeStore) -> None:
    """A position that closed at T0 with a loss of 5,000 (past the 4,000 limit)."""
    update = entry(order_no="OLD", qty=100, price="200")
    position = new_position(update, position_id="POLD", side=Side.LONG, created_at=T0)
    position = apply_update(position, update, OrderRole.ENTRY).position
    position = request_exit(position, ExitReason.STOP_LOSS, T0).position
    sold = OrderUpdate(order_no="X1", status=OrderStatus.TRADED, quantity=100, traded_qty=100,
                       avg_traded_price=Decimal("150"), updated_at=T0)
    store.save_position(apply_update(position, sold, OrderRole.EXIT, attempt=1).position)


def _tick(running: Running, clock: ManualClock, at: object) -> None:
    clock.set(at)  # type: ignore[arg-type]
    running.step(clock(), timer=True)
    running.settle()


def test_a_latch_of_an_earlier_day_does_not_carry_over_unless_configured() -> None:
    store = FakeStore()
    _closed_loss(store)
    clock = ManualClock(T0 + timedelta(minutes=5))
    running = _running(store, clock)
    _tick(running, clock, T0 + timedelta(minutes=6))
    assert running.status()["trading_state"] == "HALTED"
    running.stop()
    pykka.ActorRegistry.stop_all()

    next_day = ManualClock(T0 + timedelta(days=1))
    running = _running(store, next_day)
    _tick(running, next_day, T0 + timedelta(days=1, seconds=1))
    assert running.status()["trading_state"] == "RUNNING"  # yesterday's loss is yesterday's
    running.stop()
    pykka.ActorRegistry.stop_all()

    carried = ManualClock(T0 + timedelta(days=1))
    running = _running(store, carried, kill_switch_carries=True)
    assert running.status()["trading_state"] == "HALTED"
    running.stop()


def test_in_a_running_process_the_day_ends_at_midnight_ist() -> None:
    store = FakeStore()
    _closed_loss(store)
    clock = ManualClock(T0 + timedelta(minutes=5))
    running = _running(store, clock)
    _tick(running, clock, T0 + timedelta(minutes=6))
    assert running.status()["trading_state"] == "HALTED"
    # The next trading day, same process: the latch and the closed loss are yesterday's.
    _tick(running, clock, T0 + timedelta(days=1))
    _tick(running, clock, T0 + timedelta(days=1, seconds=1))
    status = running.status()
    assert status["trading_state"] == "RUNNING"
    assert status["day_net"] == Decimal(0)
    running.stop()


def test_reset_kill_switch_reaches_a_running_process_within_a_second() -> None:
    store = FakeStore()
    _closed_loss(store)
    clock = ManualClock(T0 + timedelta(minutes=5))
    running = _running(store, clock)
    _tick(running, clock, T0 + timedelta(minutes=6))
    assert running.status()["trading_state"] == "HALTED"
    assert store.reset_kill_switch()  # what `run.py reset-kill-switch` does, from outside
    _tick(running, clock, T0 + timedelta(minutes=6, seconds=1))
    assert running.status()["trading_state"] == "RUNNING"
    # Re-armed from where the day stood at the reset: another 4,000 down trips it again.
    base = running.status()["day_net"]
    at = T0 + timedelta(minutes=7)
    running.supervisor.tell(PortfolioValued(net=base - 3999, at=at))
    assert running.status()["trading_state"] == "RUNNING"
    running.supervisor.tell(PortfolioValued(net=base - 4000, at=at))
    assert running.status()["trading_state"] == "HALTED"
    running.stop()
