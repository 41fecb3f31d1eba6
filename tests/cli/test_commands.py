"""``positions``, ``trace`` and settings precedence, as a trader would run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.tracing.recorder import iter_records
from app.settings import SettingsError, load_settings
from tests.cli.session import EXPECTED, write_session
from tests.cli.test_replay_cli import run


def _replay(tmp_path: Path, name: str) -> tuple[Path, Path]:
    orders, ticks, policy = write_session(tmp_path)
    db, trace = tmp_path / f"{name}.sqlite3", tmp_path / f"{name}.jsonl"
    done = run("replay", "--orders", orders, "--ticks", ticks, "--policy", policy, "--db",
               f"sqlite:///{db}", "--trace", trace, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return db, trace


def _decisions(trace: Path) -> list[tuple[Any, ...]]:
    return [(r["position_id"], r["payload"].split("detail=", 1)[-1])
            for r in iter_records(trace)
            if r.get("kind") == "message" and r["type"] == "ExitRequested"]


def test_when_replay_kept_in_a_db_then_positions_lists_them_as_json(tmp_path: Path) -> None:
    db, _ = _replay(tmp_path, "kept")
    listed = run("positions", "--status", "exited", "--json", "--db", f"sqlite:///{db}",
                 cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["position_id"]: r["exit_reason"] for r in rows} == {
        pid: reason for pid, (reason, _, _) in EXPECTED.items()}
    table = run("positions", "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert "7 positions" in table.stdout
    bad = run("positions", "--status", "OPENISH", "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert bad.returncode == 2 and "OPENISH" in bad.stderr


def test_when_replay_traced_twice_then_same_decisions_and_views_explain_the_exit(
        tmp_path: Path) -> None:
    _, first = _replay(tmp_path, "one")
    _, second = _replay(tmp_path, "two")
    decisions = _decisions(first)
    assert decisions == _decisions(second)
    assert {pid for pid, _ in decisions} == set(EXPECTED) - {"PE4"}  # PE4: the broker exited
    story = run("trace", first, "--position", "PE1", cwd=tmp_path)
    assert story.returncode == 0, story.stderr
    assert "rule: STOP_LOSS" in story.stdout
    assert story.stdout.index("ApplyProgress") < story.stdout.index("ExitRequested")
    chrome = json.loads(run("trace", first, "--format", "chrome", cwd=tmp_path).stdout)
    assert all({"ph", "ts", "pid", "tid", "name"} <= set(e)
               for e in chrome["traceEvents"] if e["ph"] != "M")
    missing = run("trace", tmp_path / "nope.jsonl", cwd=tmp_path)
    assert missing.returncode == 2


def test_settings_precedence_is_flags_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('database_url = "sqlite:///file.db"\n[paper]\npositions = 3\n'
                      "[policy]\nstop_loss_pct = 0.05\n", encoding="utf-8")
    from_file = load_settings(config_file=config, environ={}, flags={})
    assert (from_file.database_url, from_file.paper.positions) == ("sqlite:///file.db", 3)
    assert str(from_file.risk.policy.stop_loss_pct) == "0.05"
    env = load_settings(config_file=config, environ={"DATABASE_URL": "sqlite:///env.db"},
                        flags={})
    assert env.database_url == "sqlite:///env.db"
    flags = load_settings(config_file=config, environ={"DATABASE_URL": "sqlite:///env.db"},
                          flags={"database_url": "sqlite:///flag.db", "positions": 9})
    assert (flags.database_url, flags.paper.positions) == ("sqlite:///flag.db", 9)
    config.write_text("[paper]\npositons = 3\n", encoding="utf-8")
    try:
        load_settings(config_file=config, environ={}, flags={})
    except SettingsError as error:
        assert "paper.positons" in str(error) and "unknown key" in str(error)
    else:
        raise AssertionError("a misspelt key must be an error")


def test_the_account_comes_from_flag_environment_or_file_and_live_uses_the_client_id(
        tmp_path: Path) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('account = "desk-file"\n', encoding="utf-8")
    assert load_settings(environ={}, flags={}).account_id() == "paper"
    assert load_settings(config_file=config, environ={}, flags={}).account_id() == "desk-file"
    env = {"TRACKER_ACCOUNT": "desk-env"}
    assert load_settings(config_file=config, environ=env, flags={}).account_id() == "desk-env"
    assert load_settings(config_file=config, environ=env,
                         flags={"account": "desk-flag"}).account_id() == "desk-flag"
    live = {"DHAN_CLIENT_ID": "1100001234"}
    assert load_settings(environ=live, flags={}).account_id(live=True) == "1100001234"
    assert load_settings(environ=live, flags={}).account_id() == "paper"
    with pytest.raises(SettingsError, match="a live session's account is its DhanHQ client id"):
        load_settings(environ=live, flags={"account": "desk-b"}).account_id(live=True)
    config.write_text('account = "bad account"\n', encoding="utf-8")
    with pytest.raises(SettingsError, match=r"account: .*malformed account id"):
        load_settings(config_file=config, environ={}, flags={})
