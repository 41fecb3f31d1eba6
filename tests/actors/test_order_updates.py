"""OrderUpdateActor: parse once, drop duplicates, route, create, reduce, park; never die."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.orders.actor import OrderUpdateActor
from models.common import Segment, Side, TxnType, exit_client_id
from models.messages import OrderUpdateReceived
from models.orders import OrderStatus, OrderUpdate
from models.position import ExitReason, PositionStatus
from models.wire import parse_order_update, to_dhan_frame
from store.ports import Store
from tests.actors.test_tracker_flow import T0, System, price
from tests.fakes import FakeGateway, FakeStore


class Flow(System):
    """The trackers and the order-update actor on ``store``, or the actor on ``orders_store``."""

    def __init__(self, store: FakeStore | None = None, *, orders_store: Store | None = None,
                 **options: Any) -> None:
        super().__init__(store or FakeStore(), FakeGateway())
        self.orders = OrderUpdateActor.start(orders_store or self.store, self.supervisor,
                                             self.clock, self.ctx.metrics, **options)
        peers = self.supervisor.proxy().peers.get(timeout=5)
        self.supervisor.proxy().wire(replace(peers, orders=self.orders)).get(timeout=5)

    def send(self, raw: str) -> None:
        self.orders.tell(OrderUpdateReceived(raw=raw, correlation_id="u", sent_at=T0))
        self.settle()

    def settle(self) -> None:
        for _ in range(3):
            self.orders.proxy().parked.get(timeout=5)
            super().settle()


@pytest.fixture
def flow() -> Iterator[Flow]:
    built = Flow()
    yield built
    pykka.ActorRegistry.stop_all()


def frame(order_no: str, status: OrderStatus, traded: int, *, txn: TxnType = TxnType.BUY,
          qty: int = 100, avg: str = "200", seconds: int = 0, correlation: str | None = None,
          product: str = "I") -> str:
    return to_dhan_frame(OrderUpdate(
        order_no=order_no, status=status, segment=Segment.NSE_FNO, security_id="47012",
        txn_type=txn, product=product, order_type="MKT", quantity=qty, traded_qty=traded,
        avg_traded_price=Decimal(avg) if traded else None, correlation_id=correlation,
        updated_at=T0 + timedelta(seconds=seconds)))


def test_when_entry_fill_of_unknown_order_then_long_position_created(flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    position = flow.store.positions["PE1"]
    assert (position.status, position.side, position.quantity) == (
        PositionStatus.ACTIVE, Side.LONG, 100)
    assert position.entry_price == Decimal("200")


def test_when_updates_duplicated_and_out_of_order_then_state_is_the_same(flow: Flow) -> None:
    updates = [frame("E1", OrderStatus.TRADED, 100, avg="201", seconds=3),
               frame("E1", OrderStatus.PENDING, 40, avg="200", seconds=1),
               frame("E1", OrderStatus.TRADED, 100, avg="201", seconds=3),
               frame("E1", OrderStatus.PENDING, 0, seconds=0)]
    for raw in updates:
        flow.send(raw)
    position = flow.store.positions["PE1"]
    assert position.quantity == 100
    assert position.entry_price == Decimal("201")
    assert len(flow.store.fills("PE1")) == 1
    assert len(flow.store.updates) == 4  # every raw frame is kept for audit


def test_when_payload_is_garbage_then_rejected_stored_and_actor_lives(flow: Flow) -> None:
    flow.send("{not json")
    flow.send(json.dumps({"Type": "order_alert", "Data": None}))
    flow.send(frame("E1", OrderStatus.TRADED, 10))
    assert [u.accepted for u in flow.store.updates] == [False, False, True]
    assert flow.store.updates[0].raw == "{not json"
    assert flow.ctx.metrics.get("rejected_updates") == 2
    assert flow.store.positions["PE1"].quantity == 10


def test_when_update_without_fill_for_unknown_order_then_parked_until_known(flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.PENDING, 0))
    assert [p.order_no for p in flow.store.parked] == ["E1"]
    assert "PE1" not in flow.store.positions
    flow.send(frame("E1", OrderStatus.TRADED, 100, seconds=2))
    assert flow.store.parked == []
    assert flow.store.positions["PE1"].status is PositionStatus.ACTIVE


def test_when_untracked_opposite_fill_then_oldest_position_reduced_then_closed(flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100, seconds=0))
    flow.send(frame("E2", OrderStatus.TRADED, 50, seconds=1))
    flow.send(frame("S9", OrderStatus.PENDING, 120, txn=TxnType.SELL, qty=150, avg="210",
                    seconds=5))
    oldest, newer = flow.store.positions["PE1"], flow.store.positions["PE2"]
    assert (oldest.status, oldest.exit_reason, oldest.exit_price) == (
        PositionStatus.EXITED, ExitReason.BROKER_EXIT, Decimal("210"))
    assert (newer.status, newer.quantity) == (PositionStatus.ACTIVE, 30)
    flow.send(frame("S9", OrderStatus.TRADED, 150, txn=TxnType.SELL, qty=150, avg="210",
                    seconds=6))
    assert flow.store.positions["PE2"].status is PositionStatus.EXITED
    assert "PS9" not in flow.store.positions


def test_when_opposite_fill_exceeds_open_quantity_then_remainder_opens_short(flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    flow.send(frame("S9", OrderStatus.TRADED, 130, txn=TxnType.SELL, qty=130, avg="205",
                    seconds=2))
    assert flow.store.positions["PE1"].status is PositionStatus.EXITED
    short = flow.store.positions["PS9"]
    assert (short.side, short.quantity, short.entry_price) == (Side.SHORT, 30, Decimal("205"))


def test_when_stop_hit_then_exit_fill_routed_by_client_id_and_single_order(flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    price(flow, "176")
    client_id = exit_client_id("PE1", 1)
    order_no = flow.gateway.placed[client_id][0]
    exit_frame = frame(order_no, OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="175.5",
                       seconds=3, correlation=client_id)
    flow.send(exit_frame)
    flow.send(exit_frame)
    position = flow.store.positions["PE1"]
    assert (position.status, position.exit_reason, position.exit_price) == (
        PositionStatus.EXITED, ExitReason.STOP_LOSS, Decimal("175.5"))
    assert len(flow.gateway.placed) == 1


def test_news_leaves_out_only_what_the_actor_holds_already(flow: Flow) -> None:
    """What a reconcile gives in (``OrderUpdateActor.news``): an exact repeat, and an untracked
    order's fill already allocated, are held; more fill, and an order nobody knows, are news."""
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    flow.send(frame("W1", OrderStatus.TRADED, 40, txn=TxnType.SELL, qty=40, seconds=2))
    assert flow.store.positions["PE1"].quantity == 60
    updates = [parse_order_update(raw) for raw in (
        frame("E1", OrderStatus.TRADED, 100),  # a repeat
        frame("W1", OrderStatus.TRADED, 40, txn=TxnType.SELL, qty=40, seconds=1),  # as read
        frame("W1", OrderStatus.TRADED, 60, txn=TxnType.SELL, qty=60, seconds=3),  # filled more
        frame("N9", OrderStatus.PENDING, 0, seconds=4))]  # nobody knows it
    assert all(isinstance(u, OrderUpdate) for u in updates)
    assert flow.orders.proxy().news(updates).get(timeout=5) == [False, False, True, True]
