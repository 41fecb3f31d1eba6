"""The store's schema as versioned migrations, one list of SQL steps per version.

The steps are written once for both backends; the few types that differ are placeholders
filled in by a ``Dialect``:

- ``{ts}``   a timezone-aware instant: ``TIMESTAMPTZ`` in PostgreSQL; in SQLite ISO-8601 text
             with an offset, always written in UTC with microseconds so text order is time order;
- ``{dec}``  an exact decimal: ``NUMERIC`` in PostgreSQL; ``TEXT`` in SQLite (a ``NUMERIC``
             column there would turn ``182.35`` into a float);
- ``{id}``   an ever-increasing surrogate key (never reused, so it orders rows by insertion);
- ``{bool}`` a boolean;
- ``{account}`` the account that rows stored before accounts existed belong to, as an SQL
             string literal (``Dialect.render``'s ``account``; a checked id, never user text).

A released version is never edited: a change is a new version appended to ``MIGRATIONS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from models.accounts import DEFAULT_ACCOUNT, check_account

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at {ts} NOT NULL
)"""

_V1: tuple[str, ...] = (
    """
    CREATE TABLE positions (
        position_id TEXT PRIMARY KEY,
        entry_order_no TEXT NOT NULL UNIQUE,
        segment TEXT NOT NULL,
        security_id TEXT NOT NULL,
        side TEXT NOT NULL,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at {ts} NOT NULL,
        opened_at {ts},
        exited_at {ts},
        updated_at {ts} NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX positions_status ON positions (status)",
    # The unique key makes a re-applied fill a no-op; position_id leads so it also serves
    # "the fills of one position".
    """
    CREATE TABLE fills (
        id {id},
        position_id TEXT NOT NULL,
        order_no TEXT NOT NULL,
        role TEXT NOT NULL,
        cum_qty BIGINT NOT NULL,
        qty BIGINT NOT NULL,
        price {dec} NOT NULL,
        at {ts},
        UNIQUE (position_id, order_no, cum_qty)
    )""",
    """
    CREATE TABLE order_updates (
        seq {id},
        received_at {ts} NOT NULL,
        order_no TEXT,
        accepted {bool} NOT NULL,
        reason TEXT,
        raw TEXT NOT NULL
    )""",
    """
    CREATE TABLE parked_updates (
        id {id},
        order_no TEXT NOT NULL,
        parked_at {ts} NOT NULL,
        raw TEXT NOT NULL
    )""",
    "CREATE INDEX parked_updates_order_no ON parked_updates (order_no)",
    """
    CREATE TABLE exit_attempts (
        position_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        client_id TEXT NOT NULL UNIQUE,
        reason TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        requested_at {ts} NOT NULL,
        order_no TEXT,
        outcome TEXT,
        PRIMARY KEY (position_id, attempt)
    )""",
    """
    CREATE TABLE dead_letters (
        id {id},
        recorded_at {ts} NOT NULL,
        actor TEXT NOT NULL,
        message_type TEXT NOT NULL,
        message_id TEXT,
        correlation_id TEXT,
        causation_id TEXT,
        position_id TEXT,
        error TEXT NOT NULL,
        payload TEXT NOT NULL
    )""",
    # One row at most: the latch. Its presence is the latched state.
    """
    CREATE TABLE kill_switch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        latched_at {ts} NOT NULL,
        reason TEXT NOT NULL,
        day_pnl {dec}
    )""",
)

_V2: tuple[str, ...] = (
    # The frames of the current exchange day are read again at every start-up
    # (``Store.order_updates(since)``): a range of the index, not a scan of every day's.
    "CREATE INDEX order_updates_received_at ON order_updates (received_at)",
)

def _rebuilt(table: str, create: str, columns: str, *, order: str = "") -> tuple[str, ...]:
    """Steps that rebuild ``table`` with an account column leading its keys (neither backend
    can change a primary key or unique constraint in place in the same SQL): create the new
    table, copy every row into it under ``{account}``, drop the old, rename the new."""
    return (create.format(table=f"{table}_v3"),
            f"INSERT INTO {table}_v3 (account, {columns}) "
            f"SELECT {{account}}, {columns} FROM {table} {order}",
            f"DROP TABLE {table}",
            f"ALTER TABLE {table}_v3 RENAME TO {table}")


_POSITION_COLUMNS = ("position_id, entry_order_no, segment, security_id, side, status, version, "
                     "created_at, opened_at, exited_at, updated_at, data")
# Accounts (SPEC §13): every row carries its account, and every key that identified a row
# within the one account of a process leads with it now: a position id (made from its entry
# order's number) is unique per account, not globally, so two accounts' paper exchanges may
# number their orders alike. Rows stored before are the account's that migrates.
_V3: tuple[str, ...] = (
    *_rebuilt("positions", """
    CREATE TABLE {table} (
        account TEXT NOT NULL,
        position_id TEXT NOT NULL,
        entry_order_no TEXT NOT NULL,
        segment TEXT NOT NULL,
        security_id TEXT NOT NULL,
        side TEXT NOT NULL,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at {{ts}} NOT NULL,
        opened_at {{ts}},
        exited_at {{ts}},
        updated_at {{ts}} NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (account, position_id),
        UNIQUE (account, entry_order_no)
    )""", _POSITION_COLUMNS),
    "CREATE INDEX positions_status ON positions (account, status)",
    # The fills get new ids, in the order of the old ones (nothing refers to a fill's id).
    *_rebuilt("fills", """
    CREATE TABLE {table} (
        id {{id}},
        account TEXT NOT NULL,
        position_id TEXT NOT NULL,
        order_no TEXT NOT NULL,
        role TEXT NOT NULL,
        cum_qty BIGINT NOT NULL,
        qty BIGINT NOT NULL,
        price {{dec}} NOT NULL,
        at {{ts}},
        UNIQUE (account, position_id, order_no, cum_qty)
    )""", "position_id, order_no, role, cum_qty, qty, price, at", order="ORDER BY id"),
    *_rebuilt("exit_attempts", """
    CREATE TABLE {table} (
        account TEXT NOT NULL,
        position_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        requested_at {{ts}} NOT NULL,
        order_no TEXT,
        outcome TEXT,
        PRIMARY KEY (account, position_id, attempt),
        UNIQUE (account, client_id)
    )""", "position_id, attempt, client_id, reason, quantity, requested_at, order_no, outcome"),
    # One row per account at most: its latch.
    *_rebuilt("kill_switch", """
    CREATE TABLE {table} (
        account TEXT PRIMARY KEY,
        latched_at {{ts}} NOT NULL,
        reason TEXT NOT NULL,
        day_pnl {{dec}}
    )""", "latched_at, reason, day_pnl"),
    # Rows only ever appended keep their table (and their sequence numbers); the store always
    # writes the account, the default only fills the rows stored before.
    "ALTER TABLE order_updates ADD COLUMN account TEXT NOT NULL DEFAULT {account}",
    "DROP INDEX order_updates_received_at",
    "CREATE INDEX order_updates_received_at ON order_updates (account, received_at)",
    "ALTER TABLE parked_updates ADD COLUMN account TEXT NOT NULL DEFAULT {account}",
    "DROP INDEX parked_updates_order_no",
    "CREATE INDEX parked_updates_order_no ON parked_updates (account, order_no)",
    "ALTER TABLE dead_letters ADD COLUMN account TEXT NOT NULL DEFAULT {account}",
)

# How far the stored frames are applied (``Store.mark_frames``): a start-up routes again only
# the frames after an account's mark, not every frame of the day.
# A start-up reads the positions exited since the day began (``list_positions(exited_since=)``)
# and the frames after the mark: ranges of indexes, not every exit the account ever made nor
# every frame of its day.
_V4: tuple[str, ...] = (
    "CREATE INDEX positions_exited_at ON positions (account, exited_at)",
    "CREATE INDEX order_updates_account_seq ON order_updates (account, seq)",
    """
    CREATE TABLE frame_marks (
        account TEXT PRIMARY KEY,
        applied_through BIGINT NOT NULL,
        marked_at {ts} NOT NULL
    )""",
)

# A plain closed position's digest beside it (``models.closed.digest``; NULL for every other
# position, and for those stored before): a start reads these few fields, not whole positions.
_V5: tuple[str, ...] = (
    "ALTER TABLE positions ADD COLUMN closed_plain TEXT",
)

MIGRATIONS: Mapping[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}
"""Version → the SQL steps that bring the schema from the previous version to it."""

LATEST = max(MIGRATIONS)

TABLES = ("positions", "fills", "order_updates", "parked_updates", "exit_attempts",
          "dead_letters", "kill_switch", "frame_marks")
"""The tables ``Store.counts()`` reports on."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends' SQL."""

    name: str
    types: Mapping[str, str]
    table_exists: str
    """A query with one parameter (a table name) returning a row when the table exists."""
    migration_lock: str | None = None
    """A statement run first in the migration transaction so two processes do not race."""

    def render(self, statement: str, account: str = DEFAULT_ACCOUNT) -> str:
        """``statement`` in this dialect; ``account`` (a checked account id) fills
        ``{account}``."""
        return statement.format_map({**self.types,
                                     "account": "'" + check_account(account) + "'"})


POSTGRES = Dialect(
    name="postgresql",
    types={"ts": "TIMESTAMPTZ", "dec": "NUMERIC", "id": "BIGSERIAL PRIMARY KEY",
           "bool": "BOOLEAN"},
    # to_regclass follows search_path, so a schema chosen by the URL is honoured.
    table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    migration_lock="SELECT pg_advisory_xact_lock(7251001)",
)

SQLITE = Dialect(
    name="sqlite",
    types={"ts": "TEXT", "dec": "TEXT", "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
           "bool": "INTEGER"},
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    # BEGIN IMMEDIATE already holds the write lock for the whole migration.
    migration_lock=None,
)


def steps_after(current: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations still to apply to a schema at version ``current``, in order."""
    return [(version, MIGRATIONS[version]) for version in sorted(MIGRATIONS) if version > current]
