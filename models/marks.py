"""Each formula of a position's valuation and each threshold of its exit rules, written once
(the quiet guard, the band and the index's verdicts built from them are in ``models.bands``).

*Valuation* (SPEC §3.3): ``Basis`` holds what a valuation needs that depends only on the
position's orders and the policy (entry price, open quantity, realised PnL, fees), derived from
the position's own quantities (``Position.quantity``, ``closed_qty``, ``entry_price``,
``exit_price``). ``net_at`` and ``pct_at`` value it at a price; ``rules.pnl`` and the PnL writer's
running total (``net_line``) are built from them. A price arrives far more often than a position
changes, so folding a price is a handful of ``Decimal`` operations.

*Thresholds* (SPEC §3.4): the price at which the stop loss fires (``stop_loss_price``), take profit
(``take_profit_price``), the trailing stop a peak sets (``trail_stop_at``), and which side of a
level a price is on (``stopped_out``, ``target_reached``). ``rules.evaluate`` fires a rule with
them, and the quiet guard and band (``models.bands``) are bounded by them: nothing inverts a
rule.

A ``Basis`` is valid only for the position it was derived from; it keeps the position's
``orders`` tuple (immutable, replaced whenever an order changes) and is checked by identity
before use.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from models.common import Side
from models.policy import ExitPolicy
from models.position import Position, TrackedOrder

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Basis:
    """What a position's valuation needs and only its orders change (``rules.pnl`` terms)."""

    orders: tuple[TrackedOrder, ...]
    side: Side
    sign: int
    entry: Decimal
    quantity: int
    realized: Decimal
    fees: Decimal


def basis_of(position: Position, policy: ExitPolicy) -> Basis | None:
    """The basis of a position with an entry price (``None`` before its first entry fill)."""
    entry = position.entry_price
    if entry is None:
        return None
    sign = position.side.sign
    exit_price = position.exit_price
    realized = _ZERO if exit_price is None else \
        realized_pnl(sign, entry, exit_price, position.closed_qty)
    return Basis(orders=position.orders, side=position.side, sign=sign, entry=entry,
                 quantity=position.quantity, realized=realized, fees=fees_of(position, policy))


def fits(basis: Basis | None, position: Position) -> bool:
    """Whether ``basis`` was derived from this position's orders (and so may be used)."""
    return basis is not None and basis.orders is position.orders


def order_fees(executed_orders: int, fee_per_order: Decimal) -> Decimal:
    """Fees: one fee per executed order (an order that traded anything)."""
    return fee_per_order * executed_orders


def fees_of(position: Position, policy: ExitPolicy) -> Decimal:
    """The fees a position has paid so far under ``policy``."""
    return order_fees(position.executed_orders, policy.fee_per_order)


def realized_pnl(sign: int, entry: Decimal, exit_price: Decimal, closed_qty: int) -> Decimal:
    """Gross PnL of what exits closed: ``sign * (exit - entry) * closed`` (before fees)."""
    return sign * (exit_price - entry) * closed_qty


def pct_of(entry: Decimal, sign: int, price: Decimal) -> Decimal:
    """``pnl_pct``: how far ``price`` is in profit from ``entry``, a fraction (SPEC §3.3)."""
    return sign * (price - entry) / entry


def unrealized_at(basis: Basis, ltp: Decimal) -> Decimal:
    """Gross PnL of the open quantity at ``ltp``."""
    return basis.sign * (ltp - basis.entry) * basis.quantity


def gross_at(basis: Basis, ltp: Decimal) -> Decimal:
    """Realised plus unrealised PnL at ``ltp``, before fees."""
    return basis.realized + unrealized_at(basis, ltp)


def net_at(basis: Basis, ltp: Decimal) -> Decimal:
    """Net PnL at ``ltp``: gross less fees (``rules.pnl(...).net``)."""
    return gross_at(basis, ltp) - basis.fees


def pct_at(basis: Basis, ltp: Decimal) -> Decimal:
    """``pnl_pct`` at ``ltp`` (``rules.pnl(...).pct``)."""
    return pct_of(basis.entry, basis.sign, ltp)


def net_line(basis: Basis) -> tuple[Decimal, int]:
    """``net_at`` as a line in the price, ``(constant, slope)``: ``net_at(basis, ltp)`` is
    ``constant + slope * ltp`` (up to ``Decimal`` rounding), so a book of positions on one
    instrument is valued by summing lines."""
    return net_at(basis, _ZERO), basis.sign * basis.quantity


# Thresholds of the price rules (SPEC §3.4) -----------------------------------------------------
def favourable(side: Side, a: Decimal, b: Decimal) -> Decimal:
    """The better of two prices for ``side`` (the higher for a long, the lower for a short);
    of two stops, the tighter."""
    return max(a, b) if side is Side.LONG else min(a, b)


def stop_loss_price(entry: Decimal, sign: int, policy: ExitPolicy) -> Decimal:
    """The price at which the stop loss fires: ``pnl_pct <= -stop_loss_pct``."""
    return entry * (1 - sign * policy.stop_loss_pct)


def take_profit_price(entry: Decimal, sign: int, policy: ExitPolicy) -> Decimal:
    """The price at which take profit fires: ``pnl_pct >= take_profit_pct``."""
    return entry * (1 + sign * policy.take_profit_pct)


def stopped_out(sign: int, ltp: Decimal, stop: Decimal) -> bool:
    """A price at or beyond a stop (at or below for a long, at or above for a short)."""
    return sign * (ltp - stop) <= 0


def target_reached(sign: int, ltp: Decimal, target: Decimal) -> bool:
    """A price at or beyond a profit target (at or above for a long, at or below for a short)."""
    return sign * (ltp - target) >= 0


def trail_stop_at(entry: Decimal, sign: int, peak: Decimal, policy: ExitPolicy) -> Decimal | None:
    """The trailing stop a peak price sets (before the never-loosen rule), or ``None``."""
    trailing = policy.trailing
    if trailing.mode == "off":
        return None
    peak_pct = pct_of(entry, sign, peak)
    if trailing.mode == "percent":
        if peak_pct < trailing.activation_pct:
            return None
        return peak * (1 - sign * trailing.trail_pct)
    offsets = [offset for threshold, offset in trailing.tiers if peak_pct >= threshold]
    return entry * (1 + sign * offsets[-1]) if offsets else None


def stop_price(basis: Basis, trail: Decimal | None, policy: ExitPolicy) -> Decimal:
    """The price that stops the position out: the tighter of its stop loss and its trailing
    stop (``rules.evaluate`` fires at or beyond it: below for a long, above for a short)."""
    loss = stop_loss_price(basis.entry, basis.sign, policy)
    return loss if trail is None else favourable(basis.side, loss, trail)
