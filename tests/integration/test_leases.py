"""Partition leases on the real PostgreSQL: one owner per partition, epochs that fence stale
writers, and a takeover that waits for the old owner's open write (the lock modes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from store.leases import PostgresLeases, claim_wait
from store.ports import Lease, LeaseLost, StoreError

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def make_leases(pg_url: str) -> Iterator[Callable[..., PostgresLeases]]:
    opened: list[PostgresLeases] = []

    def make(**options: Any) -> PostgresLeases:
        options.setdefault("lease_seconds", 30.0)
        leases = PostgresLeases(pg_url, **options)
        leases.migrate()
        opened.append(leases)
        return leases

    yield make
    for leases in opened:
        leases.close()


@pytest.fixture
def leases(make_leases: Callable[..., PostgresLeases]) -> PostgresLeases:
    return make_leases(http_timeout=5.0)


@pytest.fixture
def admin(pg_url: str, leases: PostgresLeases) -> Iterator[Conn]:
    """Another session: expires leases, reads what was committed."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (partition INTEGER, body TEXT)")
        yield conn


def expire(admin: Conn, partition: int) -> None:
    admin.execute("UPDATE partition_leases SET expires_at = clock_timestamp() - "
                  "interval '1 second' WHERE partition = %s", (partition,))


def notes(admin: Conn) -> list[str]:
    return [row[0] for row in admin.execute("SELECT body FROM notes ORDER BY body")]


def mine(lease: Lease | None) -> Lease:
    assert lease is not None
    return lease


def test_when_free_partition_claimed_then_epoch_one_until_server_expiry(
        leases: PostgresLeases) -> None:
    before = time.monotonic()
    lease = mine(leases.claim(7, "runner-a"))
    assert (lease.partition, lease.owner, lease.epoch) == (7, "runner-a", 1)
    assert lease.expires_at - lease.claimed_at == timedelta(seconds=30)
    assert lease.previous_expiry is None and leases.claim_wait(lease) == 0
    # the local deadline is measured from before the claim was sent: never after the server's
    assert before <= lease.deadline - 30 <= time.monotonic()


def test_when_live_lease_of_another_then_claim_refused(leases: PostgresLeases) -> None:
    mine(leases.claim(1, "runner-a"))
    assert leases.claim(1, "runner-b") is None


def test_when_owner_claims_again_then_same_epoch_extended(leases: PostgresLeases) -> None:
    first = mine(leases.claim(2, "runner-a"))
    again = mine(leases.claim(2, "runner-a"))
    assert again.epoch == first.epoch == 1
    assert again.expires_at > first.expires_at and again.previous_expiry is None


def test_when_expired_lease_claimed_then_epoch_bumped_and_new_owner_waits(
        leases: PostgresLeases, admin: Conn) -> None:
    mine(leases.claim(3, "runner-a"))
    expire(admin, 3)
    taken = mine(leases.claim(3, "runner-b"))
    assert (taken.owner, taken.epoch) == ("runner-b", 2)
    assert taken.previous_expiry is not None and taken.previous_expiry < taken.claimed_at
    waited = leases.claim_wait(taken)
    expected = (taken.previous_expiry - taken.claimed_at).total_seconds() + 5.0
    assert waited == pytest.approx(expected) and 3.9 < waited <= 5.0


def test_when_lease_released_then_next_owner_takes_new_epoch_at_once(
        leases: PostgresLeases) -> None:
    lease = mine(leases.claim(4, "runner-a"))
    assert leases.release(lease) is True
    taken = mine(leases.claim(4, "runner-b"))
    assert taken.epoch == 2 and taken.previous_expiry is None
    assert leases.claim_wait(taken) == 0


