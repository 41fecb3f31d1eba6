"""Runners serving accounts on the real PostgreSQL and NATS JetStream (SPEC §13): an entry fill
on JetStream opens a position, a price on NATS past its stop makes one exit order at the broker
(the loopback fake DhanHQ, shared by the runners as a real broker would be); a runner that
stops without releasing is replaced after its lease and ``claim_wait``, and its successor
reloads the position and exits it once; a runner that lost its lease writes nothing; a graceful
stop hands the partition over at once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from app.clocks import SessionClock, SharedSession
from app.runner import Runner
from app.serving import AccountSystems
from app.settings import Settings, load_settings
from app.venue import TOKEN as VENUE_TOKEN
from broker.dhan import TokenSource
from broker.fake_dhan.venue import CLIENT, TOKEN, Venue, wait_until
from broker.transport.jetstream import JetStreamTransport
from models.common import Instrument, Segment, TxnType
from models.partitions import partition_of
from models.policy import RiskConfig
from models.position import PositionStatus
from run import build_runner_system
from store.factory import open_store
from store.leases import PostgresLeases
from store.ports import LeaseLost

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "desk-7"
P = partition_of(ACCOUNT)
FUT = Instrument(segment=Segment.NSE_FNO, security_id="49081")
LEASE = 1.5
HTTP_TIMEOUT = 0.5
POLICY = """
[policy]
stop_loss_pct = 0.05
take_profit_pct = 0.50
exit_timeout_ms = 4000

[dhan]
exit_chase_after_ms = 1000
exit_max_modifications = 2
request_timeout_seconds = 0.5
"""


@dataclass
class Served:
    runner: Runner
    systems: AccountSystems
    transport: JetStreamTransport
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Served:
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop,), daemon=True)
        self.thread.start()
        return self

    def halt(self) -> None:
        """The loop ends: no more claims, renewals or pulls (the leases are left as they are,
        as a crashed runner leaves them; its actors are still there, as a paused one's)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
            assert not self.thread.is_alive()

    def serving(self) -> bool:
        """Started, reconciled and priced (``Runner.report``: served once made ready)."""
        return P in self.runner.report()["partitions_served"] and bool(self.systems.systems(P))

    def position_ids(self) -> set[str]:
        return {p.position_id for system in self.systems.systems(P).values()
                for p in system.open_positions()}


class Rig:
    def __init__(self, pg_url: str, nats_url: str, tmp_path: Path, venue: Venue) -> None:
        open_store(pg_url).close()  # migrated
        self.url, self.nats_url, self.venue = pg_url, nats_url, venue
        self.namespace = f"t{uuid.uuid4().hex[:10]}"
        config = tmp_path / "tracker.toml"
        config.write_text(POLICY, encoding="utf-8")
        self.settings: Settings = load_settings(
            config_file=config, environ={"DHAN_CLIENT_ID": CLIENT,
                                         "DHAN_API_URL": venue.fake.rest_url}, flags={})
        self.clock = SessionClock(venue.clock())
        self.leases = PostgresLeases(pg_url, lease_seconds=LEASE, http_timeout=HTTP_TIMEOUT)
        self.leases.migrate()
        # The account's connector: the broker's order updates onto its partition's subject,
        # each once (its message id is the frame's digest).
        self.connector = JetStreamTransport(nats_url, namespace=self.namespace)
        venue.exchange.subscribe(self._publish)
        self.held: list[str] | None = None
        """While not None, the connector is down: the broker's updates wait here."""
        self.runners: list[Served] = []
        self.closing: list[Callable[[], None]] = []

    def _publish(self, frame: str) -> None:
        if self.held is not None:
            self.held.append(frame)
            return
        digest = hashlib.sha256(frame.encode()).hexdigest()[:32]
        self.connector.publish_order_update(ACCOUNT, digest, frame.encode())

    def connector_down(self) -> None:
        self.held = []

    def connector_up(self) -> None:
        held, self.held = self.held or [], None
        for frame in held:
            self._publish(frame)

    def runner(self, owner: str) -> Served:
        transport = JetStreamTransport(self.nats_url, namespace=self.namespace)
        holder: list[Runner] = []
        systems = AccountSystems([ACCOUNT], lambda account, lease: build_runner_system(
            self.settings, account, lease, url=self.url, clock=self.clock,
            tokens=TokenSource(token=TOKEN), on_lease_lost=holder[0].lease_lost,
            lease_seconds=LEASE), transport, clock=self.clock)
        runner = Runner(self.leases, transport, owner=owner, partitions=systems.partitions(),
                        serve=systems, claim_every=0.2, pull_budget=0.1)
        holder.append(runner)
        served = Served(runner, systems, transport)
        self.runners.append(served)
        return served

    def price(self, price: str) -> None:
        """The market moves: at the broker, and on NATS to the runners."""
        self.venue.set_price(FUT, price)
        self.connector.publish_price(FUT.segment.value, FUT.security_id, price.encode())
        self.connector.flush()

    def stored(self, status: PositionStatus | None = None) -> list[tuple[str, str]]:
        store = open_store(self.url, account=ACCOUNT)
        try:
            return [(p.position_id, p.status.value) for p in store.list_positions(status)]
        finally:
            store.close()

    def lease_row(self) -> tuple[str | None, int]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT owner, epoch FROM partition_leases WHERE partition = %s",
                               (P,)).fetchone()
        assert row is not None
        return row[0], int(row[1])

    def close(self) -> None:
        for served in self.runners:
            served.halt()
            served.runner.release_all()
            served.systems.close()
            served.transport.close()
        try:
            self.connector.delete_stream()
        finally:
            self.connector.close()
            self.leases.close()


