"""A closed position as a start-up needs it (SPEC §13: a takeover).

A runner that takes a partition over reads the day's closed positions: the order-update actor
learns which position owns each of their orders (a frame of one, delivered again, must find its
owner and not open a position of its own) and what the broker booked of them, and the PnL
writer sums what they made. Taken whole, the order-update actor's start-up work (remainders,
split orders, each exit order's excess) and the PnL writer's came to about 55 µs a position
on top of its decoding: 0.19 s for an account at DhanHQ's cap of a day's orders (7,000 orders,
3,500 positions), paid for each account of each partition handed over (``bench.takeover``).

A *plain* closed position (exited, one entry order, exit orders that closed exactly what it
entered: most of a day's) needs none of that reasoning: its ``ClosedDigest`` names its orders'
owner, what they booked and what it made. Every other closed position (an over-fill, a
remainder, a split order, a broker's reduction) is taken whole, as before, and so is a plain
one whose orders another position holds too (``entangled``), so that the reasoning about
remainders and split orders sees every position it concerns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from models.common import Segment, Side
from models.marks import Basis, net_at, order_fees, realized_pnl
from models.policy import ExitPolicy
from models.position import OrderRole, Position, PositionStatus

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class DigestOrder:
    order_no: str
    role: OrderRole
    attempt: int | None
    traded_qty: int
    traded_value: Decimal


@dataclass(frozen=True, slots=True)
class ClosedDigest:
    """What a start-up needs of a plain closed position (see the module)."""

    position_id: str
    entry_order_no: str
    segment: Segment
    security_id: str
    product: str | None
    side: Side
    exited_at: datetime
    orders: tuple[DigestOrder, ...]

    def net(self, policy: ExitPolicy) -> Decimal:
        """What it made net of fees: ``rules.closed_net`` of the whole position, term for
        term (the same sums in the same order, so the same ``Decimal``)."""
        entry_qty, entry_value, exit_qty, exit_value = 0, _ZERO, 0, _ZERO
        for order in self.orders:
            if order.role is OrderRole.ENTRY:
                entry_qty += order.traded_qty
                entry_value += order.traded_value
            else:
                exit_qty += order.traded_qty
                exit_value += order.traded_value
        fees = order_fees(sum(1 for o in self.orders if o.traded_qty > 0),
                          policy.fee_per_order)
        if not entry_qty:
            return -fees
        entry = entry_value / entry_qty
        exit_price = exit_value / exit_qty if exit_qty else None
        sign = self.side.sign
        realized = _ZERO if exit_price is None else \
            realized_pnl(sign, entry, exit_price, min(exit_qty, entry_qty))
        basis = Basis(orders=(), side=self.side, sign=sign, entry=entry,
                      quantity=max(0, entry_qty - exit_qty), realized=realized, fees=fees)
        return net_at(basis, exit_price if exit_price is not None else entry)


def digest_of(position: Position) -> ClosedDigest | None:
    """The digest of a closed position, or None when it is not a plain one and must be
    taken whole."""
    if position.status is not PositionStatus.EXITED or position.exited_at is None:
        return None
    orders: list[DigestOrder] = []
    entries = entered = exited = 0
    numbers: set[str] = set()
    for order in position.orders:
        role, progress = order.role, order.progress
        number = progress.order_no
        if (role is not OrderRole.ENTRY and role is not OrderRole.EXIT) or number in numbers:
            return None
        numbers.add(number)
        if role is OrderRole.ENTRY:
            if number != position.entry_order_no:
                return None
            entries += 1
            entered += progress.traded_qty
        else:
            exited += progress.traded_qty
        orders.append(DigestOrder(order_no=number, role=role, attempt=order.attempt,
                                  traded_qty=progress.traded_qty,
                                  traded_value=progress.traded_value))
    if entries != 1 or exited != entered:
        return None  # an over-fill, a remainder's making, a reduction: taken whole
    return ClosedDigest(position_id=position.position_id,
                        entry_order_no=position.entry_order_no, segment=position.segment,
                        security_id=position.security_id, product=position.product,
                        side=position.side, exited_at=position.exited_at,
                        orders=tuple(orders))


def entangled(digests: Sequence[ClosedDigest], positions: Iterable[Position]) -> set[str]:
    """The digests to read whole after all: those with an order of another position's (an
    order number some other position or digest also holds: a split order, or an exit order
    whose over-fill opened a remainder, the remainder's entry order). The order-update
    actor's start-up reasoning about remainders and split orders then sees them whole."""
    holders: dict[str, set[str]] = {}
    for position in positions:
        for order in position.orders:
            holders.setdefault(order.progress.order_no, set()).add(position.position_id)
        holders.setdefault(position.entry_order_no, set()).add(position.position_id)
    for digest in digests:
        for held in digest.orders:
            holders.setdefault(held.order_no, set()).add(digest.position_id)
    return {d.position_id for d in digests
            if any(len(holders[o.order_no]) > 1 for o in d.orders)}


def split_closed(closed: Sequence[Position], open_positions: Sequence[Position]
                 ) -> tuple[list[Position], list[ClosedDigest]]:
    """A start-up's closed positions: the plain ones as digests, the rest whole, and a plain
    one whose orders touch another position's (``entangled``) whole after all."""
    whole: list[Position] = []
    plain: dict[str, Position] = {}
    digests: list[ClosedDigest] = []
    for position in closed:
        digest = digest_of(position)
        if digest is None:
            whole.append(position)
        else:
            digests.append(digest)
            plain[digest.position_id] = position
    tangled = entangled(digests, [*whole, *open_positions])
    if tangled:
        digests = [d for d in digests if d.position_id not in tangled]
        whole += [plain[pid] for pid in sorted(tangled)]
    return whole, digests
