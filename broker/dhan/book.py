"""DhanHQ's REST rows (order book, trade book, positions) as typed values, read liberally.

Keys are matched whatever their casing (``orderId``, ``OrderId``, ``order_id``), numbers may be
strings, and absent fields are None. A row without the one field that identifies it raises
``RowError`` (the caller counts and logs it); nothing else does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from broker.dhan.outcomes import normalised
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus

PRODUCT_TYPES = {"C": "CNC", "I": "INTRADAY", "M": "MARGIN", "F": "MTF", "V": "CO", "B": "BO"}
"""The order socket's one-letter products and the REST ``productType`` they stand for."""

_STATUS_ALIASES = {"PARTTRADED": "PART_TRADED", "PART_TRADED": "PART_TRADED",
                   "CANCELED": "CANCELLED"}


class RowError(ValueError):
    """A row that cannot be read; the message names the field."""


def product_type(product: str | None) -> str:
    """The REST ``productType`` of a one-letter code or a REST name (default INTRADAY)."""
    if not product:
        return "INTRADAY"
    return PRODUCT_TYPES.get(product.upper(), product.upper())


def status_text(value: object) -> str:
    """``Part-Traded`` / ``part_traded`` / ``PART_TRADED`` → ``PART_TRADED``."""
    text = str(value or "").strip().upper().replace("-", "_")
    return _STATUS_ALIASES.get(text.replace("_", ""), _STATUS_ALIASES.get(text, text))


@dataclass(frozen=True)
class BrokerOrder:
    order_id: str
    status: str
    correlation_id: str | None = None
    exchange_order_id: str | None = None
    txn_type: TxnType | None = None
    instrument: Instrument | None = None
    product: str | None = None
    order_type: str | None = None
    quantity: int | None = None
    filled_qty: int = 0
    price: Decimal | None = None
    avg_price: Decimal | None = None
    updated_at: str | None = None
    reason: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def order_status(self) -> OrderStatus | None:
        """Our status for DhanHQ's, or None for one we have no name for (``MODIFIED``, …)."""
        return OrderStatus.__members__.get(self.status)


@dataclass(frozen=True)
class BrokerTrade:
    order_id: str
    trade_id: str | None
    txn_type: TxnType | None
    instrument: Instrument | None
    product: str | None
    quantity: int
    price: Decimal | None
    time: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class BrokerPosition:
    instrument: Instrument
    product: str | None
    net_qty: int
    buy_avg: Decimal | None = None
    sell_avg: Decimal | None = None
    position_type: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def order_of(row: object) -> BrokerOrder:
    f = _fields(row)
    return BrokerOrder(
        order_id=_required(f, "orderid"), status=status_text(f.get("orderstatus")),
        correlation_id=_text(f.get("correlationid")),
        exchange_order_id=_text(f.get("exchangeorderid")), txn_type=_txn(f),
        instrument=_instrument(f), product=_text(f.get("producttype")),
        order_type=_text(f.get("ordertype")), quantity=_int(f, "quantity"),
        filled_qty=_int(f, "filledqty") or 0, price=_decimal(f, "price"),
        avg_price=_decimal(f, "averagetradedprice"),
        updated_at=_text(f.get("updatetime") or f.get("exchangetime") or f.get("createtime")),
        reason=_text(f.get("omserrordescription")), raw=f)


def trade_of(row: object) -> BrokerTrade:
    f = _fields(row)
    return BrokerTrade(
        order_id=_required(f, "orderid"), trade_id=_text(f.get("exchangetradeid")),
        txn_type=_txn(f), instrument=_instrument(f), product=_text(f.get("producttype")),
        quantity=_int(f, "tradedquantity") or 0, price=_decimal(f, "tradedprice"),
        time=_text(f.get("exchangetime") or f.get("createtime")), raw=dict(f))


def position_of(row: object) -> BrokerPosition:
    f = _fields(row)
    instrument = _instrument(f)
    if instrument is None:
        raise RowError("position without exchangeSegment/securityId")
    return BrokerPosition(
        instrument=instrument, product=_text(f.get("producttype")),
        net_qty=_int(f, "netqty") or 0, buy_avg=_decimal(f, "buyavg"),
        sell_avg=_decimal(f, "sellavg"), position_type=_text(f.get("positiontype")),
        raw=dict(f))


def _fields(row: object) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise RowError(f"row is not an object: {str(row)[:60]}")
    return normalised(row)


def _required(f: dict[str, Any], key: str) -> str:
    value = _text(f.get(key))
    if value is None:
        raise RowError(f"row without {key}")
    return value


def _text(value: object) -> str | None:
    if value is None or value == "" or value == "NA":
        return None
    return str(value).strip() or None


def _int(f: dict[str, Any], key: str) -> int | None:
    value = f.get(key)
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RowError(f"{key} is not a number: {str(value)[:40]}") from None
    if number != number.to_integral_value():
        raise RowError(f"{key} is not a whole number: {value}")
    return int(number)


def _decimal(f: dict[str, Any], key: str) -> Decimal | None:
    value = f.get(key)
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RowError(f"{key} is not a number: {str(value)[:40]}") from None
    if not number.is_finite():
        raise RowError(f"{key} is not a finite number: {value}")
    return number


_TXN = {"BUY": TxnType.BUY, "B": TxnType.BUY, "SELL": TxnType.SELL, "S": TxnType.SELL}


def _txn(f: dict[str, Any]) -> TxnType | None:
    return _TXN.get(str(f.get("transactiontype") or "").upper())


def _instrument(f: dict[str, Any]) -> Instrument | None:
    segment, security = str(f.get("exchangesegment")), _text(f.get("securityid"))
    if segment not in Segment.__members__ or security is None:
        return None
    return _instrument_of(segment, security)


@functools.lru_cache(maxsize=8192)
def _instrument_of(segment: str, security: str) -> Instrument:
    """One instrument per (segment, security id): a book names the same few again and
    again (an ``Instrument`` is immutable)."""
    return Instrument(segment=Segment(segment), security_id=security)
