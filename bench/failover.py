"""The failover rig (SPEC §13, issue 20): runner processes killed, paused and stopped while they
trade, on loopback, as a user runs them.

``python -m bench.failover [--cycles N] [--runners K] [--lease S] [--http-timeout S]``

- One ``run.py venue`` process (the paper broker: the fake DhanHQ, entries for a handful of
  accounts, order updates onto JetStream, prices onto NATS) and K ``run.py runner --accounts``
  processes, every runner configured with every account (the first to claim a partition serves
  it; the others are spares), on the PostgreSQL and NATS running here, in a schema and a
  namespace of their own, dropped afterwards.
- Each cycle takes the runner holding the most partitions and, in turn: kills it (-9; then
  starts it again as a spare), pauses it (SIGSTOP, then SIGCONT once another runner serves its
  partitions: longer than the lease) or stops it (SIGTERM: a graceful hand-over; then starts it
  again).
- **Failover time** (per cycle): from the fault to the moment every partition the runner held
  is served by another: its ``partition_leases`` row names another owner (a new epoch) and that
  owner's log says ``serving partition P`` (loguru's timestamps, wall clock, one machine). For
  a graceful stop, the hand-over is measured from the old owner's ``released partition P`` line
  to the successor's ``serving partition P`` (and to its ``claimed`` line).
- At the end the venue stops and writes what it recorded (``run.py venue --record``): **double
  exits** = exit client ids (``X-<position>-<attempt>``) placed at the broker more than once,
  plus account books whose net went short (an exit filled past its position); **lost fills** =
  accounts whose book at the venue (net filled quantity per instrument) disagrees with their
  open positions in PostgreSQL (``models.books.compare``), once the runners have applied every
  update (waited for, up to ``SETTLE`` seconds).
- **Writes under a stale epoch**: the rows carry no writer epoch, so what is checked is that
  every write is fenced (the store's conditional write refuses it: ``LeaseLost``, counted from
  the runners' logs as ``lease epoch N lost (...)``; a partition a runner dropped, its lease
  found lost at a renewal or a write, as ``dropped``) and that the books agree and no exit
  was doubled, which a non-owner's write would break.

Prints one JSON row (``{"benchmark": "failover", "figures": [...], ...}``) as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from app.clocks import SharedSession
from bench.common import PG
from bench.report import figure
from models.books import BookKey, compare, key_text
from models.common import Segment
from models.partitions import partition_of
from models.policy import RiskConfig

ROOT = Path(__file__).resolve().parents[1]
NATS = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
ACCOUNTS = ("desk-1", "desk-2", "desk-3", "desk-4")
CLIENT = "1000000001"  # the venue's (app.venue.CLIENT, TOKEN): the loopback fake's, no secret
TOKEN = "fake-dhan-token"
FAULTS = ("kill", "pause", "term")
SETTLE = 30.0
EVER = datetime.fromtimestamp(0, UTC)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        if check():
            return True
        time.sleep(poll)
    return check()


def log_times(path: Path, text: str) -> list[datetime]:
    """When each line containing ``text`` was logged (loguru's local wall clock); a ``text``
    ending in a newline matches at the end of the line only."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if text in line + "\n":
            stamp = LOG_TIME.match(line)
            if stamp:
                found.append(datetime.strptime(stamp.group(1),
                                               "%Y-%m-%d %H:%M:%S.%f").astimezone())
    return found


def first_after(path: Path, text: str, after: datetime) -> datetime | None:
    later = [t for t in log_times(path, text) if t >= after]
    return later[0] if later else None


@dataclass
class Proc:
    owner: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Rig:
    url: str
    nats: str
    work: Path
    lease: float
    http_timeout: float
    entry_every: float
    namespace: str = field(default_factory=lambda: f"fo{uuid.uuid4().hex[:10]}")
    port: int = 0
    venue: Proc | None = None
    runners: dict[str, Proc] = field(default_factory=dict)
    """Live runners by owner name (one name per incarnation)."""
    logs: list[Path] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    incarnations: int = 0
    session: SharedSession = field(default_factory=lambda: SharedSession(RiskConfig().calendar))

    def __post_init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        (self.work / "tracker.toml").write_text(
            "[policy]\nstop_loss_pct = 0.002\ntake_profit_pct = 0.003\n\n"
            f"[dhan]\nrequest_timeout_seconds = {self.http_timeout}\n", encoding="utf-8")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DHAN_")}
        env.pop("REDIS_URL", None)  # the P&L cache in process: nothing shared but PG and NATS
        env.update({"DATABASE_URL": self.url, "DHAN_CLIENT_ID": CLIENT,
                    "DHAN_ACCESS_TOKEN": TOKEN,
                    # one exchange time for all, in market hours whatever the hour here
                    "DHAN_SESSION_START": self.session.start_now(),
                    "DHAN_API_URL": f"http://127.0.0.1:{self.port}/v2",
                    "PYTHONPATH": str(ROOT)})
        return env

    def _start(self, name: str, *args: str) -> Proc:
        log = self.work / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), *args, "--nats", self.nats,
                 "--namespace", self.namespace, "--accounts", ",".join(ACCOUNTS)],
                cwd=self.work, env=self.env(), stdout=sink, stderr=sink)
        self.started.append(process)
        self.logs.append(log)
        return Proc(name, process, log)

    def start_venue(self) -> None:
        self.venue = self._start("venue", "venue", "--port", str(self.port), "--entry-every",
                                 str(self.entry_every), "--record",
                                 str(self.work / "venue.json"))
        self._wait_log(self.venue, "paper venue: DhanHQ API", 60)

    def start_runner(self, base: str, *, wait: bool = True) -> Proc:
        self.incarnations += 1
        owner = f"{base}.{self.incarnations}"
        proc = self._start(owner, "runner", "--owner", owner, "--lease-seconds",
                           str(self.lease))
        self.runners[owner] = proc
        if wait:
            self._wait_log(proc, f"runner {owner} on", 60)
        return proc

    def _wait_log(self, proc: Proc, text: str, timeout: float) -> None:
        if not wait_for(lambda: text in proc.log.read_text(errors="replace"), timeout, 0.1):
            tail = proc.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.owner}: {text!r} not logged in {timeout:.0f} s:\n{tail}")

    def leases(self) -> dict[int, tuple[str | None, int]]:
        """Live leases: partition → (owner, epoch); a lapsed one counts as unowned."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute("SELECT partition, CASE WHEN expires_at > now() THEN owner END, "
                                "epoch FROM partition_leases").fetchall()
        return {int(p): (owner, int(epoch)) for p, owner, epoch in rows}

    def served_by(self, partition: int, after: datetime) -> tuple[str, datetime] | None:
        """The live owner of ``partition`` when it logged serving it since ``after``."""
        owner, _ = self.leases().get(partition, (None, 0))
        proc = self.runners.get(owner or "")
        if proc is None:
            return None
        at = first_after(proc.log, f"serving partition {partition}\n", after)
        return None if at is None else (proc.owner, at)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def all_served(rig: Rig, partitions: set[int], after: datetime) -> bool:
    return all(rig.served_by(p, after) is not None for p in partitions)


def cycle(rig: Rig, number: int, fault: str, timeout: float) -> dict[str, Any]:
    held = rig.leases()
    owners = Counter(owner for owner, _ in held.values() if owner in rig.runners)
    if not owners:
        raise RuntimeError(f"cycle {number}: no runner holds a partition: {held}")
    victim_name = owners.most_common(1)[0][0]
    victim = rig.runners[victim_name]
    mine = {p for p, (owner, _) in held.items() if owner == victim_name}
    row: dict[str, Any] = {"cycle": number, "fault": fault, "runner": victim_name,
                           "partitions": sorted(mine)}
    base = victim_name.rpartition(".")[0]
    at = datetime.now(UTC)
    began = time.monotonic()
    if fault == "kill":
        victim.process.send_signal(signal.SIGKILL)
    elif fault == "pause":
        victim.process.send_signal(signal.SIGSTOP)
    else:
        victim.process.send_signal(signal.SIGTERM)
    recovered = wait_for(lambda: all(
        (found := rig.served_by(p, at)) is not None and found[0] != victim_name for p in mine),
        timeout, 0.1)
    row["recovered"] = recovered
    if recovered:
        served = {p: rig.served_by(p, at) for p in mine}
        row["new_owners"] = sorted({s[0] for s in served.values() if s is not None})
        row["failover_s"] = max((s[1] - at).total_seconds() for s in served.values()
                                if s is not None)
        claims = [first_after(rig.runners[s[0]].log, f"claimed partition {p} ", at)
                  for p, s in served.items() if s is not None]
        row["claim_s"] = max(((c - at).total_seconds() for c in claims if c is not None),
                             default=math.nan)
    else:
        row["failover_s"] = math.inf
        row["waited_s"] = time.monotonic() - began
    if fault == "pause":
        victim.process.send_signal(signal.SIGCONT)
        row["paused_s"] = time.monotonic() - began
        # its next renewal is refused: it drops the partitions and stays on as a spare
        row["stale_owner_dropped"] = wait_for(
            lambda: first_after(victim.log, "dropped", at) is not None, rig.lease + 10, 0.1)
    elif fault == "term":
        row["exit_code"] = victim.process.wait(30)
        released = {p: first_after(victim.log, f"released partition {p}\n", at)
                    for p in sorted(mine)}
        row["released"] = all(r is not None for r in released.values())
        if recovered and row["released"]:
            handovers, claims_after = [], []
            for p, rel in released.items():
                found = rig.served_by(p, at)
                assert rel is not None and found is not None
                handovers.append((found[1] - rel).total_seconds())
                claimed = first_after(rig.runners[found[0]].log, f"claimed partition {p} ", at)
                if claimed is not None:
                    claims_after.append((claimed - rel).total_seconds())
            row["handover_s"] = max(handovers)
            row["handover_claim_s"] = max(claims_after, default=math.nan)
        del rig.runners[victim_name]
        rig.start_runner(base)
    if fault == "kill":
        victim.process.wait(10)
        del rig.runners[victim_name]
        rig.start_runner(base)
    return row


def venue_books(record: dict[str, Any]) -> dict[str, dict[BookKey, int]]:
    return {account: {(Segment(seg), sec, product or None): int(net)
                      for seg, sec, product, net in rows}
            for account, rows in record["books"].items()}


def double_exits(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Exit client ids placed at the venue more than once, and account books gone short (more
    sold than bought: an exit filled past its position)."""
    placed = Counter(record["placements"])
    repeated = sorted(c for c, n in placed.items() if c.startswith("X-") and n > 1)
    short = sorted(f"{account}:{key_text(key)}"
                   for account, book in venue_books(record).items()
                   for key, net in book.items() if net < 0)
    return repeated, short


