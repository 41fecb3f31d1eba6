"""The database's own witness of fencing (SPEC §13: "writes under a stale epoch: 0"), for the
failover rig and the tests; never installed by the product itself.

Every fenced write names its fence to its transaction (``store.leases.FENCE`` sets
``tracker.fence`` = ``"partition:epoch"``, local to the transaction). ``install`` puts a row
trigger on every table of a partition's state; for each row inserted, updated or deleted it
checks, inside the writing transaction, what the application's fence claimed against the lease
table as it stands, and records a violation in ``fence_witness``:

- ``unfenced``: written without a fence (a store without a lease, or a bug that bypassed it);
- ``stale``: the lease named has a newer epoch (another owner claimed it): the write the
  fencing exists to prevent;
- ``expired``: the lease named expired while its transaction was open (the fence's ``FOR
  SHARE`` lock still holds the next owner's claim back until the write is done, so nobody else
  wrote in between; counted apart).

``violations(url)`` counts them. The check runs on the database's clock and lease rows, not on
anything the runner believes, so it catches a write the runner's fence let through.
"""

from __future__ import annotations

from typing import Any

import psycopg

STATE_TABLES = ("positions", "fills", "order_updates", "parked_updates", "exit_attempts",
                "dead_letters", "kill_switch", "frame_marks")
"""Every table of a partition's state (``store/schema.py``)."""

_TABLE = """
CREATE TABLE IF NOT EXISTS fence_witness (
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    table_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    fence TEXT,
    verdict TEXT NOT NULL
)"""

_FUNCTION = """
CREATE OR REPLACE FUNCTION fence_witness_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    claimed TEXT := current_setting('tracker.fence', true);
    lease RECORD;
    verdict TEXT := NULL;
BEGIN
    IF claimed IS NULL OR claimed = '' THEN
        verdict := 'unfenced';
    ELSE
        SELECT epoch, expires_at INTO lease FROM partition_leases
            WHERE partition = split_part(claimed, ':', 1)::INTEGER;
        IF NOT FOUND OR lease.epoch <> split_part(claimed, ':', 2)::BIGINT THEN
            verdict := 'stale';
        ELSIF lease.expires_at <= clock_timestamp() THEN
            verdict := 'expired';
        END IF;
    END IF;
    IF verdict IS NOT NULL THEN
        INSERT INTO fence_witness (table_name, operation, fence, verdict)
            VALUES (TG_TABLE_NAME, TG_OP, claimed, verdict);
    END IF;
    RETURN NULL;
END $$"""


def install(conn: psycopg.Connection[Any]) -> None:
    """The witness on every state table of the connection's schema (the schema migrated)."""
    conn.execute(_TABLE)
    conn.execute(_FUNCTION)
    for table in STATE_TABLES:
        conn.execute(f"DROP TRIGGER IF EXISTS fence_witness ON {table}")
        conn.execute(f"CREATE TRIGGER fence_witness AFTER INSERT OR UPDATE OR DELETE ON {table} "
                     "FOR EACH ROW EXECUTE FUNCTION fence_witness_check()")


def violations(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows written per verdict (``unfenced``, ``stale``, ``expired``; absent: none)."""
    rows = conn.execute("SELECT verdict, count(*) FROM fence_witness GROUP BY verdict")
    return {str(verdict): int(count) for verdict, count in rows.fetchall()}


def installed(conn: psycopg.Connection[Any]) -> int:
    """The state tables of the connection's schema that have the witness (``len(STATE_TABLES)``
    once ``install`` ran)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = 'fence_witness' AND c.relnamespace = current_schema()::regnamespace"
    ).fetchone()
    return int(row[0]) if row is not None else 0
