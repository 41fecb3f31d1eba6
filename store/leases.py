"""Partition leases with fencing on PostgreSQL (SPEC §13): one owner per partition, and a writer
that lost its lease changes nothing.

One row per partition in ``partition_leases`` (made here, not by the store's migrations: leases
exist only on PostgreSQL and only where runners share it; a single-process run never creates
the table). Every time is the server's ``clock_timestamp()``, so runners' clocks never decide
who owns what.

- ``claim``: a free, released or expired lease is taken with ``epoch + 1``; a live one of
  another owner is refused. It runs in one transaction that locks the row ``FOR UPDATE`` and
  only then reads the clock and the owner.
- ``fenced(lease)``: a transaction whose first statement locks the row ``FOR SHARE`` where the
  owner, the epoch and the expiry still match, and raises ``LeaseLost`` when none does (so a
  write under a stale epoch changes 0 rows). The lock modes are the point: the takeover's
  ``FOR UPDATE`` conflicts with every writer's ``FOR SHARE``, so it waits for the old owner's
  open write to commit (or roll back), and the new owner reads the partition's state after it.
  (Both halves matter: a writer's ``FOR KEY SHARE`` lets the plain ``UPDATE`` of a claim
  through; ``tests/integration/test_leases.py`` fails with that pair.) Writers share the lock,
  so they never wait for each other, and renewals (an ``UPDATE``) wait only for writes.
- A writer paused inside its transaction (SIGSTOP, a long GC) would hold the takeover forever:
  every connection here sets ``idle_in_transaction_session_timeout`` to ``write_idle_timeout``,
  so the server ends such a session, its write rolls back, and the takeover goes on.
- Heartbeats (``runner_heartbeats``, one row per runner): ``beat`` keeps a runner live for a
  lease, ``leave`` removes it at a graceful stop; ``survey`` reads in one go the free partitions
  and how many runners are live, for the fair share (``models.partitions.plan_share``).
- ``claim_wait``: a new owner that took over a lapsed lease waits until the old lease's expiry
  plus the HTTP timeout before it acts, so an exit order the old owner checked its lease for
  and was still sending has reached the broker or failed; it then looks the order up by client
  id instead of sending it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from models.partitions import PARTITIONS
from store.pg_pool import Connection, ConnectionPool
from store.ports import Lease, LeaseLost, StoreError, Survey
from store.schema import POSTGRES
from store.urls import redact_text, redact_url

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS partition_leases (
    partition INTEGER PRIMARY KEY CHECK (partition >= 0 AND partition < 256),
    owner TEXT,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL
)"""
assert PARTITIONS == 256, "the table's CHECK names the partition count"
CREATE_HEARTBEATS = """
CREATE TABLE IF NOT EXISTS runner_heartbeats (
    owner TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
)"""

_ENSURE_ROW = (
    "INSERT INTO partition_leases (partition, owner, epoch, expires_at, claimed_at) "
    "VALUES (%s, NULL, 0, clock_timestamp(), clock_timestamp()) ON CONFLICT DO NOTHING")
_LOCK_FOR_TAKEOVER = "SELECT 1 FROM partition_leases WHERE partition = %s FOR UPDATE"
# Read after the lock is held, so the clock is read after any writer that held it committed.
_READ = ("SELECT owner, epoch, expires_at, expires_at > clock_timestamp() "
         "FROM partition_leases WHERE partition = %s")
# The clock is read once per statement (``now``), so a lease lasts exactly its length.
_TAKE = (
    "UPDATE partition_leases SET owner = %s, epoch = %s, claimed_at = now.t, "
    "expires_at = now.t + make_interval(secs => %s) "
    "FROM (SELECT clock_timestamp() AS t) AS now WHERE partition = %s "
    "RETURNING expires_at, claimed_at")
_RENEW = (
    "UPDATE partition_leases SET claimed_at = now.t, "
    "expires_at = now.t + make_interval(secs => %s) "
    "FROM (SELECT clock_timestamp() AS t) AS now "
    "WHERE partition = %s AND owner = %s AND epoch = %s AND expires_at > now.t "
    "RETURNING expires_at, claimed_at")