def books_check(url: str, books: dict[str, dict[BookKey, int]]) -> dict[str, Any]:
    from store.factory import open_store

    differ: dict[str, Any] = {}
    for account in ACCOUNTS:
        store = open_store(url, account=account)
        try:
            positions = store.list_positions()
        finally:
            store.close()
        report = compare(books.get(account, {}), positions)
        if not report.agree:
            differ[account] = report.as_dict()["differences"]
    return differ


def run(url: str, nats: str, work: Path, *, cycles: int, runners: int, lease: float,
        http_timeout: float, entry_every: float = 0.5, warmup: float | None = None,
        faults: tuple[str, ...] = FAULTS) -> dict[str, Any]:
    """The rig on ``url`` (a PostgreSQL URL, its schema fresh) and ``nats``; logs in
    ``work``."""
    from store.factory import open_store

    open_store(url).close()  # migrated once, before the runners race to do it
    rig = Rig(url, nats, work, lease, http_timeout, entry_every)
    timeout = 3 * lease + http_timeout + 30
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        rig.start_venue()
        for index in range(runners):
            rig.start_runner(f"r{index + 1}", wait=False)
        for proc in list(rig.runners.values()):
            rig._wait_log(proc, f"runner {proc.owner} on", 60)
        wanted = {partition_of(a) for a in ACCOUNTS}
        if not wait_for(lambda: all_served(rig, wanted, EVER), 60, 0.2):
            raise RuntimeError(f"the accounts' partitions {sorted(wanted)} not served in 60 s")
        for number in range(cycles):
            time.sleep(lease if warmup is None else warmup)  # trading: exits in flight
            if not all_served(rig, wanted, EVER):
                wait_for(lambda: all_served(rig, wanted, EVER), timeout, 0.2)
            rows.append(cycle(rig, number + 1, faults[number % len(faults)], timeout))
        time.sleep(lease)
        assert rig.venue is not None
        rig.venue.process.send_signal(signal.SIGTERM)
        venue_code = rig.venue.process.wait(30)
        record = json.loads((work / "venue.json").read_text())
        books = venue_books(record)
        differ: dict[str, Any] = {}

        def settled() -> bool:
            nonlocal differ
            differ = books_check(url, books)
            return not differ

        agree = wait_for(settled, SETTLE, 0.5)
        codes = {}
        for proc in rig.runners.values():
            proc.process.send_signal(signal.SIGTERM)
        for owner, proc in rig.runners.items():
            codes[owner] = proc.process.wait(60)
    finally:
        rig.stop_all()
        _delete_stream(nats, rig.namespace)
    placed = Counter(record["placements"])
    repeated, short = double_exits(record)
    logs = "".join(p.read_text(errors="replace") for p in rig.logs)
    return summarise(rows, {
        "runners": runners, "lease_s": lease, "http_timeout_s": http_timeout,
        "accounts": len(ACCOUNTS), "exits_placed": sum(1 for c in placed if c.startswith("X-")),
        "entries": record["entries"],
        "repeated_exit_placements": repeated, "short_books": short,
        "double_exits": len(repeated) + len(short), "books_agree": agree,
        "book_differences": differ, "lost_fills": len(differ),
        "lease_lost_refusals": logs.count(" lost ("),
        "partitions_dropped": logs.count("dropped: "),
        "stale_writes_checked": "rows carry no writer epoch: every write is fenced by the "
                                "lease in its SQL (refusals counted); books agree and no exit "
                                "doubled",
        "venue_exit_code": venue_code, "runner_exit_codes": codes,
        "wall_s": round(time.monotonic() - started, 1)})


