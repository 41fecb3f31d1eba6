"""Each formula of a position's valuation and each threshold of its exit rules, written once;
and the quiet guard and band built from them.

*Valuation* (SPEC §3.3): ``Basis`` holds what a valuation needs that depends only on the
position's orders and the policy (entry price, open quantity, realised PnL, fees), derived from
the position's own quantities (``Position.quantity``, ``closed_qty``, ``entry_price``,
``exit_price``). ``net_at`` and ``pct_at`` value it at a price; ``rules.pnl`` and the PnL writer's
running total (``net_line``) are built from them. A price arrives far more often than a position
changes, so folding a price is a handful of ``Decimal`` operations.

*Thresholds* (SPEC §3.4): the price at which the stop loss fires (``stop_loss_price``), take profit
(``take_profit_price``), the trailing stop a peak sets (``trail_stop_at``), and which side of a
level a price is on (``stopped_out``, ``target_reached``). ``rules.evaluate`` fires a rule with
them, and the quiet guard and band below are bounded by them: nothing here inverts a rule.

``Quiet`` answers "can any exit rule fire?" without running them: while the exchange clock is
before ``until`` and a fresh price stays strictly inside ``(low, high)``, ``rules.evaluate``
returns ``None``. The band is narrowed by a relative ``MARGIN`` far above ``Decimal`` rounding,
so a price near a trigger always goes through the real rules: the guard can only skip work, never
change a decision.

A ``Basis`` or ``Quiet`` is valid only for the position it was derived from; both keep the
position's ``orders`` tuple (immutable, replaced whenever an order changes) and are checked by
identity before use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache

from models.common import IST, Segment, Side
from models.policy import SESSION_HOURS, ExitPolicy, RiskConfig
from models.position import Position, PositionStatus, TrackedOrder

MARGIN = Decimal("1e-9")
"""Relative width kept between the quiet band and a trigger; rounding error is ~1e-27."""

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


# The quiet guard and the band ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Quiet:
    """No exit rule can fire before ``until`` while a fresh price is inside ``(low, high)``."""

    orders: tuple[TrackedOrder, ...]
    trail_stop: Decimal | None
    low: Decimal | None
    high: Decimal | None
    until: datetime
    in_session: bool
    """Whether the position's segment is in session all the way to ``until``."""

    def holds(self, position: Position, ltp: Decimal | None, fresh: bool,
              now: datetime) -> bool:
        if now >= self.until or self.orders is not position.orders or \
                self.trail_stop != position.trail_stop:
            return False
        if not self.in_session or ltp is None or not fresh:
            return True  # no price rule can fire: out of session, or no fresh price
        return (self.low is None or ltp > self.low) and (self.high is None or ltp < self.high)


def quiet(position: Position, basis: Basis, now: datetime, config: RiskConfig) -> Quiet:
    """The guard for ``position`` from ``now`` on; call it only once ``evaluate`` found nothing
    to do at ``now`` (so no time rule fires yet)."""
    policy = config.policy
    in_session = config.calendar.in_session(position.segment, now)
    low, high = _band(basis, position.trail_stop, policy) if in_session else (None, None)
    return Quiet(orders=position.orders, trail_stop=position.trail_stop, low=low, high=high,
                 until=_next_change(position, now, policy), in_session=in_session)


def _band(basis: Basis, trail: Decimal | None,
          policy: ExitPolicy) -> tuple[Decimal | None, Decimal | None]:
    """Prices strictly between which stop loss, trailing stop and take profit all stay quiet."""
    profit = take_profit_price(basis.entry, basis.sign, policy)
    stop = stop_price(basis, trail, policy)
    if basis.side is Side.LONG:
        return stop + abs(stop) * MARGIN, profit - abs(profit) * MARGIN
    return profit + abs(profit) * MARGIN, stop - abs(stop) * MARGIN


def _next_change(position: Position, now: datetime, policy: ExitPolicy) -> datetime:
    """The first instant after ``now`` at which a time rule or the session could change: the
    session's open and close, square-off, ``exit_at``, the end of the holding time, midnight."""
    segment = position.segment
    moments = _day_moments(segment, now.astimezone(IST).date(), policy.square_off_time(segment),
                           policy.exit_at_time)
    upcoming = min(moment for moment in moments if moment > now)  # midnight always is
    if policy.max_hold_minutes and position.opened_at is not None:
        held_until = position.opened_at + timedelta(minutes=policy.max_hold_minutes)
        if now < held_until < upcoming:
            return held_until
    return upcoming


