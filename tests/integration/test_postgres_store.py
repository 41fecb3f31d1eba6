"""What the PostgreSQL store adds to the contract: a state change is one statement that is
committed when the call returns, and calls from several threads do not queue behind one
connection (the pool)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from models.lifecycle import request_exit
from models.orders import OrderStatus
from models.position import ExitReason
from store.pg_pool import ConnectionPool
from store.ports import StoreError, StoreRefused
from store.postgres import PostgresStore
from store.records import ReceivedFrame
from tests.integration.test_store_contract import (
    T0,
    active,
    attempt,
    pending,
    rich_position,
    step,
    update,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def reader(pg_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """Another session: it sees only what was committed."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def test_a_position_and_its_fills_are_one_statement_committed_on_return(
        store: PostgresStore, reader: psycopg.Connection[tuple[Any, ...]]) -> None:
    position, fills = rich_position()
    before = store.queries
    store.save_position(position, fills)
    assert store.queries - before == 1
    row = reader.execute("SELECT version FROM positions WHERE position_id = %s",
                         (position.position_id,)).fetchone()
    assert row == (position.version,)
    assert reader.execute("SELECT count(*) FROM fills").fetchone() == (len(fills),)


def test_writing_the_same_version_again_keeps_the_fills_idempotent(
        store: PostgresStore) -> None:
    position, first = step(pending("E1"), update("E1", OrderStatus.PENDING, 30, "100.00", at=T0))
    store.save_position(position, first)
    before = store.queries
    store.save_position(position, first)  # nothing written: checked in a transaction instead
    assert store.queries - before > 1
    assert store.fills(position.position_id) == list(first)


def test_a_batch_of_frames_is_one_statement_committed_on_return(
        store: PostgresStore, reader: psycopg.Connection[tuple[Any, ...]]) -> None:
    frames = [ReceivedFrame(raw=f"frame {n}", received_at=T0 + timedelta(seconds=n),
                            order_no=f"O{n}", accepted=True) for n in range(40)]
    before = store.queries
    seqs = store.record_order_updates(frames)
    assert store.queries - before == 1
    rows = reader.execute("SELECT seq, raw FROM order_updates ORDER BY seq").fetchall()
    assert rows == [(seq, f"frame {n}") for n, seq in enumerate(seqs)]


def test_a_frame_the_server_refuses_fails_its_whole_batch(store: PostgresStore) -> None:
    frames = [ReceivedFrame(raw="fine", received_at=T0, order_no=None, accepted=True),
              ReceivedFrame(raw="a lone surrogate \ud800", received_at=T0, order_no=None,
                            accepted=False, reason="unparsable")]
    with pytest.raises(StoreRefused):
        store.record_order_updates(frames)
    assert store.order_updates() == []


def test_text_with_a_nul_is_stored_escaped_and_ordinary_text_as_is(
        store: PostgresStore, reader: psycopg.Connection[tuple[Any, ...]]) -> None:
    store.record_order_update('{"OrderNo":"E1\x00"}', T0, order_no="E1\x00", accepted=False,
                              reason="NUL in OrderNo")
    store.record_order_updates([ReceivedFrame(raw='{"OrderNo":"E2"} \\ \u2400', received_at=T0,
                                              order_no="E2", accepted=True)])
    rows = reader.execute("SELECT raw, order_no FROM order_updates ORDER BY seq").fetchall()
    assert rows == [('\u2400{"OrderNo":"E1\\0"}', "\u2400E1\\0"),
                    ('{"OrderNo":"E2"} \\ \u2400', "E2")]
    assert [u.raw for u in store.order_updates()] == ['{"OrderNo":"E1\x00"}',
                                                      '{"OrderNo":"E2"} \\ \u2400']


@pytest.mark.parametrize("order_no", ["E\x009", "\u2400E9"])
def test_a_position_whose_order_number_needs_escaping_is_saved_with_its_fills_in_one_statement(
        store: PostgresStore, order_no: str) -> None:
    position, fills = step(pending(order_no), update(order_no, OrderStatus.TRADED, 100,
                                                     "100.00", at=T0))
    before = store.queries
    store.save_position(position, fills)
    assert store.queries - before == 1
    assert store.load_position(position.position_id) == position
    assert store.fills(position.position_id) == list(fills)
    assert fills and all(f.order_no == order_no for f in fills)


@pytest.mark.parametrize("order_no", ["X\x007", "\u2400X7"])
def test_exits_whose_text_needs_escaping_are_recorded_in_one_statement_and_read_back(
        store: PostgresStore, order_no: str) -> None:
    """``record_exits``' JSON rows (``_json_values``): text escaped, enums, datetimes and
    None as one value each; what is read back is what was written."""
    position = active(order_no)
    store.save_position(position)
    after = request_exit(position, ExitReason.STOP_LOSS, T0 + timedelta(minutes=1)).position
    before = store.queries
    assert store.record_exits([(attempt(after.position_id), after)]) == {after.position_id}
    assert store.queries - before == 1
    assert store.load_position(after.position_id) == after
    assert store.exit_attempts() == [attempt(after.position_id)]


