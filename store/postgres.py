"""The store on PostgreSQL through psycopg 3: a small pool of autocommit connections.

A call that is one statement runs as that statement alone: PostgreSQL commits it before it
answers, so it is durable when the call returns, in one round trip instead of three (``BEGIN``,
the statement, ``COMMIT``). A call of several statements opens an explicit transaction. A
position and its fills are written by one statement (a data-modifying ``WITH``), the common
case of every state change; only when that statement changes nothing (the same write again, or
a stale one) does the store fall back to the transaction that tells the two apart.

Decimals go to ``NUMERIC`` and aware datetimes to ``TIMESTAMPTZ`` natively and come back as
``Decimal`` and aware ``datetime``. Text, which PostgreSQL cannot hold with a NUL in it, goes
through ``pg_text.escape_nul`` (every bound string, and the strings of the frames and fills sent
as JSON) and comes back through ``unescape_nul``: a frame with a NUL is stored, exactly, and
ordinary text is stored as is. A connection the server dropped is replaced on the next
call, so a database restart costs the calls made while it was down (each a ``StoreError``),
not the process.

Fenced (scale-out, SPEC §13): a store made with ``lease=`` (a callable giving the partition's
current ``Lease``) runs every write, one statement or several, in a transaction that first
holds the lease row ``FOR SHARE`` (``store.leases.hold_fence``): under a lost lease it raises
``LeaseLost`` and writes nothing, and a takeover waits for it. It costs the ``BEGIN``, the
fence and the ``COMMIT`` on every write. Reads are not fenced. Its connections end a
transaction left idle for ``write_idle_timeout`` (a paused runner), as the leases' do;
``on_lease_lost`` hears of every refused write (the runner stops the partition). Without a
lease (a single process) nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

import psycopg
from psycopg.conninfo import conninfo_to_dict

from models.accounts import DEFAULT_ACCOUNT
from models.position import Fill, Position
from store.leases import hold_fence
from store.pg_pool import Connection, ConnectionPool
from store.pg_text import MARK, escape_nul, unescape_nul
from store.ports import Lease, LeaseLost, StoreError
from store.records import ExitAttempt, ReceivedFrame
from store.schema import POSTGRES
from store.sql import SqlStore, newest_of_each
from store.sql_rows import Clock, Cursor, Row, Tx, insert_sql, record_values, utc_now
from store.sql_text import POSITION_COLUMNS, UPSERT_POSITION
from store.urls import redact_text, redact_url

_FILL_TYPES = {"position_id": "text", "order_no": "text", "role": "text", "cum_qty": "bigint",
               "qty": "bigint", "price": "numeric", "at": "timestamptz"}
assert list(_FILL_TYPES) == list(Fill.model_fields), "the fills columns changed"
_FILL_COLUMNS = ", ".join(_FILL_TYPES)
# The fills travel as one JSON array (decimals as exact strings, times in ISO-8601 with their
# offset), so the text is the same for any number of fills and is prepared once per connection.
# They are inserted only when the position row was written (``FROM pos``): a refused write
# keeps its fills out, as the transaction does; they take the account of the row written.
_SAVE_POSITION = (
    f"WITH pos AS ({UPSERT_POSITION} RETURNING account), "
    f"new_fills AS (INSERT INTO fills (account, {_FILL_COLUMNS}) SELECT pos.account, f.* "
    "FROM pos, "
    f"json_to_recordset(?::json) AS f({', '.join(f'{c} {t}' for c, t in _FILL_TYPES.items())}) "
    "ON CONFLICT DO NOTHING) "
    "SELECT count(*) FROM pos")
# An exit's intent and the EXITING position it belongs to, in one statement (one commit).
_RECORD_EXIT = (
    f"WITH attempt AS ({insert_sql('exit_attempts', ExitAttempt, 'ON CONFLICT DO NOTHING')} "
    f"RETURNING 1), pos AS ({UPSERT_POSITION} RETURNING 1) "
    "SELECT (SELECT count(*) FROM attempt), (SELECT count(*) FROM pos)")
# Positions whose stop tightened (``save_marks``) as one JSON array: one statement, one commit,
# whatever their number; each row replaces only an older version.
_MARK_TYPES = {"account": "text", "position_id": "text", "entry_order_no": "text",
               "segment": "text", "security_id": "text", "side": "text", "status": "text",
               "version": "bigint",
               "created_at": "timestamptz", "opened_at": "timestamptz",
               "exited_at": "timestamptz", "updated_at": "timestamptz", "data": "text",
               "closed_plain": "text"}
assert tuple(_MARK_TYPES) == POSITION_COLUMNS, "the positions columns changed"
_SAVE_MARKS = (
    "UPDATE positions AS p SET "
    + ", ".join(f"{c} = r.{c}" for c in list(_MARK_TYPES)[2:])
    + " FROM json_to_recordset(?::json) AS r("
    + ", ".join(f"{c} {t}" for c, t in _MARK_TYPES.items())
    + ") WHERE p.account = r.account AND p.position_id = r.position_id "
    "AND p.version < r.version RETURNING p.position_id")
# Many exits (``record_exits``) as two JSON arrays, their attempts and their positions: one
# statement, one commit, whatever their number; a position row replaces only an older version.
_ATTEMPT_TYPES = {"account": "text", "position_id": "text", "attempt": "integer",
                  "client_id": "text", "reason": "text", "quantity": "bigint",
                  "requested_at": "timestamptz", "order_no": "text", "outcome": "text"}
assert list(_ATTEMPT_TYPES) == ["account", *ExitAttempt.model_fields], "exit_attempts changed"
_RECORD_EXITS = (
    f"WITH attempts AS (INSERT INTO exit_attempts ({', '.join(_ATTEMPT_TYPES)}) "
    "SELECT a.* FROM json_to_recordset(?::json) AS a("
    + ", ".join(f"{c} {t}" for c, t in _ATTEMPT_TYPES.items())
    + ") ON CONFLICT DO NOTHING), "
    f"pos AS (INSERT INTO positions ({', '.join(_MARK_TYPES)}) "
    "SELECT r.* FROM json_to_recordset(?::json) AS r("
    + ", ".join(f"{c} {t}" for c, t in _MARK_TYPES.items())
    + ") " + UPSERT_POSITION[UPSERT_POSITION.index("ON CONFLICT"):]
    + " RETURNING position_id) SELECT position_id FROM pos")
# Frames as one JSON array, so the text (and its plan) is the same for any number of them; the
# ordinality keeps their order, so their sequence numbers follow the order they came in.
_RECORD_FRAMES = (
    "INSERT INTO order_updates (account, received_at, order_no, accepted, reason, raw) "
    "SELECT CAST(? AS text), f.received_at, f.order_no, f.accepted, f.reason, f.raw "
    "FROM ROWS FROM ("
    "json_to_recordset(?::json) AS (received_at timestamptz, order_no text, accepted boolean, "
    "reason text, raw text)) WITH ORDINALITY AS f(received_at, order_no, accepted, reason, raw, n) "
    "ORDER BY f.n RETURNING seq")


def _escaped(value: object) -> object:
    return escape_nul(value) if isinstance(value, str) else value


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` → ``%s``, once per statement text (psycopg then caches its own parse of it)."""
    return sql.replace("?", "%s")


