"""The prices that can change nothing for a position, and what a price is to each position:
pure, built from the thresholds of ``models.marks`` (nothing here restates a rule).

``Quiet`` answers "can any exit rule fire?" without running them: while the exchange clock is
before ``until`` and a fresh price stays strictly inside ``(low, high)``, ``rules.evaluate``
returns ``None``. The band is narrowed by a relative ``MARGIN`` far above ``Decimal`` rounding,
so a price near a trigger always goes through the real rules: the guard can only skip work, never
change a decision. A ``Quiet`` keeps the position's ``orders`` tuple and is checked by identity.

``Band`` widens the guard by the marks: the prices at which no rule fires *and* no mark (peak,
high-water mark, trailing stop) moves. The index keeps each position's band (``BandWatch``)
and takes a verdict per price: ``CROSSING`` (a possible exit: told at once, urgent),
``MARKS`` (a mark moves: told in the ordinary queue), ``REFRESH`` (nothing moves, but the
tracker's price would go stale), ``QUIET`` (nothing). ``Reach`` is the verdict for all of one
instrument's positions at once: one or two comparisons per instrument find a batch's possible
exits.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from models.common import IST, Instrument, Segment, Side
from models.marks import (
    Basis,
    favourable,
    fits,
    net_at,
    stop_price,
    take_profit_price,
    trail_stop_at,
)
from models.policy import SESSION_HOURS, ExitPolicy, RiskConfig
from models.position import Position, PositionStatus, TrackedOrder

MARGIN = Decimal("1e-9")
"""Relative width kept between the quiet band and a trigger; rounding error is ~1e-27."""


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


# The index's verdicts --------------------------------------------------------------------------
QUIET, REFRESH, MARKS, CROSSING = 0, 1, 2, 3
"""What a price is to one position: nothing; a refresh; a move of its marks; a possible exit."""


class BandWatch:
    """The index's view of one position's band and of the last price it was told."""

    __slots__ = ("band", "instrument", "refresh", "told_at")

    def __init__(self, position_id: str, instrument: Instrument, refresh: timedelta) -> None:
        self.band: Band | None = None
        self.instrument = instrument
        # Spread over [refresh / 2, refresh) by position, so refreshes do not come in bursts.
        self.refresh = refresh * (0.5 + (zlib.crc32(position_id.encode()) % 1000) / 2000)
        self.told_at: datetime | None = None

    def verdict(self, ltp: Decimal, at: datetime) -> int:
        band = self.band
        if band is None or (band.rule_low is not None and ltp < band.rule_low) or (
                band.rule_high is not None and ltp > band.rule_high) or (
                band.until is not None and at >= band.until):
            return CROSSING
        if (band.low is not None and ltp < band.low) or (
                band.high is not None and ltp > band.high):
            return MARKS
        told = self.told_at
        return REFRESH if told is None or at - told >= self.refresh else QUIET


class Reach:
    """What the bands of one instrument's positions say of a price, for all of them at once.

    Some position may exit below ``low``, above ``high``, from ``until`` on, or at any price
    while one of them has no known band (``open``): the union of their rule bands. Inside
    ``[marks_low, marks_high]`` (the intersection of their whole bands) and before
    ``refresh_at`` (the earliest refresh due) a price is nothing to any of them. One or two
    comparisons per instrument find a batch's possible exits before any position's verdict is
    taken, and skip the instruments where nothing is due."""

    __slots__ = ("high", "low", "marks_high", "marks_low", "open", "owners", "refresh_at",
                 "until")

    def __init__(self, owners: dict[str, Any], watches: list[BandWatch | None]) -> None:
        self.owners = owners
        """The instrument's owners (the index's own dict: a reach is dropped when it changes)."""
        self.low: Decimal | None = None
        self.high: Decimal | None = None
        self.marks_low: Decimal | None = None
        self.marks_high: Decimal | None = None
        self.until: datetime | None = None
        self.refresh_at: datetime | None = None
        """Unknown until a batch has checked every position of the instrument."""
        self.open = False
        for watch in watches:
            band = None if watch is None else watch.band
            if band is None:
                self.open = True
                return
            self.low = _higher(self.low, band.rule_low)
            self.high = _lower(self.high, band.rule_high)
            self.marks_low = _higher(self.marks_low, band.low)
            self.marks_high = _lower(self.marks_high, band.high)
            self.until = _lower(self.until, band.until)

    def crosses(self, ltp: Decimal, at: datetime) -> bool:
        return self.open or (self.low is not None and ltp < self.low) or (
            self.high is not None and ltp > self.high) or (
            self.until is not None and at >= self.until)

    def quiet(self, ltp: Decimal, at: datetime) -> bool:
        """Nothing to any position (given that it does not ``cross``)."""
        return self.refresh_at is not None and at < self.refresh_at and (
            self.marks_low is None or ltp >= self.marks_low) and (
            self.marks_high is None or ltp <= self.marks_high)

    def verdict(self, ltp: Decimal, at: datetime) -> int:
        """``crosses`` and ``quiet`` in one call (the fan-out asks it of every price):
        ``CROSSING`` (a position may exit), ``QUIET`` (nothing to any), or ``MARKS`` (look
        at each position)."""
        if self.crosses(ltp, at):
            return CROSSING
        return QUIET if self.quiet(ltp, at) else MARKS


def _higher(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


def _lower(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a
