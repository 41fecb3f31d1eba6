"""Loading the risk policy from TOML (SPEC §3.4): every key, and errors that name the key."""

from __future__ import annotations

from datetime import time
from decimal import Decimal

import pytest

from models.common import Segment
from models.policy import (
    ExitPolicy,
    PolicyError,
    PortfolioLimits,
    RiskConfig,
    SessionCalendar,
    TrailingPolicy,
    load_policy_toml,
)
from tests.unit.builders import HOLIDAY, MONDAY, SATURDAY, d, t

SPEC_EXAMPLE = """
[policy]
stop_loss_pct = 0.12
take_profit_pct = 0.50
max_hold_minutes = 0          # 0 = off
exit_at = ""                  # "HH:MM" exchange time, "" = off
stale_after_seconds = 5
fee_per_order = 20
[policy.trailing]
mode = "percent"              # "percent" | "tiers" | "off"
activation_pct = 0.035
trail_pct = 0.025
tiers = [[0.05, -0.15], [0.10, -0.05], [0.15, 0.0], [0.25, 0.10], [0.40, 0.20], [0.60, 0.30], [0.80, 0.40], [1.20, 0.60]]
[policy.square_off]           # per segment, "" = off
NSE_FNO = "15:15"
[portfolio]
daily_loss_limit = 0          # rupees, 0 = off
"""  # noqa: E501 - the SPEC's example, verbatim

EVERY_KEY_CHANGED = """
[policy]
stop_loss_pct = 0.08
take_profit_pct = 0.30
max_hold_minutes = 45
exit_at = "15:20"
stale_after_seconds = 3
unprotected_after_seconds = 20
fee_per_order = 15.5
[policy.trailing]
mode = "tiers"
activation_pct = 0.02
trail_pct = 0.01
tiers = [[0.05, 0.0], [0.10, 0.05]]
[policy.square_off]
NSE_FNO = "15:00"
MCX_COMM = ""
[portfolio]
daily_loss_limit = 25000
[calendar]
holidays = [2025-02-26, "2025-03-14"]
"""


def error_of(text: str) -> str:
    with pytest.raises(PolicyError) as raised:
        load_policy_toml(text)
    return str(raised.value)


# Loading ------------------------------------------------------------------------------------------
def test_the_spec_example_loads_as_the_defaults() -> None:
    assert load_policy_toml(SPEC_EXAMPLE) == RiskConfig()


def test_an_empty_document_gives_the_defaults() -> None:
    config = load_policy_toml("")

    assert config == RiskConfig()
    policy = config.policy
    assert (policy.stop_loss_pct, policy.take_profit_pct) == (d("0.12"), d("0.50"))
    assert (policy.max_hold_minutes, policy.exit_at_time) == (0, None)
    assert (policy.stale_after_seconds, policy.unprotected_after_seconds) == (d(5), d(30))
    assert policy.fee_per_order == d(20)
    assert (policy.trailing.mode, policy.trailing.activation_pct, policy.trailing.trail_pct) == (
        "percent", d("0.035"), d("0.025"))
    assert config.portfolio.daily_loss_limit == d(0)
    assert config.calendar.holidays == frozenset()


def test_every_key_is_read() -> None:
    config = load_policy_toml(EVERY_KEY_CHANGED)

    assert config.policy == ExitPolicy(
        stop_loss_pct=d("0.08"), take_profit_pct=d("0.30"), max_hold_minutes=45,
        exit_at="15:20", stale_after_seconds=d(3), unprotected_after_seconds=d(20),
        fee_per_order=d("15.5"),
        trailing=TrailingPolicy(mode="tiers", activation_pct=d("0.02"), trail_pct=d("0.01"),
                                tiers=((d("0.05"), d(0)), (d("0.10"), d("0.05")))),
        square_off={Segment.NSE_FNO: "15:00", Segment.MCX_COMM: ""},
    )
    assert config.policy.exit_at_time == time(15, 20)
    assert config.portfolio == PortfolioLimits(daily_loss_limit=d(25000))
    assert config.calendar == SessionCalendar(holidays=frozenset({HOLIDAY, HOLIDAY.replace(
        month=3, day=14)}))


