"""The lease-deadline check before an order leaves (SPEC §13): nothing changes the broker's
book once the lease ends within the margin; look-ups still work."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker.leased import LeasedChasingGateway, LeaseExpiring, leased
from broker.ports import ChasingGateway, GatewayError, OrderGateway
from models.common import Instrument, Segment, TxnType
from models.partitions import lease_allows_send
from tests.fakes import FakeGateway

INSTRUMENT = Instrument(segment=Segment.NSE_FNO, security_id="49081")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ChasingFake(FakeGateway):
    chase_after_seconds = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.chased: list[str] = []

    def chase(self, order_no: str) -> Decimal | None:
        self.chased.append(order_no)
        return Decimal("99.5")

    def modifications_left(self, order_no: str) -> int:
        return 3

    def forget(self, order_no: str) -> None: ...


def place(gateway: OrderGateway, client_id: str = "X-P1-1") -> str:
    return gateway.place_order(client_id=client_id, instrument=INSTRUMENT,
                               txn_type=TxnType.SELL, quantity=50, product="I")


def test_when_deadline_beyond_margin_then_send_allowed_else_not() -> None:
    assert lease_allows_send(deadline=106.0, now=100.0, margin=1.0)
    assert not lease_allows_send(deadline=101.0, now=100.0, margin=1.0)  # exactly the margin
    assert not lease_allows_send(deadline=99.0, now=100.0, margin=0.0)


def test_when_lease_live_then_orders_go_through() -> None:
    inner, clock = FakeGateway(), Clock()
    gateway = leased(inner, lambda: 106.0, margin=1.0, clock=clock)
    assert place(gateway) == "EX1"
    gateway.cancel_order("EX1")
    assert list(inner.placed) == ["X-P1-1"] and inner.cancelled == ["EX1"]


def test_when_lease_ends_within_margin_then_nothing_sent_and_refusal_is_a_gateway_error() -> None:
    inner, clock = FakeGateway(), Clock()
    deadline = 106.0
    gateway = leased(inner, lambda: deadline, margin=1.0, clock=clock)
    clock.now = 105.5
    with pytest.raises(LeaseExpiring) as refused:
        place(gateway)
    assert isinstance(refused.value, GatewayError) and refused.value.code == "LEASE"
    with pytest.raises(LeaseExpiring):
        gateway.cancel_order("EX9")
    assert inner.placed == {} and inner.cancelled == []
    deadline = 112.0  # renewed: the retry goes through
    assert place(gateway) == "EX1"


def test_when_lease_lost_then_look_ups_still_answer() -> None:
    inner = FakeGateway()
    place(inner)
    gateway = leased(inner, lambda: 0.0, margin=1.0, clock=Clock())
    found = gateway.find_order("X-P1-1")
    assert found is not None and found.order_no == "EX1"


def test_when_chasing_gateway_leased_then_it_still_chases_under_the_lease() -> None:
    inner, clock = ChasingFake(), Clock()
    gateway = leased(inner, lambda: 106.0, margin=1.0, clock=clock)
    assert isinstance(gateway, LeasedChasingGateway) and isinstance(gateway, ChasingGateway)
    assert gateway.chase_after_seconds == 2.0
    assert gateway.chase("EX1") == Decimal("99.5")
    clock.now = 105.5
    with pytest.raises(LeaseExpiring):
        gateway.chase("EX1")
    assert inner.chased == ["EX1"]
    assert not isinstance(leased(FakeGateway(), lambda: 106.0, margin=1.0), ChasingGateway)
