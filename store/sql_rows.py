"""Plumbing of the SQL stores: the cursor they need, a transaction handle that binds values
and counts statements, and the mapping between rows and records.

Rows become records through pydantic, which reads a backend's native values and the SQLite
text forms alike (``"182.35"`` → ``Decimal``, ISO text → aware ``datetime``, ``1`` → ``True``);
a row that does not validate is a ``StoreError``, never a half-read record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from models.position import Position
from store.ports import StoreError

Clock = Callable[[], datetime]
Row = Sequence[Any]
R = TypeVar("R", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (psycopg's and sqlite3's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any], /) -> object: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx:
    """One open transaction: runs statements written with ``?`` placeholders and counts them.

    With a ``limit`` (a call in autocommit, where each statement commits by itself) running
    more statements than that is a bug, refused before it can commit half of a change."""

    def __init__(self, cursor: Cursor, sql: Callable[[str], str],
                 bind: Callable[[object], object], *, limit: int | None = None) -> None:
        self.cursor, self._sql, self._bind, self._limit = cursor, sql, bind, limit
        self.count = 0
        """Statements executed so far."""

    def _account(self, statements: int) -> None:
        if self._limit is not None and self.count + statements > self._limit:
            raise RuntimeError(f"{self.count + statements} statements where {self._limit} "
                               "may run outside a transaction")
        self.count += statements

    def run(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        self._account(1)
        self.cursor.execute(self._sql(sql), [self._bind(v) for v in params])
        return self.cursor

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement per row; return the rows it changed."""
        if not rows:
            return 0
        self._account(len(rows))
        self.cursor.executemany(self._sql(sql), [[self._bind(v) for v in row] for row in rows])
        return self.cursor.rowcount

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = self.run(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return list(self.run(sql, params).fetchall())


def insert_sql(table: str, model: type[BaseModel], conflict: str = "") -> str:
    """An insert of the account and a record's fields (``record_values``), in that order."""
    columns = ["account", *model.model_fields]
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {conflict}"


def record_values(account: str, record: BaseModel) -> tuple[object, ...]:
    """The values of ``insert_sql``: the account, then the record's fields."""
    return (account, *(getattr(record, name) for name in type(record).model_fields))


def records(model: type[R], rows: Sequence[Row]) -> list[R]:
    names = list(model.model_fields)
    try:
        return [model.model_validate(dict(zip(names, row, strict=True))) for row in rows]
    except (ValidationError, ValueError) as error:
        raise StoreError(f"a stored {model.__name__} is unreadable: {error}") from error


def decode_position(data: str) -> Position:
    try:
        return Position.model_validate_json(data)
    except ValidationError as error:
        raise StoreError(f"a stored position is unreadable: {error}") from error
