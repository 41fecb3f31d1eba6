"""The per-price arithmetic of a position, made cheap by deriving what changes only with orders.

A price arrives far more often than a position changes: thousands of prices per second against a
few fills per position per day. ``Basis`` holds what a valuation needs that depends only on the
position's orders and the policy (entry price, open quantity, realised PnL, fees), so folding a
price is a handful of ``Decimal`` operations instead of summing the orders again each time.

``Quiet`` answers "can any exit rule fire?" without running them: while the exchange clock is
before ``until`` and a fresh price stays strictly inside ``(low, high)``, ``rules.evaluate``
returns ``None``. The band is widened by a relative ``MARGIN`` far above ``Decimal`` rounding,
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
from models.position import OrderRole, Position, PositionStatus, TrackedOrder

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
    entry_qty, exit_qty = 0, 0
    entry_value, exit_value = _ZERO, _ZERO
    executed = 0
    for order in position.orders:
        progress = order.progress
        if progress.traded_qty > 0:
            executed += 1
        if order.role is OrderRole.ENTRY:
            entry_qty += progress.traded_qty
            entry_value += progress.traded_value
        else:
            exit_qty += progress.traded_qty
            exit_value += progress.traded_value
    if not entry_qty:
        return None
    entry = entry_value / entry_qty
    sign = position.side.sign
    closed = min(entry_qty, exit_qty)  # Position.closed_qty: an over-fill is not this one's
    realized = sign * (exit_value / exit_qty - entry) * closed if exit_qty else 0
    return Basis(orders=position.orders, side=position.side, sign=sign, entry=entry,
                 quantity=max(0, entry_qty - exit_qty), realized=Decimal(realized),
                 fees=policy.fee_per_order * executed)


def fits(basis: Basis | None, position: Position) -> bool:
    """Whether ``basis`` was derived from this position's orders (and so may be used)."""
    return basis is not None and basis.orders is position.orders


def net_at(basis: Basis, ltp: Decimal) -> Decimal:
    """``rules.pnl(position, ltp, policy).net``, term for term."""
    return (basis.realized + basis.sign * (ltp - basis.entry) * basis.quantity) - basis.fees


def pct_at(basis: Basis, ltp: Decimal) -> Decimal:
    """``rules.pnl(position, ltp, policy).pct``."""
    return basis.sign * (ltp - basis.entry) / basis.entry


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
    entry = basis.entry
    loss = entry * (1 - basis.sign * policy.stop_loss_pct)
    profit = entry * (1 + basis.sign * policy.take_profit_pct)
    if basis.side is Side.LONG:
        low = loss if trail is None else max(loss, trail)
        return low + abs(low) * MARGIN, profit - abs(profit) * MARGIN
    high = loss if trail is None else min(loss, trail)
    return profit + abs(profit) * MARGIN, high - abs(high) * MARGIN


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


def trail_stop_at(entry: Decimal, sign: int, peak: Decimal, policy: ExitPolicy) -> Decimal | None:
    """The trailing stop a peak price sets (before the never-loosen rule), or ``None``."""
    trailing = policy.trailing
    if trailing.mode == "off":
        return None
    peak_pct = sign * (peak - entry) / entry
    if trailing.mode == "percent":
        if peak_pct < trailing.activation_pct:
            return None
        return peak * (1 - sign * trailing.trail_pct)
    offsets = [offset for threshold, offset in trailing.tiers if peak_pct >= threshold]
    return entry * (1 + sign * offsets[-1]) if offsets else None


def _trail_settled(position: Position, basis: Basis, peak: Decimal, policy: ExitPolicy) -> bool:
    """Folding the peak again would not move the trailing stop (it is derived from the peak)."""
    stop = trail_stop_at(basis.entry, basis.sign, peak, policy)
    trail = position.trail_stop
    if stop is None:
        return True
    if trail is None:
        return False
    return (max(trail, stop) if basis.side is Side.LONG else min(trail, stop)) == trail


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
