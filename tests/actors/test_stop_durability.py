"""A stop never loosens across a restart (SPEC §11.5): a trailing stop that tightened is stored,
many positions in one write, before the position's next price may move it again."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.protocol import Snapshot, StopStored, StoreStop
from actors.runtime.metrics import Metrics
from actors.system import Parts
from actors.system import System as Running
from actors.tracker.actor import TrackerActor
from actors.tracker.keeper import KeeperContext, PositionKeeper, Target
from actors.tracker.stops import StopWriterActor
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Side, exit_client_id
from models.lifecycle import apply_update
from models.messages import ExitRequested, PriceUpdate, TimerFired, new_id
from models.policy import RiskConfig
from models.position import OrderRole, Position, PositionStatus, new_position
from models.rules import PriceMark, update_marks
from store.pnl_cache import InMemoryPnLCache
from store.ports import StaleWriteError
from tests.actors.test_tracker_flow import INSTRUMENT, T0, Sink, entry, wait_for
from tests.fakes import FakeStore

CONFIG = RiskConfig()


def active(order_no: str = "E1", price: str = "200") -> Position:
    update = entry(order_no=order_no, price=price)
    position = new_position(update, position_id="P" + order_no, side=Side.LONG, created_at=T0)
    return apply_update(position, update, OrderRole.ENTRY).position


def stop_at(position: Position, *prices: str) -> Decimal:
    """The trailing stop these prices set, by the rules' own definition."""
    for ltp in prices:
        position = update_marks(position, Decimal(ltp), CONFIG.policy)
    assert position.trail_stop is not None
    return position.trail_stop


