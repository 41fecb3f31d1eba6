"""Broker order statuses, the typed order update, and per-order progress.

An order's progress is a join-semilattice: merging updates takes the highest status (terminal
statuses above live ones) and the highest cumulative traded quantity. Merging is commutative,
associative and idempotent, so any permutation or duplication of one order's updates yields the
same progress, and the fills derived from it (positive deltas of cumulative quantity and value)
add up to the same totals.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import Field

from models.common import AwareDatetime, Frozen, Segment, TxnType


class OrderStatus(StrEnum):
    TRANSIT = "TRANSIT"
    PENDING = "PENDING"
    PART_TRADED = "PART_TRADED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    TRADED = "TRADED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def failed(self) -> bool:
        """Terminal without completing: whatever filled stays filled, the rest never will."""
        return self in FAILED


TERMINAL = frozenset({OrderStatus.TRADED, OrderStatus.CANCELLED, OrderStatus.REJECTED,
                      OrderStatus.EXPIRED})
FAILED = frozenset({OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})

# The lattice order of statuses: live < terminal; among terminals a fixed tie-break keeps the
# merge deterministic even for a contradictory stream.
STATUS_RANK: dict[OrderStatus, int] = {status: rank for rank, status in enumerate(OrderStatus)}


class OrderUpdate(Frozen):
    """One broker order update, validated and normalised by ``models.wire``."""

    order_no: str = Field(min_length=1)
    status: OrderStatus
    segment: Segment | None = None
    security_id: str | None = None
    txn_type: TxnType | None = None
    product: str | None = None
    order_type: str | None = None
    quantity: int | None = Field(default=None, ge=0)
    traded_qty: int = Field(default=0, ge=0)
    avg_traded_price: Decimal | None = Field(default=None, ge=0)
    traded_price: Decimal | None = Field(default=None, ge=0)
    price: Decimal | None = Field(default=None, ge=0)
    correlation_id: str | None = None
    exch_order_no: str | None = None
    updated_at: AwareDatetime | None = None
    reason: str | None = None
    symbol: str | None = None
    lot_size: int | None = None
    anomaly: str | None = None
    """What the frame said that cannot be (a status nobody knows, more traded than ordered)
    and how it was read instead: never dropped, alarmed by the order-update actor."""

    @property
    def fill_price(self) -> Decimal | None:
        """Average price of the cumulative traded quantity (the real fill price).

        Falls back to the last trade price, then the order price; ``models.wire`` rejects an
        update that reports traded quantity with none of them, so a fill always has a price.
        """
        if self.avg_traded_price is not None and self.avg_traded_price > 0:
            return self.avg_traded_price
        if self.traded_price is not None and self.traded_price > 0:
            return self.traded_price
        if self.price is not None and self.price > 0:
            return self.price
        return None

    def dedup_key(self) -> tuple[object, ...]:
        """Exact duplicates share this key; anything that changes state does not."""
        return (self.order_no, self.status, self.traded_qty, self.avg_traded_price,
                self.traded_price, self.updated_at)


class OrderProgress(Frozen):
    """What has been seen of one order: the join of all its updates."""

    order_no: str
    status: OrderStatus
    traded_qty: int = 0
    traded_value: Decimal = Decimal(0)
    updated_at: AwareDatetime | None = None
    quantity: int | None = None
    """The order's quantity, the largest any update reported (``None``: none did)."""
    full: bool = False
    """An update said TRADED without a traded quantity: the order traded all of it
    (``traded_in_full``)."""

    @classmethod
    def empty(cls, order_no: str) -> OrderProgress:
        return cls(order_no=order_no, status=OrderStatus.TRANSIT)

    def merge(self, update: OrderUpdate) -> OrderProgress:
        price = update.fill_price
        value = price * update.traded_qty if price is not None else Decimal(0)
        return self.join(OrderProgress(order_no=self.order_no, status=update.status,
                                       traded_qty=update.traded_qty if price is not None else 0,
                                       traded_value=value, updated_at=update.updated_at,
                                       quantity=update.quantity or None,
                                       full=update.status is OrderStatus.TRADED
                                       and update.traded_qty == 0))

    def join(self, other: OrderProgress) -> OrderProgress:
        """The least upper bound of two observations of the same order."""
        status = max(self.status, other.status, key=STATUS_RANK.__getitem__)
        qty, value = max((self.traded_qty, self.traded_value),
                         (other.traded_qty, other.traded_value))
        times = [t for t in (self.updated_at, other.updated_at) if t is not None]
        sizes = [q for q in (self.quantity, other.quantity) if q is not None]
        joined = OrderProgress(order_no=self.order_no, status=status, traded_qty=qty,
                               traded_value=value, updated_at=max(times) if times else None,
                               quantity=max(sizes) if sizes else None,
                               full=self.full or other.full)
        return self if joined == self else joined

    def average(self) -> Decimal | None:
        return self.traded_value / self.traded_qty if self.traded_qty else None


def traded_in_full(progress: OrderProgress, known_qty: int | None = None,
                   fallback_price: Decimal | None = None) -> OrderProgress:
    """A TRADED update without a traded quantity means the order traded all of it (SPEC §11.3).

    ``progress`` is the join of the order's updates; the quantity is the largest known: theirs,
    or the caller's (``known_qty``: the quantity an exit order of ours was placed for). What no
    update priced is priced at the order's average, else ``fallback_price`` (the last price
    seen: an estimate). Without a quantity or a price the progress is returned as it is: it then
    proves nothing, neither a fill nor a failure; a later update that names the quantity
    completes it.
    """
    if not progress.full:
        return progress  # a TRADED update with its traded quantity is taken at its word
    sizes = [q for q in (progress.quantity, known_qty) if q]
    if not sizes or max(sizes) <= progress.traded_qty:
        return progress
    qty = max(sizes)
    unit = progress.average() if progress.traded_qty else fallback_price
    if unit is None:
        return progress
    return progress.model_copy(update={
        "traded_qty": qty, "quantity": qty,
        "traded_value": progress.traded_value + unit * (qty - progress.traded_qty)})
