"""The failover rig (SPEC §13, issue 20): runner processes killed, paused, stopped and added,
NATS restarted and PostgreSQL sessions killed while the runners trade, on loopback, as a user
runs them.

``python -m bench.failover [--cycles N] [--runners K] [--lease S] [--http-timeout S]
[--faults kill,pause,term,add,nats,pg] [--out FILE.jsonl] [--connectors] [--read-book]``;
``python -m bench.failover --summarize FILE.jsonl [FILE.jsonl ...]``

- One ``run.py venue`` process (the paper broker: the fake DhanHQ, entries for a handful of
  accounts, order updates onto JetStream, prices onto NATS) and K ``run.py runner --accounts``
  processes, every runner configured with every account (they share the partitions,
  ``models.partitions.plan_share``), on the PostgreSQL running here, in a schema of their own,
  dropped afterwards. NATS: with the ``nats`` fault, a private ``nats-server -js`` on a free
  port with its own store directory, started and restarted by the rig (the server on 4222 is
  shared); without it, ``BENCH_NATS_URL`` in a namespace of its own. Each account's store in a
  runner holds at most ``--db-connections`` (4) PostgreSQL connections (``run.py runner
  --db-connections``; 12 by default, opened as its writes need them): a paused owner keeps its
  own while its successor opens as many, and the server here is shared.
- ``--connectors``: the venue is only DhanHQ (``run.py venue --no-publish``); a ``run.py
  connector`` process carries every account's order updates onto JetStream from the fake's
  order sockets and order books, and a ``run.py feed`` process the prices from its feed, as
  with the real broker. Neither is a fault's target; the ``nats`` fault restarts NATS under
  them too.
- One fault a cycle, the kinds in turn:

  - ``kill``: the runner holding the most partitions killed (-9), then started again as a spare;
  - ``pause``: it is paused (SIGSTOP), and continued (SIGCONT) once another runner serves its
    partitions: longer than the lease;
  - ``term``: it is stopped (SIGTERM: a graceful hand-over), then started again;
  - ``add``: a runner joins while the partitions are served. Runners share the partitions:
    the newcomer is expected to hold at most its fair share (``within_share``: no more than
    ``models.partitions.fair_share`` of the live runners after a lease's time, and no
    partition served twice; ``became_spare`` when it got none); were partitions moved to it,
    ``moved_s`` says when it served them. It is then stopped again (SIGTERM), so K stays K;
  - ``nats``: the rig's nats-server stopped (SIGTERM; ``--nats-stop kill``: -9), kept down
    ``--nats-down`` seconds and started again on the same port and store: ``reconnect_s`` until
    the venue and every runner logged ``NATS: reconnected``, ``flow_s`` until an order update
    was stored in PostgreSQL again (both from the restart);
  - ``pg``: every PostgreSQL session of the runners ended by the server
    (``pg_terminate_backend``, the runners' connections known by their ``application_name``):
    ``recovery_s`` until every partition's lease was renewed and an order update was stored
    again, the partitions served by one owner each.

- **Failover time** (``kill``, ``pause``, ``term``): from the fault to the moment every
  partition the runner held is served by another: its ``partition_leases`` row names another
  owner (a new epoch) and that owner's log says ``serving partition P`` (loguru's timestamps,
  wall clock, one machine). For a graceful stop, the hand-over is measured from the old owner's
  ``released partition P`` line to the successor's ``serving partition P`` (and to its
  ``claimed`` line).
- **Served twice** (after every cycle): the partitions that more than one live runner serves
  at once by their logs (``serving partition P`` not yet followed by its ``dropped`` or
  ``released`` line).
- At the end the venue stops and writes what it recorded (``run.py venue --record``): **double
  exits** = exit client ids (``X-<position>-<attempt>``) placed at the broker more than once,
  plus account books whose net went short (an exit filled past its position); **lost fills** =
  accounts whose book at the venue (net filled quantity per instrument) disagrees with their
  open positions in PostgreSQL (``models.books.compare``), once the runners have applied every
  update (waited for, up to ``SETTLE`` seconds).
- **Writes under a stale epoch**: counted by PostgreSQL itself (``store/witness.py``,
  installed in the rig's schema before the runners start): a row trigger on every state table
  checks each row written against the lease table as it stands inside the writing
  transaction, and records a write under an epoch another owner has replaced (``stale``,
  target 0), one with no fence at all (``unfenced``, target 0) and one whose lease expired
  while its transaction was open (``expired``: the fence's lock held the next owner's claim
  back until it ended; shown, no target). Beside it, the writes the runners' own fence
  refused (``LeaseLost``, counted from their logs as ``lease epoch N lost (...)``; a partition
  a runner dropped, its lease found lost at a renewal or a write, as ``dropped``).
- **Results file** (``--out FILE.jsonl``, appended): a ``start`` line, one ``cycle`` line as
  soon as each cycle ends and an ``end`` line with the end checks, each naming its run. A run
  stopped with Ctrl-C or SIGTERM finishes its cycle and runs the end checks (twice: at once,
  its cycles kept); ``--summarize FILE [FILE ...]`` computes the summary of every run in the
  files with the same code as a run's final row (one run in the file: the same figures), so a
  long run can be made over several sittings; each start line names the commit its code was
  at (``git describe --dirty``) and the summary lists them (``commits``).

Prints one JSON row (``{"benchmark": "failover", "figures": [...], ...}``) as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from app.clocks import SharedSession
from bench.common import scratch_schema
from bench.report import figure
from models.books import BookKey, compare, key_text
from models.common import Segment
from models.partitions import fair_share, partition_of
from models.policy import RiskConfig
from store import witness

ROOT = Path(__file__).resolve().parents[1]
NATS = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
ACCOUNTS = ("desk-1", "desk-2", "desk-3", "desk-4")
CLIENT = "1000000001"  # the venue's (app.venue.CLIENT, TOKEN): the loopback fake's, no secret
TOKEN = "fake-dhan-token"
FAULTS = ("kill", "pause", "term", "add", "nats", "pg")
CRASHES = ("kill", "pause")
MEASURE = {"kill": "failover_s", "pause": "failover_s", "term": "handover_s", "add": "join_s",
           "nats": "flow_s", "pg": "recovery_s"}
"""Each kind's measured outcome (seconds), summarised per kind."""
SETTLE = 30.0
NATS_DOWN = 2.0
DB_CONNECTIONS = 4
"""PostgreSQL connections of each account's store in a runner (``run.py runner
--db-connections``; 12 by default): a paused owner keeps its connections while its successor
opens as many, and the server here (100 at most) is shared."""
EVER = datetime.fromtimestamp(0, UTC)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")
SERVING = re.compile(r"serving partition (\d+)$")
NOT_SERVING = re.compile(r"partition (\d+) dropped: |released partition (\d+)$")
CLAIMED = re.compile(r"claimed partition (\d+) ")


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stamp(line: str) -> datetime | None:
    stamp = LOG_TIME.match(line)
    if stamp is None:
        return None
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").astimezone()


