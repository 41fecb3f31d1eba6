"""PnL (SPEC §3.3) and exit rules (SPEC §3.4) as pure functions.

``evaluate(position, mark, now, config)`` returns the exit decision of highest priority or
``None``. ``update_marks`` folds a price into the peak price, the high-water mark and the trailing
stop, which never loosens. ``is_fresh`` says whether a price may fire a price rule. Nothing here
reads a clock: ``now`` is an input.

The formulas are written once, in ``models.marks``: PnL (``basis_of``, ``net_at``, ``pct_at``),
the stop-loss and take-profit prices, the trailing stop a peak sets, which side of a level a
price is on. The rules here fire with them, and the quiet guard and band are bounded by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from models.common import IST, Frozen
from models.marks import (
    Basis,
    basis_of,
    favourable,
    fees_of,
    fits,
    gross_at,
    net_at,
    pct_at,
    pct_of,
    stop_loss_price,
    stopped_out,
    take_profit_price,
    target_reached,
    trail_stop_at,
    unrealized_at,
)
from models.policy import ExitPolicy, PortfolioLimits, RiskConfig, SessionCalendar
from models.position import PRICED, ExitReason, Position, PositionStatus

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PriceMark:
    """The last traded price of an instrument and the exchange time it was seen at.

    A frozen dataclass rather than a pydantic model: one is made for every tick, the most
    frequent value of all (SPEC §2 allows it on a measured hot path). It checks what the model
    did: a finite price greater than 0 (an ``int`` or ``str`` is taken as its ``Decimal``) and
    a timezone-aware time; anything else is a ``ValueError``.
    """

    ltp: Decimal
    at: datetime

    def __post_init__(self) -> None:
        ltp = self.ltp
        if type(ltp) is not Decimal:
            if isinstance(ltp, bool) or not isinstance(ltp, (Decimal, int, str)):
                raise ValueError(f"a price must be a decimal number, not {type(ltp).__name__}: "
                                 f"{ltp!r}")
            try:
                ltp = Decimal(ltp)
            except ArithmeticError as error:
                raise ValueError(f"a price must be a decimal number: {ltp!r}") from error
            object.__setattr__(self, "ltp", ltp)
        if not ltp.is_finite() or ltp <= 0:
            raise ValueError(f"a price must be finite and greater than 0: {ltp}")
        at = self.at
        if not isinstance(at, datetime) or at.utcoffset() is None:
            raise ValueError(f"a price's time must be a timezone-aware datetime: {at!r}")


class PnL(Frozen):
    gross: Decimal
    net: Decimal
    pct: Decimal
    unrealized: Decimal
    realized: Decimal


class ExitDecision(Frozen):
    reason: ExitReason
    price: Decimal | None = None
    detail: str = ""


def pnl(position: Position, ltp: Decimal | None, policy: ExitPolicy) -> PnL:
    """Gross is realised (exit fills) plus unrealised (open quantity at ``ltp``); fees per order.

    Without ``ltp`` the open quantity is valued at the exit price, else at the entry price."""
    basis = basis_of(position, policy)
    if basis is None:
        return PnL(gross=_ZERO, net=-fees_of(position, policy), pct=_ZERO, unrealized=_ZERO,
                   realized=_ZERO)
    exit_price = position.exit_price
    mark = ltp if ltp is not None else exit_price if exit_price is not None else basis.entry
    return PnL(gross=gross_at(basis, mark), net=net_at(basis, mark), pct=pct_at(basis, mark),
               unrealized=unrealized_at(basis, mark), realized=basis.realized)


def closed_net(position: Position, policy: ExitPolicy) -> Decimal:
    """``pnl(position, None, policy).net`` without the rest of the ``PnL``: what a closed
    position made, net of fees (a start sums a day's worth of them)."""
    basis = basis_of(position, policy)
    if basis is None:
        return -fees_of(position, policy)
    exit_price = position.exit_price
    return net_at(basis, exit_price if exit_price is not None else basis.entry)


def update_marks(position: Position, ltp: Decimal, policy: ExitPolicy,
                 basis: Basis | None = None) -> Position:
    """Fold one price into peak price, high-water mark and trailing stop (never loosening).

    ``basis`` is the position's (``marks.basis_of``), kept by a caller that folds many prices
    into one position; one that does not fit the position is ignored and derived again.
    """
    if position.status not in PRICED:
        return position
    if basis is None or not fits(basis, position):
        basis = basis_of(position, policy)
        if basis is None:
            return position
    side = basis.side
    peak = favourable(side, position.peak_price or basis.entry, ltp)
    hwm = max(position.hwm_pnl, net_at(basis, ltp), _ZERO)
    stop = trail_stop_at(basis.entry, basis.sign, peak, policy)
    if position.trail_stop is not None:
        stop = position.trail_stop if stop is None else favourable(side, position.trail_stop,
                                                                      stop)
    if peak == position.peak_price and hwm == position.hwm_pnl and stop == position.trail_stop:
        return position
    return position.model_copy(update={"peak_price": peak, "hwm_pnl": hwm, "trail_stop": stop})


def freshness_limit(policy: ExitPolicy) -> timedelta:
    """How old a price may be and still fire a price rule (``stale_after_seconds``)."""
    return timedelta(seconds=float(policy.stale_after_seconds))


def is_fresh(at: datetime, now: datetime, limit: timedelta, in_session: bool) -> bool:
    """A price seen ``at`` may fire a price rule at ``now``: it is at most ``limit`` old, or
    its market is out of session hours (no price moves then, so the last one is never stale).
    """
    return not in_session or now - at <= limit


def price_is_fresh(position: Position, mark: PriceMark, now: datetime, policy: ExitPolicy,
                   calendar: SessionCalendar) -> bool:
    """``is_fresh`` for a position's price under ``policy`` and ``calendar``."""
    return is_fresh(mark.at, now, freshness_limit(policy),
                    calendar.in_session(position.segment, now))


def is_unprotected(position: Position, mark: PriceMark | None, now: datetime,
                   policy: ExitPolicy, calendar: SessionCalendar, *,
                   in_session: bool | None = None) -> bool:
    """In session, open, and no fresh price for ``unprotected_after_seconds``.

    ``in_session``, when the caller knows it, spares the calendar look-up."""
    if in_session is None:
        in_session = calendar.in_session(position.segment, now)
    if position.status not in PRICED or not in_session:
        return False
    since = mark.at if mark is not None else position.opened_at or position.created_at
    return now - since > timedelta(seconds=float(policy.unprotected_after_seconds))


def _price_rules(position: Position, ltp: Decimal, policy: ExitPolicy) -> list[ExitDecision]:
    entry = position.entry_price
    assert entry is not None  # checked by the caller: only priced positions are evaluated
    sign = position.side.sign
    fired = []
    if stopped_out(sign, ltp, stop_loss_price(entry, sign, policy)):
        fired.append(ExitDecision(reason=ExitReason.STOP_LOSS, price=ltp,
                                  detail=f"pnl {pct_of(entry, sign, ltp):.4%} <= "
                                         f"-{policy.stop_loss_pct:.2%}"))
    stop = position.trail_stop
    if stop is not None and stopped_out(sign, ltp, stop):
        fired.append(ExitDecision(reason=ExitReason.TRAILING_STOP, price=ltp,
                                  detail=f"price {ltp} crossed trailing stop {stop:.4f}"))
    if target_reached(sign, ltp, take_profit_price(entry, sign, policy)):
        fired.append(ExitDecision(reason=ExitReason.TAKE_PROFIT, price=ltp,
                                  detail=f"pnl {pct_of(entry, sign, ltp):.4%} >= "
                                         f"{policy.take_profit_pct:.2%}"))
    return fired


def _time_rules(position: Position, now: datetime, policy: ExitPolicy,
                calendar: SessionCalendar) -> list[ExitDecision]:
    local = now.astimezone(IST)
    # Clock-of-day rules apply on trading days only: on a weekend or holiday no exit can fill.
    trading_day = calendar.trading_day(local.date())
    fired = []
    square_off = policy.square_off_time(position.segment)
    if square_off is not None and trading_day and local.time() >= square_off:
        fired.append(ExitDecision(reason=ExitReason.SESSION_END,
                                  detail=f"exchange clock {local:%H:%M:%S} >= {square_off:%H:%M}"))
    if policy.max_hold_minutes and position.opened_at is not None:
        held = now - position.opened_at
        if held >= timedelta(minutes=policy.max_hold_minutes):
            fired.append(ExitDecision(reason=ExitReason.TIME_STOP,
                                      detail=f"held {held} >= {policy.max_hold_minutes} min"))
    exit_at = policy.exit_at_time
    if exit_at is not None and trading_day and local.time() >= exit_at:
        fired.append(ExitDecision(reason=ExitReason.TIME_EXIT,
                                  detail=f"exchange clock {local:%H:%M:%S} >= {exit_at:%H:%M}"))
    return fired


PRIORITY = {reason: rank for rank, reason in enumerate(ExitReason)}


def evaluate(position: Position, mark: PriceMark | None, now: datetime, config: RiskConfig,
             *, halted: bool = False) -> ExitDecision | None:
    """The exit decision for an ACTIVE position (an EXITING one is already leaving), or ``None``.

    ``mark`` should already be folded into the position by ``update_marks``. A stale price fires
    no price rule; time rules and the kill switch need no price. Out of session hours only the
    kill switch fires: an exit order could not fill, and its rejection would only start retries.
    """
    if position.status is not PositionStatus.ACTIVE or position.entry_price is None:
        return None
    policy = config.policy
    fired: list[ExitDecision] = []
    if halted:
        fired.append(ExitDecision(reason=ExitReason.KILL_SWITCH, detail="trading is HALTED"))
    if not config.calendar.in_session(position.segment, now):
        return fired[0] if fired else None
    fired += _time_rules(position, now, policy, config.calendar)
    if mark is not None and price_is_fresh(position, mark, now, policy, config.calendar):
        fired += _price_rules(position, mark.ltp, policy)
    if not fired:
        return None
    return min(fired, key=lambda decision: PRIORITY[decision.reason])


def kill_switch_breached(day_net_pnl: Decimal, limits: PortfolioLimits) -> bool:
    """Realised plus unrealised net PnL of the day at or below minus the limit (0 = off)."""
    return limits.daily_loss_limit > 0 and day_net_pnl <= -limits.daily_loss_limit
