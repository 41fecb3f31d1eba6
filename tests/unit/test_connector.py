"""The connector (``app/connector.py``) with our own ports faked: frames NATS refuses wait in
memory in their order and leave in it once NATS takes them; past the cap the oldest is logged
in full and dropped, never silently; an order-book row that cannot be an order update is
logged and skipped, and the rest of the book is published."""

from __future__ import annotations

from decimal import Decimal

from loguru import logger

from app.connector import AccountConnector
from broker.dhan import BrokerOrder, DhanRest, TokenSource
from broker.dhan.outcomes import Answer, Outcome
from broker.transport.ports import TransportError
from models.common import Instrument, Segment, TxnType


class Nats:
    """Our transport port, down until ``up``: what it took, in order."""

    def __init__(self) -> None:
        self.up = False
        self.taken: list[bytes] = []

    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        if not self.up:
            raise TransportError("NATS: no servers available for connection")
        self.taken.append(data)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def connector(nats: Nats, clock: Clock, limit: int) -> AccountConnector:
    tokens = TokenSource(token="t")
    return AccountConnector("1100000001", DhanRest("http://127.0.0.1:9/v2", "1100000001",
                                                   tokens, timeout=0.1),
                            tokens, nats,  # type: ignore[arg-type]
                            order_ws_url="ws://127.0.0.1:9/order-update", retry_every=1.0,
                            backlog_limit=limit, clock=clock)


def test_refused_frames_wait_in_order_and_leave_in_it_once_nats_is_back() -> None:
    nats, clock = Nats(), Clock()
    link = connector(nats, clock, limit=10)
    for n in range(3):
        link._on_frame(f"frame {n}")
    assert link.status().backlog == 3 and nats.taken == []
    nats.up = True
    link._on_frame("frame 3")  # within the retry wait: queued, not sent
    assert nats.taken == [] and link.status().backlog == 4
    clock.now = 1.0
    link._flush()
    assert nats.taken == [f"frame {n}".encode() for n in range(4)]
    assert link.status().backlog == 0 and link.published == 4 and link.last_error is None


def test_past_the_cap_the_oldest_is_logged_in_full_and_dropped() -> None:
    nats, clock = Nats(), Clock()
    link = connector(nats, clock, limit=2)
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        for n in range(4):
            link._on_frame(f"frame {n}")
    finally:
        logger.remove(sink)
    assert link.dropped == 2 and link.status().backlog == 2
    assert "2 WAITING FOR NATS, 2 DROPPED (logged)" in link.status().line()
    assert any("frame 0" in line and "recorded only here" in line for line in lines)
    nats.up, clock.now = True, 5.0
    link._flush()
    assert nats.taken == [b"frame 2", b"frame 3"]


def test_a_book_row_that_is_no_order_update_is_skipped_and_the_rest_published() -> None:
    nats, clock = Nats(), Clock()
    nats.up = True
    link = connector(nats, clock, limit=10)
    fut = Instrument(segment=Segment.NSE_FNO, security_id="49081")

    def row(order_id: str, filled: int) -> BrokerOrder:
        return BrokerOrder(order_id=order_id, status="TRADED", txn_type=TxnType.BUY,
                           instrument=fut, product="INTRADAY", order_type="MARKET",
                           quantity=50, filled_qty=filled, avg_price=Decimal("100"),
                           updated_at=f"2026-12-03 09:2{len(order_id)}:00")

    book = [row("E1", 50), row("E22", -5), row("E333", 50)]  # a negative fill: refused
    link.rest.orders = lambda: Answer(Outcome.OK, book)  # type: ignore[method-assign]
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        link.step()
    finally:
        logger.remove(sink)
    published = b"".join(nats.taken)
    assert b'"OrderNo": "E1"' in published and b'"OrderNo": "E333"' in published
    assert b"E22" not in published and len(nats.taken) == 2
    assert any("order E22 from the order book skipped" in line for line in lines)
