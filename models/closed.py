"""The day's closed positions at a start-up (SPEC §13: a takeover).

A runner that takes a partition over reads the day's closed positions: the order-update actor
learns which position owns each of their orders (a frame of one, delivered again, must find its
owner and not open a position of its own) and what the broker booked of them, and the PnL
writer sums what they made. Taken whole, the order-update actor's start-up work (remainders,
split orders, each exit order's excess) and the PnL writer's came to about 55 µs a position
on top of its decoding: 0.19 s for an account at DhanHQ's cap of a day's orders (7,000 orders,
3,500 positions), paid for each account of each partition handed over (``bench.takeover``).

A *plain* closed position (exited, one entry order, exit orders that closed exactly what it
entered: most of a day's, ``is_plain``) needs none of that reasoning: its orders' owner and
what they booked are read off its orders, and what it made in one pass over them
(``plain_net``). Every other closed position (an over-fill, a remainder, a split order, a
broker's reduction) is taken whole, as before, and so is a plain one whose orders another
position holds too (``entangled``), so that the reasoning about remainders and split orders
sees every position it concerns.

What a start takes of a plain one (``PlainClosed``: its orders' numbers, roles, attempts and
what they traded) is stored beside it as a few fields (``digest``, written with the position
whenever it is stored plain): a start reads and decodes those, not the whole position. Decoding
whole positions was most of a start's time on a long day (``bench.takeover``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from models.common import Segment, Side
from models.marks import Basis, gross_at, order_fees, realized_pnl
from models.policy import ExitPolicy
from models.position import OrderRole, Position, PositionStatus

_ZERO = Decimal(0)


def is_plain(position: Position) -> bool:
    """Exited, its one entry order its ``entry_order_no``, and exit orders (no other kind,
    no order twice) that closed exactly what it entered."""
    if position.status is not PositionStatus.EXITED or position.exited_at is None:
        return False
    entries = entered = exited = 0
    numbers: set[str] = set()
    for order in position.orders:
        role, progress = order.role, order.progress
        number = progress.order_no
        if number in numbers:
            return False
        numbers.add(number)
        if role is OrderRole.ENTRY:
            if number != position.entry_order_no:
                return False
            entries += 1
            entered += progress.traded_qty
        elif role is OrderRole.EXIT:
            exited += progress.traded_qty
        else:
            return False
    return entries == 1 and exited == entered


class PlainOrder(NamedTuple):
    """An order of a plain closed position, as a start takes it (tuples: a start makes one
    for each order of the day, and a frozen dataclass costs twice as much to make)."""

    order_no: str
    role: OrderRole
    attempt: int | None
    traded_qty: int
    traded_value: Decimal


class PlainClosed(NamedTuple):
    """What a start takes of a plain closed position (``is_plain``): who owns its orders,
    what they booked, what it made."""

    position_id: str
    entry_order_no: str
    side: Side
    segment: Segment
    security_id: str
    product: str | None
    orders: tuple[PlainOrder, ...]
    gross: Decimal | None
    """What it made before fees (``marks.gross_at`` at its exit price); None when nothing
    was entered."""
    executed: int
    """Its orders that traded anything (one fee each)."""


def plain_of(position: Position) -> PlainClosed:
    """The plain closed position's digest (the caller knows it ``is_plain``)."""
    orders = tuple(PlainOrder(o.progress.order_no, o.role, o.attempt, o.progress.traded_qty,
                              o.progress.traded_value) for o in position.orders)
    gross, executed = _gross(orders, position.side)
    return PlainClosed(
        position_id=position.position_id, entry_order_no=position.entry_order_no,
        side=position.side, segment=position.segment, security_id=position.security_id,
        product=position.product, orders=orders, gross=gross, executed=executed)


def _gross(orders: Sequence[PlainOrder], side: Side) -> tuple[Decimal | None, int]:
    """``rules.closed_net``'s gross term for term (the same sums in the same order, so the
    same ``Decimal``), in one pass over the orders; and how many traded."""
    entry_qty, entry_value, exit_qty, exit_value, executed = 0, _ZERO, 0, _ZERO, 0
    for order in orders:
        if order.traded_qty > 0:
            executed += 1
        if order.role is OrderRole.ENTRY:
            entry_qty += order.traded_qty
            entry_value += order.traded_value
        else:
            exit_qty += order.traded_qty
            exit_value += order.traded_value
    if not entry_qty:
        return None, executed
    entry = entry_value / entry_qty
    exit_price = exit_value / exit_qty if exit_qty else None
    sign = side.sign
    realized = _ZERO if exit_price is None else \
        realized_pnl(sign, entry, exit_price, min(exit_qty, entry_qty))
    basis = Basis(orders=(), side=side, sign=sign, entry=entry,
                  quantity=max(0, entry_qty - exit_qty), realized=realized, fees=_ZERO)
    return gross_at(basis, exit_price if exit_price is not None else entry), executed


