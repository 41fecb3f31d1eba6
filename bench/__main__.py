"""``python -m bench [--quick]``: run every benchmark of SPEC §9, print a table, write the raw run
to bench/results/ as JSON and, for a full run, rewrite BENCHMARKS.md's one-page summary.

Real PostgreSQL and Redis are used when ``BENCH_DATABASE_URL`` / ``BENCH_REDIS_URL`` (defaults:
the local test services) answer; otherwise the embedded SQLite store and the in-process cache.
The latency, sustained-load, live (``run.py live`` against the fake DhanHQ), trending-stops and
start-up benchmarks each run in a process of their own, so that their memory, garbage and
start-up are theirs alone. Benchmarks run one after another, never concurrently.

The failover rig (``bench/failover.py``, SPEC §13: runner processes, a venue and a nats-server
of its own, minutes to hours) runs only when asked: ``--failover CYCLES`` adds its row,
``--failover-out FILE.jsonl`` keeps its cycles (``python -m bench.failover --summarize
FILE.jsonl`` for several sittings). The scaling bench (``bench/scaling.py``, SPEC §13:
throughput and CPU per update with 1, 2 and 4 runners, a few minutes) likewise only with
``--scaling``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
from loguru import logger

from bench import (
    cycle,
    dispatch_vs_threads,
    latency,
    quote_calls,
    replay_days,
    report,
    throughput,
    tracing_cost,
)
from bench.common import drop_schemas, fresh_cache, fresh_store, services
from bench.dashboard import dashboard_available


def isolated(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m bench.<module> args`` and return the row it prints last."""
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], check=True,
                          stdout=subprocess.PIPE, text=True)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def _step(name: str, work: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    print(f"… {name}", file=sys.stderr, flush=True)
    result = work()
    print(f"  {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return result


def _cycles(pg: str | None, rd: str | None, scratch: Path, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for count in (10, 100, 1000):
        store, url = fresh_store(pg, scratch)
        store2, _ = fresh_store(pg, scratch)
        rows.append({"benchmark": f"price cycle at {count:,} positions", **cycle.compare(
            count, store=store, store_url=url if pg else None, cache=fresh_cache(rd),
            redis_url=rd, repeats=repeats, store2=store2)})
        store.close()
        store2.close()
    return rows


def failover_args(cycles: int, out: Path | None) -> list[str]:
    """``python -m bench.failover``'s arguments for ``--failover CYCLES``."""
    return ["--cycles", str(cycles), *(["--out", str(out)] if out is not None else [])]


def run_all(quick: bool, pg: str | None, rd: str | None, scratch: Path, *,
            failover: int = 0, failover_out: Path | None = None,
            scaling: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _step("cycles", lambda: _cycles(pg, rd, scratch,
                                                                 5 if quick else 20))
    old_1000 = rows[-1].get("old_ms")
    rows.append(_step("order updates", lambda: throughput.run(
        pg, scratch, 2_000 if quick else 10_000)))
    rows += _step("dispatcher", lambda: dispatch_vs_threads.run(quick))
    rows.append(_step("quote calls", quote_calls.run))
    old = ("--old-cycle-ms", str(old_1000)) if old_1000 else ()
    rows.append(_step("latency", lambda: isolated(
        "latency", "--seconds", "5" if quick else "30", *old)))
    if dashboard_available():
        plain = rows[-1]
        rows.append(_step("latency, dashboard open", lambda: isolated(
            "latency", "--seconds", "5" if quick else "30", "--dashboard", *old)))
        rows[-1]["figures"].append(latency.with_and_without(rows[-1], plain))
    if not quick:
        rows.append(_step("latency at 2 changes/s", lambda: isolated(
            "latency", "--seconds", "30", "--changes-per-s", "2", *old)))
    sustained = ("--positions", "2000", "--instruments", "400", "--seconds", "3") if quick \
        else ("--positions", "10000", "--instruments", "2000", "--seconds", "30")
    rows.append(_step("sustained", lambda: isolated("sustained", *sustained)))
    rows.append(_step("live exits", lambda: isolated("live_exits")))
    rows.append(_step("trending stops", lambda: isolated(
        "trending_stops", "--seconds", "5" if quick else "30")))
    rows.append(_step("start-up", lambda: isolated(
        "startup", "--positions", "2000" if quick else "10000")))
    rows.append(_step("tracing cost", lambda: tracing_cost.run(
        pg, rd, scratch, repeats=5 if quick else 15, frames=0 if quick else 3_000,
        rounds=1 if quick else 5)))
    # Quick: the quiet day and 20 minutes of the busy day; full: the whole busy day, the quiet
    # day replayed the old way too (a timer every second) as the baseline, and the long day
    # replayed event-driven and stepped (a few minutes).
    rows += _step("replay", lambda: replay_days.run(quick, scratch))
    if failover:
        rows.append(_step("failover", lambda: isolated(
            "failover", *failover_args(failover, failover_out))))
    if scaling:
        rows.append(_step("scaling", lambda: isolated("scaling")))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a reduced set, under a minute")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--results", type=Path, default=Path("bench/results"),
                        help="folder for the raw run (JSON)")
    parser.add_argument("--failover", type=int, default=0, metavar="CYCLES",
                        help="also run the failover rig for CYCLES cycles (about 15 s each; "
                        "SPEC §13 asks for >= 1,000); not run by default")
    parser.add_argument("--failover-out", type=Path, metavar="FILE.jsonl",
                        help="append the rig's cycles here as they end")
    parser.add_argument("--scaling", action="store_true", help="also measure throughput "
                        "with 1, 2 and 4 runners (bench/scaling.py, a few minutes); not run "
                        "by default")
    args = parser.parse_args(argv)
    if args.failover < 0:
        parser.error("--failover: a number of cycles, 0 for none")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    pg, rd = services()
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            rows = run_all(args.quick, pg, rd, Path(scratch), failover=args.failover,
                           failover_out=args.failover_out, scaling=args.scaling)
    finally:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)  # after a failure: no hang
        drop_schemas()
    seconds = time.perf_counter() - began
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        f" --failover {args.failover}" if args.failover else "") + (
        " --scaling" if args.scaling else "")
    where = (f"PostgreSQL: {'yes' if pg else 'no (SQLite)'}, "
             f"Redis: {'yes' if rd else 'no (in-process cache)'}")
    print(report.write(rows, args.out, command=command, services=where, seconds=seconds,
                       full=not args.quick, results=args.results))
    print(f"\n{command}: {seconds:.0f} s; raw run in {args.results}, report {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