@lru_cache(maxsize=256)
def _day_moments(segment: Segment, day: date, square_off: time | None,
                 exit_at: time | None) -> tuple[datetime, ...]:
    """The clock-of-day moments of ``_next_change`` on one day, the same for every position
    of a segment under one policy: made once a day, not at every quiet guard."""
    clocks = [*SESSION_HOURS[segment], square_off, exit_at]
    moments = [datetime.combine(day, clock, tzinfo=IST) for clock in clocks if clock is not None]
    moments.append(datetime.combine(day + timedelta(days=1), time(0), tzinfo=IST))
    return tuple(moments)


@dataclass(frozen=True, slots=True)
class Band:
    """A price within ``[low, high]`` with an exchange time before ``until`` changes
    nothing for the position: no exit rule fires and no mark (peak, high-water mark, trailing
    stop) moves. ``None`` is an open side. The index delivers a position only the prices outside
    its band (and a refresh now and then), so a quiet market costs a tracker nothing.

    ``rule_low`` and ``rule_high`` are the part of the band set by the exit rules: a price
    beyond them may be an exit and goes ahead of everything else; one that only moves a mark
    (a new peak) is told at once too, but in the ordinary queue."""

    low: Decimal | None
    high: Decimal | None
    until: datetime | None
    rule_low: Decimal | None = None
    rule_high: Decimal | None = None


def band(position: Position, basis: Basis | None, guard: Quiet | None,
         policy: ExitPolicy) -> Band | None:
    """The band of ``position`` (``None``: every price matters). ``guard`` is the position's
    quiet guard when it is ACTIVE; an ACTIVE position without one has no band."""
    peak = position.peak_price
    if basis is None or peak is None or not fits(basis, position) or \
            not _trail_settled(position, basis, peak, policy):
        return None
    watching_rules = position.status is PositionStatus.ACTIVE
    if watching_rules and (guard is None or guard.orders is not position.orders
                           or guard.trail_stop != position.trail_stop):
        return None
    marks = _marks_edge(position, basis, peak)
    if marks is None:
        return None
    # Out of session the guard has no price band: no price rule fires before ``until``.
    rule_low, rule_high = (guard.low, guard.high) if watching_rules and guard is not None \
        else (None, None)
    low, high = rule_low, rule_high
    if basis.side is Side.LONG:
        high = marks if high is None else min(high, marks)
    else:
        low = marks if low is None else max(low, marks)
    return Band(low=low, high=high, until=guard.until if watching_rules and guard else None,
                rule_low=rule_low, rule_high=rule_high)


def _trail_settled(position: Position, basis: Basis, peak: Decimal, policy: ExitPolicy) -> bool:
    """Folding the peak again would not move the trailing stop (it is derived from the peak)."""
    stop = trail_stop_at(basis.entry, basis.sign, peak, policy)
    trail = position.trail_stop
    if stop is None:
        return True
    if trail is None:
        return False
    return favourable(basis.side, trail, stop) == trail


def _marks_edge(position: Position, basis: Basis, peak: Decimal) -> Decimal | None:
    """The most favourable price at which neither the peak nor the high-water mark moves;
    ``None`` when the high-water mark moves at any price."""
    if basis.quantity == 0:  # nothing open: the net PnL no longer depends on the price
        return peak if net_at(basis, basis.entry) <= position.hwm_pnl else None
    # net(ltp) > hwm  <=>  sign * (ltp - entry) > (hwm + fees - realized) / quantity; net is
    # monotonic in the price, so checking the edge itself proves every price short of it.
    edge = basis.entry + basis.sign * (position.hwm_pnl + basis.fees - basis.realized) \
        / basis.quantity
    if net_at(basis, edge) > position.hwm_pnl:
        edge -= basis.sign * abs(edge) * MARGIN
        if net_at(basis, edge) > position.hwm_pnl:
            return None
    return min(peak, edge) if basis.side is Side.LONG else max(peak, edge)