def log_times(path: Path, text: str) -> list[datetime]:
    """When each line containing ``text`` was logged (loguru's local wall clock); a ``text``
    ending in a newline matches at the end of the line only."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if text in line + "\n":
            stamp = _stamp(line)
            if stamp is not None:
                found.append(stamp)
    return found


def first_after(path: Path, text: str, after: datetime) -> datetime | None:
    later = [t for t in log_times(path, text) if t >= after]
    return later[0] if later else None


def serving_now(path: Path) -> set[int]:
    """The partitions a runner's log says it serves: ``serving partition P`` not followed by
    ``partition P dropped`` or ``released partition P``."""
    serving: set[int] = set()
    for line in path.read_text(errors="replace").splitlines():
        if (on := SERVING.search(line)) is not None:
            serving.add(int(on.group(1)))
        elif (off := NOT_SERVING.search(line)) is not None:
            serving.discard(int(off.group(1) or off.group(2)))
    return serving


def claimed_since(path: Path, after: datetime) -> set[int]:
    found = set()
    for line in path.read_text(errors="replace").splitlines():
        stamp = _stamp(line)
        if stamp is not None and stamp >= after and (claim := CLAIMED.search(line)):
            found.add(int(claim.group(1)))
    return found


def _seconds(later: datetime, earlier: datetime) -> float:
    return round((later - earlier).total_seconds(), 6)


@dataclass
class Proc:
    owner: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class NatsServer:
    """The rig's own ``nats-server -js`` on a free loopback port with its own store directory:
    the one the ``nats`` fault restarts (the server on 4222 is shared with others)."""

    work: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    options: tuple[str, ...] = ()
    """More ``nats-server`` options (the scaling bench's monitoring port)."""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / "nats-server.log"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("the NATS restart needs nats-server on PATH")
        self.starts += 1
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                 "-sd", str(self.work / "nats-store"), *self.options],
                stdout=sink, stderr=sink, start_new_session=True)
        if not wait_for(self.answers, timeout, 0.02):
            raise RuntimeError(f"nats-server on {self.port} not answering in {timeout:g} s")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                return conn.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Rig:
    url: str
    nats: str
    work: Path
    lease: float
    http_timeout: float
    entry_every: float
    nats_server: NatsServer | None = None
    nats_down: float = NATS_DOWN
    nats_stop: str = "term"
    """How the ``nats`` fault stops the server: ``term`` (SIGTERM) or ``kill`` (-9)."""
    db_connections: int = DB_CONNECTIONS
    connectors: bool = False
    """The order updates and prices reach NATS through ``run.py connector`` and ``run.py feed``
    (the venue only plays DhanHQ: ``--no-publish``), as with a real broker."""
    read_book: bool = False
    """Runners read each account's whole order book at every takeover (``run.py runner
    --read-book``), not only when its positions differ from the broker's."""
    namespace: str = field(default_factory=lambda: f"fo{uuid.uuid4().hex[:10]}")
    port: int = 0
    venue: Proc | None = None
    runners: dict[str, Proc] = field(default_factory=dict)
    """Live runners by owner name (one name per incarnation)."""
    carriers: list[Proc] = field(default_factory=list)
    """``run.py connector`` and ``run.py feed`` (``connectors``)."""
    logs: list[Path] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    incarnations: int = 0
    accounts: tuple[str, ...] = ACCOUNTS
    """The accounts every process is given (``--accounts``)."""
    wanted: set[int] = field(default_factory=set)
    """The accounts' partitions (filled in from ``accounts`` when not given)."""
    session: SharedSession = field(default_factory=lambda: SharedSession(RiskConfig().calendar))

    def __post_init__(self) -> None:
        self.port = free_port()
        self.wanted = self.wanted or {partition_of(a) for a in self.accounts}
        (self.work / "tracker.toml").write_text(
            "[policy]\nstop_loss_pct = 0.002\ntake_profit_pct = 0.003\n\n"
            f"[dhan]\nrequest_timeout_seconds = {self.http_timeout}\n", encoding="utf-8")

    @property
    def application_name(self) -> str:
        """The runners' PostgreSQL sessions' name: the ones the ``pg`` fault ends."""
        return f"{self.namespace}-runner"

    def env(self, url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DHAN_")}
        env.pop("REDIS_URL", None)  # the P&L cache in process: nothing shared but PG and NATS
        env.update({"DATABASE_URL": url, "DHAN_CLIENT_ID": CLIENT,
                    "DHAN_ACCESS_TOKEN": TOKEN,
                    # one exchange time for all, in market hours whatever the hour here
                    "DHAN_SESSION_START": self.session.start_now(),
                    "DHAN_API_URL": f"http://127.0.0.1:{self.port}/v2",
                    "DHAN_ORDER_WS_URL": f"ws://127.0.0.1:{self.port}/order-update",
                    "DHAN_FEED_WS_URL": f"ws://127.0.0.1:{self.port}/feed",
                    "PYTHONPATH": str(ROOT)})
        return env

    def _start(self, name: str, *args: str, url: str | None = None) -> Proc:
        log = self.work / f"{name}.log"
        with log.open("wb") as sink:
            # a session of its own: a Ctrl-C at the rig's terminal reaches the rig only
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), *args, "--nats", self.nats,
                 "--namespace", self.namespace, "--accounts", ",".join(self.accounts)],
                cwd=self.work, env=self.env(url or self.url), stdout=sink, stderr=sink,
                start_new_session=True)
        self.started.append(process)
        self.logs.append(log)
        return Proc(name, process, log)

    def start_venue(self, *options: str) -> None:
        extra = ("--no-publish",) if self.connectors else ()
        self.venue = self._start("venue", "venue", "--port", str(self.port), "--entry-every",
                                 str(self.entry_every), "--record",
                                 str(self.work / "venue.json"), *extra, *options)
        self._wait_log(self.venue, "paper venue: DhanHQ API", 60)
        if self.connectors:
            self.carriers = [self._start("connector", "connector", "--poll-seconds", "1"),
                             self._start("feed", "feed")]
            self._wait_log(self.carriers[0], "connector of", 60)
            self._wait_log(self.carriers[1], "price feed for", 60)

    def start_runner(self, base: str, *options: str, wait: bool = True) -> Proc:
        self.incarnations += 1
        owner = f"{base}.{self.incarnations}"
        sep = "&" if "?" in self.url else "?"
        proc = self._start(owner, "runner", "--owner", owner, "--lease-seconds",
                           str(self.lease), "--db-connections", str(self.db_connections),
                           *(("--read-book",) if self.read_book else ()), *options,
                           url=f"{self.url}{sep}application_name={self.application_name}")
        self.runners[owner] = proc
        if wait:
            self._wait_log(proc, f"runner {owner} on", 60)
        return proc

    def _wait_log(self, proc: Proc, text: str, timeout: float) -> None:
        if not wait_for(lambda: text in proc.log.read_text(errors="replace"), timeout, 0.1):
            tail = proc.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.owner}: {text!r} not logged in {timeout:.0f} s:\n{tail}")

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def leases(self) -> dict[int, tuple[str | None, int]]:
        """Live leases: partition → (owner, epoch); a lapsed one counts as unowned."""
        rows = self._query("SELECT partition, CASE WHEN expires_at > now() THEN owner END, "
                           "epoch FROM partition_leases")
        return {int(p): (owner, int(epoch)) for p, owner, epoch in rows}

    def renewed_since(self, after: datetime) -> dict[int, datetime]:
        """Partitions whose lease was claimed or renewed since ``after`` (the server's clock;
        one machine): partition → when."""
        rows = self._query("SELECT partition, claimed_at FROM partition_leases "
                           "WHERE claimed_at > %s AND expires_at > now()", after)
        return {int(p): at for p, at in rows}

    def last_update(self) -> int:
        """The sequence number of the last order update stored (its time is the runner's
        exchange clock: not comparable, so stores are seen by polling this)."""
        rows = self._query("SELECT coalesce(max(seq), 0) FROM order_updates")
        return int(rows[0][0])

    def update_stored_after(self, seq: int, poll: float, timeout: float) -> datetime | None:
        """When an order update past ``seq`` was seen stored (polled every ``poll`` s)."""
        if wait_for(lambda: self.last_update() > seq, timeout, poll):
            return datetime.now(UTC)
        return None

    def end_runner_sessions(self) -> int:
        """Every PostgreSQL session of the runners ended by the server (waited for until
        they are gone); how many."""
        rows = self._query("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = %s AND pid <> pg_backend_pid()",
                           self.application_name)
        ended = [int(pid) for pid, done in rows if done]
        wait_for(lambda: not self._query("SELECT 1 FROM pg_stat_activity "
                                         "WHERE pid = ANY(%s)", ended), 5, 0.05)
        return len(ended)

    def served_by(self, partition: int, after: datetime) -> tuple[str, datetime] | None:
        """The live owner of ``partition`` when it logged serving it since ``after``."""
        owner, _ = self.leases().get(partition, (None, 0))
        proc = self.runners.get(owner or "")
        if proc is None:
            return None
        at = first_after(proc.log, f"serving partition {partition}\n", after)
        return None if at is None else (proc.owner, at)

    def served_twice(self) -> list[int]:
        """Partitions that more than one live runner serves now, by their logs."""
        counts = Counter(p for proc in self.runners.values() for p in serving_now(proc.log))
        return sorted(p for p, n in counts.items() if n > 1)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if self.nats_server is not None:
            self.nats_server.stop(signal.SIGKILL)