def test_toml_numbers_become_exact_decimals() -> None:
    policy = load_policy_toml(SPEC_EXAMPLE).policy

    assert policy.stop_loss_pct == Decimal("0.12")
    assert policy.trailing.tiers[1] == (Decimal("0.10"), Decimal("-0.05"))
    assert all(isinstance(value, Decimal) for tier in policy.trailing.tiers for value in tier)


@pytest.mark.parametrize("mode", ["percent", "tiers", "off"])
def test_each_trailing_mode_loads(mode: str) -> None:
    config = load_policy_toml(f'[policy.trailing]\nmode = "{mode}"')

    assert config.policy.trailing.mode == mode


# Square-off per segment ---------------------------------------------------------------------------
def test_default_square_off_times_per_segment() -> None:
    policy = ExitPolicy()

    assert policy.square_off_time(Segment.NSE_FNO) == time(15, 15)
    assert policy.square_off_time(Segment.BSE_EQ) == time(15, 15)
    assert policy.square_off_time(Segment.NSE_CURRENCY) == time(16, 45)
    assert policy.square_off_time(Segment.MCX_COMM) == time(23, 15)
    assert policy.square_off_time(Segment.IDX_I) is None


def test_a_square_off_override_changes_only_its_segment() -> None:
    policy = load_policy_toml('[policy.square_off]\nNSE_FNO = "14:45"').policy

    assert policy.square_off_time(Segment.NSE_FNO) == time(14, 45)
    assert policy.square_off_time(Segment.NSE_EQ) == time(15, 15)
    assert policy.square_off_time(Segment.MCX_COMM) == time(23, 15)


def test_an_empty_square_off_turns_it_off_for_that_segment() -> None:
    policy = load_policy_toml('[policy.square_off]\nNSE_CURRENCY = ""').policy

    assert policy.square_off_time(Segment.NSE_CURRENCY) is None
    assert policy.square_off_time(Segment.BSE_CURRENCY) == time(16, 45)


def test_a_bad_square_off_time_names_the_segment() -> None:
    message = error_of('[policy.square_off]\nNSE_FNO = "3pm"')

    assert message.startswith("policy.square_off.NSE_FNO")
    assert "HH:MM" in message


def test_an_unknown_square_off_segment_is_an_error() -> None:
    assert error_of('[policy.square_off]\nNSE_FUT = "15:00"').startswith(
        "policy.square_off.NSE_FUT")


# exit_at ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["25:00", "12:60", "9.30", "15:20:00", "noon", "1520"])
def test_a_bad_exit_at_names_the_key_and_the_format(text: str) -> None:
    message = error_of(f'[policy]\nexit_at = "{text}"')

    assert message.startswith("policy.exit_at: ")
    assert '"HH:MM" (00:00-23:59) or ""' in message
    assert repr(text) in message


def test_exit_at_must_be_a_string() -> None:
    assert error_of("[policy]\nexit_at = 1520").startswith("policy.exit_at: ")


# Errors name the key ------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "key"), [
    ("policy", "stop_los_pct"), ("policy.trailing", "trail"), ("portfolio", "daily_loss"),
    ("calendar", "holiday"),
])
def test_an_unknown_key_is_an_error_that_names_it(table: str, key: str) -> None:
    assert error_of(f"[{table}]\n{key} = 1") == f"{table}.{key}: unknown key"


def test_an_unknown_table_is_an_error_that_names_it() -> None:
    assert error_of("[polcy]\nstop_loss_pct = 0.1") == (
        "polcy: unknown table (allowed: calendar, policy, portfolio)")


@pytest.mark.parametrize(("table", "assignment", "key", "allowed"), [
    ("policy", "stop_loss_pct = 0", "policy.stop_loss_pct", "> 0, <= 1"),
    ("policy", "stop_loss_pct = 1.5", "policy.stop_loss_pct", "> 0, <= 1"),
    ("policy", "take_profit_pct = -0.1", "policy.take_profit_pct", "> 0, <= 100"),
    ("policy", "max_hold_minutes = -1", "policy.max_hold_minutes", ">= 0, <= 10080"),
    ("policy", "stale_after_seconds = 0", "policy.stale_after_seconds", "> 0, <= 3600"),
    ("policy", "fee_per_order = -20", "policy.fee_per_order", ">= 0, <= 100000"),
    ("policy.trailing", "activation_pct = -0.01", "policy.trailing.activation_pct",
     ">= 0, <= 10"),
    ("policy.trailing", "trail_pct = 1", "policy.trailing.trail_pct", "> 0, < 1"),
    ("portfolio", "daily_loss_limit = -1", "portfolio.daily_loss_limit",
     ">= 0, <= 1000000000000"),
])
def test_an_out_of_range_value_names_the_key_and_the_allowed_range(
        table: str, assignment: str, key: str, allowed: str) -> None:
    message = error_of(f"[{table}]\n{assignment}")

    assert message.startswith(f"{key}: ")
    assert f"(allowed: {allowed})" in message


