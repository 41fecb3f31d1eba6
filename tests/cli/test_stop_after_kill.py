"""A stop never loosens across a kill -9 (SPEC §11.5): a paper session on PostgreSQL whose
trailing stops move all the time is killed, and the store holds, for every position, a stop at
least as tight as the one in force one batch before the kill; a restart goes on from there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.cli.test_replay_cli import ROOT, run

pytestmark = pytest.mark.integration

# Stops that arm at once and trail closely, on a lively market, and no other exit nearby: each
# position's stop tightens many times a second while its price makes new highs (lows).
CONFIG = """
[paper]
interval_ms = 50
volatility = 0.004
instruments = 6
[policy]
stop_loss_pct = 0.5
take_profit_pct = 1
[policy.trailing]
activation_pct = 0.0005
trail_pct = 0.03
"""

_MARKED = re.compile(r"PnLMarked\(position_id='([^']+)'.*trail_stop=Decimal\('([^']+)'\)\)")


def stops_in_trace(path: Path) -> dict[str, list[Decimal]]:
    """Each position's trailing stops as the tracker announced them, in order, once each.

    The tracker announces a stop (``PnLMarked``) as it folds it, before it is durable; it folds
    the next one only once that one is stored. So every stop but a position's last one seen
    here was durable before the kill, whenever the kill came."""
    seen: dict[str, list[Decimal]] = {}
    if not path.exists():
        return seen
    for line in path.read_text(encoding="utf-8").splitlines():
        if '"type": "PnLMarked"' not in line or '"receiver": "pnl"' not in line:
            continue
        found = _MARKED.search(line)
        if found is None:
            continue  # not armed yet
        stops = seen.setdefault(found[1], [])
        stop = Decimal(found[2])
        if not stops or stops[-1] != stop:
            stops.append(stop)
    return seen


def stored_stops(url: str) -> dict[str, tuple[str, Decimal | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select position_id, side, data from positions").fetchall()
    out = {}
    for position_id, side, data in rows:
        stop = json.loads(data)["trail_stop"]
        out[str(position_id)] = (str(side), None if stop is None else Decimal(stop))
    return out


def at_least_as_tight(side: str, stored: Decimal | None, stop: Decimal) -> bool:
    if stored is None:
        return False
    return stored >= stop if side == "LONG" else stored <= stop


def test_when_killed_then_each_stop_in_store_is_at_least_the_one_a_batch_before(
        tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "tracker.toml").write_text(CONFIG, encoding="utf-8")
    trace = tmp_path / "first.jsonl"
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "paper", "--positions",
                              "24", "--burst", "--duration", "120", "--db", pg_url, "--http",
                              "off", "--trace", str(trace)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        moved: dict[str, list[Decimal]] = {}
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
            moved = {pid: s for pid, s in stops_in_trace(trace).items() if len(s) >= 3}
            if len(moved) >= 5:
                break
        assert first.poll() is None, first.stderr.read() if first.stderr else "exited early"
        assert len(moved) >= 5, f"stops moved on {len(moved)} positions only"
        os.kill(first.pid, signal.SIGKILL)  # mid-flight: prices keep moving stops until now
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)

    seen = stops_in_trace(trace)  # what the trace holds of the run, up to the kill
    stored = stored_stops(pg_url)
    behind = {pid: (stops[-2], stored[pid]) for pid, stops in seen.items() if len(stops) >= 2
              and not at_least_as_tight(stored[pid][0], stored[pid][1], stops[-2])}
    assert behind == {}, f"stops looser in the store than one batch before the kill: {behind}"
    assert sum(len(stops) for stops in seen.values()) >= 30  # the stops did move, often

    again = tmp_path / "second.jsonl"
    second = run("paper", "--positions", "0", "--duration", "3", "--db", pg_url, "--http", "off",
                 "--trace", again, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    after = stored_stops(pg_url)
    for pid, (side, stop) in stored.items():
        if stop is not None:  # never looser after the restart, in the store or as announced
            assert at_least_as_tight(side, after[pid][1], stop), pid
            for announced in stops_in_trace(again).get(pid, []):
                assert at_least_as_tight(side, announced, stop), pid