def test_free_names_what_a_claim_would_take_never_claimed_released_or_expired(
        leases: PostgresLeases, admin: Conn) -> None:
    held = mine(leases.claim(10, "runner-a"))
    released = mine(leases.claim(11, "runner-a"))
    assert leases.release(released)
    mine(leases.claim(12, "runner-a"))
    expire(admin, 12)
    # 13 was never claimed: it has no row yet.
    assert leases.free([13, 12, 11, 10, 10]) == [11, 12, 13]
    assert leases.free([10]) == [] and leases.free([]) == []
    assert leases.renew(held).epoch == held.epoch  # a look takes no lock and changes nothing


def test_survey_counts_live_runners_by_heartbeat_and_names_the_free_partitions(
        make_leases: Callable[..., PostgresLeases], admin: Conn) -> None:
    leases = make_leases(lease_seconds=30.0)
    assert leases.survey([1]).runners == 1  # none beat yet: a runner counts itself
    leases.beat("runner-a")
    leases.beat("runner-b")
    leases.beat("runner-a")  # once per runner however often it beats
    mine(leases.claim(1, "runner-a"))
    survey = leases.survey([3, 2, 1])
    assert (survey.free, survey.runners) == ((2, 3), 2)
    leases.leave("runner-b")  # a graceful stop
    assert leases.survey([]).runners == 1
    short = make_leases(lease_seconds=0.2)
    short.beat("runner-c")  # a heartbeat lasts a lease: then the runner counts no more
    assert short.survey([]).runners == 2
    time.sleep(0.3)
    assert short.survey([]).runners == 1


def test_when_claim_wait_computed_then_old_expiry_plus_http_timeout() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    lease = Lease(partition=0, owner="b", epoch=2, expires_at=at + timedelta(seconds=6),
                  claimed_at=at, deadline=0.0, previous_expiry=at - timedelta(seconds=1))
    assert claim_wait(lease, http_timeout=5.0) == 4.0
    assert claim_wait(lease, http_timeout=0.5) == 0.0
    free = Lease(partition=0, owner="b", epoch=1, expires_at=at, claimed_at=at, deadline=0.0)
    assert claim_wait(free, http_timeout=5.0) == 0.0


def test_when_live_lease_renewed_then_extended_same_epoch(leases: PostgresLeases) -> None:
    lease = mine(leases.claim(5, "runner-a"))
    renewed = leases.renew(lease)
    assert renewed.epoch == lease.epoch and renewed.expires_at > lease.expires_at
    assert renewed.deadline > lease.deadline


def test_when_lease_taken_over_then_renewal_and_release_refused(
        leases: PostgresLeases, admin: Conn) -> None:
    old = mine(leases.claim(6, "runner-a"))
    expire(admin, 6)
    new = mine(leases.claim(6, "runner-b"))
    with pytest.raises(LeaseLost):
        leases.renew(old)
    assert leases.release(old) is False
    assert leases.renew(new).owner == "runner-b"  # the new owner is untouched


def test_when_lease_expired_unclaimed_then_renewal_refused(
        leases: PostgresLeases, admin: Conn) -> None:
    lease = mine(leases.claim(8, "runner-a"))
    expire(admin, 8)
    with pytest.raises(LeaseLost):
        leases.renew(lease)
    assert mine(leases.claim(8, "runner-a")).epoch == 2  # coming back is a new epoch


def test_when_written_under_live_lease_then_committed(
        leases: PostgresLeases, admin: Conn) -> None:
    lease = mine(leases.claim(9, "runner-a"))
    with leases.fenced(lease) as cur:
        cur.execute("INSERT INTO notes VALUES (9, 'fenced')")
    assert notes(admin) == ["fenced"]


def test_when_written_under_stale_epoch_then_lease_lost_and_nothing_changed(
        leases: PostgresLeases, admin: Conn) -> None:
    old = mine(leases.claim(10, "runner-a"))
    expire(admin, 10)
    mine(leases.claim(10, "runner-b"))
    with pytest.raises(LeaseLost) as lost, leases.fenced(old) as cur:
        cur.execute("INSERT INTO notes VALUES (10, 'stale')")
    assert (lost.value.partition, lost.value.epoch) == (10, 1)
    assert notes(admin) == []


