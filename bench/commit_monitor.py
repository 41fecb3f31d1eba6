"""What the database server's commits cost while a benchmark runs, seen from outside it.

A side process commits one row (a durable single-row INSERT, WAL flushed) every 10 ms on the
same server until its standard input closes, then prints the latencies as JSON. It has its own
interpreter, so the figures are the server's and the disk's, not the benchmark's: when an exit
waits hundreds of milliseconds for its one commit, this says whether every commit did.

``python -m bench.commit_monitor URL`` (the URL may select a schema, as ``fresh_pg`` gives).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import summary_ms


class CommitMonitor:
    """``with CommitMonitor(url) as monitor: ...``; then ``monitor.summary()`` (None without a
    URL, or if the side process failed: the benchmark itself never depends on it)."""

    def __init__(self, url: str | None, *, every_s: float = 0.01) -> None:
        self.url, self.every_s = url, every_s
        self._process: subprocess.Popen[str] | None = None
        self._times: list[float] | None = None

    def __enter__(self) -> CommitMonitor:
        if self.url is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.commit_monitor", self.url, str(self.every_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=Path(__file__).resolve().parent.parent)  # where ``bench`` imports from
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            out, _ = process.communicate("", timeout=30)  # closes its stdin: it stops
            self._times = [float(t) for t in json.loads(out)]
        except (subprocess.TimeoutExpired, ValueError, TypeError):
            process.kill()
            self._times = None

    def summary(self) -> dict[str, float] | None:
        return None if not self._times else summary_ms(self._times)


def _watch(url: str, every_s: float) -> list[float]:
    import psycopg

    stop = threading.Event()
    def stop_at_end_of_input() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_monitor (n int)")
        while not stop.wait(every_s):
            began = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_monitor VALUES (1)")
            times.append((time.perf_counter() - began) * 1000)
        conn.execute("DROP TABLE bench_commit_monitor")
    return times


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.commit_monitor URL [EVERY_S]", file=sys.stderr)
        return 2
    every: Any = float(argv[1]) if len(argv) > 1 else 0.01
    print(json.dumps(_watch(argv[0], every)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
