"""``run.py paper`` does what it says: ``--positions N`` opens N positions in the session."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_replay_cli import run


def _paper(tmp_path: Path, *args: str) -> tuple[dict[str, object], str, str]:
    report = tmp_path / "paper.json"
    done = run("paper", *args, "--db", f"sqlite:///{tmp_path / 'paper.sqlite3'}", "--report",
               report, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, object] = json.loads(report.read_text())["summary"]
    return summary, done.stdout, done.stderr


def test_when_200_positions_asked_in_a_short_session_then_200_open(tmp_path: Path) -> None:
    summary, out, err = _paper(tmp_path, "--positions", "200", "--duration", "12")
    assert summary["opened"] == 200
    assert "paper: 200 of 200 requested positions opened" in out
    assert "200 entries spread over the first 6 s of the session, one every 30 ms" in err


def test_when_burst_then_every_entry_is_placed_at_once_and_too_short_is_said(
        tmp_path: Path) -> None:
    summary, out, _ = _paper(tmp_path, "--positions", "40", "--duration", "2", "--burst")
    assert summary["opened"] == 40 and "40 of 40 requested positions opened" in out
    (tmp_path / "short").mkdir()
    _, _, err = _paper(tmp_path / "short", "--positions", "5", "--duration", "0.05")
    assert "--duration 0.05 s is too short for 5 entries to fill" in err
