"""Event-driven replay decides exactly as the stepped replay (a timer every second, one tick at a
time) does, and skips the time in which nothing can happen."""

from __future__ import annotations

from pathlib import Path

from app.replay import merge, read_orders, read_ticks, replay_exchange
from bench.replay_days import (
    LONG_POLICY,
    MIXED_POLICY,
    decisions,
    long_day,
    mixed_day,
    outcome,
    quiet_day,
    replay,
    write_day,
)
from broker.paper.market import TapeMarket
from models.policy import RiskConfig, risk_config_from_mapping
from store.sqlite import SqliteStore
from tests.cli.session import EXPECTED, write_session
from tests.unit.builders import active


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


def test_a_long_generated_day_replays_to_identical_decisions_and_report_stepped_or_not(
        tmp_path: Path) -> None:
    """Seventy entries (parts, repeats, cancels, rejections, closes by hand at the broker) and
    1,500 ticks at irregular instants over 70 minutes, under a policy where every rule fires:
    the stepped replay (a timer every second, one tick at a time) and the event-driven one
    decide the same, to the report and every exit order the exchange took. Exits decided at
    one instant (the square-off) reach the exchange in any order: named by client id, they are
    the same all the same. The whole day stepped takes minutes: ``python -m bench`` replays it
    (the row "replay: event-driven = stepped")."""
    frames, ticks = long_day(start="14:10", end="15:20", positions=70, instruments=10)
    assert len(frames) > 100 and len(ticks) > 1000
    write_day(tmp_path / "long", frames, ticks)
    config = risk_config_from_mapping(LONG_POLICY)
    events = merge(read_orders(tmp_path / "long" / "orders.jsonl"),
                   read_ticks(tmp_path / "long" / "ticks.csv"))
    fast, _, driven = replay(events, events[0].at, config, tmp_path)
    slow, _, stepped = replay(events, events[0].at, config, tmp_path, stepped=True)
    assert outcome(fast, driven) == outcome(slow, stepped)
    assert set(fast["summary"]["exits_by_reason"]) == {
        "STOP_LOSS", "TAKE_PROFIT", "TRAILING_STOP", "TIME_STOP", "TIME_EXIT", "SESSION_END",
        "BROKER_EXIT"}, fast["summary"]["exits_by_reason"]
    assert fast["summary"]["active"] == 0
    exits = driven.exchange.orders()
    assert len(exits) > 30 and all(o.order_no == "R" + o.client_id for o in exits)
    assert driven.stats.timers * 20 < stepped.stats.timers


def test_a_replay_on_a_used_store_names_its_exit_orders_apart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "replay.sqlite3")
    store.migrate()
    assert replay_exchange(TapeMarket([]), store).order_prefix == "R"  # RX-<position>-<n>
    store.save_position(active())
    again = replay_exchange(TapeMarket([]), store).order_prefix
    store.close()
    assert again.startswith("R") and again.endswith("-") and len(again) == 10