def test_a_value_of_the_wrong_type_names_the_key() -> None:
    assert error_of('[policy]\nstop_loss_pct = "twelve"').startswith("policy.stop_loss_pct: ")


def test_an_unknown_trailing_mode_names_the_key() -> None:
    message = error_of('[policy.trailing]\nmode = "chandelier"')

    assert message.startswith("policy.trailing.mode: ")
    assert "'percent', 'tiers' or 'off'" in message


@pytest.mark.parametrize("tiers", [
    "[[0.10, -0.05], [0.05, -0.15]]",  # descending
    "[[0.05, -0.15], [0.05, -0.10]]",  # repeated threshold
    "[[0.05, 0.05]]",                  # the stop would sit at the threshold itself
    "[[0.0, -0.1]]",                   # a threshold must be a profit
])
def test_bad_tiers_name_the_key(tiers: str) -> None:
    assert error_of(f"[policy.trailing]\ntiers = {tiers}").startswith("policy.trailing.tiers: ")


def test_invalid_toml_is_a_policy_error() -> None:
    assert error_of("[policy\nstop_loss_pct = 0.1").startswith("not valid TOML: ")


# Calendar -----------------------------------------------------------------------------------------
def test_configured_holidays_are_not_trading_days() -> None:
    calendar = load_policy_toml("[calendar]\nholidays = [2025-02-26]").calendar

    assert not calendar.trading_day(HOLIDAY)
    assert calendar.trading_day(HOLIDAY.replace(day=27))
    assert not calendar.in_session(Segment.NSE_FNO, t(10, day=HOLIDAY))


def test_in_session_answers_for_its_own_calendar_at_an_instant_already_asked() -> None:
    # The answer is remembered per instant: another calendar's holidays must not share it.
    now = t(10, day=HOLIDAY)
    assert SessionCalendar().in_session(Segment.NSE_FNO, now)
    assert not SessionCalendar(holidays=frozenset({HOLIDAY})).in_session(Segment.NSE_FNO, now)
    assert SessionCalendar().in_session(Segment.NSE_FNO, now)
    assert not SessionCalendar().in_session(Segment.NSE_FNO, t(16, day=HOLIDAY))


def test_weekends_are_closed_and_weekdays_open_in_session_hours() -> None:
    calendar = SessionCalendar()

    assert calendar.trading_day(MONDAY)
    assert not calendar.trading_day(SATURDAY)
    assert not calendar.in_session(Segment.NSE_FNO, t(10, day=SATURDAY))
    assert calendar.in_session(Segment.NSE_FNO, t(9, 15))
    assert not calendar.in_session(Segment.NSE_FNO, t(9, 14, 59))
    assert not calendar.in_session(Segment.NSE_FNO, t(15, 30))
    assert calendar.in_session(Segment.NSE_CURRENCY, t(9))
    assert calendar.in_session(Segment.NSE_CURRENCY, t(16, 59, 59))
    assert calendar.in_session(Segment.MCX_COMM, t(23, 29, 59))
    assert not calendar.in_session(Segment.MCX_COMM, t(23, 30))


def test_next_open_skips_weekends_and_holidays() -> None:
    friday_holiday = SATURDAY.replace(day=10)
    calendar = SessionCalendar(holidays=frozenset({friday_holiday}))

    assert calendar.next_open(Segment.NSE_FNO, t(16, day=SATURDAY.replace(day=9))) == t(
        9, 15, day=SATURDAY.replace(day=13))
    assert calendar.next_open(Segment.NSE_FNO, t(8, day=MONDAY)) == t(9, 15)
