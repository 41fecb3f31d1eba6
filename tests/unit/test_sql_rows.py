"""The transaction handle of the SQL stores: it counts statements, and refuses a second one in a
call that runs in autocommit (where each statement would commit by itself)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from store.sql_rows import Tx


class RecordingCursor:
    """A DB-API cursor that only remembers what it was asked to run."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, Sequence[Any]]] = []
        self.rowcount = 0

    def execute(self, sql: str, params: Sequence[Any], /) -> object:
        self.ran.append((sql, params))
        self.rowcount = 1
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> object:
        self.ran += [(sql, row) for row in params]
        self.rowcount = len(params)
        return self

    def fetchone(self) -> Any:
        return None

    def fetchall(self) -> list[Any]:
        return []


def tx(limit: int | None) -> tuple[Tx, RecordingCursor]:
    cursor = RecordingCursor()
    return Tx(cursor, lambda sql: sql.replace("?", "%s"), str, limit=limit), cursor


def test_statements_are_counted_one_per_row_of_many() -> None:
    handle, cursor = tx(None)
    handle.run("SELECT ?", (1,))
    assert handle.many("INSERT ?", [(1,), (2,), (3,)]) == 3
    assert handle.count == 4
    assert cursor.ran[0] == ("SELECT %s", ["1"])


def test_a_single_statement_call_refuses_a_second_statement_before_running_it() -> None:
    handle, cursor = tx(1)
    handle.run("INSERT 1")
    with pytest.raises(RuntimeError, match="outside a transaction"):
        handle.run("INSERT 2")
    with pytest.raises(RuntimeError, match="outside a transaction"):
        handle.many("INSERT ?", [(1,)])
    assert [sql for sql, _ in cursor.ran] == ["INSERT 1"]
    assert handle.count == 1
