"""The scaling bench's arithmetic (``bench/scaling.py``): accounts spread evenly over the
partition ranges of 1, 2 and 4 runners, CPU read from /proc, and the projection to more cores
made from the measured figures."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from bench.scaling import cpu_between, cpu_seconds, pick_accounts, project, ranges, summarise
from models.partitions import partition_of


def test_when_accounts_are_picked_then_each_runner_range_holds_as_many() -> None:
    accounts = pick_accounts(32)
    partitions = [partition_of(a) for a in accounts]
    assert len(set(partitions)) == 32  # a partition each
    for runners in (1, 2, 4):
        spans = [tuple(map(int, r.split("-"))) for r in ranges(runners)]
        counts = Counter(next(i for i, (low, high) in enumerate(spans) if low <= p <= high)
                         for p in partitions)
        assert sorted(counts.values()) == [32 // runners] * runners
    assert ranges(4) == ["0-63", "64-127", "128-191", "192-255"]
    with pytest.raises(ValueError):
        pick_accounts(6)
    with pytest.raises(ValueError):
        ranges(3)


def test_when_a_process_works_then_its_cpu_seconds_grow() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    total = 0
    for i in range(3_000_000):
        total += i
    after = cpu_seconds(os.getpid())
    assert after is not None and after > before
    assert cpu_seconds(2**22 + 12345) is None  # no such process
    spent = cpu_between({"runners": {1: 2.0}}, {"runners": {1: 3.5, 7: 0.25}})
    assert spent == {"runners": 1.75}  # a process that appeared counts from zero


def _run(runners: int, per_s: float, runner_ms: float, pg_ms: float) -> dict[str, object]:
    return {"runners": runners, "updates": int(per_s * 10), "updates_per_s": per_s,
            "prices_per_s": 10.0, "cores_busy": 1.0, "others_cores_busy": 0.0,
            "books_agree": True, "double_exits": 0,
            "cpu_ms_per_update": {"runners": runner_ms, "venue": 0.5, "nats": 0.5,
                                  "pg_backends": pg_ms, "pg_background": 0.0, "bench": 0.0}}


def test_when_cpu_per_update_grows_with_runners_then_the_projection_scales_less() -> None:
    # one runner: 100 updates/s at 4 ms in all (0.4 cores); four: 5 ms per update
    runs = [_run(1, 100.0, 2.0, 1.0), _run(4, 150.0, 2.5, 1.5)]
    projection = project(runs, 2)
    assert projection["cores_per_runner"] == pytest.approx(0.4)
    assert projection["cpu_ratio_c1_over_ck"] == {"1": 1.0, "4": 0.8}
    table = projection["throughput"]
    # 2 cores: full at 2 / 0.005 = 400 updates/s; 64 cores: 8 x 100 x 0.8 = 640
    assert table["2 cores"]["8 runners"]["updates_per_s"] == 400
    assert table["64 cores"]["8 runners"] == {"updates_per_s": 640, "efficiency": 0.8}
    assert projection["runners_per_pg_core"] == pytest.approx(10.0)
    row = summarise(runs, 2)
    assert row["efficiency"] == {"1": 1.0, "4": 0.375}
    measured = next(f for f in row["figures"] if f["figure"].startswith("per-runner eff"))
    assert measured["met"] is False and "cores" in measured["miss"]
    projected = next(f for f in row["figures"] if f["figure"].startswith("projected"))
    assert projected["value"] == 0.8 and projected["met"] is False
