"""Properties of the position core: order-insensitive replay, a trailing stop that never loosens,
and PnL that mirrors between long and short."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from models import lifecycle
from models.common import Side
from models.orders import OrderStatus, OrderUpdate
from models.policy import ExitPolicy, TrailingPolicy
from models.position import OrderRole, Position, PositionStatus
from models.rules import pnl, update_marks
from tests.unit.builders import (
    ENTRY_NO,
    EXIT_NO,
    active,
    exiting,
    ok,
    pending,
    t,
    update,
)

CENT = Decimal("0.01")
sides = st.sampled_from([Side.LONG, Side.SHORT])
prices = st.decimals(min_value=Decimal("1.00"), max_value=Decimal("1000.00"), places=2,
                     allow_nan=False, allow_infinity=False)


@st.composite
def order_stream(draw: st.DrawFn, *, order_no: str, side: Side, exit_order: bool,
                 start: datetime, order_qty: int | None = None) -> list[OrderUpdate]:
    """One order's updates as a broker sends them, in time order.

    Acknowledgements (TRANSIT, PENDING) without fills, then partial fills with growing
    cumulative quantity below the order quantity, then one terminal update: TRADED with the whole
    quantity or CANCELLED carrying the last cumulative quantity.
    """
    qty = order_qty or draw(st.integers(min_value=1, max_value=500))
    partial = sorted(draw(st.sets(st.integers(min_value=1, max_value=qty - 1), max_size=4))
                     if qty > 1 else set())
    terminal = draw(st.sampled_from([OrderStatus.TRADED, OrderStatus.CANCELLED]))
    cums = [*partial, qty] if terminal is OrderStatus.TRADED else partial
    acks = draw(st.lists(st.sampled_from([OrderStatus.TRANSIT, OrderStatus.PENDING]),
                         max_size=2))
    gaps = iter(draw(st.lists(st.integers(min_value=1, max_value=90),
                              min_size=len(acks) + len(cums) + 1,
                              max_size=len(acks) + len(cums) + 1)))
    when = start
    updates: list[OrderUpdate] = []

    def emit(status: OrderStatus, cum: int, avg: Decimal | None) -> None:
        nonlocal when
        when += timedelta(seconds=next(gaps))
        updates.append(update(order_no, status, cum, str(avg) if avg is not None else None,
                              at=when, side=side, exit_order=exit_order, quantity=qty))

    for status in acks:
        emit(status, 0, None)
    value, seen, avg = Decimal(0), 0, None
    for cum in cums:
        value += draw(prices) * (cum - seen)
        seen, avg = cum, (value / cum).quantize(CENT)
        if cum < qty:
            emit(draw(st.sampled_from([OrderStatus.PENDING, OrderStatus.PART_TRADED])), cum, avg)
    emit(terminal, seen, avg)
    return updates


def shuffled_with_duplicates(data: st.DataObject,
                             updates: list[OrderUpdate]) -> list[OrderUpdate]:
    extra = data.draw(st.lists(st.sampled_from(updates), max_size=6))
    return data.draw(st.permutations([*updates, *extra]))


def replay(position: Position, updates: list[OrderUpdate], role: OrderRole) -> Position:
    for item in updates:
        position = ok(lifecycle.apply_update(position, item, role, attempt=1))
    return position


def state(position: Position) -> dict[str, Any]:
    return position.model_dump(exclude={"version"})


# (1) and (2): one order's updates in any order, any number of times -------------------------------
@given(st.data(), sides)
def test_entry_updates_in_any_order_and_repeated_give_the_same_position(
        data: st.DataObject, side: Side) -> None:
    updates = data.draw(order_stream(order_no=ENTRY_NO, side=side, exit_order=False,
                                     start=t(9, 30)))
    delivered = shuffled_with_duplicates(data, updates)

    expected = replay(pending(side), updates, OrderRole.ENTRY)
    actual = replay(pending(side), delivered, OrderRole.ENTRY)

    assert state(actual) == state(expected)
    filled = any(item.traded_qty for item in updates)
    assert expected.status is (PositionStatus.ACTIVE if filled else PositionStatus.CANCELLED)


@given(st.data(), sides)
def test_exit_updates_in_any_order_and_repeated_give_the_same_position(
        data: st.DataObject, side: Side) -> None:
    open_qty = data.draw(st.integers(min_value=1, max_value=500))
    start = exiting(side, open_qty, "100")
    updates = data.draw(order_stream(order_no=EXIT_NO, side=side, exit_order=True,
                                     start=t(11), order_qty=open_qty))
    delivered = shuffled_with_duplicates(data, updates)

    expected = replay(start, updates, OrderRole.EXIT)
    actual = replay(start, delivered, OrderRole.EXIT)

    assert state(actual) == state(expected)
    traded = updates[-1].status is OrderStatus.TRADED
    assert expected.status is (PositionStatus.EXITED if traded else PositionStatus.ACTIVE)
    assert expected.quantity == open_qty - updates[-1].traded_qty


# (3) the trailing stop never loosens --------------------------------------------------------------
@given(sides, prices, st.lists(prices, min_size=1, max_size=40),
       st.sampled_from(["percent", "tiers"]),
       st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.2"), places=3),
       st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.2"), places=3))
def test_trailing_stop_never_loosens(side: Side, entry: Decimal, path: list[Decimal],
                                     mode: str, activation: Decimal, trail: Decimal) -> None:
    policy = ExitPolicy(trailing=TrailingPolicy.model_validate(
        {"mode": mode, "activation_pct": activation, "trail_pct": trail}))
    position = active(side, 10, str(entry))
    stops: list[Decimal] = []

    for ltp in path:
        position = update_marks(position, ltp, policy)
        if stops:
            assert position.trail_stop is not None
        if position.trail_stop is not None:
            stops.append(position.trail_stop)

    tightening = sorted(stops) if side is Side.LONG else sorted(stops, reverse=True)
    assert stops == tightening


# (4) PnL mirrors between long and short -----------------------------------------------------------
@given(prices, prices, st.integers(min_value=1, max_value=10_000))
def test_pnl_of_a_long_is_minus_that_of_the_mirrored_short(entry: Decimal, ltp: Decimal,
                                                           qty: int) -> None:
    policy = ExitPolicy()
    fees = policy.fee_per_order  # one executed order while open

    long_pnl = pnl(active(Side.LONG, qty, str(entry)), ltp, policy)
    short_pnl = pnl(active(Side.SHORT, qty, str(entry)), ltp, policy)

    assert long_pnl.gross == -short_pnl.gross
    assert long_pnl.pct == -short_pnl.pct
    assert long_pnl.net + short_pnl.net == -2 * fees
    assert long_pnl.gross == (ltp - entry) * qty