def all_served(rig: Rig, partitions: Iterable[int], after: datetime) -> bool:
    return all(rig.served_by(p, after) is not None for p in partitions)


def cycle(rig: Rig, number: int, fault: str, timeout: float) -> dict[str, Any]:
    """One fault and its measured outcome (``MEASURE[fault]``, seconds; ``recovered``)."""
    row: dict[str, Any] = {"cycle": number, "fault": fault}
    if fault in ("kill", "pause", "term"):
        _runner_fault(rig, row, fault, timeout)
    elif fault == "add":
        _runner_added(rig, row, timeout)
    elif fault == "nats":
        _nats_restarted(rig, row, timeout)
    elif fault == "pg":
        _sessions_killed(rig, row, timeout)
    else:
        raise ValueError(f"no such fault: {fault!r}")
    row["served_twice"] = rig.served_twice()
    return row


def _runner_fault(rig: Rig, row: dict[str, Any], fault: str, timeout: float) -> None:
    held = rig.leases()
    owners = Counter(owner for owner, _ in held.values() if owner in rig.runners)
    if not owners:
        raise RuntimeError(f"cycle {row['cycle']}: no runner holds a partition: {held}")
    victim_name = owners.most_common(1)[0][0]
    victim = rig.runners[victim_name]
    mine = {p for p, (owner, _) in held.items() if owner == victim_name}
    row.update({"runner": victim_name, "partitions": sorted(mine)})
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
        row["failover_s"] = max(_seconds(s[1], at) for s in served.values() if s is not None)
        claims = [first_after(rig.runners[s[0]].log, f"claimed partition {p} ", at)
                  for p, s in served.items() if s is not None]
        row["claim_s"] = max((_seconds(c, at) for c in claims if c is not None),
                             default=math.nan)
    else:
        row["failover_s"] = math.inf
        row["waited_s"] = time.monotonic() - began
    if fault == "pause":
        victim.process.send_signal(signal.SIGCONT)
        row["paused_s"] = time.monotonic() - began
        # its next renewals are refused: it drops every partition and stays on as a spare
        row["stale_owner_dropped"] = wait_for(
            lambda: not serving_now(victim.log) & mine, rig.lease + 10, 0.1)
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
                handovers.append(_seconds(found[1], rel))
                claimed = first_after(rig.runners[found[0]].log, f"claimed partition {p} ", at)
                if claimed is not None:
                    claims_after.append(_seconds(claimed, rel))
            row["handover_s"] = max(handovers)
            row["handover_claim_s"] = max(claims_after, default=math.nan)
        del rig.runners[victim_name]
        rig.start_runner(base, wait=False)  # a spare once up; the next cycle need not wait
    if fault == "kill":
        victim.process.wait(10)
        del rig.runners[victim_name]
        rig.start_runner(base, wait=False)


