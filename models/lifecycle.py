"""Applying order progress, exit requests and exit failures to a position (pure).

Every function returns an ``Applied``: the new position (the same object when nothing changed),
the fills it derived, the table event, or a rejection reason. Fills are derived from cumulative
traded quantity, so a seen update changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from models.orders import OrderProgress, OrderStatus, OrderUpdate, traded_in_full
from models.position import (
    CLOSED,
    Applied,
    Event,
    ExitReason,
    Fill,
    OrderRole,
    Position,
    PositionStatus,
    TrackedOrder,
    retraction_order_no,
    transition,
)


def apply_update(position: Position, update: OrderUpdate, role: OrderRole, *,
                 attempt: int | None = None, at: datetime | None = None,
                 last_price: Decimal | None = None) -> Applied:
    """Merge one broker update of an order this position owns (its entry or one of its exits).

    A TRADED update means fully traded (``orders.traded_in_full``): for our exit order the
    quantity it was placed for is what it closes (the open quantity plus what it traded), and
    ``last_price`` prices what the update leaves unpriced."""
    # Pass the update's own observation, not its join with what was seen: the join happens in
    # ``apply_progress`` all the same, and ``opened_at`` needs the time *this* update reported
    # its traded quantity (a joined progress carries the latest time of any update).
    observed = OrderProgress.empty(update.order_no).merge(update)
    tracked = position.order(update.order_no)
    prior = tracked.progress if tracked is not None else OrderProgress.empty(update.order_no)
    known = position.quantity + prior.traded_qty if role is OrderRole.EXIT else None
    joined = prior.join(observed)
    completed = traded_in_full(joined, known, update.fill_price or last_price)
    if completed is not joined:  # the update said TRADED; its quantities were short of it
        observed = completed
    return apply_progress(position, observed, role, attempt=attempt,
                          at=update.updated_at or at)


def holds(position: Position, update: OrderUpdate, role: OrderRole, *, at: datetime) -> bool:
    """Whether ``position`` holds everything ``update`` reports of one of its orders already, so
    that applying it (``apply_update``) changes nothing, whatever the last price and at any time
    from ``at`` on: a start-up need not route a stored frame again that the stored position
    holds (``OrderUpdateActor.recover``). A position's orders only grow by joins, so it then
    holds the update in every later state too. An order that traded "in full" without its
    quantity is never held: what that completes depends on a price."""
    tracked = position.order(update.order_no)
    if tracked is None or tracked.role is not role or tracked.progress.full or (
            update.status is OrderStatus.TRADED and update.traded_qty == 0):
        return False
    applied = apply_update(position, update, role, at=at)
    return applied.position is position and applied.rejection is None


def apply_progress(position: Position, incoming: OrderProgress, role: OrderRole, *,
                   attempt: int | None = None, at: datetime | None = None) -> Applied:
    """Join an observation of one order's cumulative progress into the position."""
    tracked = position.order(incoming.order_no)
    if tracked is not None and tracked.role is not role:
        return Applied(position=position,
                       rejection=f"order {incoming.order_no} is the position's "
                                 f"{tracked.role}, not its {role}")
    old = tracked.progress if tracked else OrderProgress.empty(incoming.order_no)
    new = old.join(incoming)
    opened_at = _earliest_fill_time(position, role, incoming, at)
    if new is old and opened_at == position.opened_at:
        return Applied(position=position)
    order = TrackedOrder(role=role, progress=new,
                         attempt=tracked.attempt if tracked else attempt)
    orders = tuple(order if o is tracked else o for o in position.orders)
    if tracked is None:
        orders = (*orders, order)
    candidate = position.model_copy(update={"orders": orders, "opened_at": opened_at})
    fill = _fill(position, role, old, new, at)
    event = _event(position, candidate, role, order, fill)
    return _transit(position, candidate, event, fill, at)


def _earliest_fill_time(position: Position, role: OrderRole, incoming: OrderProgress,
                        at: datetime | None) -> datetime | None:
    """``opened_at`` is the earliest time any entry fill was reported, whatever the order of
    delivery, so replaying a permutation of updates gives the same value."""
    when = incoming.updated_at or at
    if role is not OrderRole.ENTRY or incoming.traded_qty == 0 or when is None:
        return position.opened_at
    if position.opened_at is None or when < position.opened_at:
        return when
    return position.opened_at


def _fill(position: Position, role: OrderRole, old: OrderProgress, new: OrderProgress,
          at: datetime | None) -> Fill | None:
    delta = new.traded_qty - old.traded_qty
    if delta <= 0:
        return None
    price = (new.traded_value - old.traded_value) / delta
    return Fill(position_id=position.position_id, order_no=new.order_no, role=role,
                cum_qty=new.traded_qty, qty=delta, price=price, at=new.updated_at or at)


