"""The ``Store`` port written once in SQL; ``postgres.py`` and ``sqlite.py`` add a connection.

A backend supplies a transaction and a single statement yielding a DB-API cursor, its
placeholder style, how a Python value is bound and read back (``Decimal`` and aware
``datetime`` natively in PostgreSQL, as exact text in SQLite; text with a NUL escaped in
PostgreSQL) and its driver's exceptions, which leave as ``StoreError`` with the driver's error
as the cause, ``StoreRefused`` for those that blame the data (a value to set aside, not an
outage to wait out). ``sql_rows.py`` holds the plumbing (cursor, transaction handle, rows to
records), ``sql_text.py`` the shared SQL.

A call is one short transaction. A call that is one statement says so (``_tx(statements=1)``)
and the backend may run it alone in autocommit: PostgreSQL commits it before answering, as
durable and atomic as an explicit transaction without the ``BEGIN`` and ``COMMIT`` round trips
(SQLite keeps ``BEGIN IMMEDIATE`` for writes). Actors call from several threads; how calls
share connections is the backend's (a pool for PostgreSQL, a lock around the one SQLite
connection), never a lock on domain data.

Accounts (SPEC §13): a store serves one account (``account``, fixed when it is made). Every
row it writes carries that account, every read and update filters by it, and every key leads
with it (a position id is unique per account), so stores of several accounts on one database
never see or change each other's rows. The account is a bound parameter, not work per row.

``queries`` counts the statements sent (a row of an ``executemany`` is one; a data-modifying
``WITH`` is one, since it is one statement and one round trip), not ``BEGIN`` and ``COMMIT``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from enum import Enum
from typing import ClassVar

from loguru import logger
from pydantic import BaseModel

from models.accounts import DEFAULT_ACCOUNT, check_account
from models.closed import PlainClosed, digest, read_digest
from models.position import OPEN, Fill, Position, PositionStatus
from store.ports import StoreError, StoreRefused
from store.records import (
    DeadLetter,
    ExitAttempt,
    KillSwitch,
    ParkedUpdate,
    ReceivedFrame,
    StoredOrderUpdate,
)
from store.schema import LATEST, SCHEMA_VERSION_TABLE, TABLES, Dialect, steps_after
from store.sql_rows import (
    Clock,
    Cursor,
    R,
    Row,
    Tx,
    decode_position,
    insert_sql,
    record_values,
    records,
    utc_now,
)
from store.sql_text import (
    INSERT_ORDER_UPDATE,
    UPDATE_NEWER_POSITION,
    UPSERT_POSITION,
    check_not_stale,
    schema_version_of,
)

_OPEN_STATUSES = tuple(sorted(OPEN))
_PLAIN = frozenset({str, int, bool, type(None)})


class SqlStore:
    """Everything of the ``Store`` port but the connection; see the module docstring."""

    dialect: ClassVar[Dialect]
    driver_errors: ClassVar[tuple[type[Exception], ...]]
    refused_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """The driver's errors that blame the data, not the connection (``StoreRefused``)."""

    def __init__(self, *, safe_name: str, clock: Clock = utc_now,
                 account: str = DEFAULT_ACCOUNT) -> None:
        self.account = check_account(account)
        """The account whose rows this store reads and writes."""
        self._count_lock = threading.Lock()
        self._queries = 0
        self._clock = clock
        self._closed = False
        self.safe_name = safe_name
        """Where the data lives, safe to log (no password)."""

    # What a backend provides ------------------------------------------------------------------
    def _transaction(self, write: bool) -> AbstractContextManager[Cursor]:
        """An explicit transaction: committed when the block ends, rolled back if it raises."""
        raise NotImplementedError

    def _statement(self, write: bool) -> AbstractContextManager[Cursor]:
        """A cursor for exactly one statement, in autocommit where the backend can."""
        raise NotImplementedError

    def _save_in_one_statement(self, position: Position, fills: Sequence[Fill]) -> bool:
        """Write the position (if newer) and its fills in one statement; False when the backend
        cannot or the row was not written (then a transaction tells a repeat from a stale)."""
        return False

    def _close_connection(self) -> None:
        raise NotImplementedError

    def _insert_id(self, tx: Tx, sql: str, params: Sequence[object], key: str) -> int:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _bind(self, value: object) -> object:
        """A Python value as the driver should receive it; a backend extends this."""
        if type(value) in _PLAIN:  # most values: one set lookup instead of the checks below
            return value
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError(f"{self.safe_name}: a naive datetime cannot be stored: {value}")
        return value

    def _read(self, row: Row) -> Row:
        """A row before it becomes a record: a backend undoes what ``_bind`` did to text."""
        return row

    def _describe(self, error: Exception) -> str:
        return f"{self.safe_name}: {type(error).__name__}: {error}"

    # Plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, *, write: bool = True, statements: int | None = None) -> Iterator[Tx]:
        """A transaction; ``statements=1`` for a call that is one statement (autocommit)."""
        if self._closed:
            raise StoreError(f"{self.safe_name}: the store is closed")
        tx: Tx | None = None
        try:
            with self._transaction(write) if statements is None else self._statement(write) \
                    as cursor:
                tx = Tx(cursor, self._sql, self._bind, limit=statements)
                yield tx
        except self.refused_errors as error:
            raise StoreRefused(self._describe(error)) from error
        except self.driver_errors as error:
            raise StoreError(self._describe(error)) from error
        except UnicodeError as error:  # text the driver cannot encode (a lone surrogate)
            raise StoreRefused(self._describe(error)) from error
        finally:
            if tx is not None:
                with self._count_lock:
                    self._queries += tx.count

    @property
    def queries(self) -> int:
        return self._queries

    def prepare(self, concurrency: int) -> None:
        return None

    def close(self) -> None:
        with self._count_lock:
            if self._closed:
                return
            self._closed = True
        self._close_connection()

    # Schema ------------------------------------------------------------------------------------
    def migrate(self) -> None:
        with self._tx() as tx:
            if self.dialect.migration_lock:
                tx.run(self.dialect.migration_lock)
            tx.run(self.dialect.render(SCHEMA_VERSION_TABLE))
            current = schema_version_of(tx)
            if current > LATEST:
                raise StoreError(f"{self.safe_name}: schema version {current} is newer than "
                                 f"this program's {LATEST}; upgrade the program")
            for version, steps in steps_after(current):
                for step in steps:  # rows from before accounts become this store's account's
                    tx.run(self.dialect.render(step, self.account))
                tx.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                       (version, self._clock()))
                logger.bind(store=self.safe_name).info("schema migrated to version {}", version)

    def schema_version(self) -> int:
        with self._tx(write=False) as tx:
            if tx.one(self.dialect.table_exists, ("schema_version",)) is None:
                return 0
            return schema_version_of(tx)

    # Positions and fills ----------------------------------------------------------------------
    def save_position(self, position: Position, fills: Sequence[Fill] = ()) -> None:
        if self._save_in_one_statement(position, fills):
            return
        with self._tx() as tx:
            if not tx.run(UPSERT_POSITION, self._position_row(position)).rowcount:
                check_not_stale(tx, self.account, position)
            tx.many(insert_sql("fills", Fill, conflict="ON CONFLICT DO NOTHING"),
                    [record_values(self.account, fill) for fill in fills])

    def save_positions(self, positions: Sequence[Position]) -> None:
        latest = newest_of_each(positions)
        with self._tx() as tx:
            rows = [self._position_row(p) for p in latest]
            if tx.many(UPSERT_POSITION, rows) < len(rows):
                for position in latest:
                    check_not_stale(tx, self.account, position)

    def save_marks(self, positions: Sequence[Position]) -> set[str]:
        """One statement per position, in one transaction (one commit); a backend may do it
        in one statement."""
        latest = newest_of_each(positions)
        if not latest:
            return set()
        with self._tx() as tx:
            return {p.position_id for p in latest if tx.run(UPDATE_NEWER_POSITION, (
                *self._position_row(p)[2:], self.account, p.position_id, p.version)
            ).rowcount > 0}

    def _position_row(self, p: Position) -> tuple[object, ...]:
        return (self.account, p.position_id, p.entry_order_no, p.segment, p.security_id, p.side,
                p.status, p.version, p.created_at, p.opened_at, p.exited_at, self._clock(),
                p.model_dump_json(), digest(p))

    def load_position(self, position_id: str) -> Position | None:
        with self._tx(write=False, statements=1) as tx:
            row = tx.one("SELECT data FROM positions WHERE account = ? AND position_id = ?",
                         (self.account, position_id))
        return None if row is None else decode_position(row[0])

    def load_open_positions(self) -> list[Position]:
        marks = ", ".join("?" for _ in _OPEN_STATUSES)
        return self._positions(f"AND status IN ({marks})", _OPEN_STATUSES)

    def open_instruments(self) -> set[tuple[str, str]]:
        """(segment, security id) of every open position, in one query (what a price feed
        subscribes)."""
        marks = ", ".join("?" for _ in _OPEN_STATUSES)
        with self._tx(write=False, statements=1) as tx:
            rows = tx.all(f"SELECT DISTINCT segment, security_id FROM positions "
                          f"WHERE account = ? AND status IN ({marks})",
                          (self.account, *_OPEN_STATUSES))
        return {(str(segment), str(security)) for segment, security in rows}

    def list_positions(self, status: PositionStatus | None = None, *,
                       exited_since: datetime | None = None) -> list[Position]:
        where, params = ("", ()) if status is None else ("AND status = ?", (status,))
        if exited_since is not None:
            where, params = f"{where} AND exited_at >= ?", (*params, exited_since)
        return self._positions(where, params)

    def closed_between(self, since: datetime, until: datetime
                       ) -> tuple[list[Position], list[PlainClosed]]:
        """Positions exited at ``since`` or later and before ``until``, oldest first: whole,
        and those stored plain as their digests (``models.closed``), one query."""
        with self._tx(write=False, statements=1) as tx:
            rows = tx.all("SELECT position_id, closed_plain, "
                          "CASE WHEN closed_plain IS NULL THEN data END FROM positions "
                          "WHERE account = ? AND status = ? AND exited_at >= ? "
                          "AND exited_at < ? ORDER BY created_at, position_id",
                          (self.account, PositionStatus.EXITED, since, until))
        whole: list[Position] = []
        plain: list[PlainClosed] = []
        for position_id, text, data in rows:
            if text is None:
                whole.append(decode_position(data))
                continue
            try:
                plain.append(read_digest(str(position_id), text))
            except ValueError as error:
                raise StoreError(f"a stored position is unreadable: {error}") from error
        return whole, plain

    def _positions(self, where: str, params: Sequence[object]) -> list[Position]:
        with self._tx(write=False, statements=1) as tx:
            rows = tx.all(f"SELECT data FROM positions WHERE account = ? {where} "
                          "ORDER BY created_at, position_id", (self.account, *params))
        return [decode_position(row[0]) for row in rows]

    def fills(self, position_id: str) -> list[Fill]:
        return self._select(Fill, "fills", "AND position_id = ? ORDER BY id", (position_id,))

    # Raw order updates and parking -------------------------------------------------------------
    def record_order_update(self, raw: str, received_at: datetime, *, order_no: str | None,
                            accepted: bool, reason: str | None = None) -> int:
        values = (self.account, received_at, order_no, accepted, reason, raw)
        with self._tx(statements=1) as tx:
            return self._insert_id(tx, INSERT_ORDER_UPDATE, values, "seq")

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        """One statement per frame in one transaction; a backend may do it in one statement."""
        with self._tx() as tx:
            return [self._insert_id(tx, INSERT_ORDER_UPDATE, (
                self.account, f.received_at, f.order_no, f.accepted, f.reason, f.raw), "seq")
                for f in frames]

    def order_updates(self, since: datetime | None = None, *,
                      after: int = 0) -> list[StoredOrderUpdate]:
        if since is None:
            return self._select(StoredOrderUpdate, "order_updates",
                                "AND seq > ? ORDER BY seq", (after,))
        return self._select(StoredOrderUpdate, "order_updates",
                            "AND received_at >= ? AND seq > ? ORDER BY seq", (since, after))

    def frames_mark(self) -> int:
        with self._tx(write=False, statements=1) as tx:
            row = tx.one("SELECT applied_through FROM frame_marks WHERE account = ?",
                         (self.account,))
        return 0 if row is None else int(self._read(row)[0])

    def mark_frames(self, through: int) -> None:
        with self._tx(statements=1) as tx:
            tx.run("INSERT INTO frame_marks (account, applied_through, marked_at) "
                   "VALUES (?, ?, ?) ON CONFLICT (account) DO UPDATE SET "
                   "applied_through = excluded.applied_through, marked_at = excluded.marked_at "
                   "WHERE frame_marks.applied_through < excluded.applied_through",
                   (self.account, through, self._clock()))

    def park_update(self, order_no: str, raw: str, parked_at: datetime) -> None:
        self._insert(ParkedUpdate(order_no=order_no, parked_at=parked_at, raw=raw),
                     "parked_updates")

    def take_parked(self, order_no: str, *,
                    refile_at: datetime | None = None) -> list[ParkedUpdate]:
        with self._tx() as tx:
            rows = tx.all("SELECT id, order_no, parked_at, raw FROM parked_updates "
                          "WHERE account = ? AND order_no = ? ORDER BY id",
                          (self.account, order_no))
            if rows:  # by id, so an update parked meanwhile by another process stays
                tx.run("DELETE FROM parked_updates WHERE account = ? AND order_no = ? "
                       "AND id <= ?", (self.account, order_no, rows[-1][0]))
            taken = records(ParkedUpdate, [self._read(row[1:]) for row in rows])
            for item in taken if refile_at is not None else ():
                self._insert_id(tx, INSERT_ORDER_UPDATE, (
                    self.account, refile_at, item.order_no, True, "unparked", item.raw), "seq")
        return taken

    def parked_updates(self) -> list[ParkedUpdate]:
        return self._select(ParkedUpdate, "parked_updates", "ORDER BY id")

    # Exits -------------------------------------------------------------------------------------
    def record_exit_attempt(self, attempt: ExitAttempt) -> bool:
        return self._insert(attempt, "exit_attempts", conflict="ON CONFLICT DO NOTHING")

    def record_exit(self, attempt: ExitAttempt, position: Position) -> bool:
        recorded = self._record_exit_in_one_statement(attempt, position)
        if recorded is not None:
            return recorded
        with self._tx() as tx:
            recorded = tx.run(insert_sql("exit_attempts", ExitAttempt,
                                         conflict="ON CONFLICT DO NOTHING"),
                              record_values(self.account, attempt)).rowcount > 0
            written = tx.run(UPSERT_POSITION, self._position_row(position)).rowcount > 0
        if not written:  # a repeat, or stale: save_position tells (the attempt stays stored)
            self.save_position(position)
        return recorded

    def record_exits(self, exits: Sequence[tuple[ExitAttempt, Position]]) -> set[str]:
        """Two statements per exit in one transaction (one commit); a backend may do it in
        one statement."""
        attempts = list({a.client_id: a for a, _ in exits}.values())
        latest = newest_of_each([p for _, p in exits])
        if not latest:
            return set()
        insert = insert_sql("exit_attempts", ExitAttempt, conflict="ON CONFLICT DO NOTHING")
        with self._tx() as tx:
            for attempt in attempts:
                tx.run(insert, record_values(self.account, attempt))
            return {p.position_id for p in latest
                    if tx.run(UPSERT_POSITION, self._position_row(p)).rowcount > 0}

    def _record_exit_in_one_statement(self, attempt: ExitAttempt,
                                      position: Position) -> bool | None:
        """Both writes of ``record_exit`` in one statement: whether the attempt was new, or
        None when the backend cannot or the position row was not written (``save_position``
        then tells a repeat from a stale write)."""
        return None

    def update_exit_attempt(self, client_id: str, *, order_no: str | None = None,
                            outcome: str | None = None) -> None:
        with self._tx(statements=1) as tx:
            tx.run("UPDATE exit_attempts SET order_no = COALESCE(?, order_no), "
                   "outcome = COALESCE(?, outcome) WHERE account = ? AND client_id = ?",
                   (order_no, outcome, self.account, client_id))

    def exit_attempts(self, position_id: str | None = None) -> list[ExitAttempt]:
        order = "ORDER BY requested_at, position_id, attempt"
        if position_id is None:
            return self._select(ExitAttempt, "exit_attempts", order)
        return self._select(ExitAttempt, "exit_attempts", f"AND position_id = ? {order}",
                            (position_id,))

    # Supervision and portfolio -----------------------------------------------------------------
    def record_dead_letter(self, letter: DeadLetter) -> None:
        self._insert(letter, "dead_letters")

    def dead_letters(self) -> list[DeadLetter]:
        return self._select(DeadLetter, "dead_letters", "ORDER BY id")

    def latch_kill_switch(self, state: KillSwitch) -> None:
        with self._tx(statements=1) as tx:
            tx.run("INSERT INTO kill_switch (account, latched_at, reason, day_pnl) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT (account) DO NOTHING",
                   (self.account, state.latched_at, state.reason, state.day_pnl))

    def kill_switch(self) -> KillSwitch | None:
        found = self._select(KillSwitch, "kill_switch", "")
        return found[0] if found else None

    def reset_kill_switch(self) -> bool:
        with self._tx(statements=1) as tx:
            return tx.run("DELETE FROM kill_switch WHERE account = ?",
                          (self.account,)).rowcount > 0

    def counts(self) -> Mapping[str, int]:
        """This account's rows per table."""
        sql = " UNION ALL ".join(f"SELECT '{t}', COUNT(*) FROM {t} WHERE account = ?"
                                 for t in TABLES)
        with self._tx(write=False, statements=1) as tx:
            return {str(name): int(count)
                    for name, count in tx.all(sql, [self.account] * len(TABLES))}

    # Records <-> rows --------------------------------------------------------------------------
    def _insert(self, record: BaseModel, table: str, *, conflict: str = "") -> bool:
        with self._tx(statements=1) as tx:
            sql = insert_sql(table, type(record), conflict)
            return tx.run(sql, record_values(self.account, record)).rowcount > 0

    def _select(self, model: type[R], table: str, tail: str,
                params: Sequence[object] = ()) -> list[R]:
        """This account's rows of ``table``; ``tail`` goes on from ``WHERE account = ?`` (more
        conditions starting with ``AND``, an ``ORDER BY``)."""
        with self._tx(write=False, statements=1) as tx:
            rows = tx.all(f"SELECT {', '.join(model.model_fields)} FROM {table} "
                          f"WHERE account = ? {tail}", (self.account, *params))
        return records(model, [self._read(row) for row in rows])


def newest_of_each(positions: Sequence[Position]) -> list[Position]:
    """The highest version of each position, in the order they first appear."""
    latest: dict[str, Position] = {}
    for position in positions:
        kept = latest.get(position.position_id)
        if kept is None or kept.version < position.version:
            latest[position.position_id] = position
    return list(latest.values())
