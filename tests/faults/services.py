"""The services a fault needs, under the test's control: a database of its own on the shared
PostgreSQL (its connections may be terminated), a throw-away PostgreSQL cluster (it may be
restarted), and a TCP proxy that can make a service unreachable.

A service or binary that is missing fails the test under ``CI=true`` and skips it elsewhere,
as the integration fixtures do (``tests/conftest.py``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import pytest

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def unavailable(message: str) -> None:
    """Fail under ``CI=true`` (a CI run must never pass by skipping), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the fault-injection suite needs it)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# A database of our own on the shared server ---------------------------------------------------
@contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """A fresh database ``faults_<random>`` on the server of ``server_url``, dropped afterwards
    (with whatever connections are still open to it); yields its URL."""
    name = f"faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


def terminate_connections(admin_url: str, database: str) -> int:
    """``pg_terminate_backend`` every connection to ``database`` (never another database's),
    but not the admin connection itself; how many were terminated."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid()", (database,)).fetchall()
    return sum(1 for (done,) in rows if done)


# A throw-away cluster -------------------------------------------------------------------------
class Cluster:
    """A PostgreSQL cluster in a temporary folder on a free port, owned by the ``postgres`` user
    when this runs as root (``initdb`` refuses root). ``restart`` stops it the hard way (an
    immediate shutdown, as a crash) and starts it again on the same port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.restarts = 0
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.folder, user="postgres", group="postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}"
                               f"\n{log}")

    def init(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale", "C")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.folder} -c fsync=off "
                   "-c max_connections=60")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, down: float = 0.0) -> None:
        """A crash and a start, ``down`` seconds apart."""
        self.stop("immediate")
        if down > 0:
            threading.Event().wait(down)
        self.start()
        self.restarts += 1

    def remove(self) -> None:
        with suppress(RuntimeError, subprocess.TimeoutExpired):  # not running
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    if not PG_BIN or not (PG_BIN[-1] / "initdb").exists():
        unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("runuser is missing: initdb cannot run as root")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("no postgres user to run initdb as (it refuses root)")
    cluster = Cluster(PG_BIN[-1])
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.remove()


# A TCP proxy that can make a service unreachable ------------------------------------------------
class Proxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``. ``cut("refuse")``: open connections are
    reset and new ones closed at once; ``cut("stall")``: open and new connections stay up but
    nothing goes through either way (a network that drops packets); ``cut("hold")``: as
    ``stall``, but what was held goes through once mended (a network or a peer that stops for a
    while, then answers late); ``mend()``: back to forwarding (connections stalled or refused
    while down stay cut, held ones go on)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.mode = "forward"
        self.accepted = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def cut(self, mode: str) -> None:
        assert mode in ("refuse", "stall", "hold"), mode
        with self._lock:
            self.mode = mode
            dropped = self._open if mode == "refuse" else []
            if mode == "refuse":
                self._open = []
        for sock in dropped:
            _reset(sock)

    def mend(self) -> None:
        with self._lock:
            held, self.mode = self.mode == "hold", "forward"
            stalled, self._open = ([], self._open) if held else (self._open, [])
        for sock in stalled:  # what was held while stalled is gone, as after a partition
            _reset(sock)

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):  # wakes the accept() waiting on another thread (Linux)
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            _reset(sock)
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=3)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            source.settimeout(None)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self.mode in ("stall", "hold"):
                    threading.Event().wait(0.005)  # stalled: dropped when reset; held: sent
                if self.mode == "refuse":
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    try:
        # linger on, 0 s: close() sends a reset, as a dropped connection looks to its peer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


# Faults on a schedule ---------------------------------------------------------------------------
class Periodic:
    """Runs ``fault`` every ``every`` seconds on a thread of its own until stopped; keeps what
    each call returned and the errors it raised (a fault that fails is a finding, not a
    crash)."""

    def __init__(self, fault: Callable[[], object], every: float) -> None:
        self.fault, self.every = fault, every
        self.results: list[object] = []
        self.errors: list[str] = []
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault", daemon=True)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ended.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._ended.wait(self.every):
            try:
                self.results.append(self.fault())
            except Exception as error:  # noted; the test decides what it means
                self.errors.append(f"{type(error).__name__}: {error}")
