"""Shared vocabulary of the domain: instruments, sides, money helpers and the frozen base model.

Everything here is pure: no I/O, no clock reads. Times are timezone-aware, money is ``Decimal``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

IST = timezone(timedelta(hours=5, minutes=30), "IST")
"""India Standard Time has no daylight saving, so a fixed offset is exact."""

PAISE = Decimal("0.01")


def exchange_day_start(moment: datetime) -> datetime:
    """The start (IST midnight) of the exchange day ``moment`` falls on: the day's PnL, the
    kill switch and the frames a start-up applies again count from it (SPEC §11.7)."""
    return datetime.combine(moment.astimezone(IST).date(), datetime.min.time(), tzinfo=IST)


def next_day_start(moment: datetime) -> datetime:
    """The start of the exchange day after the one ``moment`` falls on (IST keeps no summer
    time: a day is 24 hours)."""
    return exchange_day_start(moment) + timedelta(days=1)


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_require_aware)]


class Frozen(BaseModel):
    """Base of every domain value and message: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Segment(StrEnum):
    NSE_EQ = "NSE_EQ"
    NSE_FNO = "NSE_FNO"
    NSE_CURRENCY = "NSE_CURRENCY"
    BSE_EQ = "BSE_EQ"
    BSE_FNO = "BSE_FNO"
    BSE_CURRENCY = "BSE_CURRENCY"
    MCX_COMM = "MCX_COMM"
    IDX_I = "IDX_I"

    @property
    def tradable(self) -> bool:
        return self is not Segment.IDX_I


class Side(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"

    @property
    def sign(self) -> int:
        return 1 if self is Side.LONG else -1

    @property
    def entry_txn(self) -> TxnType:
        return TxnType.BUY if self is Side.LONG else TxnType.SELL

    @property
    def exit_txn(self) -> TxnType:
        return TxnType.SELL if self is Side.LONG else TxnType.BUY


class TxnType(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opens(self) -> Side:
        """The side a position opened by this transaction has."""
        return Side.LONG if self is TxnType.BUY else Side.SHORT


class Instrument(Frozen):
    """``security_id`` is unique only within a segment, so both form the key."""

    segment: Segment
    security_id: str

    def __str__(self) -> str:
        return f"{self.segment}:{self.security_id}"

    # Instruments key the index, the batcher and the PnL books, so they are hashed and compared
    # for every price; pydantic's generic __eq__ costs several times this.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instrument):
            return NotImplemented
        return self.security_id == other.security_id and self.segment is other.segment

    def __hash__(self) -> int:
        # The id alone (its hash is cached by the str): the same id in two segments only shares
        # a bucket, and __eq__ tells them apart. Hashing the Enum would call Python code.
        return hash(self.security_id)


def money(value: Decimal) -> Decimal:
    """Round to paise for display and reports; computations keep full precision."""
    return value.quantize(PAISE, rounding=ROUND_HALF_EVEN)


def position_id_for(entry_order_no: str) -> str:
    """A position is keyed by its entry order, so its id is derived from it."""
    return f"P{entry_order_no}"


def exit_client_id(position_id: str, attempt: int) -> str:
    """Deterministic client id of exit attempt ``attempt``: a retry or a restart reuses it.

    It travels as the order's ``CorrelationId``, so an update for the exit order can be routed
    before the broker's order number is known.
    """
    return f"X-{position_id}-{attempt}"


def parse_exit_client_id(correlation_id: str | None) -> tuple[str, int] | None:
    if not correlation_id or not correlation_id.startswith("X-"):
        return None
    head, _, attempt = correlation_id[2:].rpartition("-")
    if not head or not attempt.isdigit():
        return None
    return head, int(attempt)