_RELEASE = (
    "UPDATE partition_leases SET owner = NULL, expires_at = clock_timestamp() "
    "WHERE partition = %s AND owner = %s AND epoch = %s AND expires_at > clock_timestamp()")
# Never claimed (no row), released (no owner) or expired: what ``claim`` would take.
_FREE = (
    "SELECT p FROM unnest(%s::integer[]) AS p "
    "LEFT JOIN partition_leases AS l ON l.partition = p "
    "WHERE l.partition IS NULL OR l.owner IS NULL OR l.expires_at <= clock_timestamp() "
    "ORDER BY p")
_LIVE_RUNNERS = "SELECT count(*) FROM runner_heartbeats WHERE expires_at > clock_timestamp()"
_BEAT = (
    "INSERT INTO runner_heartbeats (owner, expires_at) "
    "VALUES (%s, clock_timestamp() + make_interval(secs => %s)) "
    "ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at")
_FORGET = "DELETE FROM runner_heartbeats WHERE expires_at < clock_timestamp() - interval '1 day'"
_LEAVE = "DELETE FROM runner_heartbeats WHERE owner = %s"
# The fence also names itself to the transaction (``tracker.fence`` = "partition:epoch", local
# to it) for the database's own check of every row written (``store/witness.py``).
FENCE = (
    "SELECT epoch, set_config('tracker.fence', partition || ':' || epoch, true) "
    "FROM partition_leases WHERE partition = %s AND owner = %s AND epoch = %s "
    "AND expires_at > clock_timestamp() FOR SHARE")


def claim_wait(lease: Lease, http_timeout: float) -> float:
    """Seconds from the claim until the lapsed owner's last send is over (0 when there was
    none: the partition was free or released)."""
    if lease.previous_expiry is None:
        return 0.0
    left = (lease.previous_expiry - lease.claimed_at).total_seconds() + http_timeout
    return max(0.0, left)


def hold_fence(cursor: Any, lease: Lease) -> None:
    """Inside an open transaction: lock ``lease``'s row ``FOR SHARE`` or raise ``LeaseLost``
    (for a store that fences its own transactions with the same rule)."""
    cursor.execute(FENCE, (lease.partition, lease.owner, lease.epoch))
    if cursor.fetchone() is None:
        raise LeaseLost(lease.partition, lease.epoch)


