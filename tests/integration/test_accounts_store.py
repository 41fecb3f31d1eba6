"""Accounts in the store (SPEC §13): stores of two accounts on one database never see or
change each other's rows; a position id is unique per account (the same id in two accounts is
two positions); rows stored before accounts existed become the migrating store's account's.

Every test runs on SQLite (one file, two connections) and on PostgreSQL (one schema, marked
``integration``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from models.accounts import DEFAULT_ACCOUNT, AccountError
from models.lifecycle import request_exit
from models.position import ExitReason, PositionStatus
from store.factory import open_store
from store.postgres import PostgresStore
from store.records import KillSwitch, ReceivedFrame
from store.schema import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE
from store.sql import SqlStore
from store.sqlite import SqliteStore
from tests.integration.test_store_contract import (
    T0,
    active,
    attempt,
    exited,
    letter,
    marked,
    pending,
    rich_position,
)

Opener = Callable[[str], SqlStore]
"""A store of the given account on the test's one database (not migrated)."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[SqlStore] = []

    def make(account: str) -> SqlStore:
        store: SqlStore
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "shared.sqlite3", account=account)
        else:
            store = PostgresStore(request.getfixturevalue("pg_url"), account=account)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def two(opener: Opener) -> tuple[SqlStore, SqlStore]:
    a, b = opener("1100001"), opener("desk-b")
    a.migrate()
    b.migrate()
    return a, b


Two = tuple[SqlStore, SqlStore]


def test_the_same_position_id_in_two_accounts_is_two_positions(two: Two) -> None:
    a, b = two
    pos_a, fills_a = rich_position()
    a.save_position(pos_a, fills_a)
    pos_b = active("E1")  # the same entry order number, so the same position id
    assert pos_b.position_id == pos_a.position_id
    b.save_position(pos_b, ())
    assert a.load_position(pos_a.position_id) == pos_a
    assert b.load_position(pos_b.position_id) == pos_b
    assert len(a.fills(pos_a.position_id)) == len(fills_a)
    assert b.fills(pos_b.position_id) == []
    # A newer version written by one account never replaces the other's row.
    b.save_position(pos_b.model_copy(update={"version": pos_b.version + 1}))
    assert a.load_position(pos_a.position_id) == pos_a


def test_each_account_loads_only_its_own_open_positions(two: tuple[SqlStore, SqlStore]) -> None:
    a, b = two
    for entry in ("A1", "A2"):
        a.save_position(active(entry))
    a.save_position(exited("A3"))
    b.save_position(pending("B1", T0 + timedelta(seconds=1)))
    b.save_position(active("A1"))  # the same id as one of A's
    assert [p.position_id for p in a.load_open_positions()] == ["PA1", "PA2"]
    assert sorted(p.position_id for p in b.load_open_positions()) == ["PA1", "PB1"]
    assert [p.position_id for p in a.list_positions(PositionStatus.EXITED)] == ["PA3"]
    assert b.list_positions(PositionStatus.EXITED) == []
    assert len(a.list_positions()) == 3 and len(b.list_positions()) == 2


def test_marks_of_one_account_never_touch_the_others(two: tuple[SqlStore, SqlStore]) -> None:
    a, b = two
    a.save_position(active("E1"))
    b.save_position(active("E1"))
    stored_b = b.load_position("PE1")
    written = a.save_marks([marked(active("E1"), "99.50")])
    assert written == {"PE1"}
    assert b.load_position("PE1") == stored_b


def test_exit_attempts_are_per_account(two: tuple[SqlStore, SqlStore]) -> None:
    a, b = two
    before = active("E1")
    a.save_position(before)
    b.save_position(before)
    after = request_exit(before, ExitReason.STOP_LOSS, T0 + timedelta(minutes=1)).position
    assert a.record_exit(attempt("PE1"), after) is True
    # The same client id in the other account is that account's own first attempt.
    assert b.record_exit(attempt("PE1"), after) is True
    a.update_exit_attempt(attempt("PE1").client_id, order_no="A-EX", outcome="FILLED")
    assert [x.order_no for x in a.exit_attempts()] == ["A-EX"]
    assert [x.order_no for x in b.exit_attempts("PE1")] == [None]


def test_kill_switch_latches_per_account(two: tuple[SqlStore, SqlStore]) -> None:
    a, b = two
    a.latch_kill_switch(KillSwitch(latched_at=T0, reason="daily loss", day_pnl=Decimal("-9")))
    assert a.kill_switch() is not None
    assert b.kill_switch() is None
    b.latch_kill_switch(KillSwitch(latched_at=T0 + timedelta(hours=1), reason="other"))
    assert b.reset_kill_switch() is True
    assert b.kill_switch() is None
    latched = a.kill_switch()
    assert latched is not None and latched.reason == "daily loss"


