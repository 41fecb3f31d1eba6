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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from models.marks import Basis, net_at, order_fees, realized_pnl
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


def plain_net(position: Position, policy: ExitPolicy) -> Decimal:
    """What a plain closed position made net of fees: ``rules.closed_net``, term for term
    (the same sums in the same order, so the same ``Decimal``), in one pass over its
    orders."""
    entry_qty, entry_value, exit_qty, exit_value, executed = 0, _ZERO, 0, _ZERO, 0
    for order in position.orders:
        progress = order.progress
        if progress.traded_qty > 0:
            executed += 1
        if order.role is OrderRole.ENTRY:
            entry_qty += progress.traded_qty
            entry_value += progress.traded_value
        else:
            exit_qty += progress.traded_qty
            exit_value += progress.traded_value
    fees = order_fees(executed, policy.fee_per_order)
    if not entry_qty:
        return -fees
    entry = entry_value / entry_qty
    exit_price = exit_value / exit_qty if exit_qty else None
    sign = position.side.sign
    realized = _ZERO if exit_price is None else \
        realized_pnl(sign, entry, exit_price, min(exit_qty, entry_qty))
    basis = Basis(orders=position.orders, side=position.side, sign=sign, entry=entry,
                  quantity=max(0, entry_qty - exit_qty), realized=realized, fees=fees)
    return net_at(basis, exit_price if exit_price is not None else entry)


def entangled(plain: Sequence[Position], others: Iterable[Position]) -> set[str]:
    """The plain positions to take whole after all: those with an order another position
    holds too (a split order; an exit order whose over-fill opened a remainder, the
    remainder's entry order). The order-update actor's start-up reasoning about remainders
    and split orders then sees them whole."""
    first: dict[str, str] = {}
    shared: set[str] = set()
    for position in (*others, *plain):
        pid = position.position_id
        for number in (position.entry_order_no, *(o.progress.order_no for o in position.orders)):
            if first.setdefault(number, pid) != pid:
                shared.add(number)
    return {p.position_id for p in plain
            if any(o.progress.order_no in shared for o in p.orders)}


def split_closed(closed: Sequence[Position], open_positions: Sequence[Position]
                 ) -> tuple[list[Position], list[Position]]:
    """A start-up's closed positions: those to take whole, and the plain ones, which need
    little (``is_plain``; a plain one whose orders touch another position's is taken whole,
    ``entangled``)."""
    whole: list[Position] = []
    plain: list[Position] = []
    for position in closed:
        (plain if is_plain(position) else whole).append(position)
    tangled = entangled(plain, [*whole, *open_positions])
    if tangled:
        whole += [p for p in plain if p.position_id in tangled]
        plain = [p for p in plain if p.position_id not in tangled]
    return whole, plain
