"""What real brokers do, and what must never follow from it: a lost fill or a second exit
(SPEC §11.1-§11.3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pykka
import pytest

from models.common import TxnType, exit_client_id
from models.orders import OrderStatus
from models.position import ExitReason, PositionStatus
from tests.actors.test_order_updates import Flow, frame
from tests.actors.test_tracker_flow import price


@pytest.fixture
def prefixed() -> Iterator[Flow]:
    built = Flow(correlation_prefix="algo-")
    yield built
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def flow() -> Iterator[Flow]:
    built = Flow()
    yield built
    pykka.ActorRegistry.stop_all()


def books_agree(flow: Flow) -> bool:
    report = flow.orders.proxy().books().get(timeout=5)
    assert report.agree, report.line()
    return True


def _without(raw: str, *keys: str) -> str:
    document = json.loads(raw)
    for key in keys:
        document["Data"].pop(key, None)
    return json.dumps(document)


def test_with_a_prefix_policy_a_manual_close_at_the_broker_still_closes_the_position(
        prefixed: Flow) -> None:
    prefixed.send(frame("E1", OrderStatus.TRADED, 100, correlation="algo-1"))
    assert prefixed.store.positions["PE1"].quantity == 100
    # The trader closes it in the broker's app: no prefix, opposite side, same product.
    prefixed.send(frame("M1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="205"))
    position = prefixed.store.positions["PE1"]
    assert (position.status, position.exit_reason) == (PositionStatus.EXITED,
                                                       ExitReason.BROKER_EXIT)
    price(prefixed, "170")  # far below the stop loss: nothing left to exit
    assert prefixed.gateway.placed == {}
    assert "PM1" not in prefixed.store.positions  # no remainder: nothing opened from it
    assert books_agree(prefixed)


def test_with_a_prefix_policy_an_untracked_entry_is_still_not_tracked(prefixed: Flow) -> None:
    prefixed.send(frame("X1", OrderStatus.TRADED, 100))
    assert prefixed.store.positions == {}
    report = prefixed.orders.proxy().books().get(timeout=5)
    assert report.agree and report.untracked == {"NSE_FNO:47012/I": 100}


def _exiting(flow: Flow) -> str:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    price(flow, "170")  # stop loss
    client_id = exit_client_id("PE1", 1)
    assert client_id in flow.gateway.placed
    return client_id


def test_a_traded_exit_update_without_quantities_closes_the_position(flow: Flow) -> None:
    client_id = _exiting(flow)
    traded = frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="170",
                   correlation=client_id)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity"))
    position = flow.store.positions["PE1"]
    assert (position.status, position.exit_reason) == (PositionStatus.EXITED,
                                                       ExitReason.STOP_LOSS)
    assert position.exit_price == Decimal("170")
    price(flow, "160")
    assert list(flow.gateway.placed) == [client_id]  # no second exit
    assert books_agree(flow)


def test_a_traded_exit_update_without_quantities_or_price_closes_it_at_the_known_price(
        flow: Flow) -> None:
    client_id = _exiting(flow)
    traded = frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="170",
                   correlation=client_id)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity", "AvgTradedPrice"))
    position = flow.store.positions["PE1"]
    assert position.status is PositionStatus.EXITED and position.quantity == 0
    assert position.exit_price is not None
    price(flow, "160")
    assert list(flow.gateway.placed) == [client_id]
    assert books_agree(flow)


def test_an_exit_fill_larger_than_the_position_opens_the_opposite_remainder(flow: Flow) -> None:
    client_id = _exiting(flow)
    # The broker fills 150 against our 100 (a manual order raced ours into one fill).
    flow.send(frame("X1", OrderStatus.TRADED, 150, txn=TxnType.SELL, qty=150, avg="170",
                    correlation=client_id))
    position = flow.store.positions["PE1"]
    assert position.status is PositionStatus.EXITED and position.closed_qty == 100
    assert position.excess_qty == 50 and position.exit_price == Decimal("170")
    remainder = [p for p in flow.store.positions.values() if p.position_id != "PE1"]
    assert len(remainder) == 1
    (short,) = remainder
    assert (short.side.value, short.quantity, short.status) == ("SHORT", 50,
                                                                PositionStatus.ACTIVE)
    assert short.entry_price == Decimal("170")
    assert books_agree(flow)