def _runner_added(rig: Rig, row: dict[str, Any], timeout: float) -> None:
    """A runner joins while every partition is served: it should take at most its fair share
    (handed over by runners over theirs), none served twice; then it is stopped again."""
    before = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    at = datetime.now(UTC)
    newcomer = rig.start_runner("add", wait=False)
    row.update({"runner": newcomer.owner, "partitions": sorted(rig.wanted)})
    rig._wait_log(newcomer, f"runner {newcomer.owner} on", 60)
    up = first_after(newcomer.log, f"runner {newcomer.owner} on", at)
    row["join_s"] = math.nan if up is None else _seconds(up, at)
    # a lease's time: three rounds of claims and a look for free partitions every 0.2 s
    time.sleep(rig.lease + 1)
    claimed = claimed_since(newcomer.log, at)
    after = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    row["claimed"] = sorted(claimed)
    row["owners_unchanged"] = after == before
    row["became_spare"] = not claimed and row["owners_unchanged"]
    row["rebalanced"] = bool(claimed & rig.wanted)
    # runners share the partitions: the newcomer takes at most its share of the live runners
    row["share"] = fair_share(len(rig.wanted), len(rig.runners))
    row["within_share"] = len(claimed & rig.wanted) <= row["share"]
    if claimed:  # were partitions moved to it: when it served them
        served = [first_after(newcomer.log, f"serving partition {p}\n", at) for p in claimed]
        row["moved_s"] = max((_seconds(s, at) for s in served if s is not None),
                             default=math.inf)
    twice = rig.served_twice()
    row["within_share"] = row["within_share"] and not twice
    newcomer.process.send_signal(signal.SIGTERM)
    row["exit_code"] = newcomer.process.wait(30)
    del rig.runners[newcomer.owner]
    row["recovered"] = (not twice and row["exit_code"] == 0
                        and wait_for(lambda: all_served(rig, rig.wanted, EVER), timeout, 0.2))