def _delete_stream(nats: str, namespace: str) -> None:
    from broker.transport.jetstream import JetStreamTransport

    try:
        cleanup = JetStreamTransport(nats, namespace=namespace)
    except Exception:  # nothing to clean if NATS is gone
        return
    try:
        cleanup.delete_stream()
    finally:
        cleanup.close()


def summarise(rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    crash = [r["failover_s"] for r in rows if r["fault"] in ("kill", "pause")]
    graceful = [r["handover_s"] for r in rows if "handover_s" in r]
    crash_p99, graceful_p99 = percentile(crash, 0.99), percentile(graceful, 0.99)
    lease = extra["lease_s"]
    crash_limit = 10.0 * lease / 6.0  # SPEC §13: <= 10 s with 6 s leases
    figures = [
        figure(f"crash failover p99 ({lease:g} s leases)", crash_p99, "s",
               target=f"<= {crash_limit:g} s",
               met=None if math.isnan(crash_p99) else crash_p99 <= crash_limit),
        figure("graceful hand-over p99 (release → serving)", graceful_p99, "s",
               target="<= 1 s", met=None if math.isnan(graceful_p99) else graceful_p99 <= 1.0),
        figure("double exits", extra["double_exits"], target="0",
               met=extra["double_exits"] == 0),
        figure("lost fills (accounts whose books differ)", extra["lost_fills"], target="0",
               met=extra["lost_fills"] == 0),
        figure("faults recovered", sum(1 for r in rows if r["recovered"]), f"of {len(rows)}",
               target=f"{len(rows)}", met=all(r["recovered"] for r in rows)),
    ]
    return {"benchmark": "failover", "figures": figures, "cycles": rows,
            "crash_failover_s": crash, "graceful_handover_s": graceful, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--lease", type=float, default=6.0, help="lease seconds (SPEC: 6)")
    parser.add_argument("--http-timeout", type=float, default=3.0,
                        help="the runners' DhanHQ request timeout (claim_wait adds it)")
    parser.add_argument("--entry-every", type=float, default=0.5)
    parser.add_argument("--keep-logs", type=Path, help="write the processes' logs here")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.runners < 2 or args.lease <= 0 or args.http_timeout <= 0:
        parser.error("want --cycles >= 1, --runners >= 2, positive --lease and --http-timeout")
    schema = f"failover_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG else "?"
    url = f"{PG}{sep}options=-csearch_path%3D{schema}"
    try:
        with tempfile.TemporaryDirectory(prefix="failover-") as scratch:
            work = args.keep_logs or Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            row = run(url, NATS, work, cycles=args.cycles, runners=args.runners,
                      lease=args.lease, http_timeout=args.http_timeout,
                      entry_every=args.entry_every)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    for fig in row["figures"]:
        print(f"{fig['figure']}: {fig['value']} {fig['unit']} (target {fig['target']})",
              file=sys.stderr)
    print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
