"""The one parser of raw broker order updates (SPEC §4.1), and its inverse for the paper broker.

``parse_order_update`` takes a DhanHQ frame ``{"Type": "order_alert", "Data": {…}}``, a bare
``Data`` object or the older flat snake_case shape, and returns an ``OrderUpdate`` or a
``Rejection`` naming what was wrong, with the raw text. It never raises. Every shape goes through
one alias table and the same checks. ``to_dhan_frame`` writes an update back as the live stream
would, so the paper broker exercises this parser exactly as the live one does.
"""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from models.common import IST, Frozen, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate

ORDER_ALERT = "order_alert"
DHAN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Far beyond any real quantity or price; it also bounds int() of a payload like "1E+999999".
_MAX_NUMBER = Decimal("1E+15")

# Where each field may be found, most specific first: DhanHQ PascalCase, then the flat shape.
_KEYS: dict[str, tuple[str, ...]] = {
    "order_no": ("OrderNo", "order_no", "order_id"),
    "status": ("Status", "order_status", "status"),
    "txn_type": ("TxnType", "transaction_type", "side"),
    "quantity": ("Quantity", "quantity"),
    "traded_qty": ("TradedQty", "filled_quantity"),
    "avg_traded_price": ("AvgTradedPrice", "average_traded_price", "average_price"),
    "traded_price": ("TradedPrice", "traded_price"),
    "price": ("Price", "price"),
    "security_id": ("SecurityId", "security_id"),
    "exchange": ("Exchange", "exchange"),
    "segment": ("ExchangeSegment", "Segment", "exchange_segment", "segment"),
    "product": ("Product", "product", "product_type"),
    "order_type": ("OrderType", "order_type"),
    "correlation_id": ("CorrelationId", "correlation_id"),
    "exch_order_no": ("ExchOrderNo", "exch_order_no", "exchange_order_id"),
    "updated_at": ("LastUpdatedTime", "updated_at", "update_time", "exchange_time"),
    "reason": ("ReasonDescription", "reason"),
    "symbol": ("Symbol", "symbol", "trading_symbol"),
    "lot_size": ("LotSize", "lot_size"),
}
# The live socket has been seen sending every key in camelCase (``orderNo``, ``txnType``): each
# PascalCase key is also looked for in that form, right after it.
def _with_camel_case(keys: tuple[str, ...]) -> tuple[str, ...]:
    camel = {key: key[:1].lower() + key[1:] for key in keys}
    return tuple(form for key in keys
                 for form in ((key,) if camel[key] in keys else (key, camel[key])))


_KEYS = {field: _with_camel_case(keys) for field, keys in _KEYS.items()}
_PRICES = ("avg_traded_price", "traded_price", "price")
_TEXTS = ("security_id", "product", "order_type", "correlation_id", "exch_order_no", "reason",
          "symbol")

_STATUS_ALIASES = {"CANCELED": OrderStatus.CANCELLED.value}
_TXN_TYPES = {"B": TxnType.BUY, "BUY": TxnType.BUY, "S": TxnType.SELL, "SELL": TxnType.SELL}
_TXN_CODES = {TxnType.BUY: "B", TxnType.SELL: "S"}
_SEGMENTS = {
    ("NSE", "E"): Segment.NSE_EQ, ("NSE", "D"): Segment.NSE_FNO,
    ("NSE", "C"): Segment.NSE_CURRENCY, ("BSE", "E"): Segment.BSE_EQ,
    ("BSE", "D"): Segment.BSE_FNO, ("BSE", "C"): Segment.BSE_CURRENCY,
    ("MCX", "M"): Segment.MCX_COMM,
}
_SEGMENT_CODES = {segment: pair for pair, segment in _SEGMENTS.items()}
_BARE_CODES = frozenset(code for _, code in _SEGMENTS)


class Rejection(Frozen):
    """A payload that could not be understood: why, and the raw text, so nothing is lost."""

    reason: str
    raw: str
    order_no: str | None = None
    traded_qty: int = 0
    """Traded quantity the payload reported when it was read despite the error (a rejected
    fill, for an operator to review): 0 when unknown."""


