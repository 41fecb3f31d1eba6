"""Exit intents stored many at a time (issue 17): the exits of one price batch are stored in
one write by the intent writer, and no order leaves before its intent is durable (SPEC §11)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from actors.protocol import IntentStored, Snapshot, StopStored, StoreIntent, StoreStop
from actors.runtime.dispatch import Dispatcher
from actors.runtime.metrics import Metrics
from actors.system import Parts
from actors.system import System as Running
from actors.tracker.intents import IntentWriterActor
from actors.tracker.keeper import PositionKeeper, Target
from app.clocks import ManualClock
from models.common import exit_client_id
from models.lifecycle import request_exit
from models.messages import (
    ApplyProgress,
    ExitRequested,
    PlaceExitOrder,
    PositionChanged,
    new_id,
)
from models.orders import OrderProgress, OrderStatus
from models.position import CLOSED, ExitReason, OrderRole, Position, PositionStatus
from models.rules import ExitDecision
from store.pnl_cache import InMemoryPnLCache
from store.ports import StaleWriteError
from store.records import ExitAttempt
from tests.actors.test_stop_durability import (
    CONFIG,
    active,
    batch,
    price,
    stop_at,
    stored_keeper,
)
from tests.actors.test_tracker_flow import T0, Sink
from tests.fakes import FakeGateway, FakeStore

CRASH = "100"
"""-50 %: every position's stop loss fires."""


