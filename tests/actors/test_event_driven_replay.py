"""Event-driven replay decides exactly as the stepped replay (a timer every second, one tick at a
time) does, and skips the time in which nothing can happen."""

from __future__ import annotations

from pathlib import Path

from app.replay import merge, read_orders, read_ticks
from bench.replay_days import (
    MIXED_POLICY,
    decisions,
    mixed_day,
    quiet_day,
    replay,
    write_day,
)
from models.policy import RiskConfig, risk_config_from_mapping
from tests.cli.session import EXPECTED, write_session


def test_the_hand_written_session_replays_to_the_same_decisions_with_few_timers(
        tmp_path: Path) -> None:
    orders, ticks, policy = write_session(tmp_path)
    import tomllib
    config = risk_config_from_mapping(tomllib.loads(policy.read_text()))
    events = merge(read_orders(orders), read_ticks(ticks))
    fast, _, driven = replay(events, events[0].at, config, tmp_path)
    slow, _, stepped = replay(events, events[0].at, config, tmp_path, stepped=True)
    assert decisions(fast) == decisions(slow)
    assert {p["position_id"]: (p["exit_reason"], p["exit_price"], p["realized_pnl"])
            for p in fast["positions"]} == EXPECTED
    assert driven.stats.timers * 10 < stepped.stats.timers


def test_a_long_day_with_time_rules_and_irregular_ticks_replays_to_the_same_decisions(
        tmp_path: Path) -> None:
    frames, ticks = mixed_day()
    write_day(tmp_path / "mixed", frames, ticks)
    config = risk_config_from_mapping(MIXED_POLICY)
    events = merge(read_orders(tmp_path / "mixed" / "orders.jsonl"),
                   read_ticks(tmp_path / "mixed" / "ticks.csv"))
    fast, _, driven = replay(events, events[0].at, config, tmp_path)
    slow, _, stepped = replay(events, events[0].at, config, tmp_path, stepped=True)
    assert decisions(fast) == decisions(slow)
    reasons = fast["summary"]["exits_by_reason"]
    assert {"TIME_STOP", "TRAILING_STOP"} <= set(reasons), reasons  # rules of both kinds fired
    assert fast["summary"]["opened"] == 9  # the cancelled entry opened nothing
    assert driven.stats.timers * 5 < stepped.stats.timers
    assert driven.stats.batches < stepped.stats.batches  # ticks at one instant went together


def test_a_quiet_day_takes_a_few_dozen_timers_not_twenty_thousand(tmp_path: Path) -> None:
    write_day(tmp_path / "quiet", quiet_day())
    events = merge(read_orders(tmp_path / "quiet" / "orders.jsonl"), [])
    report, _, replayer = replay(events, events[0].at, RiskConfig(), tmp_path)
    assert replayer.stats.timers < 100  # the stepped replay takes one per second: ~19,800
    assert report["summary"]["opened"] == 6
    assert report["summary"]["exits_by_reason"] == {"BROKER_EXIT": 4}
