"""The PostgreSQL store under a partition lease: every write is fenced by the lease's epoch, so a
runner that lost its partition changes nothing; without a lease the store is as it was."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest

from models.common import exit_client_id
from models.position import ExitReason
from store import witness
from store.leases import PostgresLeases
from store.ports import Lease, LeaseLost
from store.postgres import PostgresStore
from store.records import ExitAttempt, KillSwitch, ReceivedFrame
from tests.integration.test_store_contract import T0, active, exiting, pending

pytestmark = pytest.mark.integration


class Holder:
    """The runner's side: the newest lease of its partition (renewals replace it)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def __call__(self) -> Lease:
        return self.lease


@pytest.fixture
def leases(pg_url: str) -> Iterator[PostgresLeases]:
    opened = PostgresLeases(pg_url, lease_seconds=30.0)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def holder(leases: PostgresLeases) -> Holder:
    lease = leases.claim(42, "runner-a")
    assert lease is not None
    return Holder(lease)


@pytest.fixture
def store(pg_url: str, holder: Holder) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url, lease=holder)
    opened.migrate()  # a fenced store's every write needs the live lease, its migration too
    yield opened
    opened.close()


def take_over(pg_url: str, leases: PostgresLeases) -> Lease:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE partition_leases SET expires_at = clock_timestamp() - "
                     "interval '1 second' WHERE partition = 42")
    taken = leases.claim(42, "runner-b")
    assert taken is not None
    return taken


def attempt(position_id: str) -> ExitAttempt:
    return ExitAttempt(position_id=position_id, attempt=1,
                       client_id=exit_client_id(position_id, 1), reason=ExitReason.STOP_LOSS,
                       quantity=100, requested_at=T0 + timedelta(minutes=5))


def test_when_lease_live_then_fenced_writes_stored(store: PostgresStore) -> None:
    position = active("E1")
    store.save_position(position)
    store.record_order_update("{}", T0, order_no="E1", accepted=True)
    assert store.load_position(position.position_id) == position
    assert store.counts()["order_updates"] == 1


def test_when_lease_taken_over_then_every_write_refused_and_nothing_changed(
        store: PostgresStore, pg_url: str, leases: PostgresLeases) -> None:
    before = active("E2")
    store.save_position(before)
    take_over(pg_url, leases)
    after = exiting("E2")
    writes: list[Callable[[], object]] = [
        lambda: store.save_position(after),
        lambda: store.save_positions([after]),
        lambda: store.save_marks([after]),
        lambda: store.record_exit(attempt(after.position_id), after),
        lambda: store.record_exit_attempt(attempt(after.position_id)),
        lambda: store.record_order_update("{}", T0, order_no="E2", accepted=True),
        lambda: store.record_order_updates([ReceivedFrame(raw="{}", received_at=T0,
                                                          order_no="E2", accepted=True)]),
        lambda: store.park_update("E9", "{}", T0),
        lambda: store.latch_kill_switch(KillSwitch(latched_at=T0, reason="loss")),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            write()
    assert store.load_position(before.position_id) == before  # reads still work
    assert store.exit_attempts() == [] and store.order_updates() == []
    assert store.parked_updates() == [] and store.kill_switch() is None


def test_when_lease_renewed_then_writes_go_on(
        store: PostgresStore, holder: Holder, leases: PostgresLeases) -> None:
    holder.lease = leases.renew(holder.lease)
    store.save_position(pending("E3"))
    assert store.load_position(pending("E3").position_id) is not None


def test_when_new_owner_writes_then_it_sees_the_old_owners_last_write(
        store: PostgresStore, pg_url: str, leases: PostgresLeases) -> None:
    store.save_position(active("E4"))
    taken = take_over(pg_url, leases)
    successor = PostgresStore(pg_url, lease=Holder(taken))
    try:
        reloaded = successor.load_position(active("E4").position_id)
        assert reloaded == active("E4")
        successor.save_position(exiting("E4"))
        assert successor.load_position(reloaded.position_id) == exiting("E4")
    finally:
        successor.close()


def test_when_no_lease_then_one_statement_writes_as_before(pg_url: str) -> None:
    plain = PostgresStore(pg_url)
    try:
        plain.migrate()
        before = plain.queries
        plain.save_position(active("E5"))
        assert plain.queries - before == 1  # one statement, autocommit: no fence, no BEGIN
        assert plain.load_position(active("E5").position_id) == active("E5")
    finally:
        plain.close()


def test_when_fenced_write_paused_then_server_ends_it_and_takeover_goes_on(pg_url: str) -> None:
    short = PostgresLeases(pg_url, lease_seconds=0.3)
    short.migrate()
    lease = short.claim(43, "runner-a")
    assert lease is not None
    paused = PostgresStore(pg_url, lease=Holder(lease), write_idle_timeout=0.5)
    try:
        with pytest.raises(psycopg.Error), paused._transaction(write=True):
            time.sleep(1.0)  # paused holding the fence, past its lease and the idle timeout
            started = time.monotonic()
            taken = short.claim(43, "runner-b")
            assert taken is not None and time.monotonic() - started < 5.0
    finally:
        paused.close()
        short.close()


def test_fence_witness_sees_fenced_writes_pass_and_flags_unfenced_and_stale_ones(
        pg_url: str, store: PostgresStore, leases: PostgresLeases) -> None:
    """The database's own check of every row written (``store/witness.py``, the failover rig's
    count of writes under a stale epoch): quiet for fenced writes, and able to see the two
    writes fencing forbids."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert witness.installed(conn) == 0
        witness.install(conn)
        assert witness.installed(conn) == len(witness.STATE_TABLES)
    store.save_position(active("E1"))
    store.record_order_update("{}", T0, order_no="E1", accepted=True)
    store.record_exit(attempt("PE2"), exiting("E2"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert witness.violations(conn) == {}  # every row written under its live fence

    unfenced = PostgresStore(pg_url)
    try:
        unfenced.record_order_update("{}", T0, order_no="E3", accepted=True)
    finally:
        unfenced.close()
    old_epoch = take_over(pg_url, leases).epoch - 1
    with psycopg.connect(pg_url) as conn:  # a write that claims the old epoch's fence
        conn.execute("SELECT set_config('tracker.fence', %s, true)", (f"42:{old_epoch}",))
        conn.execute("UPDATE positions SET version = version")
        conn.commit()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert witness.violations(conn) == {"unfenced": 1, "stale": 2}