class HeldStore(FakeStore):
    """A store whose ``record_exits`` waits while ``hold`` is clear (a slow commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()

    def record_exits(self, exits: Sequence[tuple[ExitAttempt, Position]]) -> set[str]:
        self.writing.set()
        assert self.hold.wait(10)
        return super().record_exits(exits)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0 + timedelta(minutes=1))


@pytest.fixture
def actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def start(store: FakeStore, clock: ManualClock) -> tuple[Running, FakeGateway]:
    gateway = FakeGateway()
    return Running(Parts(store=store, cache=InMemoryPnLCache(), gateway=gateway, quotes=None,
                         config=CONFIG, clock=clock)).start(ticker=False), gateway


# The whole system ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("actors")
def test_exits_decided_at_once_are_stored_in_one_write_before_any_order_leaves(
        clock: ManualClock) -> None:
    store = HeldStore()
    book = [active(f"E{n}") for n in range(20)]
    for position in book:
        store.save_position(position)
    running, gateway = start(store, clock)
    store.hold.clear()  # the first write waits: every tracker decides meanwhile
    batch(running, clock, CRASH, settle=False)
    assert store.writing.wait(10)
    for ref in running.supervisor.proxy().tracker_refs().get(timeout=5):
        ref.ask(Snapshot(), timeout=5)
    assert gateway.calls == []  # nothing leaves before its intent is stored
    assert all(store.positions[p.position_id].status is PositionStatus.ACTIVE for p in book)
    store.hold.set()
    running.settle()
    assert sum(store.exits_writes) == 20 and len(store.exits_writes) <= 2
    assert sorted(gateway.calls) == sorted(exit_client_id(p.position_id, 1)
                                           for p in book)  # each once
    assert len(store.exit_attempts()) == 20
    assert all(store.positions[p.position_id].status is not PositionStatus.ACTIVE for p in book)
    running.stop()


@pytest.mark.usefixtures("actors")
@pytest.mark.parametrize("breaks", ["the write fails", "the writer has stopped"])
def test_when_the_intent_writer_cannot_store_then_each_tracker_stores_its_own_and_exits(
        clock: ManualClock, breaks: str) -> None:
    store = FakeStore()
    book = [active(f"E{n}") for n in range(5)]
    for position in book:
        store.save_position(position)
    running, gateway = start(store, clock)
    if breaks == "the write fails":
        store.fail_saves = 1  # the writer's write fails; the trackers' own writes succeed
    else:
        running.intents.stop()  # gone (a stop on its way): the trackers' tells to it fail
    batch(running, clock, CRASH)
    running.settle()
    assert store.exits_writes == [] and store.failed_calls == (breaks == "the write fails")
    assert sorted(gateway.calls) == sorted(exit_client_id(p.position_id, 1) for p in book)
    assert len(store.exit_attempts()) == 5  # each intent durable before its order
    assert all(store.positions[p.position_id].status is not PositionStatus.ACTIVE for p in book)
    running.stop()


# The keeper --------------------------------------------------------------------------------------
@pytest.fixture
def keeper(clock: ManualClock) -> Iterator[tuple[PositionKeeper, FakeStore]]:
    with stored_keeper(clock) as (kept, store, owner):
        kept.intent_owner = owner
        yield kept, store


def decide(kept: PositionKeeper) -> StoreIntent:
    out = kept.handle(price(CRASH))
    sent = [m for t, m in out if t is Target.INTENTS and isinstance(m, StoreIntent)]
    assert len(sent) == 1 and not any(isinstance(m, ExitRequested) for _, m in out)
    return sent[0]


def answer(sent: StoreIntent, *, written: bool = True, placed: bool = True,
           error: str | None = None) -> IntentStored:
    position = sent.request.position
    return IntentStored(position_id=position.position_id, client_id=sent.request.client_id,
                        version=position.version, correlation_id="c", message_id=new_id(),
                        sent_at=T0, written=written, placed=placed, error=error)


def test_an_exit_decided_goes_to_the_writer_and_the_keeper_writes_nothing_itself(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    saves = store.saves
    sent = decide(kept)
    assert store.saves == saves and store.exit_attempts() == []
    assert sent.request.position.status is PositionStatus.EXITING
    assert sent.attempt.client_id == sent.request.client_id
    assert kept.position.status is PositionStatus.EXITING  # no second decision meanwhile
    assert not any(t is Target.INTENTS for t, _ in kept.handle(price("90", 50)))


def test_when_stored_and_placed_then_the_keeper_announces_and_places_nothing_itself(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    sent = decide(kept)
    store.record_exits([(sent.attempt, sent.request.position)])  # what the writer does
    out = kept.handle(answer(sent))
    assert not any(isinstance(m, ExitRequested) for _, m in out)
    assert any(isinstance(m, PositionChanged) for _, m in out)


def test_when_the_write_fails_then_the_keeper_stores_the_intent_and_requests_the_exit(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    sent = decide(kept)
    out = kept.handle(answer(sent, written=False, placed=False, error="StoreError: down"))
    assert [m.client_id for t, m in out if isinstance(m, ExitRequested)
            and t is Target.SUPERVISOR] == [sent.request.client_id]
    assert store.positions[kept.position.position_id].status is PositionStatus.EXITING
    assert [a.client_id for a in store.exit_attempts()] == [sent.request.client_id]


def test_when_a_newer_state_was_stored_by_another_owner_then_the_keeper_stops(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, _ = keeper
    sent = decide(kept)
    with pytest.raises(StaleWriteError):
        kept.handle(answer(sent, written=False, placed=False))


def test_an_exit_closed_by_another_order_while_its_intent_was_with_the_writer_is_not_placed(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    sent = decide(kept)
    kept.handle(ApplyProgress(  # a manual close fills first, and is stored at once
        position_id=kept.position.position_id, role=OrderRole.OPPOSITE, correlation_id="m",
        sent_at=T0, progress=OrderProgress(order_no="M1", status=OrderStatus.TRADED,
                                           traded_qty=100, traded_value=Decimal(20_000),
                                           quantity=100, updated_at=T0)))
    assert kept.position.status in CLOSED
    written = store.record_exits([(sent.attempt, sent.request.position)])  # then the writer's
    assert written == set()  # the close is newer: the writer places nothing
    out = kept.handle(answer(sent, written=False, placed=False))
    assert not any(isinstance(m, ExitRequested) for _, m in out)  # nor does the keeper
    assert [a.outcome for a in store.exit_attempts()] == [f"NOT PLACED: {kept.position.status}"]


def test_a_stop_refused_for_the_exit_intent_written_after_it_is_not_taken_for_stale(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    kept.owner = kept.intent_owner  # a stop writer serves it too
    stop = [m for t, m in kept.handle(price("210")) if isinstance(m, StoreStop)]
    assert len(stop) == 1  # the trailing stop arms: with the stop writer
    out = kept.handle(price("300", 50))  # take profit: the exit's intent, one version on
    sent = next(m for t, m in out if isinstance(m, StoreIntent))
    assert sent.request.position.version == stop[0].position.version + 1
    assert store.record_exits([(sent.attempt, sent.request.position)])  # its writer first,
    assert store.save_marks([stop[0].position]) == set()  # so the stop's write is refused
    kept.handle(StopStored(position_id=stop[0].position.position_id,  # and answered first
                           version=stop[0].position.version, correlation_id="c",
                           message_id=new_id(), sent_at=T0, written=False))
    kept.handle(answer(sent))
    assert kept.position.status is PositionStatus.EXITING


def test_while_an_intent_is_with_its_writer_a_stop_waits_for_it(
        keeper: tuple[PositionKeeper, FakeStore]) -> None:
    kept, store = keeper
    kept.owner = kept.intent_owner  # a stop writer serves it too
    sent = decide(kept)
    assert not any(isinstance(m, StoreStop) for _, m in kept.handle(price("300", 50)))
    store.record_exits([(sent.attempt, sent.request.position)])
    out = kept.handle(answer(sent))  # then the price that waited is folded: its stop stored
    assert [m.position.trail_stop for _, m in out if isinstance(m, StoreStop)] == [
        stop_at(sent.request.position, "300")]


# The writer --------------------------------------------------------------------------------------
def intent(position: Position, owner: pykka.ActorRef[Sink],
           gateway: pykka.ActorRef[Sink]) -> StoreIntent:
    exiting = request_exit(position, ExitReason.STOP_LOSS, T0).position
    client_id = exit_client_id(position.position_id, exiting.exit_attempt)
    request = ExitRequested(position=exiting, attempt=exiting.exit_attempt,
                            decision=ExitDecision(reason=ExitReason.STOP_LOSS),
                            client_id=client_id, correlation_id="c", sent_at=T0)
    attempt = ExitAttempt(position_id=position.position_id, attempt=exiting.exit_attempt,
                          client_id=client_id, reason=ExitReason.STOP_LOSS,
                          quantity=exiting.quantity, requested_at=T0)
    return StoreIntent(attempt=attempt, request=request, owner=owner, gateway=gateway)


def test_the_writer_stores_what_waits_in_one_write_then_places_what_it_wrote() -> None:
    store = HeldStore()
    book = [active(f"E{n}") for n in range(4)]
    for position in book:
        store.save_position(position)
    owner, gateway, supervisor, gone = Sink.start(), Sink.start(), Sink.start(), Sink.start()
    writer = IntentWriterActor.start(store, Metrics(), lambda: T0, supervisor)
    try:
        store.hold.clear()
        sent = [intent(p, owner, gateway) for p in book]
        writer.tell(sent[0])
        assert store.writing.wait(10)
        newer = sent[1].request.position.model_copy(update={
            "version": sent[1].request.position.version + 1})
        store.save_position(newer)  # that position's owner stored a later state meanwhile
        gone.stop()  # a tracker that failed before its intent was stored
        writer.tell(sent[1])
        writer.tell(sent[2])
        writer.tell(intent(book[3], gone, gateway))
        assert gateway.ask(Snapshot(), timeout=5) == []  # held: nothing placed yet
        store.hold.set()
        writer.ask(Snapshot(), timeout=5)
        assert store.exits_writes == [1, 3]  # the three that waited: one write
        placed = [m.client_id for m in gateway.ask(Snapshot(), timeout=5)
                  if isinstance(m, PlaceExitOrder)]
        assert placed == [sent[0].request.client_id, sent[2].request.client_id]
        requests = [m for m in supervisor.ask(Snapshot(), timeout=5)
                    if isinstance(m, ExitRequested)]
        assert [m.client_id for m in requests] == placed and all(m.placed for m in requests)
        answers = [m for m in owner.ask(Snapshot(), timeout=5) if isinstance(m, IntentStored)]
        assert [(a.written, a.placed) for a in answers] == [(True, True), (False, False),
                                                           (True, True)]
    finally:
        for ref in (writer, owner, gateway, supervisor):
            ref.stop()



@pytest.mark.parametrize("gathers", [True, False])
def test_the_first_intent_of_a_wave_waits_for_the_decisions_still_being_made(
        gathers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``gather`` (the trackers' dispatcher's ``wait_for_urgent``), an intent that finds
    the writer's mailbox empty while trackers still decide on urgent prices waits for them
    (``GATHER`` at most), so the wave is stored in one write; without, it is written alone."""
    monkeypatch.setattr("actors.tracker.intents.GATHER", 5.0)  # the wait's end, not its bound
    store = HeldStore()
    book = [active(f"E{n}") for n in range(3)]
    for position in book:
        store.save_position(position)
    owner, gateway, supervisor = Sink.start(), Sink.start(), Sink.start()
    pool = Dispatcher(name="wave", workers=1, reserve=1, hold=0.02).start()
    waiting = threading.Event()

    def gather(seconds: float) -> bool:
        waiting.set()
        return pool.wait_for_urgent(seconds)

    writer = IntentWriterActor.start(store, Metrics(), lambda: T0, supervisor,
                                     gather=gather if gathers else None)
    try:
        sent = [intent(p, owner, gateway) for p in book]
        deciding = threading.Event()

        def the_rest_of_the_wave() -> None:  # trackers still deciding when the first told
            deciding.set()
            assert (waiting if gathers else store.writing).wait(5)
            writer.tell(sent[1])
            writer.tell(sent[2])

        pool.submit(the_rest_of_the_wave, urgent=True)
        assert deciding.wait(5)
        writer.tell(sent[0])
        assert pool.wait_for_urgent(5)
        writer.ask(Snapshot(), timeout=5)
        assert store.exits_writes == ([3] if gathers else [1, 2])
        placed = [m.client_id for m in gateway.ask(Snapshot(), timeout=5)
                  if isinstance(m, PlaceExitOrder)]
        assert sorted(placed) == sorted(m.request.client_id for m in sent)
    finally:
        for ref in (writer, owner, gateway, supervisor):
            ref.stop()
        pool.shutdown()


