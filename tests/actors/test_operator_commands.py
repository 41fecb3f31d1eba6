"""Operator commands at the supervisor (SPEC §12): halt, resume, reset the kill switch."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pykka
import pytest

from actors.protocol import (
    Halt,
    Operator,
    OperatorOutcome,
    PortfolioValued,
    ResetKillSwitch,
    Resume,
    Snapshot,
)
from models.messages import new_id
from models.policy import PortfolioLimits, RiskConfig
from models.position import ExitReason, PositionStatus
from tests.actors.test_tracker_flow import T0, System, entry, open_position
from tests.fakes import FakeGateway, FakeStore

ASHA = Operator(name="asha", address="127.0.0.1", at=T0)


@pytest.fixture
def system() -> Iterator[System]:
    limits = PortfolioLimits(daily_loss_limit=Decimal(5000))
    built = System(FakeStore(), FakeGateway(), RiskConfig(portfolio=limits))
    yield built
    pykka.ActorRegistry.stop_all()


def command(system: System, kind: type[Halt | Resume | ResetKillSwitch]) -> OperatorOutcome:
    outcome: OperatorOutcome = system.supervisor.ask(kind(ASHA, new_id(), new_id()),
                                                          block=True, timeout=5)
    return outcome


def state(system: System) -> dict[str, object]:
    snapshot: dict[str, object] = system.supervisor.ask(Snapshot(), block=True, timeout=5)
    return snapshot


def test_when_halted_then_open_positions_stay_and_new_ones_are_closed_manually(
        system: System) -> None:
    kept = open_position(system, entry(order_no="A"))
    assert command(system, Halt) == OperatorOutcome(done=True, trading_state="HALTED",
                                                    detail="trading halted")
    assert state(system)["halted_by"] == {"operator": "asha", "at": T0.isoformat()}
    late = open_position(system, entry(order_no="B"))
    system.settle()
    assert system.store.positions[kept].status is PositionStatus.ACTIVE
    assert system.store.positions[late].status is PositionStatus.EXITING
    assert system.store.positions[late].exit_reason is ExitReason.MANUAL

    assert command(system, Resume).trading_state == "RUNNING"
    after = open_position(system, entry(order_no="C"))
    system.settle()
    assert system.store.positions[after].status is PositionStatus.ACTIVE


def test_resume_is_refused_while_the_kill_switch_is_latched_and_reset_clears_it(
        system: System) -> None:
    system.supervisor.tell(PortfolioValued(net=Decimal("-5000"), at=T0))
    system.settle()
    assert system.store.kill_switch() is not None
    refused = command(system, Resume)
    assert (refused.done, refused.trading_state) == (False, "HALTED")
    assert "kill switch" in refused.detail
    reset = command(system, ResetKillSwitch)
    assert reset == OperatorOutcome(done=True, trading_state="RUNNING",
                                    detail="kill switch reset")
    assert system.store.kill_switch() is None
    assert state(system)["kill_switch"] is False
    fresh = open_position(system, entry(order_no="D"))
    system.settle()
    assert system.store.positions[fresh].status is PositionStatus.ACTIVE
    again = command(system, ResetKillSwitch)
    assert again.detail == "kill switch was not latched"