def test_when_written_after_expiry_then_refused_even_unclaimed(
        leases: PostgresLeases, admin: Conn) -> None:
    lease = mine(leases.claim(11, "runner-a"))
    expire(admin, 11)
    with pytest.raises(LeaseLost), leases.fenced(lease) as cur:
        cur.execute("INSERT INTO notes VALUES (11, 'late')")
    assert notes(admin) == []


def test_when_old_owner_writing_then_takeover_waits_for_its_commit(
        make_leases: Callable[..., PostgresLeases], admin: Conn) -> None:
    old_runner = make_leases(lease_seconds=0.5)
    new_runner = make_leases(lease_seconds=30.0)
    lease = mine(old_runner.claim(12, "runner-a"))
    in_write, finish = threading.Event(), threading.Event()

    def write() -> None:
        with old_runner.fenced(lease) as cur:
            cur.execute("INSERT INTO notes VALUES (12, 'old owner')")
            in_write.set()
            finish.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert in_write.wait(5)
    time.sleep(0.7)  # the old lease has expired; its write is still open
    with ThreadPoolExecutor(1) as pool:
        takeover = pool.submit(new_runner.claim, 12, "runner-b")
        time.sleep(0.5)
        assert not takeover.done(), "a takeover must wait for the old owner's open write"
        finish.set()
        taken = mine(takeover.result(timeout=10))
    writer.join(5)
    assert taken.epoch == 2
    assert notes(admin) == ["old owner"]  # committed before the new owner took over
    with pytest.raises(LeaseLost), old_runner.fenced(lease):
        pass


def test_when_writer_paused_in_transaction_then_server_ends_it_and_takeover_goes_on(
        make_leases: Callable[..., PostgresLeases], admin: Conn) -> None:
    old_runner = make_leases(lease_seconds=0.3, write_idle_timeout=0.5)
    new_runner = make_leases(lease_seconds=30.0)
    lease = mine(old_runner.claim(13, "runner-a"))
    with pytest.raises(StoreError), old_runner.fenced(lease) as cur:
        cur.execute("INSERT INTO notes VALUES (13, 'paused')")
        time.sleep(1.0)  # paused past write_idle_timeout: the server ends the session
        started = time.monotonic()
        taken = mine(new_runner.claim(13, "runner-b"))
        assert time.monotonic() - started < 5.0  # without the idle limit: blocked for good
    assert taken.epoch == 2
    assert notes(admin) == []  # the paused write rolled back with its session


def test_when_runners_race_for_a_partition_then_exactly_one_wins(
        make_leases: Callable[..., PostgresLeases]) -> None:
    runners = [make_leases() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        won = list(pool.map(lambda n: runners[n].claim(14, f"runner-{n}"), range(4)))
    assert sum(lease is not None for lease in won) == 1


def test_when_partitions_differ_then_owners_independent(leases: PostgresLeases) -> None:
    a = mine(leases.claim(0, "runner-a"))
    b = mine(leases.claim(255, "runner-b"))
    assert (a.epoch, b.epoch) == (1, 1)
    with pytest.raises(ValueError):
        leases.claim(256, "runner-a")
    leases.migrate()  # safe again at every start
    assert leases.claim(0, "runner-b") is None


def test_when_runners_start_together_on_a_new_database_then_each_migration_succeeds(
        pg_url: str) -> None:
    """Several runners started at once each make the lease table if it is missing: one at a
    time (side by side, PostgreSQL's catalogue refuses the second CREATE with a duplicate)."""
    made = [PostgresLeases(pg_url) for _ in range(6)]
    start = threading.Barrier(len(made))

    def migrate(leases: PostgresLeases) -> None:
        start.wait(10)
        leases.migrate()

    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(migrate, made))  # re-raises any failure
        assert made[0].claim(7, "runner-a") is not None
    finally:
        for leases in made:
            leases.close()