class _Invalid(Exception):
    """Aborts parsing with a reason. Internal: ``parse_order_update`` turns it into a value."""


def parse_order_update(raw: str | bytes) -> OrderUpdate | Rejection:
    """Parse one raw order-update payload; never raises."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", errors="replace")
    data: dict[str, Any] | None = None
    try:
        data = _data_of(_load(text))
        return _screen(_build(_Payload(data)), text)
    except _Invalid as invalid:
        hint = _Payload(data).order_no_hint() if data is not None else None
        return Rejection(reason=str(invalid), raw=text, order_no=hint)


def to_dhan_frame(update: OrderUpdate) -> str:
    """The DhanHQ websocket frame of ``update``, shaped like the live stream's.

    Prices are written as JSON numbers from their decimal text (never through float), and the
    time in IST to the second as DhanHQ sends it; absent fields are left out.
    """
    fields: dict[str, object] = {
        "OrderNo": update.order_no, "ExchOrderNo": update.exch_order_no,
        "Status": update.status.value,
        "TxnType": _TXN_CODES[update.txn_type] if update.txn_type is not None else None,
        "Quantity": update.quantity, "TradedQty": update.traded_qty,
        "AvgTradedPrice": update.avg_traded_price, "TradedPrice": update.traded_price,
        "Price": update.price, "SecurityId": update.security_id,
        **_exchange_fields(update.segment),
        "Product": update.product, "OrderType": update.order_type,
        "CorrelationId": update.correlation_id,
        "LastUpdatedTime": (update.updated_at.astimezone(IST).strftime(DHAN_TIME_FORMAT)
                            if update.updated_at is not None else None),
        "ReasonDescription": update.reason, "Symbol": update.symbol, "LotSize": update.lot_size,
    }
    body = ", ".join(f"{json.dumps(key)}: {_json_value(value)}"
                     for key, value in fields.items() if value is not None)
    return f'{{"Type": "{ORDER_ALERT}", "Data": {{{body}}}}}'


# Envelope ------------------------------------------------------------------------------------
def _load(text: str) -> object:
    try:
        # parse_float/parse_constant keep prices exact and turn NaN/Infinity into Decimals
        # that the number checks reject by name.
        return json.loads(text.lstrip("\ufeff"), parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError) as error:
        raise _Invalid(f"payload is not valid JSON: {error}") from None


def _data_of(document: object) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise _Invalid(f"payload must be a JSON object, got {_show(document)}")
    if "Type" not in document and "Data" not in document:
        return document
    kind = document.get("Type", ORDER_ALERT)
    if not isinstance(kind, str) or kind.strip().lower() != ORDER_ALERT:
        raise _Invalid(f"Type must be {ORDER_ALERT!r}, got {_show(kind)}")
    data = document.get("Data")
    if not isinstance(data, dict):
        raise _Invalid(f"Data must be an object, got {_show(data)}")
    return data


class _Payload:
    """The fields of one update, looked up through the alias table."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, field: str) -> tuple[str, object]:
        """The key found and its value; the preferred key and None when absent, null or blank."""
        keys = _KEYS[field]
        for key in keys:
            value = self.data.get(key)
            if value is not None and not (isinstance(value, str) and not value.strip()):
                return key, value
        return keys[0], None

    def text(self, field: str) -> str | None:
        return _string(*self.get(field))

    def order_no_hint(self) -> str | None:
        """The order number for a rejection, if it can be read despite the error."""
        with suppress(_Invalid):
            return self.text("order_no")
        return None


