"""Frames that queue up at the order-update actor are stored in one transaction, in order,
before any of them is routed; a frame is never held behind another message; a batch the store
refuses is stored frame by frame; parked updates are looked up only when some are parked."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import datetime

import pykka
import pytest

from models.messages import OrderUpdateReceived
from models.orders import OrderStatus
from models.position import PositionStatus
from store.ports import StoreError
from store.records import ParkedUpdate, ReceivedFrame
from tests.actors.test_order_updates import Flow, frame
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore


class BatchingStore(FakeStore):
    """The fake store with the batch call of the SQL stores. ``gate``, when set, holds the next
    ``parked_updates`` (the actor's start-up read) until the test opens it, so the frames told
    meanwhile queue up."""

    def __init__(self, *, refuse_batches: bool = False) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        """The raw frames of each batch call, in the order they came."""
        self.refuse_batches = refuse_batches
        self.gate: threading.Event | None = None
        self.takes: list[str] = []

    def parked_updates(self) -> list[ParkedUpdate]:
        gate, self.gate = self.gate, None
        if gate is not None:
            assert gate.wait(timeout=5), "the test never opened the gate"
        return super().parked_updates()

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        if self.refuse_batches:
            raise StoreError("the fake database refuses batches")
        stored = super().record_order_updates(frames)
        self.batches.append([f.raw for f in frames])
        return stored

    def take_parked(self, order_no: str, *,
                    refile_at: datetime | None = None) -> list[ParkedUpdate]:
        self.takes.append(order_no)
        return super().take_parked(order_no, refile_at=refile_at)


def queued(flow: Flow, store: BatchingStore, raws: list[str]) -> None:
    """Tell ``raws`` while the actor is busy (loading), so they all wait in its inbox."""
    gate = store.gate = threading.Event()
    loaded = flow.orders.proxy().load([])
    for raw in raws:
        tell(flow, raw)
    gate.set()
    loaded.get(timeout=5)


def tell(flow: Flow, raw: str) -> None:
    flow.orders.tell(OrderUpdateReceived(raw=raw, correlation_id="u", sent_at=T0))


@pytest.fixture
def store() -> BatchingStore:
    return BatchingStore()


@pytest.fixture
def flow(store: BatchingStore) -> Iterator[Flow]:
    built = Flow(store)
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_frames_queue_up_then_stored_in_one_batch_in_order_and_all_routed(
        flow: Flow, store: BatchingStore) -> None:
    raws = [frame("E1", OrderStatus.PENDING, 10 * n, seconds=n) for n in range(1, 7)]
    queued(flow, store, raws)
    flow.settle()
    assert store.batches == [raws]
    assert [u.raw for u in store.updates] == raws
    position = store.positions["PE1"]
    assert (position.status, position.quantity) == (PositionStatus.ACTIVE, 60)
    assert [f.cum_qty for f in store.fills("PE1")] == [10, 20, 30, 40, 50, 60]


def test_a_rejected_frame_in_a_batch_is_stored_as_rejected(flow: Flow,
                                                           store: BatchingStore) -> None:
    raws = [frame("E1", OrderStatus.PENDING, 10), "{not json", frame("E1", OrderStatus.TRADED,
                                                                     100, seconds=2)]
    queued(flow, store, raws)
    flow.settle()
    assert store.batches == [raws]
    assert [(u.raw, u.accepted) for u in store.updates] == [
        (raws[0], True), (raws[1], False), (raws[2], True)]
    assert flow.ctx.metrics.get("rejected_updates") == 1
    assert store.positions["PE1"].quantity == 100


def test_an_ask_after_held_frames_is_answered_after_they_are_handled(
        flow: Flow, store: BatchingStore) -> None:
    # Two updates without a fill for an order nobody knows: once handled, both are parked.
    gate = store.gate = threading.Event()
    loaded = flow.orders.proxy().load([])
    tell(flow, frame("E9", OrderStatus.PENDING, 0))
    tell(flow, frame("E9", OrderStatus.TRANSIT, 0, seconds=1))
    parked = flow.orders.proxy().parked
    gate.set()
    loaded.get(timeout=5)
    assert parked.get(timeout=5) == 2
    assert [p.order_no for p in store.parked] == ["E9", "E9"]


def test_when_the_store_refuses_a_batch_then_each_frame_is_stored_and_routed() -> None:
    store = BatchingStore(refuse_batches=True)
    flow = Flow(store)
    try:
        raws = [frame("E1", OrderStatus.PENDING, 10 * n, seconds=n) for n in range(1, 5)]
        queued(flow, store, raws)
        flow.settle()
        assert store.batches == []
        assert [u.raw for u in store.updates] == raws
        assert store.positions["PE1"].quantity == 40
    finally:
        pykka.ActorRegistry.stop_all()


def test_a_new_position_looks_up_parked_updates_only_when_some_are_parked(
        flow: Flow, store: BatchingStore) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    flow.send(frame("E2", OrderStatus.PENDING, 0))  # parked: E2 is unknown
    flow.send(frame("E2", OrderStatus.TRADED, 50, seconds=2))
    assert store.takes == ["E2"]
    assert store.parked == []
    assert store.positions["PE2"].quantity == 50


def test_updates_parked_by_an_earlier_run_are_known_at_start_up(flow: Flow,
                                                                store: BatchingStore) -> None:
    store.park_update("E3", frame("E3", OrderStatus.PENDING, 0), T0)
    flow.orders.proxy().load([]).get(timeout=5)
    assert flow.orders.proxy().parked.get(timeout=5) == 1
    flow.send(frame("E3", OrderStatus.TRADED, 70, seconds=3))
    assert store.takes == ["E3"]
    assert store.parked == []
    assert flow.orders.proxy().parked.get(timeout=5) == 0
    assert store.positions["PE3"].quantity == 70
