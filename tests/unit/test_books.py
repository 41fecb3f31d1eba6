"""The broker's book against ours (SPEC §11.1), as a pure comparison."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from models.books import compare
from models.common import IST, Segment, Side
from models.orders import OrderProgress, OrderStatus
from models.position import OrderRole, Position, PositionStatus, TrackedOrder

KEY = (Segment.NSE_FNO, "47012", "I")
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)


def position(side: Side, qty: int, *, status: PositionStatus = PositionStatus.ACTIVE,
             pid: str = "P1") -> Position:
    entry = OrderProgress(order_no=pid, status=OrderStatus.TRADED, traded_qty=qty,
                          traded_value=Decimal(100) * qty)
    return Position(position_id=pid, entry_order_no=pid, segment=KEY[0], security_id=KEY[1],
                    product=KEY[2], side=side, status=status, created_at=T0,
                    orders=(TrackedOrder(role=OrderRole.ENTRY, progress=entry),))


def test_books_agree_when_our_open_quantity_is_the_broker_net() -> None:
    report = compare({KEY: -50}, [position(Side.LONG, 100, pid="A"),
                                  position(Side.SHORT, 150, pid="B")])
    assert report.agree and report.line() == "books: agree"


def test_a_fill_nobody_tracks_is_a_difference_named_by_instrument_and_product() -> None:
    report = compare({KEY: 100}, [])
    assert not report.agree
    assert report.differences == {"NSE_FNO:47012/I": (100, 0)}
    assert report.line() == "books: DIFFER NSE_FNO:47012/I broker +100 ours +0"


def test_closed_positions_count_nothing_and_policy_untracked_fills_are_left_out() -> None:
    closed = position(Side.LONG, 100, status=PositionStatus.EXITED)
    report = compare({KEY: 30}, [closed], untracked={KEY: 30})
    assert report.agree and report.untracked == {"NSE_FNO:47012/I": 30}
