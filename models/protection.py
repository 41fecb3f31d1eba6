"""The price of an exit order (SPEC §10 "Exit orders"): DhanHQ takes no MARKET orders from the
API, so an exit is a LIMIT order at a *protective* price: the last price worsened by
``protection_pct`` (a SELL below it, a BUY above it), rounded to the tick size in the direction
that makes it fill more surely, and kept inside the circuit limits when they are known.

A chase (``chase_price``) prices the same way from the newest last price; it only ever moves the
limit toward the market, never back.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from models.common import TxnType

DEFAULT_TICK = Decimal("0.05")
"""NSE / BSE tick size of most instruments, in rupees."""


def protective_price(last: Decimal, txn_type: TxnType, protection_pct: Decimal, *,
                     tick: Decimal = DEFAULT_TICK, lower_circuit: Decimal | None = None,
                     upper_circuit: Decimal | None = None) -> Decimal:
    """The limit price of an exit order placed now, when the last price is ``last``.

    ``protection_pct`` is a fraction (0.01 for 1 %). A SELL is priced at or below ``last`` and
    rounded down to the tick; a BUY at or above and rounded up. Never below one tick; clamped to
    ``[lower_circuit, upper_circuit]`` when given.
    """
    if last <= 0:
        raise ValueError(f"the last price must be positive, got {last}")
    if not 0 <= protection_pct < 1:
        raise ValueError(f"protection must be in [0, 1), got {protection_pct}")
    if tick <= 0:
        raise ValueError(f"the tick size must be positive, got {tick}")
    if txn_type is TxnType.SELL:
        raw, rounding = last * (1 - protection_pct), ROUND_FLOOR
    else:
        raw, rounding = last * (1 + protection_pct), ROUND_CEILING
    price = (raw / tick).to_integral_value(rounding=rounding) * tick
    if lower_circuit is not None and price < lower_circuit:
        price = lower_circuit
    if upper_circuit is not None and price > upper_circuit:
        price = upper_circuit
    return max(tick, price).quantize(tick)


def chase_price(current: Decimal, last: Decimal, txn_type: TxnType, protection_pct: Decimal, *,
                tick: Decimal = DEFAULT_TICK, lower_circuit: Decimal | None = None,
                upper_circuit: Decimal | None = None) -> Decimal | None:
    """The new limit of a resting exit order priced at ``current`` when the market is at
    ``last``, or None when the fresh protective price (inside the circuit limits when given)
    is not more aggressive (nothing to chase: the order is already at or beyond it)."""
    fresh = protective_price(last, txn_type, protection_pct, tick=tick,
                             lower_circuit=lower_circuit, upper_circuit=upper_circuit)
    if txn_type is TxnType.SELL:
        return fresh if fresh < current else None
    return fresh if fresh > current else None
