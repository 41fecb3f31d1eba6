"""``run.py replay`` over several days and policies: a report per day and in total, one column
per policy, each day decided as its replay alone decides it."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from app.days import DaysError, find_days, pair_days, policy_names
from tests.cli.session import write_session
from tests.cli.test_replay_cli import run

TIGHT = "[policy]\nstop_loss_pct = 0.05\nmax_hold_minutes = 2\n"


def test_when_a_folder_of_days_is_replayed_under_two_policies_then_one_column_each(
        tmp_path: Path) -> None:
    orders, ticks, policy = write_session(tmp_path)
    for day in ("2026-11-23", "2026-11-24"):
        (tmp_path / "days" / day).mkdir(parents=True)
        shutil.copy(orders, tmp_path / "days" / day / "orders.jsonl")
        shutil.copy(ticks, tmp_path / "days" / day / "ticks.csv")
    tight = tmp_path / "tight.toml"
    tight.write_text(TIGHT, encoding="utf-8")
    report = tmp_path / "month.json"
    done = run("replay", "--days", tmp_path / "days", "--policy", policy, "--policy", tight,
               "--report", report, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    head, *_ = done.stdout.splitlines()
    assert head.split() == ["day", "policy", "tight"]
    combined = json.loads(report.read_text())
    for name in ("policy", "tight"):  # a cumulative PnL chart per policy, over both days
        assert (tmp_path / f"month-{name}.png").read_bytes().startswith(b"\x89PNG")
    assert [d["day"] for d in combined["days"]] == ["2026-11-23", "2026-11-24"]
    alone = tmp_path / "alone.json"
    single = run("replay", "--orders", orders, "--ticks", ticks, "--policy", tight, "--report",
                 alone, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    by_itself = json.loads(alone.read_text())
    for day in combined["days"]:  # every day is decided as it is alone, on a fresh store
        assert day["reports"]["tight"]["positions"] == by_itself["positions"]
    for policy_name in ("policy", "tight"):
        nets = [Decimal(d["reports"][policy_name]["summary"]["net_pnl"])
                for d in combined["days"]]
        assert Decimal(combined["total"][policy_name]["net_pnl"]) == sum(nets)
        assert "total" in done.stdout and combined["total"][policy_name]["net_pnl"] in \
            done.stdout
    assert combined["total"]["policy"] != combined["total"]["tight"]


def test_several_order_files_are_several_days(tmp_path: Path) -> None:
    orders, ticks, policy = write_session(tmp_path)
    second = tmp_path / "second.jsonl"
    shutil.copy(orders, second)
    done = run("replay", "--orders", orders, "--orders", second, "--ticks", ticks, "--ticks",
               ticks, "--policy", policy, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "orders" in done.stdout and "second" in done.stdout and "total" in done.stdout


def test_days_are_found_nested_or_flat_and_paired_or_refused(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    for name in ("b", "a"):
        (tmp_path / "flat" / f"{name}.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "flat" / "a.csv").write_text("ts,segment,security_id,ltp\n", encoding="utf-8")
    flat = find_days(tmp_path / "flat")
    assert [(d.name, d.ticks is not None) for d in flat] == [("a", True), ("b", False)]
    with pytest.raises(DaysError, match="no days"):
        find_days(tmp_path)
    with pytest.raises(DaysError, match="one tape per --orders file"):
        pair_days([Path("x.jsonl"), Path("y.jsonl")], [Path("x.csv")])
    assert [d.name for d in pair_days([Path("a/o.jsonl"), Path("b/o.jsonl")], [])] == \
        ["a/o.jsonl", "b/o.jsonl"]
    with pytest.raises(DaysError, match="twice"):
        policy_names([Path("p.toml"), Path("p.toml")])
