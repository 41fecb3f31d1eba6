"""Who owns a fill of an order no position placed (SPEC §3.2), as pure functions.

An untracked order's fill first reduces open *opposite* positions on the same instrument and
product, oldest first (an exit we did not ask for); only the remainder opens a new position.
The allocation of one order is cumulative, so re-delivered updates allocate nothing twice.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from models.common import Frozen
from models.orders import OrderProgress
from models.position import OrderRole, Position


class Share(Frozen):
    position_id: str
    qty: int = Field(ge=0)
    value: Decimal


class Allocation(Frozen):
    """Everything allocated so far of one untracked order."""

    order_no: str
    seen: OrderProgress
    shares: tuple[Share, ...] = ()
    opened: str | None = None
    """The position this order opened with its remainder, if any."""

    def share(self, position_id: str) -> Share | None:
        return next((s for s in self.shares if s.position_id == position_id), None)


def allocate(allocation: Allocation, progress: OrderProgress,
             remaining: list[tuple[str, int]]) -> tuple[Allocation, int, Decimal]:
    """Fold a new observation of the order into its allocation.

    ``remaining`` lists opposite positions oldest first with their open quantity. Returns the new
    allocation plus the quantity and value left for a new position (zero when none is left).
    """
    seen = allocation.seen.join(progress)
    delta = seen.traded_qty - allocation.seen.traded_qty
    if delta <= 0:
        return allocation.model_copy(update={"seen": seen}), 0, Decimal(0)
    unit = (seen.traded_value - allocation.seen.traded_value) / delta
    shares = {s.position_id: s for s in allocation.shares}
    left = delta
    for position_id, open_qty in remaining:
        take = min(left, open_qty)
        if take <= 0:
            continue
        old = shares.get(position_id) or Share(position_id=position_id, qty=0, value=Decimal(0))
        shares[position_id] = Share(position_id=position_id, qty=old.qty + take,
                                    value=old.value + unit * take)
        left -= take
        if left == 0:
            break
    updated = allocation.model_copy(update={"seen": seen, "shares": tuple(shares.values())})
    return updated, left, unit * left


def share_progress(allocation: Allocation, share: Share) -> OrderProgress:
    """The cumulative progress of the order as seen by one position it reduced."""
    return OrderProgress(order_no=allocation.order_no, status=allocation.seen.status,
                         traded_qty=share.qty, traded_value=share.value,
                         updated_at=allocation.seen.updated_at)


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
