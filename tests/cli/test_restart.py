"""Restart continuity: kill -9 a paper session on PostgreSQL, start again: nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli.test_replay_cli import ROOT, run

pytestmark = pytest.mark.integration

CONFIG = """
[paper]
interval_ms = 100
volatility = 0.004
[policy]
stop_loss_pct = 0.01
take_profit_pct = 0.01
"""


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_when_killed_then_restart_continues_positions_without_loss_or_second_exit(
        tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "tracker.toml").write_text(CONFIG, encoding="utf-8")
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "paper", "--positions",
                              "30", "--duration", "60", "--db", pg_url, "--http", "off"],
                             cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            exited = _rows(pg_url, "select count(*) from positions where status = 'EXITED'")
            total = _rows(pg_url, "select count(*) from positions")
        except psycopg.errors.UndefinedTable:
            continue  # the first run has not migrated yet
        if exited[0][0] >= 3 and total[0][0] >= 12:
            break
    assert first.poll() is None, first.stderr.read() if first.stderr else "exited early"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    before = dict(_rows(pg_url, "select position_id, status from positions"))
    attempts_before = _rows(pg_url, "select client_id from exit_attempts")
    assert before, "the first run stored no position"

    report = tmp_path / "second.json"
    second = run("paper", "--positions", "0", "--duration", "8", "--db", pg_url, "--http", "off",
                 "--report", report, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    after = {p["position_id"]: p for p in json.loads(report.read_text())["positions"]}
    assert set(after) == set(before)  # none lost, none doubled
    for pid, status in before.items():
        if status == "EXITED":
            assert after[pid]["status"] == "EXITED"
    attempts = _rows(pg_url, "select position_id, attempt, client_id from exit_attempts")
    assert len({c for _, _, c in attempts}) == len(attempts)  # one order per attempt
    assert {c for (c,) in attempts_before} <= {c for _, _, c in attempts}
    fills = _rows(pg_url, "select position_id, order_no, cum_qty, count(*) from fills "
                          "group by position_id, order_no, cum_qty having count(*) > 1")
    assert fills == []


def test_when_kill_switch_latched_then_restart_is_halted_until_reset(
        tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "tracker.toml").write_text(
        "[paper]\ninterval_ms = 100\n[portfolio]\ndaily_loss_limit = 1\n", encoding="utf-8")
    done = run("paper", "--positions", "5", "--duration", "4", "--db", pg_url, "--http", "off",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(pg_url, "select count(*) from kill_switch")[0][0] == 1
    report = tmp_path / "halted.json"
    again = run("paper", "--positions", "2", "--duration", "4", "--db", pg_url, "--http", "off",
                "--report", report, cwd=tmp_path)
    assert "HALTED" in again.stderr
    positions = json.loads(report.read_text())["positions"]
    assert all(p["status"] in ("EXITED", "EXITING") for p in positions)
    reset = run("reset-kill-switch", "--db", pg_url, cwd=tmp_path)
    assert "kill switch reset" in reset.stdout
    assert _rows(pg_url, "select count(*) from kill_switch")[0][0] == 0
