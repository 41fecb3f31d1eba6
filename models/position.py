"""The position and its state machine (SPEC §3.2), as pure functions over frozen values.

A position keeps the merged progress of every order that touched it (its entry order, our exit
orders, and its share of untracked opposite orders). Quantities and prices are derived from that
progress, so re-applying an update is a no-op and the order updates of one order may arrive in
any order. Status changes follow one table, ``TRANSITIONS``; anything else is returned as a
rejection, never raised.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import Field

from models.common import AwareDatetime, Frozen, Segment, Side, exit_client_id
from models.orders import OrderProgress, OrderUpdate


class PositionStatus(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    EXITING = "EXITING"
    EXITED = "EXITED"
    CANCELLED = "CANCELLED"


OPEN = frozenset({PositionStatus.PENDING, PositionStatus.ACTIVE, PositionStatus.EXITING})
PRICED = frozenset({PositionStatus.ACTIVE, PositionStatus.EXITING})
CLOSED = frozenset({PositionStatus.EXITED, PositionStatus.CANCELLED})


class ExitReason(StrEnum):
    """Declared in priority order: when several rules fire on one price, the first wins."""

    KILL_SWITCH = "KILL_SWITCH"
    SESSION_END = "SESSION_END"
    STOP_LOSS = "STOP_LOSS"
    TRAILING_STOP = "TRAILING_STOP"
    TAKE_PROFIT = "TAKE_PROFIT"
    TIME_STOP = "TIME_STOP"
    TIME_EXIT = "TIME_EXIT"
    MANUAL = "MANUAL"
    BROKER_EXIT = "BROKER_EXIT"


class OrderRole(StrEnum):
    ENTRY = "ENTRY"
    EXIT = "EXIT"
    OPPOSITE = "OPPOSITE"
    """An order we did not place, on the opposite side, whose fill reduced this position."""
    RETRACTED = "RETRACTED"
    """An over-fill's remainder given back: the exit order that opened it went past its own
    position's open quantity by less than it did (that position's entry grew since), so
    this much of the remainder never was (``lifecycle.fit_remainder``)."""


REDUCING = (OrderRole.EXIT, OrderRole.OPPOSITE, OrderRole.RETRACTED)
"""The roles whose fills reduce a position."""


def retraction_order_no(order_no: str) -> str:
    """The number under which a remainder records what it gave back of exit order
    ``order_no``'s excess (no broker order: ``OrderRole.RETRACTED``)."""
    return f"{order_no}~retracted"


class Event(StrEnum):
    ENTRY_FILL = "ENTRY_FILL"
    ENTRY_FAILED = "ENTRY_FAILED"
    EXIT_REQUESTED = "EXIT_REQUESTED"
    EXIT_FILL = "EXIT_FILL"
    EXIT_FILLED = "EXIT_FILLED"
    EXIT_FAILED = "EXIT_FAILED"
    OPPOSITE_FILL = "OPPOSITE_FILL"
    OPPOSITE_FILLED = "OPPOSITE_FILLED"


S, E = PositionStatus, Event
TRANSITIONS: dict[tuple[PositionStatus, Event], PositionStatus] = {
    (S.PENDING, E.ENTRY_FILL): S.ACTIVE,
    (S.PENDING, E.ENTRY_FAILED): S.CANCELLED,
    (S.ACTIVE, E.ENTRY_FILL): S.ACTIVE,
    (S.ACTIVE, E.EXIT_REQUESTED): S.EXITING,
    (S.EXITING, E.ENTRY_FILL): S.EXITING,
    (S.EXITING, E.EXIT_FILL): S.EXITING,
    (S.EXITING, E.EXIT_FILLED): S.EXITED,
    (S.EXITING, E.EXIT_FAILED): S.ACTIVE,
    (S.ACTIVE, E.OPPOSITE_FILL): S.ACTIVE,
    (S.ACTIVE, E.OPPOSITE_FILLED): S.EXITED,
    (S.EXITING, E.OPPOSITE_FILL): S.EXITING,
    (S.EXITING, E.OPPOSITE_FILLED): S.EXITED,
    # A late fill of an exit order that had already failed still reduces the position.
    (S.ACTIVE, E.EXIT_FILL): S.ACTIVE,
    (S.ACTIVE, E.EXIT_FILLED): S.EXITED,
    # A fill is real exposure and is never dropped: a late entry fill after a cancel (a
    # contradictory stream) or after the position closed re-opens it, so it is watched again.
    (S.CANCELLED, E.ENTRY_FILL): S.ACTIVE,
    (S.EXITED, E.ENTRY_FILL): S.ACTIVE,
    # An exit fill beyond what was open: the position stays closed, the excess is handed on.
    (S.EXITED, E.EXIT_FILL): S.EXITED,
    (S.EXITED, E.EXIT_FILLED): S.EXITED,
    # A remainder closed by its own exit and then given back (``OrderRole.RETRACTED``): its
    # exit's fill is now the excess, handed on as the position it opened.
    (S.EXITED, E.OPPOSITE_FILLED): S.EXITED,
}
del S, E


class TrackedOrder(Frozen):
    role: OrderRole
    progress: OrderProgress
    attempt: int | None = None


class Fill(Frozen):
    """A positive delta of one order's cumulative traded quantity, as applied to a position."""

    position_id: str
    order_no: str
    role: OrderRole
    cum_qty: int = Field(gt=0)
    qty: int = Field(gt=0)
    price: Decimal
    at: AwareDatetime | None = None


