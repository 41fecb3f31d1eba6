"""The embedded store on SQLite (stdlib ``sqlite3``), the default when no database URL is set.

Text is stored as is (SQLite holds any character, a NUL too). Exact decimals are stored as text
and aware datetimes as ISO-8601 text in UTC with microseconds, so they read back exactly and
text order is time order. The connection runs in autocommit mode so that every transaction is
an explicit ``BEGIN``: ``BEGIN IMMEDIATE`` for a write takes the write lock up front, so two
processes on one file wait (``timeout``) instead of failing to upgrade a read lock; a read that
is one statement runs without ``BEGIN``. WAL lets a reader (``run.py positions``) run beside a
writer.

One connection serves every thread, so a lock serialises its use (it guards the connection,
not domain data, and is held for one short transaction).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from models.accounts import DEFAULT_ACCOUNT
from store.ports import StoreError
from store.schema import SQLITE
from store.sql import SqlStore
from store.sql_rows import Clock, Cursor, Tx, utc_now

MEMORY = ":memory:"


class SqliteStore(SqlStore):
    """``SqliteStore("data/tracker.sqlite3")``; the parent directory is created if missing."""

    dialect = SQLITE
    driver_errors = (sqlite3.Error,)
    refused_errors = (sqlite3.DataError, sqlite3.IntegrityError)

    def __init__(self, path: str | Path, *, clock: Clock = utc_now, timeout: float = 5.0,
                 account: str = DEFAULT_ACCOUNT) -> None:
        self.path = Path(path)
        super().__init__(safe_name=f"sqlite:{self.path}", clock=clock, account=account)
        self._lock = threading.Lock()
        try:
            if str(path) != MEMORY:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                                         isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(self._describe(error)) from error
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as error:
            self._conn.close()
            raise StoreError(self._describe(error)) from error

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        with self._cursor() as cursor:
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cursor
                cursor.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cursor.execute("ROLLBACK")
                raise

    def _statement(self, write: bool) -> AbstractContextManager[Cursor]:
        # A write keeps BEGIN IMMEDIATE: alone in autocommit, a statement's read snapshot could
        # go stale before it takes the write lock (SQLITE_BUSY_SNAPSHOT, not retried) when
        # another process writes the file. A read needs no transaction of its own.
        return self._transaction(write=True) if write else self._cursor()

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    def _close_connection(self) -> None:
        with self._lock:
            self._conn.close()

    def _insert_id(self, tx: Tx, sql: str, params: Sequence[object], key: str) -> int:
        # lastrowid rather than RETURNING, which needs SQLite 3.35 (some Python builds have less).
        cursor = tx.run(sql, params)
        rowid = cursor.lastrowid if isinstance(cursor, sqlite3.Cursor) else None
        if rowid is None:
            raise StoreError(f"{self.safe_name}: INSERT returned no {key}")
        return rowid

    def _bind(self, value: object) -> object:
        value = super()._bind(value)
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        return value
