"""The runner skeleton on the real PostgreSQL: it claims its partitions, stores their order
updates under each partition's lease before acking them, hands over on release, and stops a
partition whose lease it lost. ``run.py runner`` end to end on the real NATS JetStream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from app.runner import CurrentLease, Runner, parse_partitions, store_frames
from broker.transport.jetstream import JetStreamTransport
from broker.transport.local import LocalTransport
from models.common import Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.partitions import partition_of
from models.wire import to_dhan_frame
from store.factory import open_store
from store.leases import PostgresLeases
from store.postgres import PostgresStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "1000000001"
P = partition_of(ACCOUNT)
T0 = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)


def frame(order_no: str) -> bytes:
    return to_dhan_frame(OrderUpdate(
        order_no=order_no, status=OrderStatus.TRADED, segment=Segment.NSE_FNO,
        security_id="49081", txn_type=TxnType.BUY, product="I", quantity=50, traded_qty=50,
        avg_traded_price=Decimal("101.5"), updated_at=T0)).encode()


class Rig:
    def __init__(self, pg_url: str) -> None:
        open_store(pg_url).close()  # migrated
        self.url = pg_url
        self.transport = LocalTransport(ack_wait=0.5)
        self.leases = PostgresLeases(pg_url, lease_seconds=30.0)
        self.leases.migrate()
        self.closing: list[Callable[[], None]] = [self.leases.close]

    def runner(self, owner: str, partitions: list[int], *, share: bool = False) -> Runner:
        current = CurrentLease()
        store = PostgresStore(self.url, lease=current)
        self.closing.append(store.close)
        return Runner(self.leases, self.transport, owner=owner, partitions=partitions,
                      deliver=store_frames(store, lambda: T0), current=current,
                      claim_every=0.0, share=share)

    def owners(self) -> dict[int, str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return {int(p): str(owner) for p, owner in conn.execute(
                "SELECT partition, owner FROM partition_leases "
                "WHERE owner IS NOT NULL AND expires_at > clock_timestamp()")}

    def stored(self) -> list[str | None]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [row[0] for row in conn.execute(
                "SELECT order_no FROM order_updates ORDER BY seq")]

    def close(self) -> None:
        for close in self.closing:
            close()


@pytest.fixture
def rig(pg_url: str) -> Iterator[Rig]:
    built = Rig(pg_url)
    yield built
    built.close()


def test_when_runner_steps_then_it_claims_and_stores_updates_before_acking(rig: Rig) -> None:
    runner = rig.runner("runner-a", [P, (P + 1) % 256])
    rig.transport.publish_order_update(ACCOUNT, "m-1", frame("E1"))
    runner.step()
    assert runner.owned() == sorted([P, (P + 1) % 256])
    assert rig.stored() == ["E1"] and runner.delivered == 1
    time.sleep(0.6)  # past ack_wait: an acked update is never delivered again
    runner.step()
    assert rig.stored() == ["E1"]


def test_when_partition_held_by_another_then_runner_waits_and_takes_it_on_release(
        rig: Rig) -> None:
    first = rig.runner("runner-a", [P])
    second = rig.runner("runner-b", [P])
    first.step()
    second.step()
    assert (first.owned(), second.owned()) == ([P], [])
    first.release_all()
    rig.transport.publish_order_update(ACCOUNT, "m-2", frame("E2"))
    second.step()  # a released lease: no wait
    assert second.owned() == [P] and rig.stored() == ["E2"]


def test_when_claims_paced_then_a_free_partition_waits_for_the_next_round(rig: Rig) -> None:
    now = [0.0]
    holder = rig.runner("runner-a", [P])
    current = CurrentLease()
    paced = Runner(rig.leases, rig.transport, owner="runner-b", partitions=[P],
                   deliver=lambda partition, data: None, current=current, claim_every=2.0,
                   clock=lambda: now[0])
    holder.step()
    paced.step()
    holder.release_all()
    paced.step()
    assert paced.owned() == []  # no claim before its next round
    now[0] = 2.0
    paced.step()
    assert paced.owned() == [P]


def test_when_runners_share_then_a_joining_one_gets_half_and_a_stopping_one_leaves_all(
        rig: Rig) -> None:
    wanted = [P, (P + 1) % 256, (P + 2) % 256, (P + 3) % 256]
    first = rig.runner("runner-a", wanted, share=True)
    first.step()
    assert first.owned() == sorted(wanted)  # alone: every partition
    second = rig.runner("runner-b", wanted, share=True)
    for _ in range(6):
        second.step()
        first.step()  # over its share of two: one released a step, once the last was taken
        owners = rig.owners()
        assert {p: "runner-a" for p in first.owned()} | {p: "runner-b" for p in
                                                          second.owned()} == owners
    assert (len(first.owned()), len(second.owned())) == (2, 2)
    rig.transport.publish_order_update(ACCOUNT, "m-5", frame("E5"))
    first.release_all()
    second.step()  # its heartbeat gone first: the other's share is all of them at once
    second.step()
    assert second.owned() == sorted(wanted) and rig.stored() == ["E5"]


def test_when_lease_lost_then_partition_dropped_and_update_left_for_the_new_owner(
        rig: Rig) -> None:
    old = rig.runner("runner-a", [P])
    old.step()
    with psycopg.connect(rig.url, autocommit=True) as conn:  # runner-a paused past its lease
        conn.execute("UPDATE partition_leases SET expires_at = clock_timestamp() - "
                     "interval '1 second' WHERE partition = %s", (P,))
    assert rig.leases.claim(P, "runner-b") is not None
    rig.transport.publish_order_update(ACCOUNT, "m-3", frame("E3"))
    old.held[P].renew_at = float("inf")  # it has not noticed yet: its write is the fence
    old.step()
    assert old.owned() == [] and rig.stored() == []  # refused, nothing stored, nak'ed
    [again] = rig.transport.pull_order_updates(P, timeout=1)
    assert again.msg_id == "m-3" and again.redelivered


class SlowStart:
    """Serves a partition after a start that takes ``seconds`` (a big account's reload)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[int] = []

    def start(self, partition: int, lease: object) -> None:
        time.sleep(self.seconds)
        self.started.append(partition)

    def ready(self, partition: int, catch_up: object = None) -> None:
        pass

    def deliver(self, partition: int, deliveries: Sequence[object]) -> list[bool | None]:
        return [True] * len(deliveries)

    def stop(self, partition: int, *, lost: bool) -> None:
        pass

    def step(self) -> None:
        pass


def test_when_a_start_outlasts_the_lease_then_the_renewal_thread_keeps_it(pg_url: str) -> None:
    open_store(pg_url).close()
    leases = PostgresLeases(pg_url, lease_seconds=1.0)
    leases.migrate()
    serve = SlowStart(3.0)  # three leases long, on the runner's own thread
    runner = Runner(leases, LocalTransport(), owner="runner-slow", partitions=[P],
                    serve=serve, claim_every=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not serve.started and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a step after the start: a lapsed lease would be dropped by now
        assert serve.started == [P]
        assert runner.owned() == [P] and runner.held[P].served
        assert runner.held[P].lease.epoch == 1  # never lapsed, never claimed again
        assert leases.claim(P, "runner-other") is None  # still live in PostgreSQL
    finally:
        stop.set()
        thread.join(10)
        runner.release_all()
        leases.close()


def test_when_partitions_given_as_ranges_then_parsed() -> None:
    assert parse_partitions("0-3,7,7,255") == [0, 1, 2, 3, 7, 255]
    for bad in ("3-1", "256", "x", "-1"):
        with pytest.raises(ValueError):
            parse_partitions(bad)


def test_when_runner_command_runs_then_it_stores_updates_from_jetstream(
        pg_url: str, nats_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    publisher = JetStreamTransport(nats_url, namespace=namespace)  # a connector's side
    env = {**os.environ, "DATABASE_URL": pg_url}
    env.pop("REDIS_URL", None)
    try:
        publisher.publish_order_update(ACCOUNT, "m-1", frame("E1"))
        publisher.publish_order_update(ACCOUNT, "m-1", frame("E1"))  # a repeat: dropped
        done = subprocess.run(
            [sys.executable, "run.py", "runner", "--nats", nats_url, "--namespace", namespace,
             "--partitions", str(P), "--owner", "cli-runner", "--duration", "3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        publisher.delete_stream()
        publisher.close()
    assert done.returncode == 0, done.stderr
    assert f"claimed partition {P}" in done.stderr
    assert f"released partition {P}" in done.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:
        stored = [row[0] for row in conn.execute("SELECT order_no FROM order_updates")]
        lease = conn.execute("SELECT owner, epoch FROM partition_leases").fetchall()
    assert stored == ["E1"]
    assert lease == [(None, 1)]  # released on the way out


@pytest.mark.parametrize(("args", "expected"), [
    (["--db", "sqlite:///runner.db"], "a runner needs PostgreSQL"),
    (["--db", "postgresql://postgres@127.0.0.1:1/x", "--partitions", "300"], "--partitions"),
    (["--db", "postgresql://postgres@127.0.0.1:1/x", "--namespace", "a.b"], "--namespace"),
])
def test_when_runner_given_bad_input_then_one_line_and_exit_2(
        tmp_path: Path, args: list[str], expected: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "runner", "--nats",
                           "nats://127.0.0.1:1", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "runner.db").exists()  # refused before anything was opened


def _wait_for(path: Path, text: str, timeout: float) -> float:
    """Seconds until ``text`` appears in the log at ``path``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if text in path.read_text(errors="replace"):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path.name} after {timeout:g} s:\n"
                         f"{path.read_text(errors='replace')[-2000:]}")


def test_when_runner_paused_then_another_takes_over_and_the_resumed_one_stops_the_partition(
        pg_url: str, nats_url: str, tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "DATABASE_URL": pg_url}
    env.pop("REDIS_URL", None)

    def start(owner: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{owner}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "run.py", "runner", "--nats", nats_url, "--namespace",
                 namespace, "--partitions", str(P), "--owner", owner, "--lease-seconds", "1"],
                cwd=ROOT, env=env, stdout=sink, stderr=sink)
        return process, log

    publisher = JetStreamTransport(nats_url, namespace=namespace)
    first, first_log = start("runner-a")
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(first_log, f"claimed partition {P}", 30)
        first.send_signal(signal.SIGSTOP)  # paused past its lease
        second, second_log = start("runner-b")
        _wait_for(second_log, f"claimed partition {P}", 30)
        publisher.publish_order_update(ACCOUNT, "m-1", frame("E1"))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for _ in range(200):  # the new owner acts after claim_wait (old lease + HTTP)
                stored = [r[0] for r in conn.execute("SELECT order_no FROM order_updates")]
                if stored:
                    break
                time.sleep(0.1)
        assert stored == ["E1"]
        first.send_signal(signal.SIGCONT)
        _wait_for(first_log, f"partition {P} dropped", 30)  # its renewal was refused
        for running in (first, second):
            running.send_signal(signal.SIGTERM)
            assert running.wait(30) == 0
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert [r[0] for r in conn.execute("SELECT order_no FROM order_updates")] == ["E1"]
            assert conn.execute("SELECT owner, epoch FROM partition_leases").fetchall() == [
                (None, 2)]  # runner-b released epoch 2; runner-a's release changed nothing
    finally:
        for leftover in (first, second):
            if leftover is not None and leftover.poll() is None:
                leftover.send_signal(signal.SIGCONT)
                leftover.kill()
                leftover.wait(10)
        publisher.delete_stream()
        publisher.close()
