"""Order updates that queue up for one position are stored in one write (one commit), and
nothing they carry is lost when the write or the tracker fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from actors.protocol import Snapshot
from actors.runtime.metrics import Metrics
from actors.tracker.keeper import DEFER_LIMIT, KeeperContext, PositionKeeper, Target
from models.common import Side
from models.messages import (
    ApplyOrderUpdate,
    CreatePosition,
    PositionChanged,
    PositionOpened,
    PriceUpdate,
    TimerFired,
)
from models.orders import OrderStatus
from models.policy import RiskConfig
from models.position import OrderRole, PositionStatus, new_position
from models.rules import PriceMark
from tests.actors.test_tracker_flow import INSTRUMENT, T0, System, entry, hold_tracker, wait_for
from tests.fakes import FakeGateway, FakeStore

PID = "PE1"


def fill(traded: int) -> ApplyOrderUpdate:
    """The entry order E1 (100 lots) with ``traded`` filled so far (cumulative)."""
    update = entry(order_no="E1", qty=100, status=OrderStatus.TRADED if traded == 100
                   else OrderStatus.PENDING).model_copy(update={"traded_qty": traded})
    return ApplyOrderUpdate(position_id=PID, update=update, role=OrderRole.ENTRY,
                            correlation_id=f"fill-{traded}", sent_at=T0)


@pytest.fixture
def keeper() -> PositionKeeper:
    ctx = KeeperContext(store=FakeStore(), config=RiskConfig(), clock=lambda: T0,
                        metrics=Metrics())
    position = new_position(entry(order_no="E1"), position_id=PID, side=Side.LONG,
                            created_at=T0)
    return PositionKeeper(position, ctx)


def store_of(keeper: PositionKeeper) -> FakeStore:
    store = keeper.ctx.store
    assert isinstance(store, FakeStore)
    return store


def test_when_updates_queue_up_then_they_are_stored_in_one_write_and_announced_once(
        keeper: PositionKeeper) -> None:
    store = store_of(keeper)
    assert keeper.handle(fill(20), more=True) == []
    assert keeper.handle(fill(50), more=True) == []
    assert store.saves == 0 and PID not in store.positions  # nothing announced either
    out = keeper.handle(fill(80))
    assert store.saves == 1
    assert store.positions[PID].quantity == 80
    assert sorted(f.cum_qty for f in store.fills(PID)) == [20, 50, 80]
    assert [target for target, _ in out] == [Target.INDEX, Target.SUPERVISOR, Target.PNL,
                                             Target.ORDERS]
    event = out[0][1]  # from the state stored before the run: PENDING → ACTIVE is an opening
    assert isinstance(event, PositionOpened) and event.correlation_id == "fill-80"
    assert event.position == store.positions[PID] == keeper.position


def test_when_the_last_update_changes_nothing_then_the_run_is_stored_all_the_same(
        keeper: PositionKeeper) -> None:
    keeper.handle(fill(20), more=True)
    out = keeper.handle(fill(20))  # a repeat: no change of its own
    assert store_of(keeper).positions[PID].quantity == 20
    assert isinstance(out[0][1], PositionOpened)


def test_when_another_message_comes_then_held_updates_are_stored_before_it(
        keeper: PositionKeeper) -> None:
    store = store_of(keeper)
    keeper.handle(fill(100), more=True)
    # A price at the stop loss (-12 %): the exit is recorded on top of the stored fill.
    out = keeper.handle(PriceUpdate(instrument=INSTRUMENT, mark=PriceMark(
        ltp=Decimal("176"), at=T0), correlation_id="p", sent_at=T0))
    assert [f.cum_qty for f in store.fills(PID)] == [100]
    assert store.saves == 2  # the held fill, then the exit's EXITING state
    assert store.positions[PID].status is PositionStatus.EXITING
    events = [type(message).__name__ for target, message in out if target is Target.INDEX]
    assert events == ["PositionOpened", "PositionChanged"]  # opened, then exiting


def test_when_the_write_fails_then_the_state_is_kept_in_memory_and_stored_when_the_store_is_back(
        ) -> None:
    now = [T0]
    store = FakeStore()
    ctx = KeeperContext(store=store, config=RiskConfig(), clock=lambda: now[0],
                        metrics=Metrics())
    keeper = PositionKeeper(new_position(entry(order_no="E1"), position_id=PID, side=Side.LONG,
                                         created_at=T0), ctx)
    first, second = fill(20), fill(50)
    keeper.handle(first, more=True)
    store.fail_saves = 1
    out = keeper.handle(second)  # the write of both fails: nothing raised, nothing announced
    assert out == [] and keeper.unstored and PID not in store.positions
    assert keeper.position.quantity == 50 and keeper.position.status is PositionStatus.ACTIVE
    assert keeper.take_unsaved() == []  # nothing to hand on: the keeper holds it all
    now[0] = T0 + timedelta(milliseconds=500)
    keeper.handle(TimerFired(name="tick", correlation_id="t", sent_at=now[0]))
    assert PID not in store.positions and store.failed_calls == 1  # no try before the back-off
    now[0] = T0 + timedelta(seconds=1)
    out = keeper.handle(TimerFired(name="tick", correlation_id="t", sent_at=now[0]))
    assert not keeper.unstored and store.positions[PID].quantity == 50
    assert len(store.fills(PID)) == 2  # both fills, none lost
    assert [type(m).__name__ for t, m in out if t is Target.INDEX] == ["PositionOpened"]


def test_when_more_updates_queue_than_the_limit_then_they_are_stored_in_several_writes(
        keeper: PositionKeeper) -> None:
    store = store_of(keeper)
    for traded in range(1, DEFER_LIMIT + 2):
        keeper.handle(fill(traded), more=True)
    assert store.saves == 1 and store.positions[PID].quantity == DEFER_LIMIT + 1
    keeper.handle(fill(DEFER_LIMIT + 2))
    assert store.saves == 2 and len(store.fills(PID)) == DEFER_LIMIT + 2


# Through the actors ----------------------------------------------------------------------------
@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[System, threading.Event]]:
    """The tracker waits on its first fill until the gate opens, so the fills the test tells
    it meanwhile queue up in its mailbox."""
    gate = hold_tracker(monkeypatch, lambda tracker, message: isinstance(message,
                                                                         ApplyOrderUpdate))
    system = System(FakeStore(), FakeGateway())
    position = new_position(entry(order_no="E1"), position_id=PID, side=Side.LONG,
                            created_at=T0)
    system.supervisor.tell(CreatePosition(position=position, correlation_id="c", sent_at=T0))
    system.settle()
    yield system, gate
    gate.set()
    pykka.ActorRegistry.stop_all()


def _burst(system: System, gate: threading.Event, *traded: int) -> None:
    for amount in traded:
        system.supervisor.tell(fill(amount))
    (ref,) = system.supervisor.proxy().tracker_refs().get(timeout=5)
    wait_for(lambda: ref.actor_inbox.qsize() >= len(traded) - 1)
    gate.set()


def test_when_fills_queue_up_at_a_tracker_then_few_writes_store_them_all(
        held: tuple[System, threading.Event]) -> None:
    system, gate = held
    _burst(system, gate, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    system.settle()
    store = system.store
    assert store.positions[PID].quantity == 100
    assert len(store.fills(PID)) == 10
    assert store.saves == 1  # the nine behind the first were queued when it was handled
    announced = [m for m in system.sink.ask(Snapshot(), timeout=5)
                 if isinstance(m, PositionOpened | PositionChanged)]
    # One announcement (the sink stands for both the PnL writer and the order-update actor).
    assert len({m.message_id for m in announced}) == 1
    assert {m.position.quantity for m in announced} == {100}


def test_when_the_write_of_queued_fills_fails_then_none_is_lost_and_all_are_stored_later(
        held: tuple[System, threading.Event]) -> None:
    system, gate = held
    system.store.fail_saves = 1  # the write of the queued run fails once
    _burst(system, gate, 10, 20, 30, 40)
    system.settle()
    store = system.store
    # Nothing broke: the tracker holds the four fills in memory (a store outage is no bug),
    # nothing is dead-lettered or restarted, and the position is not announced before it is
    # stored.
    assert store.dead_letters() == [] and system.ctx.metrics.get("actor_restarts") == 0
    assert PID not in store.positions
    system.clock.now += timedelta(seconds=1)
    system.supervisor.tell(TimerFired(name="tick", correlation_id="t", sent_at=system.clock.now))
    system.settle()
    assert store.positions[PID].quantity == 40
    assert sorted(f.cum_qty for f in store.fills(PID)) == [10, 20, 30, 40]