class HeldStore(FakeStore):
    """A store whose marks writes wait while ``hold`` is clear (a slow commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()

    def save_marks(self, positions: Sequence[Position]) -> set[str]:
        self.writing.set()
        assert self.hold.wait(10)
        return super().save_marks(positions)


@dataclass(frozen=True)
class Boom:
    """Breaks the tracker that handles it (see the ``breakable`` fixture)."""


@pytest.fixture
def breakable(monkeypatch: pytest.MonkeyPatch) -> None:
    original = TrackerActor.on_receive

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if isinstance(message, Boom):
            self._current = message
            raise RuntimeError("tracker bug")
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0 + timedelta(minutes=1))


def start(store: FakeStore, clock: ManualClock) -> Running:
    return Running(Parts(store=store, cache=InMemoryPnLCache(),
                         gateway=PaperExchange(TapeMarket([])), quotes=None, config=CONFIG,
                         clock=clock)).start(ticker=False)


def batch(system: Running, clock: ManualClock, ltp: str, *, settle: bool = True) -> None:
    """One price batch: a tick, the flush (what the ticker does every 50 ms), then settled."""
    clock.set(clock() + timedelta(milliseconds=50))
    system.tick(INSTRUMENT, Decimal(ltp), clock())
    system.step(clock(), timer=False)
    if settle:
        system.settle()


def tracked(system: Running, position_id: str) -> Position:
    for ref in system.supervisor.proxy().tracker_refs().get(timeout=5):
        position: Position = ref.ask(Snapshot(), timeout=5)
        if position.position_id == position_id:
            return position
    raise AssertionError(f"no tracker for {position_id}")


@pytest.fixture
def actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


# The whole system ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("actors")
def test_when_a_batch_tightens_the_stop_then_it_is_stored_before_the_next_batch(
        clock: ManualClock) -> None:
    store = FakeStore()
    position = active()
    store.save_position(position)
    running = start(store, clock)
    batch(running, clock, "210")  # +5 %: the trailing stop arms
    stored = store.positions[position.position_id]
    assert stored.trail_stop == stop_at(position, "210")
    assert stored.version == position.version + 1
    batch(running, clock, "214")
    assert store.positions[position.position_id].trail_stop == stop_at(position, "210", "214")
    assert store.marks_writes == [1, 1]  # one write per batch that tightened it
    writes = store.marks_writes[:]
    batch(running, clock, "213")  # the stop does not move: nothing to store
    assert store.marks_writes == writes
    running.stop()


@pytest.mark.usefixtures("actors")
def test_when_killed_right_after_a_batch_then_a_restart_resumes_with_that_stop(
        clock: ManualClock) -> None:
    """No graceful stop (no final checkpoint), no timer: only the batched write kept it."""
    store = FakeStore()
    position = active()
    store.save_position(position)
    running = start(store, clock)
    batch(running, clock, "210")
    batch(running, clock, "216")
    tightened = stop_at(position, "210", "216")
    pykka.ActorRegistry.stop_all()  # the process dies: nothing is flushed on the way out
    running.dispatcher.shutdown()

    again = start(store, clock)
    assert tracked(again, position.position_id).trail_stop == tightened
    batch(again, clock, str(tightened - Decimal("0.05")))  # just through it: the stop fires
    assert exit_client_id(position.position_id, 1) in {
        a.client_id for a in store.exit_attempts(position.position_id)}
    again.stop()


@pytest.mark.usefixtures("actors", "breakable")
def test_when_a_tracker_fails_right_after_a_batch_then_its_restart_resumes_with_that_stop(
        clock: ManualClock) -> None:
    store = FakeStore()
    position = active()
    store.save_position(position)
    running = start(store, clock)
    batch(running, clock, "212")
    tightened = stop_at(position, "212")
    assert store.positions[position.position_id].trail_stop == tightened
    for ref in running.supervisor.proxy().tracker_refs().get(timeout=5):
        ref.tell(Boom())
    running.settle()
    assert running.parts.metrics.get("actor_restarts") == 1
    assert tracked(running, position.position_id).trail_stop == tightened
    running.stop()


@pytest.mark.usefixtures("actors", "breakable")
def test_when_a_tracker_fails_with_its_stop_still_being_written_then_the_stop_holds(
        clock: ManualClock) -> None:
    """The store is one write behind the tracker: the next one starts from the tracker's own
    state, and both writes end in the store without a stale-write restart."""
    store = HeldStore()
    position = active()
    store.save_position(position)
    running = start(store, clock)
    store.hold.clear()
    batch(running, clock, "212", settle=False)
    assert store.writing.wait(10)  # the write of the tightened stop has begun, and waits
    tightened = stop_at(position, "212")
    assert store.positions[position.position_id].trail_stop is None
    refs = running.supervisor.proxy().tracker_refs().get(timeout=5)
    for ref in refs:
        ref.tell(Boom())
    wait_for(lambda: running.parts.metrics.get("actor_restarts") == 1)
    store.hold.set()
    running.settle()
    assert running.parts.metrics.get("actor_restarts") == 1
    assert tracked(running, position.position_id).trail_stop == tightened
    clock.set(clock() + timedelta(seconds=1))
    running.step(clock(), timer=True)  # the next owner stores the state it started from
    running.settle()
    assert store.positions[position.position_id].trail_stop == tightened
    assert running.parts.metrics.get("actor_restarts") == 1  # no stale write broke it again
    running.stop()


@pytest.mark.usefixtures("actors")
def test_stops_of_many_positions_tightened_by_one_batch_are_stored_together(
        clock: ManualClock) -> None:
    store = HeldStore()
    book = [active(f"E{n}") for n in range(20)]
    for position in book:
        store.save_position(position)
    running = start(store, clock)
    store.hold.clear()  # the first write waits, so every tracker has told its stop meanwhile
    batch(running, clock, "210", settle=False)
    assert store.writing.wait(10)
    for ref in running.supervisor.proxy().tracker_refs().get(timeout=5):
        ref.ask(Snapshot(), timeout=5)
    store.hold.set()
    running.settle()
    assert sum(store.marks_writes) == 20 and len(store.marks_writes) <= 2
    assert all(store.positions[p.position_id].trail_stop == stop_at(p, "210") for p in book)
    running.stop()


# The keeper and the writer ------------------------------------------------------------------------
def price(ltp: str, at_ms: int = 0) -> PriceUpdate:
    at = T0 + timedelta(minutes=1, milliseconds=at_ms)
    return PriceUpdate(instrument=INSTRUMENT, mark=PriceMark(ltp=Decimal(ltp), at=at),
                       correlation_id=new_id(), sent_at=at)


def answer(sent: StoreStop, *, written: bool = True, error: str | None = None) -> StopStored:
    return StopStored(position_id=sent.position.position_id, version=sent.position.version,
                      correlation_id=sent.correlation_id, message_id=new_id(),
                      sent_at=sent.sent_at, written=written, error=error)


def stops(out: list[tuple[Target, object]]) -> list[StoreStop]:
    return [m for t, m in out if t is Target.STOPS and isinstance(m, StoreStop)]


@contextmanager
def stored_keeper(clock: ManualClock) -> Iterator[tuple[PositionKeeper, FakeStore, Any]]:
    """A keeper of an ACTIVE position stored in a fake store, and a ``Sink`` to answer it."""
    store = FakeStore()
    position = active()
    store.save_position(position)
    owner = Sink.start()
    try:
        yield PositionKeeper(position, KeeperContext(store=store, config=CONFIG, clock=clock,
                                                     metrics=Metrics())), store, owner
    finally:
        owner.stop()


@pytest.fixture
def keeper(clock: ManualClock) -> Iterator[tuple[PositionKeeper, FakeStore]]:
    with stored_keeper(clock) as (kept, store, owner):
        kept.owner = owner
        yield kept, store


def test_a_price_that_would_move_the_stop_again_waits_for_the_write_but_an_exit_does_not(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    first = stops(kept.handle(price("210")))
    assert len(first) == 1 and first[0].position.trail_stop == stop_at(kept.position, "210")
    assert store.saves == 1  # the keeper wrote nothing itself: the writer does
    assert stops(kept.handle(price("220", 50))) == []  # would tighten it again: waits
    assert kept.position.trail_stop == first[0].position.trail_stop

    second = stops(kept.handle(answer(first[0])))  # stored: the waiting price is folded now
    assert len(second) == 1
    assert second[0].position.trail_stop == stop_at(active(), "210", "220")
    assert second[0].position.version == first[0].position.version + 1

    below = str(second[0].position.trail_stop - 1)  # meanwhile the price falls through it
    out = kept.handle(price(below, 100))
    assert any(isinstance(m, ExitRequested) for _, m in out)  # decided at once
    assert store.positions[kept.position.position_id].status is PositionStatus.EXITING
    assert store.positions[kept.position.position_id].trail_stop == \
        second[0].position.trail_stop  # the exit's own write carries the stop


def test_when_the_batched_write_fails_then_the_keeper_stores_its_stop_itself(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    sent = stops(kept.handle(price("210")))[0]
    kept.handle(answer(sent, written=False, error="StoreError: down"))
    assert store.positions[kept.position.position_id].trail_stop == sent.position.trail_stop


def test_when_the_writer_never_answers_then_the_keeper_stores_its_stop_at_a_timer(
        keeper: tuple[PositionKeeper, FakeStore], clock: ManualClock) -> None:
    kept, store = keeper
    sent = stops(kept.handle(price("210")))[0]
    kept.handle(price("220", 50))
    clock.set(clock() + timedelta(seconds=3))
    kept.handle(TimerFired(name="tick", correlation_id="t", sent_at=clock()))
    stored = store.positions[kept.position.position_id]
    assert stored.trail_stop is not None and sent.position.trail_stop is not None
    assert stored.trail_stop >= sent.position.trail_stop


def test_when_a_newer_state_was_stored_by_another_owner_then_the_keeper_stops(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, _ = keeper
    sent = stops(kept.handle(price("210")))[0]
    with pytest.raises(StaleWriteError):
        kept.handle(answer(sent, written=False))


def test_the_writer_stores_what_waits_in_one_write_and_answers_every_sender() -> None:
    store = HeldStore()
    book = [active(f"E{n}") for n in range(4)]
    for position in book:
        store.save_position(position)
    owner = Sink.start()
    writer = StopWriterActor.start(store, Metrics(), lambda: T0)
    try:
        store.hold.clear()
        sent = [StoreStop(position=p.model_copy(update={
            "trail_stop": Decimal("204.75"), "version": p.version + 1}), owner=owner,
            correlation_id="c", message_id=new_id(), sent_at=T0) for p in book]
        writer.tell(sent[0])
        assert store.writing.wait(10)
        for message in sent[1:]:
            writer.tell(message)
        newer = sent[1].position.model_copy(update={"version": sent[1].position.version + 1,
                                                    "trail_stop": Decimal("205")})
        writer.tell(StoreStop(position=newer, owner=owner, correlation_id="c",
                              message_id=new_id(), sent_at=T0))
        store.hold.set()
        writer.ask(Snapshot(), timeout=5)
        assert store.marks_writes == [1, 3]  # the three that waited: one write
        answers = [m for m in owner.ask(Snapshot(), timeout=5) if isinstance(m, StopStored)]
        assert len(answers) == 5 and all(a.error is None for a in answers)
        assert [a.written for a in answers] == [True, False, True, True, True]
        assert store.positions[book[1].position_id] == newer
    finally:
        writer.stop()
        owner.stop()
