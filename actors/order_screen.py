"""NUL characters in a parsed order update (SPEC §4.1: untrusted input gets a clear reason).

A JSON frame may carry ``\\u0000`` inside a string, which parsing turns into a real NUL in an
otherwise valid update. In an id (order number, client id, security id, …) it is corruption:
routing on it could open a second position for an order already known under its clean
number, so the update is rejected, naming the field; its raw frame is stored all the same
(the PostgreSQL store escapes NUL, ``store/pg_text.py``), and a rejected fill is logged at
error level for an operator to look at. In free text (the broker's reason, the symbol) it
cannot misroute anything, so it becomes U+FFFD and the update, maybe a fill, goes on.

This belongs in the one parser, ``models/wire.py`` (``_string``); it lives here until it moves.
"""

from __future__ import annotations

from loguru import logger

from models.orders import OrderUpdate
from models.wire import Rejection

NUL = "\x00"
_IDS = ("order_no", "exch_order_no", "correlation_id", "security_id", "product", "order_type")
_FREE_TEXT = ("reason", "symbol")


def screen(update: OrderUpdate | Rejection, raw: str) -> OrderUpdate | Rejection:
    """``update`` parsed from ``raw``, unless a text of it holds a NUL: then a rejection (an
    id) or the update with the text cleaned (free text)."""
    if isinstance(update, Rejection) or (NUL not in raw and "\\u0000" not in raw):
        return update  # the only ways a NUL gets into a parsed text: nothing more to look at
    for name in _IDS:
        value = getattr(update, name)
        if isinstance(value, str) and NUL in value:
            reason = f"{name} holds a NUL character: {value!r}"
            if update.traded_qty > 0:
                logger.bind(order_no=update.order_no).error(
                    "a fill of {} rejected: {}; review its stored raw frame", update.traded_qty,
                    reason)
            return Rejection(reason=reason, raw=raw, order_no=update.order_no)
    cleaned = {name: text.replace(NUL, "\ufffd") for name in _FREE_TEXT
               if NUL in (text := getattr(update, name) or "")}
    return update.model_copy(update=cleaned) if cleaned else update