def _nats_restarted(rig: Rig, row: dict[str, Any], timeout: float) -> None:
    """The rig's nats-server stopped, kept down, started again on the same port and store:
    until an order update is stored again, and every client has reconnected."""
    server = rig.nats_server
    if server is None:
        raise RuntimeError("the NATS restart needs the rig's own nats-server")
    before = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    row["partitions"] = sorted(rig.wanted)
    # the clients connected now (a runner still starting connects after the restart)
    clients = [c for c in rig.runners.values()
               if f"runner {c.owner} on" in c.log.read_text(errors="replace")]
    clients += [rig.venue] if rig.venue is not None else []
    at = datetime.now(UTC)
    server.stop(signal.SIGKILL if rig.nats_stop == "kill" else signal.SIGTERM)
    row["stop"] = rig.nats_stop
    time.sleep(rig.nats_down)
    seq = rig.last_update()  # nothing flows meanwhile: the updates pulled before are stored
    server.start()
    restarted = datetime.now(UTC)
    row["down_s"] = _seconds(restarted, at)
    stored = rig.update_stored_after(seq, 0.05, timeout)
    row["flow_s"] = math.inf if stored is None else _seconds(stored, restarted)
    row["flow_from_stop_s"] = math.inf if stored is None else _seconds(stored, at)

    def reconnected() -> list[datetime]:
        found = [first_after(c.log, "NATS: reconnected", restarted) for c in clients]
        return [t for t in found if t is not None]

    wait_for(lambda: len(reconnected()) == len(clients), timeout, 0.1)
    times = reconnected()
    row["reconnect_s"] = max(_seconds(t, restarted) for t in times) \
        if len(times) == len(clients) else math.inf
    served = wait_for(lambda: all_served(rig, rig.wanted, EVER), timeout, 0.2)
    after = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    row["owners_unchanged"] = after == before
    if not row["owners_unchanged"]:
        row["owners_after"] = {str(p): list(v) if v else None for p, v in after.items()}
    row["recovered"] = stored is not None and len(times) == len(clients) and served


def _sessions_killed(rig: Rig, row: dict[str, Any], timeout: float) -> None:
    """Every PostgreSQL session of the runners ended by the server (``pg_terminate_backend``):
    until every partition's lease is renewed and an order update stored again."""
    before = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    row["partitions"] = sorted(rig.wanted)
    at = datetime.now(UTC)
    row["sessions_ended"] = rig.end_runner_sessions()
    seq = rig.last_update()
    stored = rig.update_stored_after(seq, 0.05, timeout)
    row["stored_s"] = math.inf if stored is None else _seconds(stored, at)
    renewed_all = wait_for(lambda: set(rig.renewed_since(at)) >= rig.wanted, timeout, 0.1)
    renewed = rig.renewed_since(at)
    row["renewed_s"] = max(_seconds(renewed[p], at) for p in rig.wanted) if renewed_all \
        else math.inf
    row["recovery_s"] = max(row["renewed_s"], row["stored_s"])
    served = wait_for(lambda: all_served(rig, rig.wanted, EVER), timeout, 0.2)
    after = {p: rig.leases().get(p) for p in sorted(rig.wanted)}
    row["owners_unchanged"] = after == before
    if not row["owners_unchanged"]:
        row["owners_after"] = {str(p): list(v) if v else None for p, v in after.items()}
    row["recovered"] = stored is not None and renewed_all and served


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


def books_check(url: str, books: dict[str, dict[BookKey, int]],
                accounts: Iterable[str] = ACCOUNTS) -> dict[str, Any]:
    from store.factory import open_store

    differ: dict[str, Any] = {}
    for account in accounts:
        store = open_store(url, account=account)
        try:
            positions = store.list_positions()
        finally:
            store.close()
        report = compare(books.get(account, {}), positions)
        if not report.agree:
            differ[account] = report.as_dict()["differences"]
    return differ