def test_a_call_waiting_on_the_database_does_not_hold_up_the_others(
        store: PostgresStore, pg_url: str) -> None:
    position = pending("E1")
    store.save_position(position)
    newer = position.model_copy(update={"version": position.version + 1})
    with psycopg.connect(pg_url) as locker:  # holds the row until its transaction ends
        locker.execute("SELECT 1 FROM positions WHERE position_id = %s FOR UPDATE",
                       (position.position_id,))
        writer = threading.Thread(target=store.save_position, args=(newer,))
        writer.start()
        try:
            wait_for_a_lock_wait(locker, pg_url)
            other = threading.Thread(target=store.record_order_update,
                                     args=("frame", T0), kwargs={"order_no": None,
                                                                 "accepted": True})
            other.start()
            other.join(timeout=10)
            assert not other.is_alive(), "a call waited for another thread's call"
            assert [u.raw for u in store.order_updates()] == ["frame"]
        finally:
            locker.rollback()
            writer.join(timeout=10)
    assert store.load_position(position.position_id) == newer
    assert store.connections >= 2


def wait_for_a_lock_wait(admin: psycopg.Connection[tuple[Any, ...]], pg_url: str) -> None:
    """Until a session of this database waits on a row lock (the writer's upsert)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(pg_url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                  "wait_event_type = 'Lock' AND pid <> %s",
                                  (admin.info.backend_pid,)).fetchone()
            if row and row[0]:
                return
    pytest.fail("the writer never reached the locked row")


# The pool ----------------------------------------------------------------------------------------
@pytest.fixture
def pool(pg_url: str) -> Iterator[ConnectionPool]:
    made = ConnectionPool(lambda: psycopg.connect(pg_url, autocommit=True), size=2, wait=0.2,
                          name="test")
    yield made
    made.close()


def test_the_pool_opens_connections_on_demand_and_reuses_them(pool: ConnectionPool) -> None:
    first = pool.take()
    second = pool.take()
    assert first.conn is not second.conn and pool.opened == 2
    pool.give(second)
    pool.give(first)
    assert pool.take() is first  # the last given back, still warm
    assert pool.opened == 2


def test_a_full_pool_refuses_after_waiting(pool: ConnectionPool) -> None:
    taken = [pool.take(), pool.take()]
    with pytest.raises(StoreError, match="busy"):
        pool.take()
    pool.give(taken.pop())
    assert pool.take() is not None


def test_a_dropped_connection_is_closed_with_the_idle_ones(pool: ConnectionPool,
                                                          pg_url: str) -> None:
    dropped, idle = pool.take(), pool.take()
    pool.give(idle)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (dropped.conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        dropped.cursor.execute("SELECT 1")
    pool.give(dropped)
    assert pool.opened == 0 and idle.conn.closed
    fresh = pool.take()
    assert fresh.cursor.execute("SELECT 1").fetchone() == (1,)


def test_a_closed_pool_refuses_and_closes_what_comes_back(pool: ConnectionPool) -> None:
    out = pool.take()
    pool.close()
    with pytest.raises(StoreError, match="closed"):
        pool.take()
    pool.give(out)
    assert out.conn.closed and pool.opened == 0


def test_filling_the_pool_opens_idle_connections_up_to_its_size(pool: ConnectionPool) -> None:
    pool.fill(5)  # more than its size of 2
    assert pool.opened == 2
    first, second = pool.take(), pool.take()
    assert first.conn is not second.conn and pool.opened == 2  # taken, not opened anew
    pool.give(first)
    pool.give(second)
    pool.fill(2)
    assert pool.opened == 2


def test_filling_a_closed_pool_opens_nothing(pool: ConnectionPool) -> None:
    pool.close()
    pool.fill(2)
    assert pool.opened == 0


def test_a_failed_connect_while_filling_keeps_what_was_opened(pg_url: str) -> None:
    calls = []

    def connect() -> psycopg.Connection[tuple[Any, ...]]:
        calls.append(1)
        if len(calls) == 2:
            raise StoreError("server went away")
        return psycopg.connect(pg_url, autocommit=True)

    made = ConnectionPool(connect, size=3, wait=0.2, name="test")
    try:
        with pytest.raises(StoreError, match="went away"):
            made.fill(3)
        assert made.opened == 1
        taken = made.take()
        assert taken.cursor.execute("SELECT 1").fetchone() == (1,)
        made.give(taken)
    finally:
        made.close()


def test_a_store_prepared_for_concurrent_callers_has_their_connections_open(
        store: PostgresStore) -> None:
    store.prepare(6)
    assert store.connections == 6