def digest(position: Position) -> str | None:
    """The text stored beside a position (``read_digest`` reads it back): its digest when
    it is plain and closed, else None (a start takes it whole)."""
    if not is_plain(position):
        return None
    plain = plain_of(position)
    return json.dumps([1, plain.entry_order_no, plain.side.value, plain.segment.value,
                       plain.security_id, plain.product,
                       [[o.order_no, o.role.value, o.attempt, o.traded_qty, str(o.traded_value)]
                        for o in plain.orders],
                       None if plain.gross is None else str(plain.gross), plain.executed],
                      separators=(",", ":"))


_SIDES = {side.value: side for side in Side}
_SEGMENTS = {segment.value: segment for segment in Segment}
_ROLES = {role.value: role for role in OrderRole}


def read_digest(position_id: str, text: str) -> PlainClosed:
    """``digest``'s text read back; ``ValueError`` when it is not one. (A start reads one for
    each closed position of the day: the enums are looked up in dicts, not called.)"""
    try:
        version, entry, side, segment, security, product, orders, gross, executed = \
            json.loads(text)
        if version != 1:
            raise ValueError(f"digest version {version!r}")
        if type(executed) is not int:
            raise ValueError("the orders executed are a whole number")
        return PlainClosed(position_id, _text(entry), _SIDES[side], _SEGMENTS[segment],
                           _text(security), None if product is None else _text(product),
                           tuple(_order(*order) for order in orders),
                           None if gross is None else Decimal(_text(gross)), executed)
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise ValueError(f"position {position_id}: not a closed position's digest: "
                         f"{error!r}") from error


def _text(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"want text, not {type(value).__name__}")
    return value


def _order(number: Any, role: Any, attempt: Any, qty: Any, value: Any) -> PlainOrder:
    if (attempt is not None and type(attempt) is not int) or type(qty) is not int:
        raise ValueError("an order's attempt and quantity are whole numbers")
    return PlainOrder(_text(number), _ROLES[role], attempt, qty, Decimal(_text(value)))


def plain_net(position: PlainClosed, policy: ExitPolicy) -> Decimal:
    """What a plain closed position made net of fees: ``rules.closed_net``, term for term
    (its gross, stored, less its fees under ``policy``: the same ``Decimal``)."""
    fees = order_fees(position.executed, policy.fee_per_order)
    return -fees if position.gross is None else position.gross - fees


def _numbers(position: Position | PlainClosed) -> tuple[str, ...]:
    if isinstance(position, PlainClosed):
        return (position.entry_order_no, *(o.order_no for o in position.orders))
    return (position.entry_order_no, *(o.progress.order_no for o in position.orders))


def entangled(plain: Sequence[PlainClosed], others: Iterable[Position]) -> set[str]:
    """The plain positions to take whole after all: those with an order another position
    holds too (a split order; an exit order whose over-fill opened a remainder, the
    remainder's entry order). The order-update actor's start-up reasoning about remainders
    and split orders then sees them whole."""
    first: dict[str, str] = {}
    shared: set[str] = set()
    everyone: list[Position | PlainClosed] = [*others, *plain]
    for position in everyone:
        pid = position.position_id
        for number in _numbers(position):
            if first.setdefault(number, pid) != pid:
                shared.add(number)
    return {p.position_id for p in plain if any(o.order_no in shared for o in p.orders)}


def split_closed(closed: Sequence[Position], open_positions: Sequence[Position],
                 digests: Sequence[PlainClosed] = ()
                 ) -> tuple[list[Position], list[PlainClosed], list[str]]:
    """A start-up's closed positions: those to take whole, and the plain ones, which need
    little (``is_plain``; ``digests``: plain ones stored as such); and the ids of the
    digests to take whole after all (a plain one whose orders touch another position's,
    ``entangled``: the caller reads them whole)."""
    whole: list[Position] = []
    plain: list[PlainClosed] = list(digests)
    for position in closed:
        if is_plain(position):
            plain.append(plain_of(position))
        else:
            whole.append(position)
    tangled = entangled(plain, [*whole, *open_positions])
    if not tangled:
        return whole, plain, []
    given = {p.position_id: p for p in closed}
    whole += [given[p.position_id] for p in plain
              if p.position_id in tangled and p.position_id in given]
    fetch = [p.position_id for p in plain if p.position_id in tangled
             and p.position_id not in given]
    return whole, [p for p in plain if p.position_id not in tangled], fetch
