"""The runner killed with SIGKILL at random moments of a replay and started again on the same
database, several times: the last run ends with the books agreeing, nothing lost, nothing
doubled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from models.books import ours
from store.factory import open_store
from tests.cli.session import EXPECTED, write_session
from tests.faults.frames import broker_net, order_lives, overlapping_exits, placed_twice

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3
SEED = int(os.environ.get("KILL_SEED", "15"))
"""The kill moments' seed: ``KILL_SEED=100 pytest tests/faults/test_replay_kills.py`` runs
another one."""


def _replay(folder: Path, db: str, report: Path, *,
            stepped: bool = True) -> subprocess.Popen[str]:
    """``stepped``: a timer every simulated second, so the replay lasts seconds of wall-clock
    time (about 2.5 s past start-up) and a kill lands in its middle rather than after it."""
    orders, ticks, policy = folder / "orders.jsonl", folder / "ticks.csv", folder / "policy.toml"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "replay",
                             *(["--stepped"] if stepped else []),
                             "--orders", str(orders), "--ticks", str(ticks), "--policy",
                             str(policy), "--db", db, "--report", str(report), "--http", "off"],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_when_replaying(process: subprocess.Popen[str], after: float) -> str:
    """SIGKILL ``after`` seconds past the system's start-up; the stderr it wrote so far."""
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "open positions from the store" in line:
            break
    else:
        raise AssertionError("the replay ended before it started: " + "".join(lines[-20:]))
    time.sleep(after)
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    return f"killed {after:.2f} s in" if alive else f"had ended before {after:.2f} s"


def test_when_replay_killed_at_random_moments_then_last_run_agrees_with_broker(
        tmp_path: Path, own_db: str) -> None:
    write_session(tmp_path)
    draw = random.Random(SEED)
    story = [_kill_when_replaying(_replay(tmp_path, own_db, tmp_path / f"run{n}.json"),
                                  draw.uniform(0.2, 2.4)) for n in range(KILLS)]
    report = _finish(tmp_path, own_db)
    assert report["books"]["agree"], (story, report["books"])
    got = {p["position_id"]: (p["status"], p["exit_reason"]) for p in report["positions"]}
    assert got == {pid: ("EXITED", reason) for pid, (reason, _, _) in EXPECTED.items()}, story
    _assert_broker_agrees(own_db, story)


def test_when_replay_continues_on_same_database_then_new_exits_never_reuse_old_numbers(
        tmp_path: Path, own_db: str) -> None:
    """The first run sees the first minute only (two exits), the second the whole day on the
    same database: its exit orders are numbers of their own, not the first run's again."""
    write_session(tmp_path)
    orders, ticks = tmp_path / "orders.jsonl", tmp_path / "ticks.csv"
    whole_orders, whole_ticks = orders.read_text(), ticks.read_text()
    orders.write_text("\n".join(whole_orders.splitlines()[:2]) + "\n", encoding="utf-8")
    header, *rows = whole_ticks.splitlines()
    early = [row for row in rows if row.split(",")[0][11:19] < "10:01:30"]
    ticks.write_text("\n".join([header, *early]) + "\n", encoding="utf-8")
    first = _finish(tmp_path, own_db)
    assert sorted(p["position_id"] for p in first["positions"]) == ["PE1", "PE2"]
    orders.write_text(whole_orders, encoding="utf-8")
    ticks.write_text(whole_ticks, encoding="utf-8")
    report = _finish(tmp_path, own_db)
    assert report["books"]["agree"], report["books"]
    got = {p["position_id"]: p["exit_reason"] for p in report["positions"]}
    assert got == {pid: reason for pid, (reason, _, _) in EXPECTED.items()}
    _assert_broker_agrees(own_db, ["continued"])


def _finish(folder: Path, db: str) -> dict[str, Any]:
    """A replay run to its end (event-driven), and its report."""
    final = _replay(folder, db, folder / "final.json", stepped=False)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-3000:]
    report: dict[str, Any] = json.loads((folder / "final.json").read_text())
    return report


def _assert_broker_agrees(own_db: str, story: list[str]) -> None:
    """The stored frames (every fill the broker reported) against the stored positions."""
    store = open_store(own_db)
    try:
        lives = order_lives(store)
        open_positions = store.load_open_positions()
        attempts = store.exit_attempts()
    finally:
        store.close()
    mixed = {number: life.instruments for number, life in lives.items()
             if len(life.instruments) > 1}
    assert mixed == {}, f"one order number, several instruments: {mixed}"
    net = {key: qty for key, qty in broker_net(lives).items() if qty}
    assert net == {k: v for k, v in ours(open_positions).items() if v}, (story, net)
    assert overlapping_exits(lives) == [], (story, overlapping_exits(lives))
    assert placed_twice(lives) == {}, story
    assert len({a.client_id for a in attempts}) == len(attempts)