# The update -----------------------------------------------------------------------------------
def _build(payload: _Payload) -> OrderUpdate:
    order_no = payload.text("order_no")
    if order_no is None:
        raise _Invalid("missing order number (OrderNo, order_no or order_id)")
    status, unknown = _status(payload)
    quantity = _quantity(*payload.get("quantity"))
    traded, over = _traded(payload, status, quantity)
    if over is not None:  # the broker's fill stands: the order traded at least that much
        quantity = traded
    if unknown is not None:  # a status we do not know cannot prove the order over: live
        status = OrderStatus.PART_TRADED if traded else OrderStatus.PENDING
        unknown = f"{unknown}: read as {status} (a live order)"
    anomaly = "; ".join(note for note in (unknown, over) if note is not None) or None
    prices = {name: _number(*payload.get(name), "a non-negative number") for name in _PRICES}
    if traded > 0 and not any(price is not None and price > 0 for price in prices.values()):
        raise _Invalid(f"traded quantity {traded} has no positive AvgTradedPrice, TradedPrice "
                       "or Price (a fill without a price)")
    texts = {name: payload.text(name) for name in _TEXTS}
    try:
        return OrderUpdate(order_no=order_no, status=status, quantity=quantity,
                           traded_qty=traded, txn_type=_txn_type(payload),
                           segment=_segment(payload), updated_at=_time(payload),
                           lot_size=_quantity(*payload.get("lot_size")), anomaly=anomaly,
                           **prices, **texts)
    except ValidationError as error:  # every field is checked above; this is the last guard
        raise _Invalid(f"invalid order update: {error}") from None


def _traded(payload: _Payload, status: OrderStatus | None,
            quantity: int | None) -> tuple[int, str | None]:
    """Cumulative traded quantity (a TRADED order that omits it traded all of its quantity),
    and a note when it exceeds the order's quantity: the fill is kept all the same."""
    key, value = payload.get("traded_qty")
    traded = _quantity(key, value)
    if traded is None:
        return (quantity if status is OrderStatus.TRADED and quantity is not None else 0), None
    if quantity is not None and traded > quantity:
        quantity_key = payload.get("quantity")[0]
        return traded, (f"{key} {traded} exceeds {quantity_key} {quantity}: the {traded} "
                        "traded are kept")
    return traded, None


def _status(payload: _Payload) -> tuple[OrderStatus | None, str | None]:
    """The status, or None and a note for a text that names none we know."""
    key, value = payload.get("status")
    if value is None:
        raise _Invalid("missing order status (Status, order_status or status)")
    if not isinstance(value, str):
        raise _Invalid(f"{key} must be text, got {_show(value)}")
    name = "_".join(value.replace("-", " ").replace("_", " ").upper().split())
    name = _STATUS_ALIASES.get(name, name)
    if name not in OrderStatus.__members__:
        return None, f"unknown {key} {_show(value)}"
    return OrderStatus(name), None


def _txn_type(payload: _Payload) -> TxnType | None:
    key, value = payload.get("txn_type")
    text = _string(key, value)
    txn_type = _TXN_TYPES.get(text.upper()) if text is not None else None
    if text is not None and txn_type is None:
        raise _Invalid(f"unknown {key} {_show(value)} (expected B, S, BUY or SELL)")
    return txn_type


def _segment(payload: _Payload) -> Segment | None:
    """A full segment name as given, or the (Exchange, Segment code) pair mapped to one."""
    key, value = payload.get("segment")
    exchange_key, exchange_value = payload.get("exchange")
    code, exchange = _string(key, value), _string(exchange_key, exchange_value)
    if code is None:
        return None
    if code.upper() in Segment.__members__:
        return Segment(code.upper())
    if exchange is None:
        if code.upper() in _BARE_CODES:
            return None  # a bare segment code names no exchange: the segment is unknown
        raise _Invalid(f"unknown {key} {_show(value)}")
    segment = _SEGMENTS.get((exchange.upper(), code.upper()))
    if segment is None:
        raise _Invalid(f"unknown {exchange_key}/{key} pair "
                       f"{_show(exchange_value)}/{_show(value)}")
    return segment


