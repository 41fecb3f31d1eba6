"""The scaling bench's short form (``bench/scaling.py``, SPEC §13): ``run.py venue`` and 1, then
2, ``run.py runner --partitions`` processes on even partition ranges, on the real PostgreSQL
and a nats-server of the bench's own; a backlog of order updates made while the runners are
paused, then drained by them for a couple of seconds. Updates flow at both runner counts, every
account's book at the venue agrees with PostgreSQL, no exit is placed twice, and the row has
the throughput, efficiency, CPU per update and projection the report reads."""

from __future__ import annotations

import math
import shutil
import time

import pytest

from bench.scaling import PAUSE, run_all

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_when_one_then_two_runners_drain_a_backlog_then_updates_flow_and_books_agree(
        pg_server_url: str) -> None:
    if shutil.which("nats-server") is None:
        pytest.skip("the bench runs a nats-server of its own: nats-server on PATH")
    began = time.monotonic()
    row = run_all([1, 2], accounts=4, seconds=2.0, warmup=1.0, backlog=150, instruments=4,
                  pg=pg_server_url)
    took = time.monotonic() - began

    assert row["benchmark"] == "scaling" and row["cores"] >= 1
    assert [r["runners"] for r in row["runs"]] == [1, 2]
    for run in row["runs"]:
        assert run["partitions"] == (["0-255"] if run["runners"] == 1
                                     else ["0-127", "128-255"])
        assert run["preloaded"] >= 140, run  # the backlog was there when the window began
        assert run["updates"] > 0 and run["updates_per_s"] > 0, run
        assert run["books_agree"], run["book_differences"]
        assert run["double_exits"] == 0 and run["drained"]
        assert run["runner_exit_codes"] == [0] * run["runners"]
        # the pause kept every lease: one claim per account's partition, none dropped
        assert run["partitions_dropped"] == 0 and run["claims"] == 4, run
        # paused for less than a NATS call's timeout: no step of theirs failed across it
        assert run["paused_s"] <= PAUSE + 0.5 and run["runner_step_failures"] == 0, run
        assert run["cpu_s"]["runners"] > 0 and run["cpu_s"]["pg_backends"] > 0
        assert run["cpu_s"]["nats"] > 0
        assert set(run["cpu_ms_per_update"]) == {"runners", "venue", "nats", "pg_backends",
                                                 "pg_background", "bench"}
    assert set(row["efficiency"]) == {"1", "2"} and row["efficiency"]["1"] == 1.0
    assert math.isclose(row["efficiency"]["2"], row["runs"][1]["updates_per_s"]
                        / (2 * row["runs"][0]["updates_per_s"]), abs_tol=1e-3)
    projection = row["projection"]
    assert projection["t1_updates_per_s"] == row["runs"][0]["updates_per_s"]
    assert set(projection["cpu_ratio_c1_over_ck"]) == {"1", "2"}
    names = [f["figure"] for f in row["figures"]]
    assert "books agree (every run)" in names and "double exits" in names
    assert any(n.startswith("per-runner efficiency T_2") for n in names)
    assert took < 60, f"the short form took {took:.0f} s"