class PostgresStore(SqlStore):
    """``PostgresStore("postgresql://user:pw@host/db")``; the URL may choose a schema with
    ``?options=-csearch_path%3Dname``. Connects at once, so a bad URL fails at start-up;
    opens more connections (up to ``pool_size``) when threads call at the same time, or ahead
    of time with ``prepare``."""

    dialect = POSTGRES
    driver_errors = (psycopg.Error,)
    refused_errors = (psycopg.DataError, psycopg.IntegrityError)

    def __init__(self, url: str, *, clock: Clock = utc_now, connect_timeout: int = 5,
                 pool_size: int = 12, pool_wait: float = 30.0,
                 lease: Callable[[], Lease] | None = None,
                 on_lease_lost: Callable[[LeaseLost], None] | None = None,
                 write_idle_timeout: float = 2.0, account: str = DEFAULT_ACCOUNT) -> None:
        super().__init__(safe_name=redact_url(url), clock=clock, account=account)
        self._url = url
        self._lease = lease
        self._on_lease_lost = on_lease_lost
        self._idle_ms = max(1, round(write_idle_timeout * 1000))
        self._connect_timeout = connect_timeout
        self._pool = ConnectionPool(self._connect, size=pool_size, wait=pool_wait,
                                    name=self.safe_name)
        self._pool.open_one()

    @property
    def connections(self) -> int:
        """Connections open now (for tests and status views)."""
        return self._pool.opened

    def prepare(self, concurrency: int) -> None:
        """Open connections up to ``concurrency`` (at most the pool's size) now: opening one
        costs several milliseconds, which a burst of exits on as many threads should not pay."""
        self._pool.fill(concurrency)

    def _connect(self) -> Connection:
        try:
            # connect_timeout bounds the wait for an unreachable server; the URL's own wins.
            timeout = conninfo_to_dict(self._url).get("connect_timeout", self._connect_timeout)
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=timeout)
            if self._lease is not None:  # a paused fenced write must not hold a takeover
                conn.execute(f"SET idle_in_transaction_session_timeout = {self._idle_ms}")
            return conn
        except psycopg.Error as error:
            raise StoreError(self._describe(error)) from error

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        pooled = self._pool.take()
        try:
            with pooled.conn.transaction():
                if write and self._lease is not None:
                    hold_fence(pooled.cursor, self._lease())
                yield pooled.cursor
        except LeaseLost as lost:
            if self._on_lease_lost is not None:  # the runner stops the partition at once
                self._on_lease_lost(lost)
            raise
        finally:
            self._pool.give(pooled)

    @contextmanager
    def _statement(self, write: bool) -> Iterator[Cursor]:
        if write and self._lease is not None:  # the fence and the write commit together
            with self._transaction(write) as cursor:
                yield cursor
            return
        pooled = self._pool.take()
        try:
            yield pooled.cursor
        finally:
            self._pool.give(pooled)

    def _close_connection(self) -> None:
        self._pool.close()

    def _save_in_one_statement(self, position: Position, fills: Sequence[Fill]) -> bool:
        rows = f"[{','.join(fill.model_dump_json() for fill in fills)}]"
        if "\\u0000" in rows or MARK in rows:  # rare: text to escape, as _bind does
            rows = json.dumps([{k: _escaped(v) for k, v in fill.model_dump(mode="json").items()}
                               for fill in fills], ensure_ascii=False)
        with self._tx(statements=1) as tx:
            row = tx.one(_SAVE_POSITION, (*self._position_row(position), rows))
        return row is not None and int(row[0]) > 0

    def _record_exit_in_one_statement(self, attempt: ExitAttempt,
                                      position: Position) -> bool | None:
        with self._tx(statements=1) as tx:
            row = tx.one(_RECORD_EXIT, (*record_values(self.account, attempt),
                                        *self._position_row(position)))
        if row is None:
            raise StoreError(f"{self.safe_name}: recording an exit returned no row")
        recorded = int(row[0]) > 0
        if int(row[1]) > 0:
            return recorded
        self.save_position(position)  # not written: a repeat, or raises as stale
        return recorded

    def save_marks(self, positions: Sequence[Position]) -> set[str]:
        """One statement, so one commit for every position of the batch."""
        latest = newest_of_each(positions)
        if not latest:
            return set()
        rows = json.dumps([dict(zip(_MARK_TYPES, map(self._json_value, self._position_row(p)),
                                    strict=True)) for p in latest], ensure_ascii=False)
        with self._tx(statements=1) as tx:
            written = tx.all(_SAVE_MARKS, (rows,))
        return {str(self._read(row)[0]) for row in written}

    def record_exits(self, exits: Sequence[tuple[ExitAttempt, Position]]) -> set[str]:
        """One statement, so one commit for every exit of the batch."""
        attempts = list({a.client_id: a for a, _ in exits}.values())
        latest = newest_of_each([p for _, p in exits])
        if not latest:
            return set()
        attempt_rows = json.dumps([dict(zip(_ATTEMPT_TYPES, map(
            self._json_value, record_values(self.account, a)), strict=True)) for a in attempts],
            ensure_ascii=False)
        rows = json.dumps([dict(zip(_MARK_TYPES, map(self._json_value, self._position_row(p)),
                                    strict=True)) for p in latest], ensure_ascii=False)
        with self._tx(statements=1) as tx:
            written = tx.all(_RECORD_EXITS, (attempt_rows, rows))
        return {str(self._read(row)[0]) for row in written}

    def _json_value(self, value: object) -> object:
        """A bound value as the JSON of ``_SAVE_MARKS`` carries it."""
        value = self._bind(value)
        return self._iso(value) if isinstance(value, datetime) else value

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        """One statement, so one commit for the whole batch."""
        if not frames:
            return []
        rows = json.dumps([{"received_at": self._iso(f.received_at),
                            "order_no": _escaped(f.order_no), "accepted": f.accepted,
                            "reason": _escaped(f.reason), "raw": escape_nul(f.raw)}
                           for f in frames], ensure_ascii=False)
        with self._tx(statements=1) as tx:
            found = tx.all(_RECORD_FRAMES, (self.account, rows))
        if len(found) != len(frames):
            raise StoreError(f"{self.safe_name}: {len(found)} frames stored of {len(frames)}")
        return sorted(int(row[0]) for row in found)

    def _iso(self, at: datetime) -> str:
        self._bind(at)  # refuses a naive datetime
        return at.isoformat()

    def _insert_id(self, tx: Tx, sql: str, params: Sequence[object], key: str) -> int:
        row = tx.one(f"{sql} RETURNING {key}", params)
        if row is None:
            raise StoreError(f"{self.safe_name}: INSERT returned no {key}")
        return int(row[0])

    def _sql(self, sql: str) -> str:
        return _placeholders(sql)

    def _bind(self, value: object) -> object:
        if type(value) is str:
            return escape_nul(value)
        return super()._bind(value)

    def _read(self, row: Row) -> Row:
        return tuple(unescape_nul(v) if type(v) is str else v for v in row)

    def _describe(self, error: Exception) -> str:
        return redact_text(super()._describe(error), self._url)
