"""The kill switch: latched in the store, flattens everything, keeps exiting new positions."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pykka
import pytest

from actors.protocol import PortfolioValued, Snapshot
from models.common import exit_client_id
from models.policy import PortfolioLimits, RiskConfig
from models.position import ExitReason, PositionStatus
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
