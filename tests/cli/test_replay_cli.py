"""``run.py replay`` as a subprocess: exact exits per reason, determinism, clear input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cli.session import EXPECTED, write_session

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def replay(tmp_path: Path, name: str) -> dict[str, Any]:
    orders, ticks, policy = write_session(tmp_path)
    report = tmp_path / f"{name}.json"
    done = run("replay", "--orders", orders, "--ticks", ticks, "--policy", policy,
               "--report", report, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "net PnL" in done.stdout  # the summary table
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def test_when_session_replayed_then_each_position_exits_for_its_reason_at_real_prices(
        tmp_path: Path) -> None:
    report = replay(tmp_path, "first")
    got = {p["position_id"]: (p["exit_reason"], p["exit_price"], p["realized_pnl"])
           for p in report["positions"]}
    assert got == EXPECTED
    summary = report["summary"]
    assert summary["exited"] == 7 and summary["active"] == 0
    assert summary["exits_by_reason"] == {reason: 1 for reason, _, _ in EXPECTED.values()}
    # 3873.00 realized, minus two ₹20 fees for each of 7 positions
    assert summary["net_pnl"] == "3593.00"
    assert set(report["metrics"]) >= {"price_batches", "evaluations", "db_queries",
                                      "redis_roundtrips", "quote_api_calls", "actor_restarts",
                                      "dead_letters", "rejected_updates"}


def test_when_replayed_twice_then_reports_are_identical(tmp_path: Path) -> None:
    first, second = replay(tmp_path, "a"), replay(tmp_path, "b")
    trips = []
    for report in (first, second):
        report.pop("started_at"), report.pop("ended_at")
        # How many cache writes carry the same entries is the one figure thread timing decides:
        # the PnL writer writes what has reached it when a flush does, and the trackers'
        # messages race with the flush travelling behind the batch. Everything else (states,
        # prices, reasons, PnL, every other counter) is decided by the inputs.
        # Its bound is input-determined: at most one round trip per flush the writer handled.
        trips.append(report["metrics"].pop("redis_roundtrips"))
    assert first == second
    flushes = first["metrics"]["pnl_flushes"]
    assert all(0 < n <= flushes for n in trips), (trips, flushes)


def test_when_orders_file_is_malformed_then_clear_error_and_no_report(tmp_path: Path) -> None:
    orders = tmp_path / "bad.jsonl"
    orders.write_text("this is not json\n", encoding="utf-8")
    report = tmp_path / "r.json"
    done = run("replay", "--orders", orders, "--report", report, cwd=tmp_path)
    assert done.returncode == 2
    assert "bad.jsonl:1" in done.stderr
    assert not report.exists()


def test_when_policy_has_bad_value_then_error_names_key_and_exit_code_2(tmp_path: Path) -> None:
    orders, _, _ = write_session(tmp_path)
    policy = tmp_path / "bad.toml"
    policy.write_text("[policy]\nstop_loss_pct = 3\n", encoding="utf-8")
    report = tmp_path / "r.json"
    done = run("replay", "--orders", orders, "--policy", policy, "--report", report,
               cwd=tmp_path)
    assert done.returncode == 2
    assert "policy.stop_loss_pct" in done.stderr
    assert not report.exists()


def test_when_tape_row_is_bad_then_error_names_line(tmp_path: Path) -> None:
    orders, ticks, _ = write_session(tmp_path)
    ticks.write_text("ts,segment,security_id,ltp\n2026-11-23T10:00:00+05:30,NSE_FNO,1,-5\n",
                     encoding="utf-8")
    done = run("replay", "--orders", orders, "--ticks", ticks, cwd=tmp_path)
    assert done.returncode == 2
    assert "ticks.csv:2" in done.stderr
