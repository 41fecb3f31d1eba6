"""How far the stored frames are applied (``System.mark_frames``, ``Store.frames_mark``): a
start routes again only the frames stored after the mark, so its work does not grow with the
day; the mark never passes a frame whose change is not stored (a frame stored but never routed
before a kill, a position whose writes fail, a start that could not read the stored frames)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import exit_client_id
from models.orders import OrderStatus
from models.policy import RiskConfig
from models.position import PositionStatus
from store.pnl_cache import InMemoryPnLCache
from store.ports import Store, StoreError
from store.records import ReceivedFrame, StoredOrderUpdate
from tests.actors.test_frame_recovery import (
    INSTRUMENT,
    STORES,
    Run,
    _books_agree,
    entry,
    fake_or_postgres,
)
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore


class ReadsCounted(FakeStore):
    """Remembers what each start read of the stored frames (``after``, how many)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int]] = []
        self.fail_reads = 0

    def order_updates(self, since: datetime | None = None, *,
                      after: int = 0) -> list[StoredOrderUpdate]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StoreError("the fake database is down")
        found = super().order_updates(since, after=after)
        self.reads.append((after, len(found)))
        return found


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    yield from fake_or_postgres(request)


def last_seq(store: Store) -> int:
    return store.order_updates()[-1].seq


def test_an_orderly_stop_marks_every_frame_and_the_next_start_reads_none_again(
        store: Store) -> None:
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.frame("E2", OrderStatus.TRADED, 100, seconds=1)
    first.at(T0 + timedelta(seconds=2), "170")  # both stop losses: the exits fill
    assert sorted(first.placed()) == [exit_client_id("PE1", 1), exit_client_id("PE2", 1)]
    first.kill()  # an orderly stop
    assert store.frames_mark() == last_seq(store)
    before = {p.position_id: p for p in store.list_positions()}

    second = Run(store, "Y", T0 + timedelta(seconds=5), ltp="170")
    assert second.system.recovered == 0
    assert {p.position_id: p for p in store.list_positions()} == before
    assert {p.status for p in before.values()} == {PositionStatus.EXITED}
    assert second.placed() == [] and _books_agree(store)


def test_a_start_reads_only_the_frames_after_the_mark() -> None:
    store = ReadsCounted()
    first = Run(store, "X", T0)
    for n in range(1, 6):
        first.frame(f"E{n}", OrderStatus.TRADED, 100, seconds=n)
    first.kill()
    mark = store.frames_mark()
    assert mark == last_seq(store) == 5
    Run(store, "Y", T0 + timedelta(seconds=8)).kill()
    assert store.reads[-1] == (mark, 0)  # none of the day's five frames read again


def test_a_frame_stored_after_the_mark_but_never_routed_is_applied_at_the_restart(
        store: Store) -> None:
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    applied = last_seq(store)
    first.wire.cut = True  # the process is dying: E2's frame is stored, never routed
    first.wire.carry(entry("E2", OrderStatus.TRADED, 100, seconds=2))
    cut = last_seq(store)
    first.kill()
    assert store.frames_mark() == applied < cut  # the mark stops before the unrouted frame
    assert store.load_position("PE2") is None

    second = Run(store, "Y", T0 + timedelta(seconds=5))
    opened = store.load_position("PE2")
    assert opened is not None and opened.status is PositionStatus.ACTIVE
    assert opened.quantity == 100 and second.system.recovered == 1
    second.kill()
    assert store.frames_mark() == cut and _books_agree(store)


def test_no_mark_while_a_positions_writes_fail_and_one_once_they_are_stored() -> None:
    store = FakeStore()
    run = Run(store, "X", T0)
    run.frame("E1", OrderStatus.TRADED, 100)
    assert run.system.mark_frames() == last_seq(store)
    store.fail_saves = 1_000  # the database is down for the positions' writes
    run.frame("E3", OrderStatus.TRADED, 100, seconds=2)  # a new position: not stored
    assert store.load_position("PE3") is None
    held = last_seq(store)
    assert run.system.mark_frames() is None
    assert store.frames_mark() < held
    store.fail_saves = 0
    run.at(T0 + timedelta(seconds=10), "200")  # the back-off is over: the writes go in
    assert store.load_position("PE3") is not None
    assert run.system.mark_frames() == held == store.frames_mark()


def test_a_start_that_could_not_read_the_stored_frames_sets_no_mark() -> None:
    store = ReadsCounted()
    first = Run(store, "X", T0)
    first.wire.cut = True  # killed with a frame stored, never routed
    first.wire.carry(entry("E1", OrderStatus.TRADED, 100))
    first.kill()
    store.fail_reads = 1  # the next start cannot read it back
    second = Run(store, "Y", T0 + timedelta(seconds=5))
    assert store.load_position("PE1") is None
    second.frame("E2", OrderStatus.TRADED, 100, seconds=6)
    assert second.system.mark_frames() is None
    second.kill()
    assert store.frames_mark() == 0  # E1's frame is not passed over
    Run(store, "Z", T0 + timedelta(seconds=9))
    opened = store.load_position("PE1")
    assert opened is not None and opened.status is PositionStatus.ACTIVE


def test_a_running_system_marks_the_applied_frames_on_its_own() -> None:
    store = FakeStore()
    market = TapeMarket([])
    market.set_price(INSTRUMENT, Decimal("200"), T0)
    exchange = PaperExchange(market, latency=timedelta(0), start=T0)
    system = System(Parts(store=store, cache=InMemoryPnLCache(), gateway=exchange, quotes=None,
                          config=RiskConfig(), clock=ManualClock(T0), mark_every=0.05))
    system.start()  # with its ticker: the marking thread runs
    try:
        system.order_frame(entry("E1", OrderStatus.TRADED, 100))
        ends = time.monotonic() + 10
        while store.frames_mark() == 0 and time.monotonic() < ends:
            time.sleep(0.02)
        assert store.frames_mark() == last_seq(store) == 1
    finally:
        system.stop()


class WritesCounted(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        seqs = super().record_order_updates(frames)
        self.writes.append(len(frames))
        return seqs


def test_a_runners_pull_is_stored_in_one_write_and_answered_stored_only_once_it_is() -> None:
    store = WritesCounted()
    run = Run(store, "X", T0)
    frames = [entry("E1", OrderStatus.TRADED, 100), entry("E2", OrderStatus.TRADED, 100,
                                                          seconds=1)]
    assert run.system.store_frames(frames) is True
    assert store.writes == [2]  # one write for the pull's two updates
    run.system.settle()
    assert {p.entry_order_no for p in run.system.open_positions()} == {"E1", "E2"}
    store.fail_frames = True  # the database refuses what comes now
    assert run.system.store_frames([entry("E3", OrderStatus.TRADED, 100, seconds=2)]) is False
    run.kill()


def test_a_pull_past_the_batch_limit_is_stored_in_writes_of_the_limit() -> None:
    store = WritesCounted()
    run = Run(store, "X", T0)
    frames = [entry(f"E{n}", OrderStatus.PENDING, 0, seconds=n) for n in range(70)]
    assert run.system.store_frames(frames) is True
    assert store.writes == [64, 6]  # OrderUpdateActor.batch_limit frames a transaction
    run.kill()