class Lines:
    """The run's lines (``start``, one per ``cycle``, ``end``), each appended to ``out`` as
    one JSON line as soon as it is made; the final row is the summary of these lines."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.run = out, uuid.uuid4().hex[:12]
        self.lines: list[dict[str, Any]] = []

    def add(self, kind: str, line: dict[str, Any]) -> None:
        text = json.dumps({"kind": kind, "run": self.run,
                           "at": datetime.now(UTC).isoformat(timespec="milliseconds"), **line},
                          default=str)
        self.lines.append(json.loads(text))  # as the file has it
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as sink:
                sink.write(text + "\n")
                sink.flush()
                os.fsync(sink.fileno())


def run(url: str, nats: str | None, work: Path, *, cycles: int, runners: int, lease: float,
        http_timeout: float, entry_every: float = 0.5, warmup: float | None = None,
        faults: tuple[str, ...] = FAULTS, out: Path | None = None,
        nats_down: float = NATS_DOWN, nats_stop: str = "term",
        db_connections: int = DB_CONNECTIONS, connectors: bool = False,
        read_book: bool = False, stop: threading.Event | None = None) -> dict[str, Any]:
    """The rig on ``url`` (a PostgreSQL URL, its schema fresh) and ``nats`` (None: a
    nats-server of its own, which the ``nats`` fault needs); logs in ``work``; each line
    appended to ``out``. ``stop`` set: no more cycles, the end checks run."""
    from store.factory import open_store

    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        raise ValueError(f"faults: want some of {', '.join(FAULTS)}, not {sorted(unknown)}")
    if nats_stop not in ("term", "kill"):
        raise ValueError(f"nats_stop: term or kill, not {nats_stop!r}")
    if "nats" in faults and nats is not None:
        raise ValueError("the NATS restart needs the rig's own nats-server (nats=None): the "
                         "shared one is not restarted")
    open_store(url).close()  # migrated once, before the runners race to do it
    with psycopg.connect(url, autocommit=True) as conn:  # PostgreSQL's own count of stale writes
        witness.install(conn)
    server = NatsServer(work) if nats is None else None
    rig = Rig(url, server.url if server is not None else nats or NATS, work, lease,
              http_timeout, entry_every, nats_server=server, nats_down=nats_down,
              nats_stop=nats_stop, db_connections=db_connections, connectors=connectors,
              read_book=read_book)
    timeout = 3 * lease + http_timeout + 30
    started = time.monotonic()
    lines = Lines(out)
    lines.add("start", {"runners": runners, "lease_s": lease, "http_timeout_s": http_timeout,
                        "accounts": len(ACCOUNTS), "faults": list(faults),
                        "db_connections": db_connections, "connectors": connectors,
                        "read_book": read_book, "commit": code_version(),
                        "nats": "private" if server is not None else "shared"})
    try:
        if server is not None:
            server.start()
        rig.start_venue()
        for index in range(runners):
            rig.start_runner(f"r{index + 1}", wait=False)
        for proc in list(rig.runners.values()):
            rig._wait_log(proc, f"runner {proc.owner} on", 60)
        if not wait_for(lambda: all_served(rig, rig.wanted, EVER), 60, 0.2):
            raise RuntimeError(f"the accounts' partitions {sorted(rig.wanted)} not served in "
                               "60 s")
        for number in range(cycles):
            if stop is not None and stop.is_set():
                break
            time.sleep(lease if warmup is None else warmup)  # trading: exits in flight
            for proc in list(rig.runners.values()):  # one started again in the last cycle
                rig._wait_log(proc, f"runner {proc.owner} on", 60)
            if not all_served(rig, rig.wanted, EVER):
                wait_for(lambda: all_served(rig, rig.wanted, EVER), timeout, 0.2)
            lines.add("cycle", cycle(rig, number + 1, faults[number % len(faults)], timeout))
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
        _delete_stream(rig.nats, rig.namespace, server)
    with psycopg.connect(url, autocommit=True) as conn:
        fence_violations = witness.violations(conn)
        witnessed = witness.installed(conn) == len(witness.STATE_TABLES)
    placed = Counter(record["placements"])
    repeated, short = double_exits(record)
    logs = "".join(p.read_text(errors="replace") for p in rig.logs)
    lines.add("end", {
        "exits_placed": sum(1 for c in placed if c.startswith("X-")),
        "entries": record["entries"],
        "repeated_exit_placements": repeated, "short_books": short,
        "books_agree": agree, "book_differences": differ,
        "lease_lost_refusals": logs.count(" lost ("),
        "partitions_dropped": logs.count("dropped: "),
        "runner_step_failures": logs.count("runner step failed"),
        "venue_unpublished": logs.count("not published"),
        "pg_connections_refused": logs.count("too many clients"),
        "fence_witness": fence_violations if witnessed else None,
        "venue_exit_code": venue_code, "runner_exit_codes": codes,
        "wall_s": round(time.monotonic() - started, 1)})
    return summarise(lines.lines)


def _delete_stream(nats: str, namespace: str, server: NatsServer | None) -> None:
    if server is not None:
        return  # its store goes with the work directory
    from broker.transport.jetstream import JetStreamTransport

    try:
        cleanup = JetStreamTransport(nats, namespace=namespace)
    except Exception:  # nothing to clean if NATS is gone
        return
    try:
        cleanup.delete_stream()
    finally:
        cleanup.close()


def code_version() -> str:
    """The commit the rig's code is at (``git describe``: ``-dirty`` when files differ from
    it), or ``unknown`` outside a git checkout: sittings of one long run compare it."""
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                               cwd=Path(__file__).resolve().parent, capture_output=True,
                               text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "unknown"


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values) if values else math.nan}


def summarise(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the runs whose lines these are (``Lines``; a ``--out`` file read back):
    figures over every cycle, the end checks of every run that reached them."""
    starts = [line for line in lines if line["kind"] == "start"]
    if not starts:
        raise ValueError("no run in the lines (no start line)")
    rows = [line for line in lines if line["kind"] == "cycle"]
    ends = [line for line in lines if line["kind"] == "end"]
    leases = {s["lease_s"] for s in starts}
    if len(leases) != 1:
        raise ValueError(f"want the runs of one lease length, not {sorted(leases)}")
    lease = leases.pop()
    checked = {e["run"] for e in ends}
    unchecked = [r for r in rows if r["run"] not in checked]
    several = len(starts) > 1

    def keyed(run: str, key: str) -> str:
        return f"{run}/{key}" if several else key

    repeated = [c for e in ends for c in e["repeated_exit_placements"]]
    short = [c for e in ends for c in e["short_books"]]
    differ = {keyed(e["run"], a): d for e in ends for a, d in e["book_differences"].items()}
    extra: dict[str, Any] = {
        "runs": len(starts), "runs_checked": len(ends), "cycles_unchecked": len(unchecked),
        "commits": sorted({s.get("commit") or "unrecorded" for s in starts}),
        "runners": sorted({s["runners"] for s in starts}),
        "lease_s": lease, "http_timeout_s": sorted({s["http_timeout_s"] for s in starts}),
        "accounts": max(s["accounts"] for s in starts),
        "exits_placed": sum(e["exits_placed"] for e in ends),
        "entries": sum(e["entries"] for e in ends),
        "repeated_exit_placements": repeated, "short_books": short,
        "double_exits": len(repeated) + len(short),
        "books_agree": bool(ends) and all(e["books_agree"] for e in ends),
        "book_differences": differ, "lost_fills": len(differ),
        "stale_writes": sum((e.get("fence_witness") or {}).get("stale", 0) for e in ends),
        "unfenced_writes": sum((e.get("fence_witness") or {}).get("unfenced", 0) for e in ends),
        "writes_past_expiry": sum((e.get("fence_witness") or {}).get("expired", 0)
                                  for e in ends),
        "stale_writes_witnessed": bool(ends) and all(e.get("fence_witness") is not None
                                                     for e in ends),
        "venue_exit_code": next((e["venue_exit_code"] for e in ends
                                 if e["venue_exit_code"] != 0), 0 if ends else None),
        "runner_exit_codes": {keyed(e["run"], owner): code for e in ends
                              for owner, code in e["runner_exit_codes"].items()},
        "wall_s": round(sum(e["wall_s"] for e in ends), 1)}
    for key in ("lease_lost_refusals", "partitions_dropped", "runner_step_failures",
                "venue_unpublished", "pg_connections_refused"):
        extra[key] = sum(e.get(key, 0) for e in ends)
    if len(extra["runners"]) == 1:
        extra["runners"] = extra["runners"][0]
    if len(extra["http_timeout_s"]) == 1:
        extra["http_timeout_s"] = extra["http_timeout_s"][0]

    def measured(kind: str) -> list[float]:
        return [r.get(MEASURE[kind], math.inf) for r in rows if r["fault"] == kind]

    crash = [r["failover_s"] for r in rows if r["fault"] in CRASHES]
    crash_checked = [r for r in rows if r["fault"] in CRASHES and r["run"] in checked]
    not_checked = (f"{len(starts) - len(ends)} of {len(starts)} runs ended before their end "
                   "checks (venue's books, placements)" if len(ends) < len(starts) else "")
    graceful = [r["handover_s"] for r in rows if "handover_s" in r]
    crash_p99, graceful_p99 = percentile(crash, 0.99), percentile(graceful, 0.99)
    crash_limit = 10.0 * lease / 6.0  # SPEC §13: <= 10 s with 6 s leases
    twice = sum(len(r.get("served_twice", [])) for r in rows)
    figures = [
        figure(f"crash failover p99 ({lease:g} s leases)", crash_p99, "s",
               target=f"<= {crash_limit:g} s",
               met=None if math.isnan(crash_p99) else crash_p99 <= crash_limit),
        figure("graceful hand-over p99 (release → serving)", graceful_p99, "s",
               target="<= 1 s", met=None if math.isnan(graceful_p99) else graceful_p99 <= 1.0),
        figure("double exits", extra["double_exits"] if ends else "unchecked", target="0",
               met=extra["double_exits"] == 0 if ends else None, miss=not_checked),
        figure("lost fills (accounts whose books differ)",
               extra["lost_fills"] if ends else "unchecked", target="0",
               met=extra["lost_fills"] == 0 and extra["books_agree"] if ends else None,
               miss=not_checked),
        # SPEC §13: zero double exits and zero lost fills over >= 1,000 kill / pause cycles:
        # only the cycles of runs whose end checks ran count
        figure("kill / pause cycles, with 0 double exits and 0 lost fills", len(crash_checked),
               target=">= 1000", met=len(crash_checked) >= 1000 and extra["double_exits"] == 0
               and extra["lost_fills"] == 0 and extra["books_agree"] if ends else None,
               miss=f"{len(crash) - len(crash_checked)} more in runs never checked"
               if len(crash) > len(crash_checked) else ""),
        figure("faults recovered", sum(1 for r in rows if r["recovered"]), f"of {len(rows)}",
               target=f"{len(rows)}", met=all(r["recovered"] for r in rows)),
        figure("partitions served twice (after any fault)", twice, target="0",
               met=twice == 0),
    ]
    if extra["stale_writes_witnessed"]:
        figures.append(figure("writes under a stale epoch (PostgreSQL's check of every row)",
                              extra["stale_writes"], target="0",
                              met=extra["stale_writes"] == 0))
        figures.append(figure("writes without a fence", extra["unfenced_writes"], target="0",
                              met=extra["unfenced_writes"] == 0))
    added = [r for r in rows if r["fault"] == "add"]
    if added:
        # rows written before the fair share have only ``became_spare`` (within any share)
        fair = sum(1 for r in added if r.get("within_share", r.get("became_spare")))
        figures.append(figure("runner added: took at most its fair share, none served twice",
                              fair, f"of {len(added)}", target=f"{len(added)}",
                              met=fair == len(added)))
    if any(r["fault"] == "nats" for r in rows):
        figures.append(figure("NATS restarted: order updates stored again, p99 (from the "
                              "restart)", percentile(measured("nats"), 0.99), "s"))
    if any(r["fault"] == "pg" for r in rows):
        figures.append(figure("PostgreSQL sessions killed: leases renewed and updates stored "
                              "again, p99", percentile(measured("pg"), 0.99), "s"))
    by_kind = {kind: {"cycles": len(measured(kind)),
                      "recovered": sum(1 for r in rows if r["fault"] == kind and r["recovered"]),
                      "measure": MEASURE[kind], **_stats(measured(kind))}
               for kind in FAULTS if any(r["fault"] == kind for r in rows)}
    return {"benchmark": "failover", "figures": figures, "by_kind": by_kind, "cycles": rows,
            "crash_failover_s": crash, "graceful_handover_s": graceful, **extra}