@pytest.fixture
def rig(pg_url: str, nats_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Venue({FUT: Decimal("100")}) as venue:
        built = Rig(pg_url, nats_url, tmp_path, venue)
        try:
            yield built
        finally:
            built.close()


def _open_position(rig: Rig, served: Served) -> str:
    """A trader's entry at the broker; its fill reaches the runner over JetStream."""
    wait_until(served.serving, 20, "the runner serves the account")
    rig.venue.enter(FUT, TxnType.BUY, 50)
    wait_until(lambda: len(served.position_ids()) == 1, 20, "the position opened")
    [position_id] = served.position_ids()
    wait_until(lambda: FUT in served.systems.subscribed(), 10, "its instrument subscribed")
    wait_until(lambda: rig.stored(PositionStatus.ACTIVE) == [(position_id, "ACTIVE")], 10,
               "the position stored ACTIVE")
    return position_id


def _exited_once(rig: Rig, position_id: str) -> None:
    wait_until(lambda: rig.stored(PositionStatus.EXITED) == [(position_id, "EXITED")], 30,
               "the exit's fill applied")
    time.sleep(1.0)  # a second exit, if any were coming, would be placed by now
    assert [o.client_id for o in rig.venue.exits()] == [f"X-{position_id}-1"]
    assert len(rig.venue.order_requests("POST")) == 1  # one placement at the broker


def test_when_entry_fills_and_price_crosses_stop_then_runner_exits_once(rig: Rig) -> None:
    served = rig.runner("runner-a").start()
    position_id = _open_position(rig, served)
    rig.price("94")  # past the 5 % stop of the 100 entry
    _exited_once(rig, position_id)
    wait_until(lambda: FUT not in served.systems.subscribed(), 10, "unsubscribed on close")


def test_when_runner_crashes_then_successor_reloads_and_exits_once(rig: Rig) -> None:
    first = rig.runner("runner-a").start()
    position_id = _open_position(rig, first)
    [(epoch_owner, epoch)] = [rig.lease_row()]
    assert epoch_owner == "runner-a"
    first.halt()  # crashed: its lease is not released and lapses
    stale = first.systems.systems(P)[ACCOUNT].parts.store
    position = stale.load_position(position_id)
    assert position is not None

    halted = time.monotonic()
    second = rig.runner("runner-b").start()
    wait_until(second.serving, 20, "runner-b serves the partition")
    took = time.monotonic() - halted
    assert took >= HTTP_TIMEOUT  # not before the old lease and the HTTP timeout are over
    assert rig.lease_row() == ("runner-b", epoch + 1)
    assert second.position_ids() == {position_id}  # reloaded from PostgreSQL
    wait_until(lambda: FUT in second.systems.subscribed(), 10, "runner-b subscribed")

    with pytest.raises(LeaseLost):  # the old owner's write is refused: 0 rows changed
        stale.save_position(position.model_copy(update={"version": position.version + 1,
                                                        "quantity": 1}))
    assert first.runner.held[P].shared.revoked  # and it stopped acting under that lease
    reread = open_store(rig.url, account=ACCOUNT)
    try:
        assert reread.load_position(position_id) == position
    finally:
        reread.close()

    rig.price("94")  # both hear it; only the owner may act on it
    _exited_once(rig, position_id)


def test_when_runner_stops_gracefully_then_successor_takes_over_within_a_second(
        rig: Rig) -> None:
    first = rig.runner("runner-a").start()
    position_id = _open_position(rig, first)
    second = rig.runner("runner-b").start()  # waiting: the lease is runner-a's
    time.sleep(0.5)
    assert not second.serving() and second.runner.owned() == []

    first.halt()
    first.runner.release_all()  # its Systems stopped in order, then the lease released
    released = time.monotonic()
    # Released: free, or already taken by runner-b (it looks for free partitions every 0.2 s).
    assert rig.lease_row()[0] in (None, "runner-b")
    wait_until(lambda: second.runner.owned() == [P], 5, "runner-b claims")
    claimed = time.monotonic() - released
    wait_until(second.serving, 10, "runner-b serves")
    assert claimed <= 1.0, f"claimed {claimed:.2f} s after the release"
    assert second.position_ids() == {position_id}

    rig.price("94")
    _exited_once(rig, position_id)


def test_when_runner_crashes_with_exit_in_flight_then_successor_finds_it_by_client_id(
        rig: Rig) -> None:
    first = rig.runner("runner-a").start()
    position_id = _open_position(rig, first)
    rig.connector_down()  # the exit's updates do not reach the runners yet
    rig.price("94")
    wait_until(lambda: len(rig.venue.exits()) == 1, 20, "the exit placed at the broker")
    wait_until(lambda: rig.stored(PositionStatus.EXITING) == [(position_id, "EXITING")], 10,
               "the exit in flight stored")
    first.halt()  # crashed with its exit in flight: filled at the broker, not known here

    second = rig.runner("runner-b").start()
    wait_until(second.serving, 20, "runner-b serves the partition")
    # looked up by its client id at the start, found filled: closed, and not placed again
    wait_until(lambda: rig.stored(PositionStatus.EXITED) == [(position_id, "EXITED")], 20,
               "the exit found at the broker and applied")
    rig.connector_up()  # the fills arrive late: they change nothing
    _exited_once(rig, position_id)
    gets = [r for r in rig.venue.fake.requests
            if r.method == "GET" and f"X-{position_id}-1" in r.path]
    assert gets, "runner-b looked the exit up by its client id"


def test_when_a_fill_never_reached_the_stream_then_the_successor_reconciles_it_before_serving(
        rig: Rig) -> None:
    first = rig.runner("runner-a").start()
    wait_until(first.serving, 20, "runner-a serves the account")
    rig.connector_down()  # the account's connector is down: no update reaches JetStream
    rig.venue.enter(FUT, TxnType.BUY, 50)
    wait_until(lambda: any(o.filled_qty == 50 for o in rig.venue.exchange.orders()), 10,
               "the entry filled at the broker")
    time.sleep(0.3)
    assert first.position_ids() == set()  # runner-a never heard of it
    first.halt()  # and crashed

    second = rig.runner("runner-b").start()
    wait_until(second.serving, 20, "runner-b serves the partition")
    # served only once reconciled: the broker's order book read in, the fill applied
    assert len(second.position_ids()) == 1
    [position_id] = second.position_ids()
    reads = [r for r in rig.venue.fake.requests if r.method == "GET" and
             r.path.endswith(("/orders", "/positions"))]
    assert len(reads) >= 2, "the order book and the positions read at the takeover"
    rig.connector_up()  # the stream's late copies change nothing
    wait_until(lambda: rig.stored(PositionStatus.ACTIVE) == [(position_id, "ACTIVE")], 10,
               "the position stored ACTIVE")
    wait_until(lambda: FUT in second.systems.subscribed(), 10, "its instrument subscribed")
    rig.price("94")
    _exited_once(rig, position_id)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_log(path: Path, text: str, timeout: float) -> None:
    wait_until(lambda: text in path.read_text(errors="replace"), timeout,
               f"{text!r} in {path.name}:\n{path.read_text(errors='replace')[-3000:]}")


def test_when_runner_process_killed_then_another_serves_its_accounts(
        pg_url: str, nats_url: str, tmp_path: Path) -> None:
    """``run.py venue`` and ``run.py runner --accounts`` as a user runs them: the first runner
    trades the account, is killed (-9), and the second takes the partition over and trades on;
    both stop on SIGTERM with exit code 0, the lease released."""
    namespace, port = f"t{uuid.uuid4().hex[:10]}", _free_port()
    (tmp_path / "tracker.toml").write_text(
        "[policy]\nstop_loss_pct = 0.002\ntake_profit_pct = 0.003\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHAN_")}
    env.pop("REDIS_URL", None)
    env.update({"DATABASE_URL": pg_url, "DHAN_CLIENT_ID": CLIENT,
                "DHAN_ACCESS_TOKEN": VENUE_TOKEN, "DHAN_API_URL": f"http://127.0.0.1:{port}/v2",
                "PYTHONPATH": str(ROOT)})
    common = ["--nats", nats_url, "--namespace", namespace, "--accounts", ACCOUNT]
    started: list[subprocess.Popen[bytes]] = []
    session = SharedSession(RiskConfig().calendar)  # in market hours whatever the hour here

    def start(*args: str, log: str) -> tuple[subprocess.Popen[bytes], Path]:
        path = tmp_path / log
        with path.open("wb") as sink:
            process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, *common],
                                       cwd=tmp_path,
                                       env={**env, "DHAN_SESSION_START": session.start_now()},
                                       stdout=sink, stderr=sink)
        started.append(process)
        return process, path

    try:
        venue, venue_log = start("venue", "--port", str(port), "--entry-every", "0.5",
                                 log="venue.log")
        _wait_log(venue_log, "paper venue: DhanHQ API", 30)
        first, first_log = start("runner", "--owner", "runner-a", "--lease-seconds", "1.5",
                                 log="runner-a.log")
        _wait_log(first_log, f"serving partition {P}", 30)
        _wait_log(first_log, "placed as order", 30)  # an exit of the account's
        first.kill()
        first.wait(10)
        second, second_log = start("runner", "--owner", "runner-b", "--lease-seconds", "1.5",
                                   "--report", str(tmp_path / "runner-b.json"),
                                   log="runner-b.log")
        _wait_log(second_log, f"serving partition {P}", 30)
        _wait_log(second_log, "placed as order", 30)  # it trades on
        for process in (second, venue):
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        assert f"released partition {P}" in second_log.read_text()
        report = json.loads((tmp_path / "runner-b.json").read_text())
        assert report["owner"] == "runner-b" and report["partitions_served"] == [P]
        assert report["updates_stored"] > 0 and report["nats_reconnects_forced"] == 0
        served = report["accounts"][ACCOUNT]
        assert served["partition"] == P and served["books"].startswith("books: ")
        assert f"account {ACCOUNT}" in served["status_line"]
        assert served["reconciled"]["at"] is not None  # reconciled at its takeover
        store = open_store(pg_url, account=ACCOUNT)
        try:
            attempts = store.exit_attempts()
            exited = store.list_positions(PositionStatus.EXITED)
        finally:
            store.close()
        assert exited and attempts
        assert len({a.client_id for a in attempts}) == len(attempts)
        logs = first_log.read_text() + second_log.read_text()
        assert "past a position already closed" not in logs  # no exit filled twice
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        cleanup = JetStreamTransport(nats_url, namespace=namespace)
        cleanup.delete_stream()
        cleanup.close()


def test_a_runner_reads_the_circuit_limits_and_prices_its_exit_inside_them(rig: Rig) -> None:
    rig.venue.fake.quotes.circuits[FUT] = (Decimal("93.50"), Decimal("106.50"))
    served = rig.runner("runner-a").start()
    position_id = _open_position(rig, served)
    wait_until(lambda: served.systems.report()[ACCOUNT].get("circuits_known") == 1, 10,
               "the circuit limits read")
    rig.price("94.10")  # the stop loss; 1 % below is 93.15, past the lower circuit
    _exited_once(rig, position_id)
    [exit_order] = rig.venue.exits()
    assert exit_order.price == Decimal("93.50")  # at the circuit, not past it
    reads = [r for r in rig.venue.fake.requests if r.path.endswith("/marketfeed/quote")]
    assert len(reads) == 1  # once for the instrument, not at every step