def test_frames_parked_updates_and_dead_letters_are_per_account(
        two: tuple[SqlStore, SqlStore]) -> None:
    a, b = two
    a.record_order_update("a-one", T0, order_no="O1", accepted=True)
    b.record_order_updates([ReceivedFrame("b-one", T0, "O1", True),
                            ReceivedFrame("b-two", T0 + timedelta(seconds=1), None, False,
                                          "bad")])
    assert [u.raw for u in a.order_updates()] == ["a-one"]
    assert [u.raw for u in b.order_updates(since=T0)] == ["b-one", "b-two"]
    a.park_update("O7", "a-parked", T0)
    b.park_update("O7", "b-parked", T0)
    assert [p.raw for p in a.take_parked("O7")] == ["a-parked"]
    assert [p.raw for p in b.parked_updates()] == ["b-parked"]
    a.record_dead_letter(letter(1))
    assert len(a.dead_letters()) == 1 and b.dead_letters() == []
    assert a.counts()["order_updates"] == 1 and b.counts()["order_updates"] == 2
    assert a.counts()["parked_updates"] == 0 and b.counts()["parked_updates"] == 1
    b.mark_frames(b.order_updates()[-1].seq)  # one account's applied frames, not the other's
    assert a.frames_mark() == 0 and [u.raw for u in a.order_updates(after=0)] == ["a-one"]


def _version_2_database(store: SqlStore) -> None:
    """The schema and rows as the program wrote them before accounts (schema version 2)."""
    position, fills = rich_position()
    with store._tx() as tx:
        tx.run(store.dialect.render(SCHEMA_VERSION_TABLE))
        for version in (1, 2):
            for step in MIGRATIONS[version]:
                tx.run(store.dialect.render(step))
            tx.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                   (version, T0))
        tx.run("INSERT INTO positions (position_id, entry_order_no, segment, security_id, side, "
               "status, version, created_at, opened_at, exited_at, updated_at, data) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (position.position_id, position.entry_order_no, position.segment,
                position.security_id, position.side, position.status, position.version,
                position.created_at, position.opened_at, position.exited_at, T0,
                position.model_dump_json()))
        for fill in fills:
            tx.run("INSERT INTO fills (position_id, order_no, role, cum_qty, qty, price, at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (fill.position_id, fill.order_no, fill.role, fill.cum_qty, fill.qty,
                    fill.price, fill.at))
        old = attempt(position.position_id)
        tx.run("INSERT INTO exit_attempts (position_id, attempt, client_id, reason, quantity, "
               "requested_at) VALUES (?, ?, ?, ?, ?, ?)",
               (old.position_id, old.attempt, old.client_id, old.reason, old.quantity,
                old.requested_at))
        tx.run("INSERT INTO order_updates (received_at, order_no, accepted, raw) "
               "VALUES (?, ?, ?, ?)", (T0, "E1", True, "old-frame"))
        tx.run("INSERT INTO parked_updates (order_no, parked_at, raw) VALUES (?, ?, ?)",
               ("O9", T0, "old-parked"))
        tx.run("INSERT INTO dead_letters (recorded_at, actor, message_type, error, payload) "
               "VALUES (?, ?, ?, ?, ?)", (T0, "tracker:PE1", "PriceUpdate", "boom", "{}"))
        tx.run("INSERT INTO kill_switch (id, latched_at, reason) VALUES (1, ?, ?)",
               (T0, "daily loss"))


def test_rows_stored_before_accounts_become_the_migrating_accounts(opener: Opener) -> None:
    live = opener("1100001")
    _version_2_database(live)
    live.migrate()
    assert live.schema_version() == LATEST
    position, fills = rich_position()
    assert live.load_open_positions() == [position]
    assert live.fills(position.position_id) == fills  # in their order, under new ids
    assert [x.client_id for x in live.exit_attempts()] == [attempt(position.position_id).client_id]
    assert [u.raw for u in live.order_updates()] == ["old-frame"]
    assert [p.raw for p in live.parked_updates()] == ["old-parked"]
    assert len(live.dead_letters()) == 1
    latched = live.kill_switch()
    assert latched is not None and latched.reason == "daily loss"
    # The rows are that account's alone: another account on the database sees none of them,
    # and writes its own beside them.
    other = opener("desk-b")
    other.migrate()
    assert other.list_positions() == [] and other.kill_switch() is None
    assert other.order_updates() == [] and other.exit_attempts() == []
    other.save_position(position, fills)
    assert live.fills(position.position_id) == other.fills(position.position_id)


def test_a_malformed_account_is_refused_before_anything_opens(tmp_path: Path) -> None:
    for bad in ("", "has space", "a.b", "x" * 65, "-leading", "quote'd", "a:b"):
        with pytest.raises(AccountError):
            open_store(None, tmp_path, account=bad)
    assert not (tmp_path / "tracker.sqlite3").exists()
    store = open_store(None, tmp_path)
    try:
        assert store.account == DEFAULT_ACCOUNT
    finally:
        store.close()
