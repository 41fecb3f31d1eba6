"""A broken tracker is restarted, then quarantined, and its position is still protected."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest
from loguru import logger

from actors.protocol import Snapshot
from actors.supervisor.actor import RiskSupervisor, Supervision
from actors.tracker.actor import TrackerActor
from models.common import exit_client_id
from models.messages import ApplyOrderUpdate, PriceUpdate, RequestExit, TimerFired
from models.orders import OrderStatus
from models.position import ExitReason, OrderRole, PositionStatus
from models.rules import PriceMark
from store.ports import LeaseLost
from tests.actors.test_tracker_flow import (
    INSTRUMENT,
    System,
    entry,
    hold_tracker,
    open_position,
    price,
    wait_for,
)
from tests.fakes import FakeGateway, FakeStore

BROKEN = "PBAD"


@pytest.fixture
def system(monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    original = TrackerActor.on_receive

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if isinstance(message, PriceUpdate) and self.keeper.position.position_id == BROKEN:
            self._current = message
            raise RuntimeError("tracker bug on every price")
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)
    built = System(FakeStore(), FakeGateway())
    yield built
    pykka.ActorRegistry.stop_all()


def timer(system: System, after: timedelta) -> None:
    system.clock.now += after
    system.supervisor.tell(TimerFired(name="tick", correlation_id="t", sent_at=system.clock.now))
    system.settle()


def test_when_tracker_raises_then_restarted_then_quarantined_and_still_exits(
        system: System) -> None:
    bad = open_position(system, entry(order_no="BAD"))
    good = open_position(system, entry(order_no="GOOD"))
    assert bad == BROKEN
    price(system, "199")  # the first failure: restarted at once
    assert system.ctx.metrics.get("actor_restarts") == 1
    price(system, "198")  # the second: the supervisor keeps it for the back-off, 1 s
    snapshot = system.supervisor.ask(Snapshot(), block=True, timeout=5)
    assert snapshot["quarantined"] == [] and system.ctx.metrics.get("actor_restarts") == 1
    timer(system, timedelta(milliseconds=500))
    assert system.ctx.metrics.get("actor_restarts") == 1  # not before the back-off is over
    timer(system, timedelta(milliseconds=600))
    assert system.ctx.metrics.get("actor_restarts") == 2
    price(system, "197")  # the third, past max_restarts (2): quarantined
    snapshot = system.supervisor.ask(Snapshot(), block=True, timeout=5)
    assert snapshot["quarantined"] == [BROKEN]
    timer(system, timedelta(seconds=30))
    assert system.ctx.metrics.get("actor_restarts") == 2  # a quarantine is not restarted
    letters = system.store.dead_letters()
    assert len(letters) == 3
    assert all(letter.message_type == "PriceUpdate" and letter.correlation_id == "p"
               for letter in letters)

    started = time.perf_counter()
    price(system, "176")  # -12 %: both positions must exit, the quarantined one too
    elapsed = time.perf_counter() - started
    assert exit_client_id(good, 1) in system.gateway.placed
    assert exit_client_id(bad, 1) in system.gateway.placed
    assert system.store.positions[bad].status is PositionStatus.EXITING
    assert system.store.positions[bad].exit_reason is ExitReason.STOP_LOSS
    assert elapsed < 1.0  # the broken position's trouble does not hold up the others


def test_when_position_restarted_then_state_comes_from_store(system: System) -> None:
    bad = open_position(system, entry(order_no="BAD", price="100"))
    price(system, "101")
    assert system.ctx.metrics.get("actor_restarts") == 1
    restored = system.store.positions[bad]
    assert restored.entry_price == Decimal("100")
    assert INSTRUMENT.security_id == restored.security_id


@pytest.fixture
def fragile(monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    """Every tracker breaks on every price, as when the database is down for all of them."""
    original = TrackerActor.on_receive

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if isinstance(message, PriceUpdate):
            self._current = message
            raise RuntimeError("database is down")
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)
    rules = Supervision(max_restarts=5, mass_failures=3, pause=timedelta(seconds=5))
    built = System(FakeStore(), FakeGateway(), supervision=rules)
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_many_trackers_fail_at_once_then_restarts_pause_and_positions_stay_protected(
        fragile: System) -> None:
    pids = [open_position(fragile, entry(order_no=f"M{n}")) for n in range(3)]
    price(fragile, "199")
    snapshot = fragile.supervisor.ask(Snapshot(), block=True, timeout=5)
    assert snapshot["restarts_paused_until"] is not None
    assert fragile.ctx.metrics.get("actor_restarts") == 2  # the third failure paused restarts
    price(fragile, "176")  # stop loss: the supervisor evaluates the position it adopted
    assert len(fragile.gateway.placed) == 1  # whichever failed third was adopted
    # The other two broke again on that price (dead-lettered, not replayed) and were adopted
    # too while restarts are paused; the next price exits them.
    price(fragile, "175")
    assert all(exit_client_id(pid, 1) in fragile.gateway.placed for pid in pids)
    fragile.clock.now += timedelta(seconds=6)
    fragile.supervisor.tell(TimerFired(name="tick", correlation_id="t", sent_at=fragile.clock.now))
    fragile.settle()
    snapshot = fragile.supervisor.ask(Snapshot(), block=True, timeout=5)
    assert snapshot["restarts_paused_until"] is None


def test_when_store_is_down_at_restart_then_the_position_goes_on_from_its_last_state(
        system: System) -> None:
    bad = open_position(system, entry(order_no="BAD"))
    system.store.fail_loads = True
    price(system, "199")  # the tracker breaks; its restart cannot read the store
    assert system.ctx.metrics.get("actor_restarts") == 1  # from the state it had in memory
    system.store.fail_loads = False
    price(system, "176")  # breaks the new tracker too: the supervisor keeps it (back-off)
    price(system, "175")
    assert exit_client_id(bad, 1) in system.gateway.placed
    assert system.store.positions[bad].exit_reason is ExitReason.STOP_LOSS


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[System, threading.Event]]:
    """BROKEN's tracker breaks on a price once the gate opens: what the test tells it before
    then queues up behind the breaking message."""
    gate = hold_tracker(monkeypatch, lambda tracker, message: isinstance(message, PriceUpdate)
                        and tracker.keeper.position.position_id == BROKEN, breaks=True)
    built = System(FakeStore(), FakeGateway())
    yield built, gate
    gate.set()
    pykka.ActorRegistry.stop_all()


def _break_with_queued(system: System, gate: threading.Event, *queued: Any) -> None:
    (ref,) = system.supervisor.proxy().tracker_refs().get(timeout=5)
    mark = PriceMark(ltp=Decimal("199"), at=system.clock.now)
    ref.tell(PriceUpdate(instrument=INSTRUMENT, mark=mark, correlation_id="p",
                         sent_at=system.clock.now))
    for message in queued:
        ref.tell(message)
    gate.set()
    wait_for(lambda: system.ctx.metrics.get("actor_restarts") == 1)
    system.settle()


def test_when_tracker_breaks_then_a_fill_queued_behind_it_reaches_the_next_incarnation(
        gated: tuple[System, threading.Event]) -> None:
    system, gate = gated
    pid = open_position(system, entry(order_no="BAD", qty=100, status=OrderStatus.PENDING))
    assert system.store.positions[pid].quantity == 100
    rest = entry(order_no="BAD", qty=200).model_copy(update={"traded_qty": 200})
    _break_with_queued(system, gate, ApplyOrderUpdate(
        position_id=pid, update=rest, role=OrderRole.ENTRY, correlation_id="fill",
        sent_at=system.clock.now))
    stored = system.store.positions[pid]
    assert stored.quantity == 200  # the fill that waited behind the crash was applied
    assert sum(fill.qty for fill in system.store.fills(pid)) == 200
    (letter,) = system.store.dead_letters()  # only the breaking message is dead-lettered
    assert letter.message_type == "PriceUpdate"


def test_when_tracker_breaks_then_an_exit_request_queued_behind_it_is_still_carried_out(
        gated: tuple[System, threading.Event]) -> None:
    system, gate = gated
    pid = open_position(system, entry(order_no="BAD"))
    _break_with_queued(system, gate, RequestExit(
        position_id=pid, reason=ExitReason.MANUAL, correlation_id="op",
        sent_at=system.clock.now))
    assert exit_client_id(pid, 1) in system.gateway.placed
    assert system.store.positions[pid].exit_reason is ExitReason.MANUAL


def test_when_the_supervisor_breaks_on_a_message_and_on_its_dead_letter_then_it_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The supervisor catches what a message raises and dead-letters it; when that write fails
    # too, the failure reaches the singletons' handler, whose counter must not be the
    # supervisor's own restart history.
    def unavailable(self: RiskSupervisor, *args: Any) -> None:
        raise RuntimeError("dead letters unavailable")

    def broken(self: RiskSupervisor, message: Any) -> None:
        raise RuntimeError("supervisor bug on a price")

    monkeypatch.setattr(RiskSupervisor, "_dead_letter", unavailable)
    monkeypatch.setattr(RiskSupervisor, "_quarantined_price", broken)
    system = System(FakeStore(), FakeGateway())
    try:
        pid = open_position(system, entry(order_no="SUP"))
        system.supervisor.tell(PriceUpdate(instrument=INSTRUMENT, mark=PriceMark(
            ltp=Decimal(176), at=system.clock.now), correlation_id="p", sent_at=system.clock.now))
        snapshot = system.supervisor.ask(Snapshot(), block=True, timeout=5)
        assert system.supervisor.is_alive()
        assert system.supervisor.proxy().told_failures.get(timeout=5) == 1
        assert snapshot["quarantined"] == []
        price(system, "176")  # the supervisor still places the exit its tracker asks for
        assert exit_client_id(pid, 1) in system.gateway.placed
    finally:
        pykka.ActorRegistry.stop_all()


def test_when_a_tracker_breaks_on_a_lost_lease_then_one_warning_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A write its partition's lease no longer allows (``LeaseLost``) is the runner's to
    handle (it drops the partition): the tracker stops with one WARNING line, and the
    supervisor hears of it as a lost lease, not as a tracker's fault."""
    original = TrackerActor.on_receive

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if isinstance(message, PriceUpdate):
            self._current = message
            raise LeaseLost(7, 3)
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)
    seen: list[tuple[str, str]] = []
    sink = logger.add(lambda m: seen.append((m.record["level"].name, m.record["message"])),
                      level="WARNING")
    built = System(FakeStore(), FakeGateway())
    try:
        open_position(built, entry(order_no="LOST"))
        with caplog.at_level(logging.WARNING, logger="pykka"):
            price(built, "199")
        assert built.ctx.metrics.get("actor_restarts") == 1  # supervised as before
        assert built.store.dead_letters() == []  # not the message's fault
    finally:
        logger.remove(sink)
        pykka.ActorRegistry.stop_all()
    pykka_lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records
                   if r.name == "pykka"]
    assert pykka_lines and all(level == "WARNING" and exc is None
                               for level, _, exc in pykka_lines), pykka_lines
    assert "stopped: LeaseLost: partition 7: lease epoch 3 lost" in pykka_lines[0][1]
    failed = [(level, text) for level, text in seen if "tracker failed" in text]
    assert failed and all(level == "WARNING" for level, _ in failed), seen
