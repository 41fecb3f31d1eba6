"""Scaling (SPEC §13, issue 20): order-update throughput with 1, 2 and 4 runner processes, and
the CPU each part of the system spends per update.

``python -m bench.scaling [--runners 1,2,4] [--accounts 32] [--seconds 30] [--out FILE]``

For each runner count K, on fresh state (a PostgreSQL schema of its own, a ``nats-server -js``
of its own with its monitoring port), with the failover rig's helpers (``bench/failover.py``):

- ``run.py venue`` (the paper broker: the loopback fake DhanHQ, ``--instruments`` priced every
  0.1 s onto NATS, every order update onto JetStream, orders filling in ``--partial-fills``
  parts) and K ``run.py runner --accounts … --partitions LOW-HIGH`` processes, the 256
  partitions split evenly. The accounts (``--accounts``, 32 by default) are chosen so that each
  has a partition of its own and every quarter of the partitions holds as many: each runner
  serves the same number of accounts at K = 1, 2 and 4.
- **The trader** (a thread of this process) places long MARKET entries for the accounts in turn
  at the fake DhanHQ by REST, as a trader would at the broker (client id ``E-<account>-<n>``,
  which the venue knows as that account's): each fills (in parts), the venue publishes its
  frames, a runner stores and applies them; the runners' Systems exit positions as prices
  cross their stops and targets (at the same fake), whose frames come back the same way.
- **Offered load: a fixed overload with the backlog measured.** After a warm-up (positions open,
  prices subscribed, every account's path taken once; then drained), the runners are paused
  (SIGSTOP, for at most 4 s: see ``PAUSE``) while the trader makes a backlog on the stream, up
  to ``--backlog`` order updates (4,000; 2,000-3,000 in the 3 s it has here); then they are
  continued and the window starts: the runners drain it at their own pace, never waiting for
  work, and the trader places nothing during the window, so its CPU is not the runners' (the
  venue still publishes the exits the runners make, and the prices). The window ends after
  ``--seconds`` or once less than a tenth of the backlog is left (``window_ended``).
- **Throughput** over the window: order updates stored (acknowledged only
  once stored, then applied by the account's actors) per second, from PostgreSQL's
  ``order_updates``; prices delivered to the runners per second, from the nats-server's
  subscription counters (``/connz?subs=detail``; the runners subscribe the instruments their
  open positions hold).
- **CPU** over the same window, from ``/proc/<pid>/stat`` (user + system): the runners; the
  venue; the nats-server; the runners' PostgreSQL backends (``pg_stat_activity`` by the
  runners' ``application_name``); PostgreSQL's background processes (WAL writer, checkpointer,
  background writer: the server's, shared with anything else using it); this process (the
  trader and the sampling). Each per update stored. Beside them, the whole machine's busy
  cores (``/proc/stat``), so that what other users of a shared machine took shows
  (``others_cores_busy``).
- **Checks** after the window: the backlog drains, the venue stops and
  writes its record: every account's book at the venue must agree with its open positions in
  PostgreSQL (lost fills: none), and no exit client id is placed twice.

The row (``{"benchmark": "scaling", "figures": [...], "runs": [...], ...}``, printed last)
gives throughput at each K, the per-runner efficiency ``T_K / (K x T_1)`` (SPEC §13: ≥ 0.85),
the CPU per update of the runners and of the shared services, the machine's cores and load
average, and ``projection``: what a machine of C cores gives, derived from those numbers
(``project``). On a 2-core machine shared with the venue, PostgreSQL and NATS, 4 runners
cannot scale linearly: the row measures the CPU cost that decides it, and the projection to
more cores is a model, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import PG, scratch_schema
from bench.failover import (
    CLIENT,
    EVER,
    TOKEN,
    NatsServer,
    Rig,
    all_served,
    books_check,
    double_exits,
    free_port,
    venue_books,
    wait_for,
)
from bench.report import figure
from broker.paper import default_instruments
from models.partitions import PARTITIONS, partition_of

RUNNERS = (1, 2, 4)
ACCOUNTS = 32
SECONDS = 30.0
WARMUP = 5.0
BACKLOG = 4_000
"""Order updates waiting in the stream when the window starts (made while the runners are
paused); the window ends early when fewer than ``STARVED`` of them are left."""
WARM_BACKLOG = 100
QUIET = 3.0
"""Seconds of the quiet window (no backlog) before the backlog is made."""
PAUSE = 4.0
"""Seconds at most the runners stay paused (SIGSTOP to SIGCONT) while the backlog is made. A
NATS call of theirs in flight when they stop fails once 5 s of wall clock have passed since it
began (the JetStream API's timeout; a failed step waits 1 s), so the pause stays a second
under that, however slowly the trader makes the backlog (and well within their lease,
``LEASE``)."""
PRELOAD = 3.0
"""Seconds at most of the pause the trader has to make the backlog; the rest of ``PAUSE`` is for
its last frames to reach the stream (``preload_settled``)."""
INSTRUMENTS = 8
PARTIAL_FILLS = 4
DB_CONNECTIONS = 2
"""PostgreSQL connections of each account's store: 32 accounts hold 64 of the server's 100."""
LEASE = 60.0
"""Long: the runners are paused (SIGSTOP) while the backlog is made, and must keep their
leases (failover is the rig's subject, not this bench's)."""
HTTP_TIMEOUT = 3.0
DRAIN = 60.0
TARGET = 0.85
STARVED = 0.1
"""The window ends once the backlog is under this share of what was made: from there on the
runners would wait for work."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pick_accounts(count: int) -> tuple[str, ...]:
    """``count`` account ids (a multiple of 4), each on a partition of its own, as many in each
    quarter of the partitions: K = 1, 2, 4 runners with even ranges serve as many each."""
    if count < 4 or count % 4:
        raise ValueError(f"accounts: a multiple of 4, not {count}")
    quarter = PARTITIONS // 4
    per: Counter[int] = Counter()
    used: set[int] = set()
    chosen: list[str] = []
    number = 0
    while len(chosen) < count:
        number += 1
        account = f"acct-{number:03d}"
        partition = partition_of(account)
        if partition in used or per[partition // quarter] >= count // 4:
            continue
        used.add(partition)
        per[partition // quarter] += 1
        chosen.append(account)
    return tuple(sorted(chosen, key=partition_of))


def ranges(runners: int) -> list[str]:
    """The 256 partitions split evenly into ``runners`` ranges (``--partitions LOW-HIGH``)."""
    if runners < 1 or PARTITIONS % runners:
        raise ValueError(f"runners: a divisor of {PARTITIONS}, not {runners}")
    size = PARTITIONS // runners
    return [f"{k * size}-{(k + 1) * size - 1}" for k in range(runners)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core (``/proc/stat``):
    what the other users of a shared machine took shows beside ours."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Trader:
    """Long MARKET entries for the accounts in turn at the fake DhanHQ (REST), keeping the
    stream's backlog near ``backlog`` order updates (``sample`` gives published and stored)."""

    url: str
    accounts: tuple[str, ...]
    instruments: int
    backlog: int
    sample: Any
    """() -> (order updates published, stored)."""
    max_rate: float = 2_000.0
    placed: int = 0
    refused: int = 0
    frames_per_entry: float = 4.0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="trader", daemon=True)
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def _run(self) -> None:
        listed = default_instruments(self.instruments, equity_ratio=0)
        headers = {"access-token": TOKEN, "client-id": CLIENT,
                   "Content-Type": "application/json"}
        recent: list[float] = []
        with httpx.Client(base_url=self.url, headers=headers, timeout=10.0) as client:
            while not self.stop.is_set():
                published, stored = self.sample()
                now = time.monotonic()
                recent = [t for t in recent if t > now - 0.3]  # placed, frames not yet out
                if self.placed > 50 and published:
                    self.frames_per_entry = max(1.0, published / self.placed)
                want = (self.backlog - (published - stored)) / self.frames_per_entry \
                    - len(recent)
                entries = max(0, min(int(want), int(self.max_rate * 0.1)))
                for _ in range(entries):
                    if self.stop.is_set():
                        break
                    account = self.accounts[self.placed % len(self.accounts)]
                    instrument = listed[self.placed % len(listed)]
                    self.placed += 1
                    body = {"dhanClientId": CLIENT, "correlationId": f"E-{account}-{self.placed}",
                            "transactionType": "BUY", "exchangeSegment":
                            instrument.segment.value, "productType": "INTRADAY",
                            "orderType": "MARKET", "validity": "DAY",
                            "securityId": instrument.security_id, "quantity": 50, "price": 0}
                    answer = client.post("/orders", content=json.dumps(body))
                    if answer.status_code != 200:
                        self.refused += 1
                    recent.append(time.monotonic())
                self.stop.wait(0.05 if entries else 0.1)


class Monitor:
    """The nats-server's monitoring endpoint and the rig's PostgreSQL (one connection each,
    kept: the trader samples every 0.1 s): counts and CPU."""

    def __init__(self, rig: Rig, server: NatsServer, port: int, stream: str) -> None:
        self.rig, self.server, self.stream = rig, server, stream
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()
        self._prices = 0
        self._subs: dict[tuple[Any, Any, Any], int] = {}

    def _get(self, path: str) -> Any:
        with self._lock:
            return self._http.get(path).json()

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                self._conn = psycopg.connect(self.rig.url, autocommit=True)
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._http.close()
            if self._conn is not None:
                self._conn.close()

    def published(self) -> int:
        """Order updates in the stream (de-duplicated by message id)."""
        found = self._get("/jsz?streams=true")
        for account in found.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == self.stream:
                    return int(stream["state"]["messages"])
        return 0

    def prices_delivered(self) -> int:
        """Price messages the nats-server delivered to the runners' subscriptions so far. A
        subscription's count goes with it (a runner unsubscribes an instrument once no
        position holds it), so each is read every ``sample_prices`` and the increments summed:
        what a subscription got after its last reading is missed."""
        self.sample_prices()
        return self._prices

    def sample_prices(self) -> None:
        subject = f"{self.rig.namespace}.prices."
        found = self._get("/connz?subs=detail&limit=1024")
        for conn in found.get("connections") or []:
            for sub in conn.get("subscriptions_list_detail") or []:
                if str(sub.get("subject", "")).startswith(subject):
                    key = (conn.get("cid"), sub.get("sid"), sub.get("subject"))
                    msgs = int(sub.get("msgs", 0))
                    self._prices += msgs - self._subs.get(key, 0)
                    self._subs[key] = msgs

    def stored(self) -> int:
        return int(self._query("SELECT count(*) FROM order_updates")[0][0])

    def pids(self) -> dict[str, list[int]]:
        backends = [int(pid) for (pid,) in self._query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            self.rig.application_name)]
        background = [int(pid) for (pid,) in self._query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN "
            "('walwriter', 'checkpointer', 'background writer')")]
        assert self.rig.venue is not None and self.server.process is not None
        return {"runners": [p.process.pid for p in self.rig.runners.values()],
                "venue": [self.rig.venue.process.pid], "nats": [self.server.process.pid],
                "pg_backends": backends, "pg_background": background,
                "bench": [os.getpid()]}

    def cpu(self) -> dict[str, dict[int, float]]:
        return {kind: {pid: seconds for pid in pids
                       if (seconds := cpu_seconds(pid)) is not None}
                for kind, pids in self.pids().items()}


def _steady(read: Any) -> Any:
    """A check that is true once ``read()`` gave the same value twice in a row."""
    last: list[int] = []

    def check() -> bool:
        last.append(read())
        return len(last) > 1 and last[-1] == last[-2]

    return check


def cpu_between(before: dict[str, dict[int, float]],
                after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each kind of process spent between two readings (a process that appeared
    between them counts from zero: a PostgreSQL backend opened by a pool)."""
    return {kind: round(sum(seconds - before.get(kind, {}).get(pid, 0.0)
                            for pid, seconds in pids.items()), 3)
            for kind, pids in after.items()}


def quiet_window(monitor: Monitor, seconds: float) -> dict[str, Any]:
    """With no backlog (positions open, prices flowing, the odd exit): the cores each kind of
    process keeps busy, the fixed cost beside the updates' (prices, timers, idle Systems)."""
    cpu0, stored0, prices0 = monitor.cpu(), monitor.stored(), monitor.prices_delivered()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        monitor.sample_prices()
    cpu1, stored1, prices1 = monitor.cpu(), monitor.stored(), monitor.prices_delivered()
    window = time.monotonic() - t0
    return {"window_s": round(window, 2),
            "cores": {k: round(v / window, 3) for k, v in cpu_between(cpu0, cpu1).items()},
            "updates_per_s": round((stored1 - stored0) / window, 1),
            "prices_per_s": round((prices1 - prices0) / window, 1)}


def measure(url: str, work: Path, *, runners: int, accounts: tuple[str, ...],
            seconds: float, warmup: float = WARMUP, backlog: int = BACKLOG,
            instruments: int = INSTRUMENTS, partial_fills: int = PARTIAL_FILLS,
            db_connections: int = DB_CONNECTIONS, drain: float = DRAIN) -> dict[str, Any]:
    """One run: the venue, ``runners`` runners on even partition ranges, the trader keeping
    the backlog; the window's throughput and CPU; the end checks."""
    from store.factory import open_store

    open_store(url).close()  # migrated once, before the runners race to do it
    monitor_port = free_port()
    server = NatsServer(work, options=("-m", str(monitor_port)))
    rig = Rig(url, server.url, work, LEASE, HTTP_TIMEOUT, 1e6, nats_server=server,
              db_connections=db_connections, accounts=accounts)
    monitor = Monitor(rig, server, monitor_port, f"{rig.namespace.upper()}_ORDERS")
    row: dict[str, Any] = {"runners": runners, "partitions": ranges(runners),
                           "accounts": len(accounts), "load_average_before": load_average()}
    trader: Trader | None = None
    try:
        server.start()
        rig.start_venue("--instruments", str(instruments), "--partial-fills",
                        str(partial_fills))
        for number, span in enumerate(ranges(runners)):
            rig.start_runner(f"r{number + 1}", "--partitions", span, wait=False)
        began = time.monotonic()
        for proc in list(rig.runners.values()):
            rig._wait_log(proc, f"runner {proc.owner} on", 120)
        if not wait_for(lambda: all_served(rig, rig.wanted, EVER), 180, 0.5):
            raise RuntimeError(f"{len(rig.wanted)} partitions not all served in 180 s")
        row["start_s"] = round(time.monotonic() - began, 1)
        counts = {"published": 0, "stored": 0}

        def sample() -> tuple[int, int]:
            counts["published"], counts["stored"] = monitor.published(), monitor.stored()
            return counts["published"], counts["stored"]

        url_api = f"http://127.0.0.1:{rig.port}/v2"
        # warm-up: positions open, prices subscribed, every account's path taken once
        trader = Trader(url_api, accounts, instruments, WARM_BACKLOG, sample)
        trader.start()
        time.sleep(warmup)
        trader.halt()
        row["warmup_drained"] = wait_for(lambda: sample()[0] <= sample()[1], drain, 0.2)
        row["quiet"] = quiet_window(monitor, QUIET)
        # the backlog, made while the runners are paused: the window measures them, not the
        # trader (the venue still publishes the exits and the prices during the window)
        runners_paused = list(rig.runners.values())
        for proc in runners_paused:
            proc.process.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        try:
            trader = Trader(url_api, accounts, instruments, backlog, sample,
                            placed=trader.placed, frames_per_entry=trader.frames_per_entry)
            trader.start()
            # the trader closes in on the backlog from below: 95 % of it is there
            wait_for(lambda: counts["published"] - counts["stored"] >= 0.95 * backlog,
                     PRELOAD, 0.1)
            trader.halt()
            left = PAUSE - 0.5 - (time.monotonic() - began)  # 0.5 s for the readings below
            settled_count = wait_for(_steady(monitor.published), max(left, 0.0), 0.3)
            row["preload_s"] = round(time.monotonic() - began, 1)
            row["preloaded"] = monitor.published() - monitor.stored()
            row["preload_settled"] = settled_count
            cpu0, stored0, prices0 = monitor.cpu(), monitor.stored(), monitor.prices_delivered()
            busy0 = machine_busy()
            t0 = time.monotonic()
        finally:
            for proc in runners_paused:
                proc.process.send_signal(signal.SIGCONT)
            row["paused_s"] = round(time.monotonic() - began, 2)
        backlogs: list[int] = []
        floor = STARVED * row["preloaded"]
        while time.monotonic() - t0 < seconds:
            time.sleep(0.5)
            backlogs.append(monitor.published() - monitor.stored())
            monitor.sample_prices()
            if backlogs[-1] < floor:
                break  # from here the runners would wait for work
        cpu1, stored1, prices1 = monitor.cpu(), monitor.stored(), monitor.prices_delivered()
        busy1 = machine_busy()
        window = time.monotonic() - t0
        row["load_average_during"] = load_average()
        spent = cpu_between(cpu0, cpu1)
        updates = stored1 - stored0
        row.update({
            "window_s": round(window, 2), "updates": updates,
            "updates_per_s": round(updates / window, 1),
            "prices_per_s": round((prices1 - prices0) / window, 1),
            "cpu_s": spent, "cores_busy": round(sum(spent.values()) / window, 2),
            "machine_cores_busy": round((busy1[0] - busy0[0]) / window, 2),
            "pg_sessions": len(cpu1["pg_backends"]),
            "others_cores_busy": round((busy1[0] - busy0[0] - sum(spent.values())) / window, 2),
            "cpu_ms_per_update": {k: round(1000 * v / updates, 3) if updates else math.nan
                                  for k, v in spent.items()},
            "runner_cpu_ms_per_update_over_quiet": round(
                1000 * (spent["runners"] - row["quiet"]["cores"]["runners"] * window)
                / updates, 3) if updates else math.nan,
            "backlog_left": backlogs[-1] if backlogs else None,
            "window_ended": "time" if backlogs and backlogs[-1] >= floor else "backlog low",
            "entries": trader.placed, "entries_refused": trader.refused,
            "frames_per_entry": round(trader.frames_per_entry, 2)})
        # the end checks: the backlog drained, the venue's books against PostgreSQL's
        drained = wait_for(lambda: monitor.published() <= monitor.stored(), drain, 0.5)
        row["drained"] = drained
        assert rig.venue is not None
        rig.venue.process.send_signal(signal.SIGTERM)
        row["venue_exit_code"] = rig.venue.process.wait(60)
        record = json.loads((work / "venue.json").read_text())
        books = venue_books(record)
        differ: dict[str, Any] = {}

        def settled() -> bool:
            nonlocal differ
            differ = books_check(url, books, accounts)
            return not differ

        row["books_agree"] = wait_for(settled, 30, 1.0)
        row["book_differences"] = differ
        repeated, short = double_exits(record)
        row["double_exits"] = len(repeated) + len(short)
        row["exits_placed"] = sum(1 for c in set(record["placements"]) if c.startswith("X-"))
        row["published"], row["stored"] = monitor.published(), monitor.stored()
        for proc in rig.runners.values():
            proc.process.send_signal(signal.SIGTERM)
        row["runner_exit_codes"] = [proc.process.wait(60) for proc in rig.runners.values()]
    finally:
        if trader is not None:
            trader.halt()
        rig.stop_all()
        monitor.close()
    logs = "".join(p.read_text(errors="replace") for p in rig.logs)
    row["runner_step_failures"] = logs.count("runner step failed")
    row["runner_step_failure_lines"] = [line[-300:] for line in logs.splitlines()
                                        if "runner step failed" in line][:5]
    row["not_stored_in_time"] = logs.count("not stored in time")
    row["slow_consumer"] = logs.lower().count("slow consumer")
    row["pg_connections_refused"] = logs.count("too many clients")
    row["partitions_dropped"] = logs.count("dropped: ")
    row["claims"] = logs.count("claimed partition ")
    return row


def _total_ms(run: dict[str, Any]) -> float:
    return float(sum(run["cpu_ms_per_update"].values()))


def project(runs: list[dict[str, Any]], cores: int) -> dict[str, Any]:
    """What a machine of C cores gives, from the measured runs (a model, stated in
    ``model``): one runner alone serves ``T_1`` updates/s and every update costs ``c_K``
    CPU-seconds in all (runners, PostgreSQL, NATS, venue) when K runners share the work. With
    a core for whatever needs one, K runners serve ``K·T_1·(c_1/c_K)`` (each as fast as one
    alone, slowed only by the extra CPU each update costs at K: price fan-out, more
    connections), until the cores run out: ``C / c_K``. PostgreSQL's and NATS's shares say
    how many runners keep one of their cores busy."""
    by = {r["runners"]: r for r in runs if r["updates"]}
    one = by.get(1)
    if one is None:
        return {}
    t1, c1 = one["updates_per_s"], _total_ms(one) / 1000
    ratio = {k: round(c1 * 1000 / _total_ms(r), 3) for k, r in sorted(by.items())}
    runner_ratio = {k: round(one["cpu_ms_per_update"]["runners"]
                             / r["cpu_ms_per_update"]["runners"], 3)
                    for k, r in sorted(by.items())}
    largest = max(by)

    def at(k: int, c: int) -> float:
        measured = by.get(k, by[largest] if k > largest else by[min(by, key=lambda m: abs(m - k))])
        per = _total_ms(measured) / 1000
        return float(min(k * t1 * c1 / per, c / per))

    table = {f"{c} cores": {f"{k} runners": {"updates_per_s": round(at(k, c)),
                                             "efficiency": round(at(k, c) / (k * t1), 2)}
                            for k in (1, 2, 4, 8, 16, 32)}
             for c in sorted({cores, 4, 8, 16, 32, 64})}
    per = {k: v / 1000 for k, v in one["cpu_ms_per_update"].items()}
    pg, nats = per["pg_backends"] + per["pg_background"], per["nats"]
    return {
        "t1_updates_per_s": t1, "cpu_ms_per_update_1": round(1000 * c1, 3),
        "cores_per_runner": round(t1 * c1, 3),
        "runners_that_fill_the_cores": {str(c): math.floor(c / (t1 * c1))
                                        for c in sorted({cores, 8, 16, 32, 64})},
        "cpu_ratio_c1_over_ck": {str(k): v for k, v in ratio.items()},
        "runner_cpu_ratio": {str(k): v for k, v in runner_ratio.items()},
        "shared_share_of_cpu": round((pg + nats) / c1, 3),
        "runners_per_pg_core": round(1 / (t1 * pg), 1) if pg else None,
        "runners_per_nats_core": round(1 / (t1 * nats), 1) if nats else None,
        "throughput": table,
        "model": "K runners on C cores serve min(K*T1*c1/cK, C/cK) updates/s: each runner "
                 "as fast as one alone (T1, measured at K = 1), slowed by the extra CPU an "
                 "update costs at K (cK, the largest K measured for more runners), until the "
                 "cores are full. Not modelled: PostgreSQL's WAL flush (commits in one "
                 "stream), lock waits, memory bandwidth"}


def summarise(runs: list[dict[str, Any]], cores: int) -> dict[str, Any]:
    by = {r["runners"]: r for r in runs}
    t1 = by[1]["updates_per_s"] if 1 in by else math.nan
    efficiency = {str(k): round(r["updates_per_s"] / (k * t1), 3) if t1 else math.nan
                  for k, r in by.items()}
    projection = project(runs, cores)
    figures = []
    for k, r in sorted(by.items()):
        figures.append(figure(f"order updates stored/s, {k} runner{'s' * (k > 1)}",
                              r["updates_per_s"], "/s",
                              baseline=f"{r['prices_per_s']:g} prices/s delivered; "
                              f"{r['cores_busy']} cores ours, {r['others_cores_busy']} others'"))
    for k in sorted(by):
        ratio = efficiency[str(k)]
        if k != 1:
            figures.append(figure(f"per-runner efficiency T_{k} / ({k} x T_1), measured on "
                                  f"{cores} cores", ratio, "", target=f">= {TARGET}",
                                  met=None if math.isnan(ratio) else ratio >= TARGET,
                                  miss="" if ratio >= TARGET else
                                  f"the runs need {k * by[1]['cores_busy']:.1f} cores at "
                                  f"K={k}; the machine has {cores}"))
    for k, r in sorted(by.items()):
        ms = r["cpu_ms_per_update"]
        figures.append(figure(f"CPU per update, {k} runner{'s' * (k > 1)}: all / runners",
                              round(_total_ms(r), 3), "ms",
                              baseline=f"runners {ms['runners']:.2f}, PostgreSQL "
                              f"{ms['pg_backends'] + ms['pg_background']:.2f}, NATS "
                              f"{ms['nats']:.2f}, venue+trader "
                              f"{ms['venue'] + ms['bench']:.2f} ms"))
    for k, ratio in (projection.get("cpu_ratio_c1_over_ck") or {}).items():
        if k != "1":
            figures.append(figure(f"projected per-runner efficiency at {k} runners, a core "
                                  "each (c_1 / c_K)", ratio, "", target=f">= {TARGET}",
                                  met=ratio >= TARGET))
    agree = all(r.get("books_agree") for r in runs)
    doubled = sum(r.get("double_exits", 0) for r in runs)
    figures.append(figure("books agree (every run)", int(agree), target="1", met=agree))
    figures.append(figure("double exits", doubled, target="0", met=doubled == 0))
    return {"benchmark": "scaling", "figures": figures, "efficiency": efficiency,
            "cores": cores, "projection": projection, "runs": runs,
            "measured": "throughput, CPU per process per update, at K = 1, 2, 4 on this "
                        f"{cores}-core machine (shared with other work: others_cores_busy)",
            "simulated": "more cores: every process here shares the cores, so 2 and 4 "
                         "runners cannot scale linearly; what a bigger machine gives is "
                         "projected from T_1 and the CPU per update at each K (projection), "
                         "not measured"}


def run_all(runner_counts: list[int], accounts: int, seconds: float, *,
            warmup: float = WARMUP, backlog: int = BACKLOG, instruments: int = INSTRUMENTS,
            keep_logs: Path | None = None, pg: str = PG) -> dict[str, Any]:
    """Each runner count measured in turn on the PostgreSQL server of ``pg`` (a schema of its
    own each, dropped afterwards); the row."""
    chosen = pick_accounts(accounts)
    runs = []
    for runners in runner_counts:
        with scratch_schema("scaling", pg) as url, \
                tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
            work = keep_logs / f"k{runners}" if keep_logs else Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            print(f"… {runners} runner(s)", file=sys.stderr, flush=True)
            runs.append(measure(url, work, runners=runners, accounts=chosen,
                                seconds=seconds, warmup=warmup, backlog=backlog,
                                instruments=instruments))
            done = runs[-1]
            print(f"  {runners}: {done['updates_per_s']} updates/s, "
                  f"{done['cores_busy']} cores busy, {done['window_s']} s window, "
                  f"books agree {done['books_agree']}", file=sys.stderr, flush=True)
    row = summarise(runs, os.cpu_count() or 1)
    row.update({"seconds": seconds, "accounts": accounts, "backlog_target": backlog,
                "instruments": instruments, "partial_fills": PARTIAL_FILLS,
                "load_average_after": load_average(),
                "account_partitions": [partition_of(a) for a in chosen]})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling")
    parser.add_argument("--runners", default=",".join(map(str, RUNNERS)),
                        help="runner counts, comma-separated (default 1,2,4)")
    parser.add_argument("--accounts", type=int, default=ACCOUNTS,
                        help=f"accounts, a multiple of 4 (default {ACCOUNTS})")
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help=f"measured seconds per runner count (default {SECONDS:g})")
    parser.add_argument("--warmup", type=float, default=WARMUP)
    parser.add_argument("--backlog", type=int, default=BACKLOG,
                        help="order updates kept waiting in the stream")
    parser.add_argument("--instruments", type=int, default=INSTRUMENTS)
    parser.add_argument("--out", type=Path, help="also write the row here (JSON)")
    parser.add_argument("--keep-logs", type=Path, help="write the processes' logs here")
    args = parser.parse_args(argv)
    try:
        counts = [int(k) for k in args.runners.split(",") if k.strip()]
        pick_accounts(args.accounts)
        for k in counts:
            ranges(k)
    except ValueError as error:
        parser.error(str(error))
    if 1 not in counts or args.seconds <= 0 or args.backlog < 1:
        parser.error("want 1 among --runners, positive --seconds and --backlog")
    row = run_all(counts, args.accounts, args.seconds, warmup=args.warmup,
                  backlog=args.backlog, instruments=args.instruments,
                  keep_logs=args.keep_logs)
    text = json.dumps(row, default=str)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1, default=str) + "\n", encoding="utf-8")
    for fig in row["figures"]:
        print(f"{fig['figure']}: {fig['value']} {fig['unit']} {fig['baseline']} "
              f"(target {fig['target']})", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
