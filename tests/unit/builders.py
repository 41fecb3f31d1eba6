"""Small builders for domain tests: fixed IST times, order updates, positions in each status.

Every time is a fixed aware datetime on MONDAY (a trading day) unless a test says otherwise;
nothing here reads the wall clock.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from models import lifecycle
from models.common import IST, Segment, Side, position_id_for
from models.orders import OrderProgress, OrderStatus, OrderUpdate
from models.policy import ExitPolicy, PortfolioLimits, RiskConfig, SessionCalendar
from models.position import Applied, ExitReason, OrderRole, Position, new_position
from models.rules import PriceMark, update_marks

MONDAY = date(2025, 1, 6)
SATURDAY = date(2025, 1, 11)
HOLIDAY = date(2025, 2, 26)  # a Wednesday, made a holiday by configuration in the tests

ENTRY_NO = "E1"
EXIT_NO = "X1"
SECURITY_ID = "49081"


def d(value: str | int) -> Decimal:
    return Decimal(value)


def t(hour: int, minute: int = 0, second: int = 0, *, day: date = MONDAY) -> datetime:
    """An exchange (IST) wall-clock time."""
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=IST)


def update(order_no: str, status: OrderStatus, traded_qty: int = 0, avg: str | None = None, *,
           at: datetime | None = None, side: Side = Side.LONG, exit_order: bool = False,
           quantity: int = 100, segment: Segment = Segment.NSE_FNO) -> OrderUpdate:
    """One broker update of an entry order (or, with ``exit_order``, of an exit order)."""
    txn = side.exit_txn if exit_order else side.entry_txn
    return OrderUpdate(order_no=order_no, status=status, segment=segment,
                       security_id=SECURITY_ID, txn_type=txn, product="I", order_type="MKT",
                       quantity=quantity, traded_qty=traded_qty,
                       avg_traded_price=Decimal(avg) if avg is not None else None,
                       updated_at=at)


def progress(order_no: str, status: OrderStatus, traded_qty: int, avg: str,
             at: datetime) -> OrderProgress:
    """A cumulative observation of an order, as the allocation of an untracked order gives it."""
    return OrderProgress(order_no=order_no, status=status, traded_qty=traded_qty,
                         traded_value=Decimal(avg) * traded_qty, updated_at=at)


def ok(applied: Applied) -> Position:
    assert applied.rejection is None, applied.rejection
    return applied.position


def pending(side: Side = Side.LONG, *, segment: Segment = Segment.NSE_FNO,
            created_at: datetime | None = None) -> Position:
    first = update(ENTRY_NO, OrderStatus.TRANSIT, side=side, segment=segment)
    return new_position(first, position_id=position_id_for(ENTRY_NO), side=side,
                        created_at=created_at or t(9, 59))


def active(side: Side = Side.LONG, qty: int = 100, price: str = "100", *,
           segment: Segment = Segment.NSE_FNO, at: datetime | None = None) -> Position:
    """A position whose entry order traded ``qty`` at ``price``."""
    filled = update(ENTRY_NO, OrderStatus.TRADED, qty, price, at=at or t(10), side=side,
                    quantity=qty, segment=segment)
    return ok(lifecycle.apply_update(pending(side, segment=segment), filled, OrderRole.ENTRY))


def exiting(side: Side = Side.LONG, qty: int = 100, price: str = "100", *,
            reason: ExitReason = ExitReason.STOP_LOSS, at: datetime | None = None) -> Position:
    return ok(lifecycle.request_exit(active(side, qty, price), reason, at or t(11)))


def exit_update(status: OrderStatus, traded_qty: int = 0, avg: str | None = None, *,
                at: datetime, side: Side = Side.LONG, order_no: str = EXIT_NO,
                quantity: int = 100) -> OrderUpdate:
    return update(order_no, status, traded_qty, avg, at=at, side=side, exit_order=True,
                  quantity=quantity)


def apply_exit(position: Position, *updates: OrderUpdate, attempt: int = 1) -> Position:
    for item in updates:
        position = ok(lifecycle.apply_update(position, item, OrderRole.EXIT, attempt=attempt))
    return position


def config(*, holidays: frozenset[date] = frozenset(), daily_loss_limit: str = "0",
           **policy: Any) -> RiskConfig:
    return RiskConfig(policy=ExitPolicy(**policy),
                      portfolio=PortfolioLimits(daily_loss_limit=Decimal(daily_loss_limit)),
                      calendar=SessionCalendar(holidays=holidays))


def mark(ltp: str, at: datetime) -> PriceMark:
    return PriceMark(ltp=Decimal(ltp), at=at)


def marked(position: Position, *prices: str, policy: ExitPolicy | None = None) -> Position:
    """Fold a price path into peak price, high-water mark and trailing stop."""
    for price in prices:
        position = update_marks(position, Decimal(price), policy or ExitPolicy())
    return position