@pytest.mark.usefixtures("actors")
@pytest.mark.parametrize("launch_fails", [False, True])
def test_a_wave_s_orders_are_launched_together_once_their_intents_are_stored(
        clock: ManualClock, launch_fails: bool) -> None:
    """``Parts.launch`` (the live session's ``DhanGateway.launch_exits``): the intent writer
    hands it a wave's orders in one call, only after their intents are durable; every order
    still goes to its gateway actor (which takes the launched answer), and a launch that
    raises changes nothing but that."""
    store = HeldStore()
    book = [active(f"E{n}") for n in range(10)]
    for position in book:
        store.save_position(position)
    launched: list[list[str]] = []
    stored_then: list[bool] = []

    def launch(orders: list[PlaceExitOrder]) -> None:
        ids = [order.client_id for order in orders]
        stored = {attempt.client_id for attempt in store.exit_attempts()}
        stored_then.append(all(client_id in stored for client_id in ids))
        launched.append(ids)
        if launch_fails:
            raise RuntimeError("the launch process would not start")

    gateway = FakeGateway()
    running = Running(Parts(store=store, cache=InMemoryPnLCache(), gateway=gateway, quotes=None,
                            config=CONFIG, clock=clock, launch=launch)).start(ticker=False)
    store.hold.clear()  # the first write waits: every tracker decides meanwhile
    batch(running, clock, CRASH, settle=False)
    assert store.writing.wait(10)
    store.hold.set()
    running.settle()
    everyone = sorted(exit_client_id(p.position_id, 1) for p in book)
    assert sorted(client_id for wave in launched for client_id in wave) == everyone
    assert len(launched) == len(store.exits_writes) <= 2  # one call a write, not one an exit
    assert stored_then and all(stored_then)  # never before the intents were stored
    assert sorted(gateway.calls) == everyone  # each order still placed once, by its actor
    running.stop()