def _event(before: Position, after: Position, role: OrderRole, order: TrackedOrder,
           fill: Fill | None) -> Event | None:
    status = order.progress.status
    if role is OrderRole.ENTRY:
        if fill is not None and before.status in CLOSED and before.entry_qty > 0 and \
                after.quantity == 0:
            return None  # a late entry fill that its exits had covered already: still closed
        if fill is not None:
            return Event.ENTRY_FILL
        if status.failed and after.entry_qty == 0:
            return Event.ENTRY_FAILED
        return None
    closed = after.entry_qty > 0 and after.quantity == 0
    if role in (OrderRole.OPPOSITE, OrderRole.RETRACTED):
        if fill is None:
            return None
        return Event.OPPOSITE_FILLED if closed else Event.OPPOSITE_FILL
    if closed and fill is not None:
        return Event.EXIT_FILLED
    current = order.attempt == before.exit_attempt and before.status is PositionStatus.EXITING
    if current and (status.failed or (status is OrderStatus.TRADED
                                      and order.progress.traded_qty > 0)):
        # Failed, or traded in full while the entry grew meanwhile: back to ACTIVE, retried.
        # A TRADED update that says nothing of quantity proves no failure: nothing happens.
        return Event.EXIT_FAILED
    return Event.EXIT_FILL if fill is not None else None


def _transit(before: Position, candidate: Position, event: Event | None, fill: Fill | None,
             at: datetime | None) -> Applied:
    fills = (fill,) if fill else ()
    if event is None:
        return Applied(position=candidate.model_copy(update={"version": before.version + 1}),
                       fills=fills)
    target = transition(before, event)
    if target is None:
        return Applied(position=before,
                       rejection=f"{event} is not allowed in status {before.status}")
    changes: dict[str, object] = {"status": target, "version": before.version + 1}
    if target is PositionStatus.EXITED:
        changes["exited_at"] = (fill.at if fill and fill.at else at) or before.exited_at
        if event is Event.OPPOSITE_FILLED and before.status is PositionStatus.ACTIVE:
            changes["exit_reason"] = ExitReason.BROKER_EXIT
    elif before.status is PositionStatus.EXITED:  # re-opened by a late entry fill
        changes.update(exited_at=None, exit_reason=None)
    return Applied(position=candidate.model_copy(update=changes), fills=fills, event=event)


def fit_remainder(remainder: Position, excess: OrderProgress, *,
                  at: datetime | None = None) -> Applied:
    """Make an over-fill's remainder (SPEC §11.1) hold what ``excess`` says: how far exit order
    ``excess.order_no`` went past its own position's open quantity, as that position stands
    now (``Position.excess_fills``). Cumulative both ways, so a repeat changes nothing (a
    restart may tell it again): past what the remainder holds, its entry from that order
    grows; short of it (the position's entry grew since: a contradictory stream), the
    difference is given back (``OrderRole.RETRACTED``) at the price it was taken, so the
    remainder neither keeps exposure the broker no longer reports nor counts PnL on it."""
    number = excess.order_no
    taken = _progress(remainder, number)
    back = _progress(remainder, retraction_order_no(number))
    held = taken.traded_qty - back.traded_qty
    if excess.traded_qty > held:
        qty = excess.traded_qty + back.traded_qty
        value = excess.traded_value * qty / excess.traded_qty
        grown = excess.model_copy(update={"traded_qty": qty, "traded_value": value})
        return apply_progress(remainder, grown, OrderRole.ENTRY, at=at)
    if excess.traded_qty < held:
        qty = taken.traded_qty - excess.traded_qty
        given = OrderProgress(order_no=retraction_order_no(number), status=OrderStatus.TRADED,
                              traded_qty=qty, traded_value=taken.traded_value * qty /
                              taken.traded_qty, updated_at=at)
        return apply_progress(remainder, given, OrderRole.RETRACTED, at=at)
    return Applied(position=remainder)


def _progress(position: Position, order_no: str) -> OrderProgress:
    order = position.order(order_no)
    return order.progress if order is not None else OrderProgress.empty(order_no)


def request_exit(position: Position, reason: ExitReason, at: datetime) -> Applied:
    """Start a new exit attempt; the caller persists the intent before placing the order."""
    target = transition(position, Event.EXIT_REQUESTED)
    if target is None or position.quantity <= 0:
        return Applied(position=position,
                       rejection=f"cannot exit a {position.status} position "
                                 f"with open quantity {position.quantity}")
    return Applied(position=position.model_copy(update={
        "status": target, "exit_reason": reason, "exit_attempt": position.exit_attempt + 1,
        "exit_requested_at": at, "version": position.version + 1}),
        event=Event.EXIT_REQUESTED)


def exit_failed(position: Position, attempt: int) -> Applied:
    """The exit order of ``attempt`` could not be placed (no order update will ever come)."""
    if attempt != position.exit_attempt:
        return Applied(position=position, rejection=f"attempt {attempt} is not the current one")
    target = transition(position, Event.EXIT_FAILED)
    if target is None:
        return Applied(position=position,
                       rejection=f"{Event.EXIT_FAILED} is not allowed in status {position.status}")
    return Applied(position=position.model_copy(update={
        "status": target, "version": position.version + 1}), event=Event.EXIT_FAILED)
