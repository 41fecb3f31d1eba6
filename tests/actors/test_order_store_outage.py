"""The order-update actor outlives a failing store and loses nothing: fills are routed while
the store is down, the raw frames are stored later, in order, once each; parks wait in memory
and are delivered when their order becomes known; a frame the store cannot hold is stored in a
safe form; an outage is logged once when it starts and once when it ends."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pykka
import pytest
from loguru import logger

from actors.orders.actor import FlushFrames
from actors.orders.audit import RetryStore
from actors.protocol import KnownPosition
from models.common import Segment, Side, TxnType
from models.messages import CreatePosition, TimerFired
from models.orders import OrderStatus, OrderUpdate
from models.position import PositionStatus, new_position
from store.ports import LeaseLost
from store.records import ReceivedFrame
from tests.actors.test_order_frame_batches import BatchingStore, queued
from tests.actors.test_order_updates import Flow, frame
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def flow(store: FakeStore) -> Iterator[Flow]:
    built = Flow(store)
    yield built
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"),
                      level="WARNING")
    yield lines
    logger.remove(sink)


def unstored(flow: Flow) -> int:
    count: int = flow.orders.proxy().unstored.get(timeout=5)
    return count


def retry(flow: Flow) -> None:
    flow.orders.tell(RetryStore())
    flow.settle()


def fills(n: int, order_no: str = "E1") -> list[str]:
    return [frame(order_no, OrderStatus.PENDING, 10 * k, seconds=k) for k in range(1, n + 1)]


# Frames --------------------------------------------------------------------------------------
def test_when_store_fails_then_fill_still_routed_and_frame_stored_later(
        flow: Flow, store: FakeStore) -> None:
    store.fail_frames = True
    raws = fills(3)
    for raw in raws:
        flow.send(raw)
    assert store.positions["PE1"].quantity == 30  # every fill reached its position
    assert store.updates == [] and unstored(flow) == 3  # and the actor is alive
    store.fail_frames = False
    flow.clock.now += timedelta(seconds=1)
    flow.send(frame("E1", OrderStatus.TRADED, 100, seconds=9))
    assert [u.raw for u in store.updates] == [*raws, frame("E1", OrderStatus.TRADED, 100,
                                                           seconds=9)]
    assert unstored(flow) == 0
    assert store.positions["PE1"].quantity == 100


def test_while_the_store_is_down_it_is_tried_once_per_interval_not_once_per_frame(
        flow: Flow, store: FakeStore) -> None:
    store.fail_frames = True
    for raw in fills(5):
        flow.send(raw)
    assert store.failed_calls == 1
    flow.clock.now += timedelta(seconds=1)
    flow.send(frame("E1", OrderStatus.PENDING, 60, seconds=6))
    assert 1 < store.failed_calls <= 3  # the batch of six, then its first frame alone
    assert unstored(flow) == 6
    assert store.positions["PE1"].quantity == 60


def test_a_retry_store_stores_the_waiting_frames_at_once_in_order(
        flow: Flow, store: FakeStore) -> None:
    store.fail_frames = True
    raws = [*fills(2), "{not json", *fills(4)[2:]]
    for raw in raws:
        flow.send(raw)
    store.fail_frames = False
    retry(flow)
    assert [(u.raw, u.accepted) for u in store.updates] == [(r, r != "{not json") for r in raws]
    retry(flow)  # nothing waits: nothing stored twice
    assert len(store.updates) == len(raws)


@pytest.mark.parametrize("message", [FlushFrames(), TimerFired(name="tick", correlation_id="t",
                                                               sent_at=T0)])
def test_any_message_stores_the_waiting_frames_once_the_interval_has_passed(
        flow: Flow, store: FakeStore, message: object) -> None:
    store.fail_frames = True
    flow.send(fills(1)[0])
    store.fail_frames = False
    flow.orders.tell(message)
    flow.settle()
    assert store.updates == []  # too soon: a store that is down is not hammered
    flow.clock.now += timedelta(seconds=1)
    flow.orders.tell(message)
    flow.settle()
    assert [u.raw for u in store.updates] == fills(1)


def test_when_a_batch_meets_an_outage_then_it_is_stored_later_in_order_with_what_followed(
        ) -> None:
    store = BatchingStore()
    flow = Flow(store)
    try:
        store.fail_frames = True
        raws = fills(6)
        queued(flow, store, raws[:4])
        flow.send(raws[4])
        assert store.positions["PE1"].quantity == 50
        store.fail_frames = False
        flow.clock.now += timedelta(seconds=1)
        flow.send(raws[5])
        assert [u.raw for u in store.updates] == raws
        assert store.batches == [raws]
    finally:
        pykka.ActorRegistry.stop_all()


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
        flow: Flow, store: FakeStore, logs: list[str]) -> None:
    store.fail_frames = True
    for raw in fills(4):
        flow.send(raw)
    store.fail_frames = False
    retry(flow)
    failing = [line for line in logs if line.startswith("ERROR")]
    assert len(failing) == 1 and "store failing" in failing[0] and "1 frames" in failing[0]
    back = [line for line in logs if line.startswith("WARNING") and "store back" in line]
    assert len(back) == 1 and "4 frames" in back[0]


def test_the_count_of_frames_waiting_is_in_the_metrics(flow: Flow, store: FakeStore) -> None:
    store.fail_frames = True
    for raw in fills(3):
        flow.send(raw)
    assert flow.ctx.metrics.snapshot()["unstored_frames"] == 3
    store.fail_frames = False
    retry(flow)
    assert flow.ctx.metrics.snapshot()["unstored_frames"] == 0


def test_past_the_limit_the_oldest_waiting_frame_is_dropped_and_its_raw_logged(
        store: FakeStore, logs: list[str]) -> None:
    flow = Flow(store, unstored_limit=2)
    try:
        store.fail_frames = True
        raws = fills(3)
        for raw in raws:
            flow.send(raw)
        assert unstored(flow) == 2
        assert any(line.startswith("ERROR") and raws[0] in line for line in logs)
        store.fail_frames = False
        retry(flow)
        assert [u.raw for u in store.updates] == raws[1:]
        assert store.positions["PE1"].quantity == 30
    finally:
        pykka.ActorRegistry.stop_all()


def test_at_the_stop_the_waiting_frames_are_tried_once_more(flow: Flow,
                                                            store: FakeStore) -> None:
    store.fail_frames = True
    flow.send(fills(1)[0])
    store.fail_frames = False
    flow.orders.stop(timeout=5)
    assert [u.raw for u in store.updates] == fills(1)


def test_a_frame_the_store_cannot_hold_is_stored_in_a_safe_form_and_holds_up_no_other(
        flow: Flow, store: FakeStore) -> None:
    store.refuse_text = "\U0001f4a5"
    odd = frame("E1", OrderStatus.PENDING, 10).replace('"MKT"', '"\U0001f4a5"')
    flow.send(odd)
    flow.send(frame("E1", OrderStatus.PENDING, 20, seconds=2))
    first, second = store.updates
    assert ast.literal_eval(first.raw) == odd
    assert first.reason is not None and "ascii()" in first.reason
    assert second.raw == frame("E1", OrderStatus.PENDING, 20, seconds=2)
    assert unstored(flow) == 0
    assert store.positions["PE1"].quantity == 20


def test_a_frame_refused_under_a_lost_lease_waits_and_is_not_stored_in_a_safe_form(
        logs: list[str]) -> None:
    """A fenced store under a lost lease refuses every write (``LeaseLost``): that is not the
    frame's fault, so it is not rewritten as ``ascii()`` (its partition's next owner has it
    from the stream); it waits in memory like a frame of a store outage."""

    class Fenced(FakeStore):
        lost = False

        def _record(self, frames: Sequence[ReceivedFrame]) -> list[int]:
            if self.lost:
                raise LeaseLost(7, 3)
            return super()._record(frames)

    fenced = Fenced()
    built = Flow(fenced)
    try:
        fenced.lost = True
        built.send(frame("E1", OrderStatus.PENDING, 10))
        assert fenced.updates == [] and unstored(built) == 1
    finally:
        pykka.ActorRegistry.stop_all()
    assert not any("ascii()" in line for line in logs), logs


# Parked updates ------------------------------------------------------------------------------
def entry_position(order_no: str) -> CreatePosition:
    """A position whose entry order the order-update actor learns from its tracker."""
    update = OrderUpdate(order_no=order_no, status=OrderStatus.TRANSIT, segment=Segment.NSE_FNO,
                         security_id="47012", txn_type=TxnType.BUY, product="I", quantity=100,
                         updated_at=T0)
    position = new_position(update, position_id=f"P{order_no}", side=Side.LONG, created_at=T0)
    return CreatePosition(position=position, correlation_id="c", sent_at=T0)


def parked_fill(flow: Flow) -> None:
    """A fill of an order not ours by its client id: parked until a position claims it."""
    flow.send(frame("E1", OrderStatus.TRADED, 100, correlation="someone-else"))


def make_known(flow: Flow, order_no: str = "E1") -> None:
    """A position for the order: its tracker started, and the order-update actor told."""
    created = entry_position(order_no)
    flow.supervisor.tell(created)
    flow.settle()
    flow.orders.tell(KnownPosition(position=created.position))
    flow.settle()


@pytest.fixture
def prefixed(store: FakeStore) -> Iterator[Flow]:
    built = Flow(store, correlation_prefix="ours-")
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_a_park_cannot_be_stored_then_it_is_delivered_when_its_order_becomes_known(
        prefixed: Flow, store: FakeStore) -> None:
    store.fail_parks = True
    parked_fill(prefixed)
    assert prefixed.orders.proxy().parked.get(timeout=5) == 1
    assert store.parked == []
    make_known(prefixed)
    position = store.positions["PE1"]
    assert (position.status, position.quantity) == (PositionStatus.ACTIVE, 100)
    assert prefixed.orders.proxy().parked.get(timeout=5) == 0


def test_a_park_kept_in_memory_is_stored_when_the_store_is_back(prefixed: Flow,
                                                                store: FakeStore) -> None:
    store.fail_parks = True
    parked_fill(prefixed)
    store.fail_parks = False
    retry(prefixed)
    assert [p.order_no for p in store.parked] == ["E1"]
    make_known(prefixed)
    assert store.parked == []
    assert store.positions["PE1"].quantity == 100


def test_a_park_the_store_cannot_hold_is_kept_in_memory_and_delivered_when_known(
        prefixed: Flow, store: FakeStore) -> None:
    store.refuse_text = "\U0001f4a5"
    raw = frame("E1", OrderStatus.TRADED, 100, correlation="other-X").replace("X", "\U0001f4a5")
    prefixed.send(raw)
    assert ast.literal_eval(store.updates[0].raw) == raw  # the frame, in its safe form
    assert store.parked == [] and prefixed.orders.proxy().parked.get(timeout=5) == 1
    make_known(prefixed)
    assert store.positions["PE1"].quantity == 100


def test_when_taking_parked_updates_fails_then_it_is_retried_and_they_are_delivered(
        prefixed: Flow, store: FakeStore) -> None:
    parked_fill(prefixed)
    assert [p.order_no for p in store.parked] == ["E1"]
    store.fail_parks = True
    make_known(prefixed)
    assert store.fills("PE1") == []  # not yet: the parked fill is still in the store
    assert prefixed.orders.proxy().parked.get(timeout=5) == 1
    store.fail_parks = False
    retry(prefixed)
    assert store.parked == []
    assert store.positions["PE1"].quantity == 100


def test_when_parked_updates_cannot_be_read_at_start_up_then_they_are_read_later(
        prefixed: Flow, store: FakeStore) -> None:
    store.park_update("E1", frame("E1", OrderStatus.TRADED, 100, correlation="x"), T0)
    store.fail_parks = True
    prefixed.orders.proxy().load([]).get(timeout=5)  # the actor starts all the same
    make_known(prefixed)
    store.fail_parks = False
    retry(prefixed)
    assert store.parked == []
    assert store.positions["PE1"].quantity == 100


# NUL characters ------------------------------------------------------------------------------
def with_nul(raw: str, field: str, value: str) -> str:
    """``raw`` with ``field`` set to ``value`` and a NUL, JSON-escaped (``\\u0000``): parsing
    turns it into a real NUL inside an otherwise valid update."""
    data = json.loads(raw)
    data["Data"][field] = f"{value}\x00"
    text = json.dumps(data)
    assert "\x00" not in text and "\\u0000" in text
    return text


def test_a_nul_in_an_order_number_is_rejected_naming_the_field_and_its_frame_stored(
        flow: Flow, store: FakeStore, logs: list[str]) -> None:
    corrupt = with_nul(frame("E1", OrderStatus.TRADED, 100), "OrderNo", "E1")
    flow.send(corrupt)
    flow.send(frame("E1", OrderStatus.TRADED, 100, seconds=1))
    rejected, accepted = store.updates
    assert (rejected.raw, rejected.accepted, rejected.order_no) == (corrupt, False, "E1\x00")
    assert rejected.reason is not None and "order_no holds a NUL" in rejected.reason
    assert accepted.accepted
    assert list(store.positions) == ["PE1"]  # no second position for the corrupt number
    assert any(line.startswith("ERROR") and "a fill of 100 rejected" in line for line in logs)


def test_a_nul_in_free_text_is_replaced_and_the_fill_routed(flow: Flow,
                                                            store: FakeStore) -> None:
    flow.send(with_nul(frame("E1", OrderStatus.TRADED, 100), "Symbol", "NIFTY"))
    assert store.updates[0].accepted
    assert store.positions["PE1"].quantity == 100


def test_a_raw_nul_byte_makes_a_rejection_stored_exactly(flow: Flow, store: FakeStore) -> None:
    raw = frame("E1", OrderStatus.TRADED, 100).replace("E1", "E\x001")
    flow.send(raw)
    flow.send(frame("E2", OrderStatus.TRADED, 10))
    assert [(u.raw, u.accepted) for u in store.updates] == [(raw, False), (
        frame("E2", OrderStatus.TRADED, 10), True)]
    assert list(store.positions) == ["PE2"]
