"""Values the store takes and returns besides positions and fills."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from models.common import AwareDatetime, Frozen
from models.position import ExitReason


class StoredOrderUpdate(Frozen):
    """A raw broker frame as received, accepted or rejected (for audit and replay)."""

    seq: int
    received_at: AwareDatetime
    raw: str
    order_no: str | None = None
    accepted: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """A raw broker frame to store, as ``Store.record_order_update`` takes it, for a batch (a
    slotted dataclass: one is built per frame on the order-update path)."""

    raw: str
    received_at: datetime
    order_no: str | None
    accepted: bool
    reason: str | None = None


class ExitAttempt(Frozen):
    position_id: str
    attempt: int
    client_id: str
    reason: ExitReason
    quantity: int
    requested_at: AwareDatetime
    order_no: str | None = None
    outcome: str | None = None
    """None while in flight; then PLACED, FAILED: <why>, FILLED, …"""


class DeadLetter(Frozen):
    recorded_at: AwareDatetime
    actor: str
    message_type: str
    message_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    position_id: str | None = None
    error: str
    payload: str
    """A redacted summary of the message that could not be handled."""


class KillSwitch(Frozen):
    latched_at: AwareDatetime
    reason: str
    day_pnl: Decimal | None = None


class ParkedUpdate(Frozen):
    order_no: str
    parked_at: AwareDatetime
    raw: str


class PnLEntry(NamedTuple):
    """One position's valuation in the cache.

    An immutable named tuple, not a pydantic model: the PnL writer makes one per open position
    per cache write, from values that are already typed (``Decimal``, aware ``datetime``), and a
    tuple is the cheapest immutable value to make; what comes back from Redis is parsed field by
    field in ``decode_entry``.
    """

    position_id: str
    pnl: Decimal
    pnl_pct: Decimal
    ltp: Decimal
    hwm_pnl: Decimal
    peak_price: Decimal | None
    updated_at: datetime