def _time(payload: _Payload) -> datetime | None:
    """ISO-8601 or DhanHQ's "YYYY-MM-DD HH:MM:SS"; a time without an offset is IST."""
    key, value = payload.get("updated_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"{key} must be a date-time text, got {_show(value)}")
    try:
        return dhan_time(value)
    except (ValueError, OverflowError):
        raise _Invalid(f"{key} is not a date-time: {_show(value)}") from None


def dhan_time(text: str) -> datetime:
    """ISO-8601 or DhanHQ's "YYYY-MM-DD HH:MM:SS"; a time without an offset is IST. Raises
    ``ValueError``."""
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=IST)


# Field values --------------------------------------------------------------------------------
def _string(key: str, value: object) -> str | None:
    """Text as given (trimmed); an integral JSON number is taken as its digits (ids)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:  # a lone surrogate (a \ud800 JSON escape) could not be stored
            return value.strip().encode().decode()
        except UnicodeEncodeError:
            raise _Invalid(f"{key} must be valid Unicode text, got {_show(value)}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Invalid(f"{key} must be text, got {_show(value)}")


def _quantity(key: str, value: object) -> int | None:
    number = _number(key, value, "a non-negative integer")
    if number is None:
        return None
    if number != number.to_integral_value():
        raise _Invalid(f"{key} must be a non-negative integer, got {_show(value)}")
    return int(number)


def _number(key: str, value: object, expected: str) -> Decimal | None:
    """A JSON number or numeric text as an exact Decimal: finite, non-negative, bounded."""
    if value is None:
        return None
    number: Decimal | None = None
    if isinstance(value, int | Decimal | str) and not isinstance(value, bool):
        with suppress(InvalidOperation, ValueError):
            number = Decimal(value.strip() if isinstance(value, str) else value)
    if number is None or not number.is_finite() or number < 0:
        raise _Invalid(f"{key} must be {expected}, got {_show(value)}")
    if number > _MAX_NUMBER:
        raise _Invalid(f"{key} is out of range (at most {_MAX_NUMBER}), got {_show(value)}")
    return number


def _show(value: object, limit: int = 40) -> str:
    """A short, log-safe rendering of a payload value for a rejection reason."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = str(value) if isinstance(value, Decimal) else json.dumps(value, default=repr)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


# NUL characters ------------------------------------------------------------------------------
# A JSON frame may carry ``\\u0000`` inside a string, which parsing turns into a real NUL in an
# otherwise valid update. In an id (order number, client id, security id, ...) it is corruption:
# routing on it could open a second position for an order already known under its clean
# number, so the update is rejected, naming the field; its raw frame is stored all the same
# (the PostgreSQL store escapes NUL, ``store/pg_text.py``). In free text (the broker's reason,
# the symbol) it cannot misroute anything, so it becomes U+FFFD and the update goes on.
_NUL = "\x00"
_NUL_IDS = ("order_no", "exch_order_no", "correlation_id", "security_id", "product",
            "order_type")
_FREE_TEXT = ("reason", "symbol")


def _screen(update: OrderUpdate, raw: str) -> OrderUpdate | Rejection:
    if _NUL not in raw and "\\u0000" not in raw:
        return update  # the only ways a NUL gets into a parsed text: nothing more to look at
    for name in _NUL_IDS:
        value = getattr(update, name)
        if isinstance(value, str) and _NUL in value:
            return Rejection(reason=f"{name} holds a NUL character: {value!r}", raw=raw,
                             order_no=update.order_no, traded_qty=update.traded_qty)
    cleaned = {name: text.replace(_NUL, "\ufffd") for name in _FREE_TEXT
               if _NUL in (text := getattr(update, name) or "")}
    return update.model_copy(update=cleaned) if cleaned else update


# The frame ------------------------------------------------------------------------------------
def _exchange_fields(segment: Segment | None) -> dict[str, object]:
    if segment is None:
        return {}
    if segment in _SEGMENT_CODES:
        exchange, code = _SEGMENT_CODES[segment]
        return {"Exchange": exchange, "Segment": code}
    return {"Segment": segment.value}  # no DhanHQ code (indices): the full name, as REST gives


def _json_value(value: object) -> str:
    # str(Decimal) of a finite value is always a valid JSON number, and keeps every digit.
    return str(value) if isinstance(value, Decimal) else json.dumps(value)
