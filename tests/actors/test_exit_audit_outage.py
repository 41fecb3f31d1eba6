"""An exit attempt's audit columns (its order number, its outcome) written while the store is
down are written once it is back (SPEC §11.4), even when the position closed meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pykka
import pytest

from actors.protocol import ExitAudit
from actors.supervisor.audits import PendingAudits
from models.common import exit_client_id
from models.position import ExitReason, PositionStatus
from store.records import ExitAttempt
from tests.actors.test_exit_resolution import Rig
from tests.actors.test_tracker_flow import T0, Clock
from tests.fakes import FakeStore


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    built.system.stop()
    pykka.ActorRegistry.stop_all()


def _audit(rig: Rig, pid: str) -> list[tuple[str, str | None, str | None]]:
    return [(a.client_id, a.order_no, a.outcome) for a in rig.store.exit_attempts(pid)]


def _placed(rig: Rig, pid: str) -> list[tuple[str, str | None, str | None]]:
    order = rig.exchange.lookup(exit_client_id(pid, 1))
    assert order is not None
    return [(exit_client_id(pid, 1), order.order_no, "PLACED")]


def test_audit_columns_the_store_did_not_take_are_written_after_the_outage(rig: Rig) -> None:
    pid = rig.enter("E1")
    rig.store.fail_exits = True
    rig.at(T0 + timedelta(seconds=1), "170")  # stop loss: placed, filled; the columns fail
    assert rig.store.positions[pid].status is PositionStatus.EXITED
    assert _audit(rig, pid) == [(exit_client_id(pid, 1), None, None)]
    rig.at(T0 + timedelta(seconds=2))  # still down: kept
    rig.store.fail_exits = False
    rig.at(T0 + timedelta(seconds=3))  # back: the position is closed, its columns written
    assert _audit(rig, pid) == _placed(rig, pid)


def test_audit_columns_wait_for_the_attempt_a_failing_store_holds_in_memory(rig: Rig) -> None:
    pid = rig.enter("E1")
    rig.store.fail_saves, rig.store.fail_exits = 1000, True  # the whole store is down
    rig.at(T0 + timedelta(seconds=1), "170")  # the exit goes on from memory, and fills
    assert rig.store.exit_attempts(pid) == []
    assert rig.store.positions[pid].status is PositionStatus.ACTIVE
    rig.store.fail_saves, rig.store.fail_exits = 0, False
    for second in range(2, 6):  # the keeper's back-off: its state, the intent, then columns
        rig.at(T0 + timedelta(seconds=second))
    assert rig.store.positions[pid].status is PositionStatus.EXITED
    assert _audit(rig, pid) == _placed(rig, pid)


def test_pending_columns_merge_in_the_order_they_were_made() -> None:
    store, clock = FakeStore(), Clock()
    store.record_exit_attempt(ExitAttempt(position_id="P1", attempt=1, client_id="X-P1-1",
                                          reason=ExitReason.STOP_LOSS, quantity=1,
                                          requested_at=T0))
    audits = PendingAudits(store, clock)
    audits.add(ExitAudit("X-P1-1", order_no="O1", outcome="PLACED", error="down"))
    audits.add(ExitAudit("X-P1-1", outcome="FAILED: cancelled"))
    store.fail_exits = True
    audits.write()
    assert len(audits) == 1
    store.fail_exits = False
    audits.write()  # not before a second has passed since the failed try
    assert len(audits) == 1
    clock.now += timedelta(seconds=1)
    audits.write()
    assert len(audits) == 0
    assert [(a.order_no, a.outcome) for a in store.exit_attempts()] == [
        ("O1", "FAILED: cancelled")]
