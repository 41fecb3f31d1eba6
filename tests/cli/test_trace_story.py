"""``run.py trace`` answers "why did it exit?": the story of a position found by its entry or
exit order, told with numbers; causal trees with one root per outside event."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from actors.tracing.recorder import iter_records
from actors.tracing.views import Trace
from bench.replay_days import LONG_POLICY, long_day, policy_toml, write_day
from tests.cli.test_commands import _replay
from tests.cli.test_replay_cli import run

OUTSIDE = {("OrderUpdateReceived", "outside"), ("PriceBatch", "batcher"),
           ("TimerFired", "outside")}
"""What a replay's causal trees may start with: a frame from the file, the batch of the ticks
of one instant, a timer."""


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("story")
    _, trace = _replay(tmp, "story")
    return tmp, trace


def test_when_asked_by_entry_order_then_the_story_explains_the_trailing_stop_with_numbers(
        traced: tuple[Path, Path]) -> None:
    tmp, trace = traced
    done = run("trace", trace, "--order", "E3", cwd=tmp)
    assert done.returncode == 0, done.stderr
    story = done.stdout.split("\nmessages:", 1)[0]
    for said in ("position PE3  NSE_FNO:50003  LONG  entry order E3",
                 "10:00:00  opened LONG 10 @ 100 by order E3",
                 "10:02:00  price 106: peak 106, trailing stop armed at 103.35",
                 "10:02:30  price 103.3 (at 10:02:30) decided: TRAILING_STOP: price 103.3 "
                 "crossed trailing stop 103.3500",
                 "exit order RX-PE3-1 (X-PE3-1, attempt 1) placed",
                 "fill 10 @ 103.3 (RX-PE3-1, TRADED)",
                 "EXITED TRAILING_STOP: 10 @ 103.3; realised 33.00, net -7.00"):
        assert said in story, (said, story)
    assert "ms after the PriceBatch came in; exit order RX-PE3-1 placed after" in story
    by_exit = run("trace", trace, "--order", "RX-PE3-1", cwd=tmp)
    assert by_exit.stdout.split("\nmessages:", 1)[0] == story  # the exit order finds it too


def test_when_a_stop_loss_or_the_clock_decided_then_the_story_says_so(
        traced: tuple[Path, Path]) -> None:
    tmp, trace = traced
    stop = run("trace", trace, "--order", "E1", cwd=tmp).stdout
    assert "price 87.9 (at 10:00:05) decided: STOP_LOSS: pnl -12.1000% <= -12.00%" in stop
    assert "EXITED STOP_LOSS: 100 @ 87.9; realised -1210.00, net -1250.00" in stop
    data = json.loads(run("trace", trace, "--order", "E6", "--format", "json", cwd=tmp).stdout)
    decision = data["decisions"][0]
    assert (decision["reason"], decision["cause"]) == ("TIME_STOP", "TimerFired")
    assert decision["ms_to_decision"] >= 0
    assert decision["ms_to_exit_order"] >= decision["ms_to_decision"]
    assert data["closed"]["realized"] == "5.00" and data["closed"]["net"] == "-35.00"
    assert data["opened"]["fills"] == [{"at": "2026-11-23T10:00:00+05:30", "qty": 10,
                                        "price": "100", "status": "TRADED"}]
    broker = json.loads(run("trace", trace, "--order", "E4", "--format", "json",
                            cwd=tmp).stdout)
    assert broker["closed"]["reason"] == "BROKER_EXIT" and broker["decisions"] == []
    assert broker["other_orders"][0]["fills"][0]["price"] == "101"
    unknown = run("trace", trace, "--order", "NOPE", cwd=tmp)
    assert "no position owns order NOPE" in unknown.stdout


def test_the_tree_has_one_root_per_outside_event_and_every_message_once(
        traced: tuple[Path, Path]) -> None:
    tmp, trace = traced
    records = [r for r in iter_records(trace) if r.get("kind") == "message"]
    ids = {r["message_id"] for r in records if r.get("message_id")}
    outside = {r["message_id"] for r in records
               if r.get("message_id") and r.get("causation_id") not in ids}
    assert any(not r.get("message_id") for r in records)  # proxy calls, stops: not in trees
    lines = run("trace", trace, cwd=tmp).stdout.splitlines()
    roots = [line for line in lines if not line.startswith(" ")]
    assert len(roots) == len(outside) and len(lines) == len(ids)
    untreed = {r["type"] for r in records if not r.get("message_id")}  # a stop, a proxy call
    assert not any(line.split(" ", 1)[0] in untreed for line in roots)
    assert {tuple(line.split(" ", 2)[:2]) for line in roots} <= OUTSIDE
    assert sum(line.startswith("OrderUpdateReceived outside → orders") for line in roots) == 8
    first = lines.index(next(r for r in roots if r.startswith("OrderUpdateReceived")))
    assert lines[first + 1].startswith("  └─ CreatePosition orders → supervisor")
    trees = json.loads(run("trace", trace, "--format", "json", cwd=tmp).stdout)["trees"]
    assert len(trees) == len(outside)


def _parent(trace: Trace, record: dict[str, Any]) -> str | None:
    cause = record.get("causation_id")
    return trace.deliveries[cause][0]["type"] if cause in trace.deliveries else None


def test_consequences_hang_under_their_causes_not_beside_them(tmp_path: Path) -> None:
    """A part of the long day (entries parked until filled, closes by hand, tightened trailing
    stops, exits the paper exchange fills at once): the roots are the outside events alone.
    A stored stop hangs under its price, the exchange's answer to a placement under the
    placement, an update parked until its order was known under the fill that made it known,
    a price told for a new band under the message that moved the band."""
    frames, ticks = long_day(start="14:30", end="15:15", positions=40, instruments=6)
    write_day(tmp_path, frames, ticks)
    (tmp_path / "policy.toml").write_text(policy_toml(LONG_POLICY), encoding="utf-8")
    done = run("replay", "--orders", tmp_path / "orders.jsonl", "--ticks",
               tmp_path / "ticks.csv", "--policy", tmp_path / "policy.toml", "--trace",
               tmp_path / "t.jsonl", "--http", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    trace = Trace(list(iter_records(tmp_path / "t.jsonl")))
    roots = Counter((r["type"], r.get("sender")) for r in trace.roots())
    assert set(roots) <= OUTSIDE, roots
    assert roots["OrderUpdateReceived", "outside"] == len(frames)  # one root per frame
    told = [box[0] for box in trace.deliveries.values()]
    parents: dict[str, Counter[str | None]] = {}
    for record in told:
        parents.setdefault(record["type"], Counter())[_parent(trace, record)] += 1
    assert set(parents["StoreStop"]) == {"PriceUpdate"}, parents["StoreStop"]
    placed = Counter(_parent(trace, r) for r in told
                     if r["type"] == "OrderUpdateReceived" and r.get("sender") == "gateway")
    assert set(placed) == {"PlaceExitOrder"} and placed["PlaceExitOrder"] > 20, placed
    assert parents["ApplyProgress"]["OrderUpdateReceived"] > 0
    assert None not in parents["ApplyProgress"] and None not in parents["PriceUpdate"]
    assert set(parents["PriceUpdate"]) - {"PriceBatch"}, parents["PriceUpdate"]  # a band moved
