"""The latency bench's side process that commits on the same server while a run goes on."""

from __future__ import annotations

import time

import psycopg

from bench.commit_monitor import CommitMonitor


def test_when_watching_a_server_then_its_commits_are_timed_and_its_table_dropped(
        pg_url: str) -> None:
    with CommitMonitor(pg_url, every_s=0.01) as monitor:
        time.sleep(2.0)  # the side process starts (imports, connects) within a second
    summary = monitor.summary()
    assert summary is not None
    assert summary["n"] >= 10  # every 10 ms, less the commits' own time
    assert 0 < summary["p50"] <= summary["p99"] <= summary["max"]
    with psycopg.connect(pg_url) as conn:
        left = conn.execute("SELECT to_regclass('bench_commit_monitor')").fetchone()
    assert left == (None,)


def test_without_a_server_there_is_nothing_to_watch() -> None:
    with CommitMonitor(None) as monitor:
        pass
    assert monitor.summary() is None
