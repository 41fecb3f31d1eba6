"""Exit rules (SPEC §3.4) and PnL (SPEC §3.3) with exact numbers, long and short.

Positions enter 100 units at 100 at 10:00 IST on a Monday unless a test says otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from models import lifecycle
from models.common import Segment, Side
from models.orders import OrderStatus
from models.policy import ExitPolicy, PortfolioLimits, RiskConfig, TrailingPolicy
from models.position import ExitReason, OrderRole, Position
from models.rules import (
    ExitDecision,
    PriceMark,
    closed_net,
    evaluate,
    is_unprotected,
    kill_switch_breached,
    pnl,
    price_is_fresh,
)
from tests.unit.builders import (
    HOLIDAY,
    SATURDAY,
    active,
    apply_exit,
    config,
    d,
    exit_update,
    exiting,
    mark,
    marked,
    ok,
    pending,
    t,
    update,
)

LONG_SHORT = pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
DEFAULT = RiskConfig()
TIERS = TrailingPolicy(mode="tiers")
NO_TRAIL = TrailingPolicy(mode="off")


def away(side: Side, pct: str) -> str:
    """The price ``pct`` (a signed fraction) in profit from the entry price 100 for ``side``."""
    return str(Decimal(100) * (1 + side.sign * Decimal(pct)))


def decide(position: Position, *path: str, now: datetime | None = None,
           cfg: RiskConfig = DEFAULT, halted: bool = False) -> ExitDecision | None:
    """Fold a price path into the position (the last price is fresh at ``now``), then evaluate."""
    now = now or t(10, 30)
    position = marked(position, *path, policy=cfg.policy)
    last = mark(path[-1], now) if path else None
    return evaluate(position, last, now, cfg, halted=halted)


def reason(decision: ExitDecision | None) -> ExitReason | None:
    return decision.reason if decision is not None else None


# Stop loss and take profit ------------------------------------------------------------------------
@LONG_SHORT
def test_when_stop_loss_is_hit_exactly_then_exit_requested(side: Side) -> None:
    decision = decide(active(side), away(side, "-0.12"))

    assert decision is not None
    assert decision.reason is ExitReason.STOP_LOSS
    assert decision.price == d(88 if side is Side.LONG else 112)


@LONG_SHORT
def test_when_loss_is_just_short_of_the_stop_then_no_exit(side: Side) -> None:
    assert decide(active(side), away(side, "-0.1199")) is None


@LONG_SHORT
def test_stop_loss_is_measured_from_the_volume_weighted_entry_price(side: Side) -> None:
    position = ok(lifecycle.apply_update(pending(side), update(
        "E1", OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side), OrderRole.ENTRY))
    position = ok(lifecycle.apply_update(position, update(
        "E1", OrderStatus.TRADED, 100, "101", at=t(10, 1), side=side), OrderRole.ENTRY))
    at_stop = "88.88" if side is Side.LONG else "113.12"  # 101 * (1 -/+ 0.12)

    assert reason(decide(position, at_stop, cfg=config(trailing=NO_TRAIL))) \
        is ExitReason.STOP_LOSS
    assert decide(position, "88.89" if side is Side.LONG else "113.11",
                  cfg=config(trailing=NO_TRAIL)) is None


@LONG_SHORT
def test_when_take_profit_is_reached_then_exit_requested(side: Side) -> None:
    decision = decide(active(side), away(side, "0.50"), cfg=config(trailing=NO_TRAIL))

    assert reason(decision) is ExitReason.TAKE_PROFIT
    assert decide(active(side), away(side, "0.4999"), cfg=config(trailing=NO_TRAIL)) is None


def test_custom_stop_loss_and_take_profit_apply() -> None:
    cfg = config(stop_loss_pct=d("0.05"), take_profit_pct=d("0.10"), trailing=NO_TRAIL)

    assert reason(decide(active(), "95", cfg=cfg)) is ExitReason.STOP_LOSS
    assert reason(decide(active(), "110", cfg=cfg)) is ExitReason.TAKE_PROFIT
    assert decide(active(), "95.01", cfg=cfg) is None


# Trailing stop, percent mode ----------------------------------------------------------------------
@LONG_SHORT
def test_percent_trailing_is_not_armed_below_the_activation_profit(side: Side) -> None:
    position = marked(active(side), away(side, "0.0349"))

    assert position.trail_stop is None


def test_percent_trailing_arms_at_the_activation_profit_long() -> None:
    position = marked(active(Side.LONG), "103.5")

    assert position.peak_price == d("103.5")
    assert position.trail_stop == d("100.9125")  # 103.5 * (1 - 0.025)


def test_percent_trailing_arms_at_the_activation_profit_short() -> None:
    position = marked(active(Side.SHORT), "96.5")

    assert position.peak_price == d("96.5")
    assert position.trail_stop == d("98.9125")  # 96.5 * (1 + 0.025)


def test_percent_trailing_follows_the_peak_and_fires_at_the_stop_long() -> None:
    position = marked(active(Side.LONG), "103.5", "110", "108")

    assert (position.peak_price, position.trail_stop) == (d(110), d("107.25"))
    assert decide(position, "107.26") is None
    decision = decide(position, "107.25")
    assert reason(decision) is ExitReason.TRAILING_STOP
    assert decision is not None and decision.price == d("107.25")


def test_percent_trailing_follows_the_trough_and_fires_at_the_stop_short() -> None:
    position = marked(active(Side.SHORT), "96.5", "90", "92")

    assert (position.peak_price, position.trail_stop) == (d(90), d("92.25"))
    assert decide(position, "92.24") is None
    assert reason(decide(position, "92.25")) is ExitReason.TRAILING_STOP
    assert reason(decide(position, "95")) is ExitReason.TRAILING_STOP


# Trailing stop, tier mode -------------------------------------------------------------------------
DEFAULT_TIERS = [("0.05", "-0.15"), ("0.10", "-0.05"), ("0.15", "0"), ("0.25", "0.10"),
                 ("0.40", "0.20"), ("0.60", "0.30"), ("0.80", "0.40"), ("1.20", "0.60")]


@LONG_SHORT
@pytest.mark.parametrize(("threshold", "offset"), DEFAULT_TIERS)
def test_each_default_tier_sets_its_stop_from_the_entry_price(side: Side, threshold: str,
                                                              offset: str) -> None:
    policy = ExitPolicy(trailing=TIERS)

    at_threshold = marked(active(side), away(side, threshold), policy=policy)

    assert at_threshold.trail_stop == Decimal(100) * (1 + side.sign * Decimal(offset))


def test_tier_trailing_at_twelve_percent_uses_the_ten_percent_tier_long() -> None:
    cfg = config(trailing=TIERS)
    position = marked(active(Side.LONG), "112", policy=cfg.policy)

    assert position.trail_stop == d(95)  # 100 * (1 - 0.05)
    assert decide(position, "95.01", cfg=cfg) is None
    assert reason(decide(position, "95", cfg=cfg)) is ExitReason.TRAILING_STOP


def test_tier_trailing_at_twelve_percent_uses_the_ten_percent_tier_short() -> None:
    cfg = config(trailing=TIERS)
    position = marked(active(Side.SHORT), "88", policy=cfg.policy)

    assert position.trail_stop == d(105)  # 100 * (1 + 0.05)
    assert decide(position, "104.99", cfg=cfg) is None
    assert reason(decide(position, "105", cfg=cfg)) is ExitReason.TRAILING_STOP


@LONG_SHORT
def test_tier_trailing_is_off_below_the_first_tier(side: Side) -> None:
    position = marked(active(side), away(side, "0.0499"), policy=ExitPolicy(trailing=TIERS))

    assert position.trail_stop is None


def test_tier_trailing_keeps_the_highest_tier_reached_when_the_price_falls_back() -> None:
    policy = ExitPolicy(trailing=TIERS)

    position = marked(active(Side.LONG), "126", "112", "106", policy=policy)

    assert (position.peak_price, position.trail_stop) == (d(126), d(110))


def test_trailing_mode_off_sets_no_stop() -> None:
    position = marked(active(Side.LONG), "200", policy=ExitPolicy(trailing=NO_TRAIL))

    assert (position.peak_price, position.trail_stop) == (d(200), None)


# Time stop, time exit, session end ----------------------------------------------------------------
def test_when_held_for_max_hold_minutes_exactly_then_time_stop_without_a_price() -> None:
    cfg = config(max_hold_minutes=30)  # opened at 10:00

    assert decide(active(), now=t(10, 29, 59), cfg=cfg) is None
    assert reason(decide(active(), now=t(10, 30), cfg=cfg)) is ExitReason.TIME_STOP


def test_time_stop_counts_from_the_first_entry_fill() -> None:
    position = ok(lifecycle.apply_update(pending(), update(
        "E1", OrderStatus.PART_TRADED, 50, "100", at=t(10), side=Side.LONG), OrderRole.ENTRY))
    position = ok(lifecycle.apply_update(position, update(
        "E1", OrderStatus.TRADED, 100, "100", at=t(10, 20), side=Side.LONG), OrderRole.ENTRY))

    assert reason(decide(position, now=t(10, 30), cfg=config(max_hold_minutes=30))) \
        is ExitReason.TIME_STOP


@LONG_SHORT
def test_when_exchange_clock_reaches_exit_at_then_time_exit_without_a_price(side: Side) -> None:
    cfg = config(exit_at="14:30")

    assert decide(active(side), now=t(14, 29, 59), cfg=cfg) is None
    assert reason(decide(active(side), now=t(14, 30), cfg=cfg)) is ExitReason.TIME_EXIT


def test_time_exit_reads_the_exchange_clock_whatever_the_time_zone_of_now() -> None:
    nine_utc = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)  # 14:30 IST

    assert reason(decide(active(), now=nine_utc, cfg=config(exit_at="14:30"))) \
        is ExitReason.TIME_EXIT


@pytest.mark.parametrize(("segment", "hour", "minute"), [
    (Segment.NSE_FNO, 15, 15), (Segment.NSE_EQ, 15, 15), (Segment.BSE_FNO, 15, 15),
    (Segment.NSE_CURRENCY, 16, 45), (Segment.BSE_CURRENCY, 16, 45), (Segment.MCX_COMM, 23, 15),
])
def test_when_square_off_time_is_reached_then_session_end(segment: Segment, hour: int,
                                                          minute: int) -> None:
    position = active(segment=segment)

    assert decide(position, now=t(hour, minute - 1, 59)) is None
    assert reason(decide(position, now=t(hour, minute))) is ExitReason.SESSION_END


def test_no_session_end_on_a_weekend() -> None:
    assert decide(active(), now=t(15, 20, day=SATURDAY)) is None


def test_no_session_end_on_a_configured_holiday() -> None:
    cfg = config(holidays=frozenset({HOLIDAY}))

    assert decide(active(), now=t(15, 20, day=HOLIDAY), cfg=cfg) is None
    assert reason(decide(active(), now=t(15, 20, day=HOLIDAY))) is ExitReason.SESSION_END


def test_no_time_exit_on_a_weekend_or_holiday() -> None:
    cfg = config(exit_at="14:30", holidays=frozenset({HOLIDAY}))

    assert decide(active(), now=t(14, 30, day=SATURDAY), cfg=cfg) is None
    assert decide(active(), now=t(14, 30, day=HOLIDAY), cfg=cfg) is None


def test_square_off_can_be_turned_off_per_segment() -> None:
    cfg = config(square_off={Segment.NSE_FNO: ""})

    assert decide(active(), now=t(15, 20), cfg=cfg) is None
    assert reason(decide(active(segment=Segment.NSE_EQ), now=t(15, 20), cfg=cfg)) \
        is ExitReason.SESSION_END


# Kill switch and priority -------------------------------------------------------------------------
def test_when_halted_then_kill_switch_without_a_price() -> None:
    assert reason(decide(active(), halted=True)) is ExitReason.KILL_SWITCH


WIDE_TIERS = TrailingPolicy(mode="tiers", tiers=((d("0.05"), d("-0.15")), (d("1.20"), d("0.60"))))
ALL_ON = {"exit_at": "15:00", "max_hold_minutes": 60, "trailing": WIDE_TIERS}


def _cascade(path: tuple[str, ...], steps: list[tuple[dict[str, object], ExitReason | None]],
             *, halted: bool = False) -> list[ExitReason | None]:
    """Evaluate a long at 100 (opened 10:00) at 15:20, turning one rule off per step."""
    policy: dict[str, object] = dict(ALL_ON)
    seen = []
    for turn_off, _ in steps:
        policy.update(turn_off)
        cfg = RiskConfig(policy=ExitPolicy.model_validate(policy))
        seen.append(reason(decide(active(), *path, now=t(15, 20), cfg=cfg, halted=halted)))
        halted = False
    return seen


def test_priority_kill_switch_session_end_stop_loss_trailing_time_stop_time_exit() -> None:
    # Peak 105 arms the 5 % tier (stop 85); at 85 the loss is 15 %: both price rules fire.
    # Each step turns off the rule that won the step before (the first one is ``halted``).
    steps: list[tuple[dict[str, object], ExitReason | None]] = [
        ({}, ExitReason.KILL_SWITCH),
        ({}, ExitReason.SESSION_END),
        ({"square_off": {Segment.NSE_FNO: ""}}, ExitReason.STOP_LOSS),
        ({"stop_loss_pct": d(1)}, ExitReason.TRAILING_STOP),
        ({"trailing": NO_TRAIL}, ExitReason.TIME_STOP),
        ({"max_hold_minutes": 0}, ExitReason.TIME_EXIT),
        ({"exit_at": ""}, None),
    ]

    assert _cascade(("105", "85"), steps, halted=True) == [want for _, want in steps]


def test_priority_trailing_stop_then_take_profit_then_time_stop() -> None:
    # Peak 220 arms the 120 % tier (stop 160); at 150 the profit is 50 %: both price rules fire.
    steps: list[tuple[dict[str, object], ExitReason | None]] = [
        ({"square_off": {Segment.NSE_FNO: ""}, "exit_at": ""}, ExitReason.TRAILING_STOP),
        ({"trailing": NO_TRAIL}, ExitReason.TAKE_PROFIT),
        ({"take_profit_pct": d(100)}, ExitReason.TIME_STOP),
    ]

    assert _cascade(("220", "150"), steps) == [want for _, want in steps]


# Stale prices -------------------------------------------------------------------------------------
def test_when_price_is_stale_in_session_then_no_price_rule_fires() -> None:
    position = marked(active(), "80")
    old = mark("80", t(10, 0, 0))

    assert evaluate(position, old, t(10, 0, 6), DEFAULT) is None
    assert reason(evaluate(position, old, t(10, 0, 5), DEFAULT)) is ExitReason.STOP_LOSS


def test_when_price_is_stale_then_time_rules_still_fire() -> None:
    position = marked(active(), "80")

    decision = evaluate(position, mark("80", t(10, 0)), t(10, 30), config(max_hold_minutes=30))

    assert reason(decision) is ExitReason.TIME_STOP


def test_a_price_outside_session_hours_is_not_stale() -> None:
    position = active()
    last = mark("80", t(15, 29, 59))

    assert price_is_fresh(position, last, t(16), DEFAULT.policy, DEFAULT.calendar)
    assert price_is_fresh(position, last, t(11, day=SATURDAY), DEFAULT.policy, DEFAULT.calendar)



def test_when_market_closed_then_only_the_kill_switch_fires() -> None:
    position = marked(active(), "80")  # -20 %: a stop loss in session
    last = mark("80", t(15, 29, 59))
    cfg = config(square_off={Segment.NSE_FNO: ""})

    assert reason(evaluate(position, last, t(15, 29, 59), cfg)) is ExitReason.STOP_LOSS
    assert evaluate(position, last, t(16), cfg) is None
    assert evaluate(position, last, t(11, day=SATURDAY), cfg) is None
    assert reason(evaluate(position, last, t(16), cfg, halted=True)) is ExitReason.KILL_SWITCH


def test_stale_after_seconds_is_configurable() -> None:
    position = active()
    policy = ExitPolicy(stale_after_seconds=d(2))

    assert price_is_fresh(position, mark("99", t(10)), t(10, 0, 2), policy, DEFAULT.calendar)
    assert not price_is_fresh(position, mark("99", t(10)), t(10, 0, 3), policy,
                              DEFAULT.calendar)


def test_position_is_unprotected_after_thirty_seconds_without_a_price_in_session() -> None:
    position = active()
    last = mark("100", t(10))
    policy, calendar = DEFAULT.policy, DEFAULT.calendar

    assert not is_unprotected(position, last, t(10, 0, 30), policy, calendar)
    assert is_unprotected(position, last, t(10, 0, 31), policy, calendar)
    assert is_unprotected(position, None, t(10, 0, 31), policy, calendar)  # since opened_at
    assert not is_unprotected(position, last, t(16), policy, calendar)
    assert not is_unprotected(position, last, t(11, day=SATURDAY), policy, calendar)
    assert is_unprotected(exiting(), last, t(11, 0, 31), policy, calendar)
    assert not is_unprotected(pending(), None, t(11), policy, calendar)


# Which positions are evaluated --------------------------------------------------------------------
@pytest.mark.parametrize("position", [pending(), exiting()], ids=["pending", "exiting"])
def test_evaluate_ignores_positions_that_are_not_active(position: Position) -> None:
    assert evaluate(position, mark("1", t(15, 20)), t(15, 20), DEFAULT, halted=True) is None


def test_evaluate_ignores_exited_positions() -> None:
    exited = apply_exit(exiting(), exit_update(OrderStatus.TRADED, 100, "80", at=t(11, 1)))

    assert evaluate(exited, mark("1", t(15, 20)), t(15, 20), DEFAULT, halted=True) is None


# PnL ----------------------------------------------------------------------------------------------
def test_pnl_of_an_open_long_charges_one_order() -> None:
    value = pnl(active(Side.LONG, 50, "100"), d(110), ExitPolicy())

    assert (value.gross, value.net, value.pct) == (d(500), d(480), d("0.1"))
    assert (value.realized, value.unrealized) == (d(0), d(500))


def test_pnl_of_an_open_short_charges_one_order() -> None:
    value = pnl(active(Side.SHORT, 50, "100"), d(110), ExitPolicy())

    assert (value.gross, value.net, value.pct) == (d(-500), d(-520), d("-0.1"))


def test_pnl_of_the_spec_report_example_charges_two_orders_once_exited() -> None:
    position = apply_exit(exiting(Side.LONG, 130, "182.35"),
                          exit_update(OrderStatus.TRADED, 130, "190.00", at=t(11, 1),
                                      quantity=130))

    value = pnl(position, None, ExitPolicy())

    assert (value.realized, value.unrealized) == (d("994.50"), d(0))
    assert (value.gross, value.net) == (d("994.50"), d("954.50"))


def test_pnl_of_an_exited_short() -> None:
    position = apply_exit(exiting(Side.SHORT, 50, "100"),
                          exit_update(OrderStatus.TRADED, 50, "90", at=t(11, 1), side=Side.SHORT,
                                      quantity=50))

    value = pnl(position, None, ExitPolicy())

    assert (value.gross, value.net, value.pct) == (d(500), d(460), d("0.1"))


def test_pnl_of_a_partly_exited_position_adds_realised_and_unrealised() -> None:
    position = apply_exit(exiting(Side.LONG, 100, "100"),
                          exit_update(OrderStatus.PART_TRADED, 40, "110", at=t(11, 1)))

    value = pnl(position, d(105), ExitPolicy())

    assert (value.realized, value.unrealized) == (d(400), d(300))
    assert (value.gross, value.net, value.pct) == (d(700), d(660), d("0.05"))


def test_pnl_without_fees_when_fee_is_zero() -> None:
    value = pnl(active(Side.LONG, 50, "100"), d(110), ExitPolicy(fee_per_order=d(0)))

    assert value.net == value.gross == d(500)


def test_closed_net_is_the_pnls_net_without_a_price() -> None:
    long_exit = apply_exit(exiting(Side.LONG, 130, "182.35"),
                           exit_update(OrderStatus.TRADED, 130, "190.00", at=t(11, 1),
                                       quantity=130))
    short_exit = apply_exit(exiting(Side.SHORT, 50, "100"),
                            exit_update(OrderStatus.TRADED, 50, "90", at=t(11, 1),
                                        side=Side.SHORT, quantity=50))
    part = apply_exit(exiting(Side.LONG, 100, "100"),
                      exit_update(OrderStatus.PART_TRADED, 40, "110", at=t(11, 1)))
    for position in (long_exit, short_exit, part, active(Side.LONG, 50, "100"), pending()):
        for policy in (ExitPolicy(), ExitPolicy(fee_per_order=d(0))):
            assert closed_net(position, policy) == pnl(position, None, policy).net
    assert closed_net(long_exit, ExitPolicy()) == d("954.50")


def test_pnl_of_a_pending_position_is_zero() -> None:
    value = pnl(pending(), d(110), ExitPolicy())

    assert (value.gross, value.net, value.pct) == (d(0), d(0), d(0))


@LONG_SHORT
def test_peak_price_and_high_water_mark_follow_the_best_price(side: Side) -> None:
    position = marked(active(side, 10, "100"), away(side, "0.10"), away(side, "0.05"),
                      away(side, "-0.10"))

    assert position.peak_price == d(110 if side is Side.LONG else 90)
    assert position.hwm_pnl == d(80)  # best net: 10 * 10 - 20


def test_high_water_mark_is_never_negative() -> None:
    assert marked(active(), "90").hwm_pnl == d(0)


# Kill switch --------------------------------------------------------------------------------------
def test_kill_switch_is_breached_at_exactly_minus_the_limit() -> None:
    limits = PortfolioLimits(daily_loss_limit=d(5000))

    assert kill_switch_breached(d(-5000), limits)
    assert kill_switch_breached(d("-5000.01"), limits)
    assert not kill_switch_breached(d("-4999.99"), limits)


def test_kill_switch_is_off_when_the_limit_is_zero() -> None:
    assert not kill_switch_breached(d(-10**9), PortfolioLimits())


def test_any_price_mark_is_strictly_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        PriceMark(ltp=d(0), at=t(10))