def read_lines(path: Path) -> list[dict[str, Any]]:
    """A ``--out`` file's lines; a last line cut short (the run killed while writing) is
    left out."""
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            print(f"{path}: a line cut short left out", file=sys.stderr)
    return lines


def _print(row: dict[str, Any]) -> None:
    for fig in row["figures"]:
        miss = f"; {fig['miss']}" if fig["miss"] else ""
        print(f"{fig['figure']}: {fig['value']} {fig['unit']} (target {fig['target']}{miss})",
              file=sys.stderr)
    print(json.dumps(row, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--lease", type=float, default=6.0, help="lease seconds (SPEC: 6)")
    parser.add_argument("--http-timeout", type=float, default=3.0,
                        help="the runners' DhanHQ request timeout (claim_wait adds it)")
    parser.add_argument("--entry-every", type=float, default=0.5)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"fault kinds in turn, comma-separated (default {','.join(FAULTS)})")
    parser.add_argument("--nats-down", type=float, default=NATS_DOWN,
                        help="seconds the rig's nats-server stays down in a NATS restart")
    parser.add_argument("--nats-stop", choices=("term", "kill"), default="term",
                        help="how the NATS restart stops the server: SIGTERM or -9")
    parser.add_argument("--db-connections", type=int, default=DB_CONNECTIONS,
                        help="PostgreSQL connections of each account's store in a runner")
    parser.add_argument("--out", type=Path, help="append each cycle's line here (JSON lines)")
    parser.add_argument("--summarize", type=Path, nargs="+", metavar="FILE.jsonl",
                        help="print the summary of the runs in the FILEs (--out files: the "
                        "sittings of one long run) and stop")
    parser.add_argument("--keep-logs", type=Path, help="write the processes' logs here")
    parser.add_argument("--connectors", action="store_true", help="order updates and prices "
                        "through run.py connector and run.py feed (the venue only DhanHQ)")
    parser.add_argument("--read-book", action="store_true", help="runners read the whole "
                        "order book at every takeover (run.py runner --read-book)")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        try:
            row = summarise([line for path in args.summarize for line in read_lines(path)])
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"--summarize {' '.join(map(str, args.summarize))}: {error!r}")
        _print(row)
        return 0
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    if args.cycles < 1 or args.runners < 2 or args.lease <= 0 or args.http_timeout <= 0 \
            or args.db_connections < 1:
        parser.error("want --cycles >= 1, --runners >= 2, --db-connections >= 1, positive "
                     "--lease and --http-timeout")
    if not faults or set(faults) - set(FAULTS):
        parser.error(f"--faults: want some of {','.join(FAULTS)}")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("stopping after this cycle (the end checks run; again: at once)",
              file=sys.stderr)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with scratch_schema("failover") as url, \
            tempfile.TemporaryDirectory(prefix="failover-") as scratch:
        work = args.keep_logs or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        row = run(url, None if "nats" in faults else NATS, work, cycles=args.cycles,
                  runners=args.runners, lease=args.lease, http_timeout=args.http_timeout,
                  entry_every=args.entry_every, faults=faults, out=args.out,
                  nats_down=args.nats_down, nats_stop=args.nats_stop,
                  db_connections=args.db_connections, connectors=args.connectors,
                  read_book=args.read_book, stop=stop)
    _print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