class Position(Frozen):
    position_id: str
    entry_order_no: str
    segment: Segment
    security_id: str
    side: Side
    product: str | None = None
    status: PositionStatus = PositionStatus.PENDING
    orders: tuple[TrackedOrder, ...] = ()
    created_at: AwareDatetime
    opened_at: AwareDatetime | None = None
    exited_at: AwareDatetime | None = None
    exit_reason: ExitReason | None = None
    exit_attempt: int = 0
    exit_requested_at: AwareDatetime | None = None
    peak_price: Decimal | None = None
    hwm_pnl: Decimal = Decimal(0)
    trail_stop: Decimal | None = None
    version: int = 0

    # Derived quantities -------------------------------------------------------------------
    def _sum(self, *roles: OrderRole) -> tuple[int, Decimal]:
        qty, value = 0, Decimal(0)
        for order in self.orders:
            if order.role in roles:
                qty += order.progress.traded_qty
                value += order.progress.traded_value
        return qty, value

    @property
    def entry_qty(self) -> int:
        return self._sum(OrderRole.ENTRY)[0]

    @property
    def exit_qty(self) -> int:
        return self._sum(*REDUCING)[0]

    @property
    def quantity(self) -> int:
        """Open quantity: entered minus exited, never below zero."""
        return max(0, self.entry_qty - self.exit_qty)

    @property
    def closed_qty(self) -> int:
        """What the exits closed of this position: at most what it entered."""
        return min(self.entry_qty, self.exit_qty)

    @property
    def excess_qty(self) -> int:
        """Exit fills beyond what was open (a manual close raced ours): the opposite exposure
        they opened belongs to a position of its own (SPEC §11.1)."""
        return max(0, self.exit_qty - self.entry_qty)

    def excess_fills(self, *, every: bool = False) -> list[OrderProgress]:
        """The ``excess_qty`` per exit order, as the progress of the position each one's
        excess opens (cumulative, at that order's average price). What was open goes to the
        broker's own reductions first (they never take more than was open), then to our exit
        orders in attempt order; so the excesses add up to ``excess_qty`` and a later exit's
        fill on a closed position is that order's own excess, never counted twice. ``every``:
        our exit orders without an excess too (``traded_qty`` 0), for a remainder that one of
        them opened when the entry was smaller."""
        left, excess = self.entry_qty, []
        exits = sorted((o for o in self.orders if o.role is not OrderRole.ENTRY),
                       key=lambda o: (o.role is OrderRole.EXIT, o.attempt or 0,
                                      o.progress.order_no))
        for order in exits:
            progress = order.progress
            over = progress.traded_qty - min(left, progress.traded_qty)
            left -= progress.traded_qty - over
            if over or (every and order.role is OrderRole.EXIT):
                excess.append(OrderProgress(
                    order_no=progress.order_no, status=progress.status, traded_qty=over,
                    traded_value=progress.traded_value * over / progress.traded_qty
                    if over else Decimal(0), updated_at=progress.updated_at))
        return excess

    @property
    def entry_price(self) -> Decimal | None:
        qty, value = self._sum(OrderRole.ENTRY)
        return value / qty if qty else None

    @property
    def exit_price(self) -> Decimal | None:
        qty, value = self._sum(*REDUCING)
        return value / qty if qty else None

    @property
    def executed_orders(self) -> int:
        """Orders that traded anything: the fee is charged per executed order."""
        return sum(1 for order in self.orders if order.progress.traded_qty > 0)

    @property
    def open(self) -> bool:
        return self.status in OPEN

    def order(self, order_no: str) -> TrackedOrder | None:
        for order in self.orders:
            if order.progress.order_no == order_no:
                return order
        return None

    def current_exit_client_id(self) -> str | None:
        return exit_client_id(self.position_id, self.exit_attempt) if self.exit_attempt else None


class Applied(Frozen):
    """Outcome of applying something to a position: the new value, what filled, or why not."""

    position: Position
    fills: tuple[Fill, ...] = ()
    event: Event | None = None
    rejection: str | None = None

    @property
    def changed(self) -> bool:
        return self.event is not None or bool(self.fills)


def transition(position: Position, event: Event) -> PositionStatus | None:
    return TRANSITIONS.get((position.status, event))


def remainders_among(positions: Iterable[Position]) -> set[str]:
    """The over-fills' remainders among ``positions``: those whose entry order is an exit
    order of another of them (its excess opened them)."""
    listed = list(positions)
    exits = {o.progress.order_no: p.position_id for p in listed for o in p.orders
             if o.role is OrderRole.EXIT}
    return {p.position_id for p in listed
            if exits.get(p.entry_order_no, p.position_id) != p.position_id}


def new_position(update: OrderUpdate, *, position_id: str, side: Side,
                 created_at: datetime) -> Position:
    """A PENDING position for an entry order; the update itself is applied separately."""
    if update.segment is None or update.security_id is None:
        raise ValueError("an entry order needs its instrument")
    return Position(position_id=position_id, entry_order_no=update.order_no,
                    segment=update.segment, security_id=update.security_id, side=side,
                    product=update.product, created_at=created_at,
                    orders=(TrackedOrder(role=OrderRole.ENTRY,
                                         progress=OrderProgress.empty(update.order_no)),),)
