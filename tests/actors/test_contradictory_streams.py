"""Broker streams that contradict themselves (issue 15 "Bad input"): an exit fill on an EXITED
position, quantities that do not add up, a status nobody knows. No actor stops, no quantity is
dropped, our book stays equal to the broker's, and each anomaly is alarmed (status and report
``alarms``), counted (``anomalies``), stored (with its reason) and traced (kind ``anomaly``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.tracing import recorder as tracing
from actors.tracing.recorder import Tracer
from app.console import status_line
from models.common import Side, TxnType, exit_client_id
from models.orders import OrderStatus
from models.position import PositionStatus
from tests.actors.test_broker_safety import books_agree
from tests.actors.test_order_updates import Flow, frame
from tests.actors.test_tracker_flow import price


@pytest.fixture
def flow() -> Iterator[Flow]:
    tracing.install(Tracer())
    built = Flow()
    yield built
    pykka.ActorRegistry.stop_all()
    tracing.install(None)


def _traced(kind: str) -> list[dict[str, Any]]:
    active = tracing.tracer()
    assert active is not None
    return [record for ring in list(active.rings.values()) for record in list(ring)
            if isinstance(record, dict) and record.get("kind") == kind]


def _edit(raw: str, **fields: object) -> str:
    document = json.loads(raw)
    document["Data"].update(fields)
    return json.dumps(document)


def _status(flow: Flow) -> PositionStatus:
    return flow.store.positions["PE1"].status


def _alive(flow: Flow) -> bool:
    assert flow.orders.is_alive() and flow.supervisor.is_alive()
    assert flow.ctx.metrics.get("order_update_errors") == 0
    return True


def test_an_exit_fill_on_an_exited_position_opens_its_remainder_and_is_alarmed(
        flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    price(flow, "170")  # stop loss
    ours = exit_client_id("PE1", 1)
    flow.send(frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="170",
                    correlation=ours, seconds=2))
    assert flow.store.positions["PE1"].status is PositionStatus.EXITED
    # The broker then reports a second exit order of ours filled, and the first one grown.
    flow.send(frame("X2", OrderStatus.TRADED, 50, qty=50, txn=TxnType.SELL, avg="171",
                    correlation=exit_client_id("PE1", 2), seconds=3))
    flow.send(frame("X1", OrderStatus.TRADED, 130, qty=130, txn=TxnType.SELL, avg="170",
                    correlation=ours, seconds=4))
    shorts = {p.position_id: (p.side, p.quantity, p.status)
              for p in flow.store.positions.values() if p.position_id != "PE1"}
    assert shorts == {"PX2": (Side.SHORT, 50, PositionStatus.ACTIVE),
                      "PX1": (Side.SHORT, 30, PositionStatus.ACTIVE)}  # none counted twice
    assert books_agree(flow) and _alive(flow)
    assert flow.ctx.metrics.get("anomalies") == 2
    alarms = flow.ctx.metrics.alarms()
    assert len(alarms) == 2 and "already closed" in alarms[0] and "X2" in alarms[0]
    stored = [d.error for d in flow.store.dead_letters() if d.error.startswith("anomaly")]
    assert stored == ["anomaly: over-fill of 50 by order X2",
                      "anomaly: over-fill of 30 by order X1"]
    assert [(r["position_id"], r["order_no"]) for r in _traced("anomaly")] == [
        ("PE1", "X2"), ("PE1", "X1")]


def test_quantities_that_do_not_add_up_keep_the_over_traded_quantity(flow: Flow) -> None:
    flow.send(_edit(frame("E1", OrderStatus.PART_TRADED, 100, qty=100), TradedQty=120))
    position = flow.store.positions["PE1"]
    assert (position.side, position.quantity) == (Side.LONG, 120)
    assert books_agree(flow) and _alive(flow)
    (row,) = flow.store.order_updates()
    assert row.accepted and row.reason == ("TradedQty 120 exceeds Quantity 100: the 120 traded "
                                           "are kept")
    assert flow.ctx.metrics.get("anomalies") == 1
    assert "exceeds" in flow.ctx.metrics.alarms()[0]
    line = status_line({"metrics": flow.ctx.metrics.snapshot(),
                        "alarms": flow.ctx.metrics.alarms()}, "10:00:00")
    assert "| ANOMALIES 1 (last: " in line and "exceeds" in line
    assert [r["order_no"] for r in _traced("anomaly")] == ["E1"]


def test_an_unknown_status_is_read_as_a_live_order_not_as_a_failed_one(flow: Flow) -> None:
    flow.send(_edit(frame("E1", OrderStatus.PART_TRADED, 40), Status="TRIGGERED"))
    assert flow.store.positions["PE1"].quantity == 40  # the fill it reported is kept
    flow.send(frame("E1", OrderStatus.TRADED, 100, seconds=1))
    price(flow, "170")  # stop loss: our exit order
    ours = exit_client_id("PE1", 1)
    flow.send(_edit(frame("X1", OrderStatus.PENDING, 0, txn=TxnType.SELL, correlation=ours,
                          seconds=2), Status="AMO_RECEIVED"))
    assert _status(flow) is PositionStatus.EXITING  # not a failed exit
    price(flow, "160")
    assert list(flow.gateway.placed) == [ours]  # so no second exit order
    flow.send(frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="160",
                    correlation=ours, seconds=3))
    assert _status(flow) is PositionStatus.EXITED
    assert books_agree(flow) and _alive(flow)
    assert flow.ctx.metrics.get("anomalies") == 2
    reasons = [u.reason for u in flow.store.order_updates() if u.reason]
    assert reasons == ['unknown Status "TRIGGERED": read as PART_TRADED (a live order)',
                       'unknown Status "AMO_RECEIVED": read as PENDING (a live order)']