class PostgresLeases:
    """``PostgresLeases(url, lease_seconds=6, http_timeout=5)``; ``migrate()`` once, then
    ``claim`` / ``renew`` / ``release`` / ``fenced`` from any thread (a small pool)."""

    def __init__(self, url: str, *, lease_seconds: float = 6.0, http_timeout: float = 5.0,
                 write_idle_timeout: float = 2.0, pool_size: int = 4,
                 connect_timeout: int = 5) -> None:
        if lease_seconds <= 0 or write_idle_timeout <= 0:
            raise ValueError("a lease and the idle-write timeout are positive")
        self._url = url
        self._safe_name = redact_url(url)
        self._lease_seconds = lease_seconds
        self._http_timeout = http_timeout
        self._idle_ms = max(1, round(write_idle_timeout * 1000))
        self._connect_timeout = connect_timeout
        self._pool = ConnectionPool(self._connect, size=pool_size, wait=30.0,
                                    name=self._safe_name)
        self._pool.open_one()

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    @property
    def http_timeout(self) -> float:
        return self._http_timeout

    def migrate(self) -> None:
        with self._tx() as cur:
            # Runners started together: ``CREATE TABLE IF NOT EXISTS`` side by side can both
            # try to create it (a duplicate-key error on the catalogue), so one at a time.
            lock = POSTGRES.migration_lock
            assert lock is not None
            cur.execute(lock)
            cur.execute(CREATE_TABLE)
            cur.execute(CREATE_HEARTBEATS)

    def close(self) -> None:
        self._pool.close()

    def claim(self, partition: int, owner: str) -> Lease | None:
        if not 0 <= partition < PARTITIONS:
            raise ValueError(f"partition {partition} is outside 0..{PARTITIONS - 1}")
        sent = time.monotonic()
        with self._tx() as cur:
            cur.execute(_ENSURE_ROW, (partition,))
            cur.execute(_LOCK_FOR_TAKEOVER, (partition,))
            cur.execute(_READ, (partition,))
            held_by, epoch, expires_at, live = cur.fetchone()
            if live and held_by is not None and held_by != owner:
                return None
            keep = live and held_by == owner
            new_epoch = int(epoch) if keep else int(epoch) + 1
            cur.execute(_TAKE, (owner, new_epoch, self._lease_seconds, partition))
            new_expiry, claimed_at = cur.fetchone()
        lapsed: datetime | None = expires_at if held_by is not None and not keep else None
        return Lease(partition=partition, owner=owner, epoch=new_epoch, expires_at=new_expiry,
                     claimed_at=claimed_at, deadline=sent + self._lease_seconds,
                     previous_expiry=lapsed)

    def renew(self, lease: Lease) -> Lease:
        sent = time.monotonic()
        with self._tx() as cur:
            cur.execute(_RENEW, (self._lease_seconds, lease.partition, lease.owner, lease.epoch))
            row = cur.fetchone()
        if row is None:
            raise LeaseLost(lease.partition, lease.epoch, "renewal")
        return Lease(partition=lease.partition, owner=lease.owner, epoch=lease.epoch,
                     expires_at=row[0], claimed_at=row[1],
                     deadline=sent + self._lease_seconds,
                     previous_expiry=lease.previous_expiry)

    def release(self, lease: Lease) -> bool:
        with self._tx() as cur:
            cur.execute(_RELEASE, (lease.partition, lease.owner, lease.epoch))
            return bool(cur.rowcount == 1)

    def free(self, partitions: Sequence[int]) -> list[int]:
        wanted = sorted(set(partitions))
        if not wanted:
            return []
        with self._tx() as cur:
            cur.execute(_FREE, (wanted,))
            return [int(row[0]) for row in cur.fetchall()]

    def survey(self, partitions: Sequence[int]) -> Survey:
        wanted = sorted(set(partitions))
        with self._tx() as cur:
            cur.execute(_LIVE_RUNNERS)
            runners = int(cur.fetchone()[0])
            free: tuple[int, ...] = ()
            if wanted:
                cur.execute(_FREE, (wanted,))
                free = tuple(int(row[0]) for row in cur.fetchall())
        return Survey(free=free, runners=max(1, runners))

    def beat(self, owner: str) -> None:
        with self._tx() as cur:
            cur.execute(_BEAT, (owner, self._lease_seconds))
            cur.execute(_FORGET)

    def leave(self, owner: str) -> None:
        with self._tx() as cur:
            cur.execute(_LEAVE, (owner,))

    def claim_wait(self, lease: Lease) -> float:
        return claim_wait(lease, self._http_timeout)

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[Any]:
        with self._tx() as cur:
            hold_fence(cur, lease)
            yield cur

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction on a pooled connection; a driver error becomes a ``StoreError``
        (``LeaseLost`` and the caller's own exceptions pass through, rolled back)."""
        pooled = self._pool.take()
        try:
            with pooled.conn.transaction():
                yield pooled.cursor
        except psycopg.Error as error:
            raise StoreError(redact_text(f"{self._safe_name}: {error}", self._url)) from error
        finally:
            self._pool.give(pooled)

    def _connect(self) -> Connection:
        try:
            timeout = conninfo_to_dict(self._url).get("connect_timeout", self._connect_timeout)
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=timeout)
        except psycopg.Error as error:
            raise StoreError(redact_text(f"{self._safe_name}: {error}", self._url)) from error
        # A writer paused inside a fenced transaction must not hold a takeover for longer.
        conn.execute(f"SET idle_in_transaction_session_timeout = {self._idle_ms}")
        return conn
