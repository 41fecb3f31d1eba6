"""Untracked orders split between positions (SPEC §3.2): how the order-update actor rebuilds a
split from the stored positions at start-up, and what of an order its opened position owns.

Pure functions of the actor's data; they would sit in ``models/allocation.py`` beside
``allocate`` and move there with it.
"""

from __future__ import annotations

from decimal import Decimal

from models.allocation import Allocation, Share
from models.orders import OrderProgress
from models.position import OrderRole, Position


def rebuilt_allocation(number: str, positions: list[Position]) -> Allocation:
    """How order ``number`` was split between ``positions``: what each reduced, who it opened."""
    shares, opened, seen = [], None, OrderProgress.empty(number)
    qty, value = 0, Decimal(0)
    for position in positions:
        order = position.order(number)
        if order is None:
            continue
        qty += order.progress.traded_qty
        value += order.progress.traded_value
        seen = seen.join(order.progress.model_copy(update={"traded_qty": 0,
                                                           "traded_value": Decimal(0)}))
        if order.role is OrderRole.ENTRY:
            opened = position.position_id
        else:
            shares.append(Share(position_id=position.position_id,
                                qty=order.progress.traded_qty,
                                value=order.progress.traded_value))
    seen = seen.model_copy(update={"traded_qty": qty, "traded_value": value})
    return Allocation(order_no=number, seen=seen, shares=tuple(shares), opened=opened)


def entry_progress(allocation: Allocation) -> OrderProgress:
    """The progress of the order that the position it opened owns: what no share took."""
    if not allocation.shares:  # the common case, an order that reduced nothing: all of it
        return allocation.seen
    qty = allocation.seen.traded_qty - sum(s.qty for s in allocation.shares)
    value = allocation.seen.traded_value - sum((s.value for s in allocation.shares), Decimal(0))
    return OrderProgress(order_no=allocation.order_no, status=allocation.seen.status,
                         traded_qty=qty, traded_value=value,
                         updated_at=allocation.seen.updated_at)
