"""The store on PostgreSQL through psycopg 3: one connection, one short transaction per call.

Decimals go to ``NUMERIC`` and aware datetimes to ``TIMESTAMPTZ`` natively and come back as
``Decimal`` and aware ``datetime``. A connection the server dropped is replaced on the next
call, so a database restart costs the calls made while it was down (each a ``StoreError``),
not the process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from loguru import logger
from psycopg.conninfo import conninfo_to_dict

from store.ports import StoreError
from store.schema import POSTGRES
from store.sql import SqlStore
from store.sql_rows import Clock, Cursor, Tx, utc_now
from store.urls import redact_text, redact_url

Connection = psycopg.Connection[tuple[Any, ...]]


class PostgresStore(SqlStore):
    """``PostgresStore("postgresql://user:pw@host/db")``; the URL may choose a schema with
    ``?options=-csearch_path%3Dname``. Connects at once, so a bad URL fails at start-up."""

    dialect = POSTGRES
    driver_errors = (psycopg.Error,)

    def __init__(self, url: str, *, clock: Clock = utc_now, connect_timeout: int = 5) -> None:
        super().__init__(safe_name=redact_url(url), clock=clock)
        self._url = url
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        with self._lock:
            self._conn = self._connect()

    def _connect(self) -> Connection:
        try:
            # connect_timeout bounds the wait for an unreachable server; the URL's own wins.
            timeout = conninfo_to_dict(self._url).get("connect_timeout", self._connect_timeout)
            return psycopg.connect(self._url, autocommit=False, connect_timeout=timeout)
        except psycopg.Error as error:
            raise StoreError(self._describe(error)) from error

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            if self._conn is not None:
                logger.bind(store=self.safe_name).warning("connection lost; reconnecting")
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            yield cursor

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _insert_id(self, tx: Tx, sql: str, params: Sequence[object], key: str) -> int:
        row = tx.one(f"{sql} RETURNING {key}", params)
        if row is None:
            raise StoreError(f"{self.safe_name}: INSERT returned no {key}")
        return int(row[0])

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _describe(self, error: Exception) -> str:
        return redact_text(super()._describe(error), self._url)
