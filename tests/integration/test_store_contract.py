"""One contract, two stores: every test runs on SQLite (a temporary file) and on PostgreSQL (a
fresh schema per test, marked ``integration``), through the ``Store`` port only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from models.closed import plain_of
from models.common import IST, Segment, Side, TxnType, exit_client_id, position_id_for
from models.lifecycle import apply_update, request_exit
from models.orders import OrderProgress, OrderStatus, OrderUpdate
from models.position import (
    ExitReason,
    Fill,
    OrderRole,
    Position,
    PositionStatus,
    TrackedOrder,
    new_position,
)
from store.factory import open_store
from store.ports import FrameBatches, StaleWriteError, Store, StoreError, StoreRefused
from store.postgres import PostgresStore
from store.records import DeadLetter, ExitAttempt, KillSwitch, ParkedUpdate, ReceivedFrame
from store.schema import LATEST
from store.sqlite import SqliteStore
from store.urls import redact_text, redact_url

T0 = datetime(2025, 1, 6, 9, 15, tzinfo=IST)


# Backends ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    """Opens the same data again, for the persistence test."""
    raw: Callable[[], Store]
    """The store without migrating it."""
    broken: Callable[[], Store]
    """Opening a store that cannot work."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "nested" / "tracker.sqlite3"
        (tmp_path / "a-file").write_text("not a directory")
        return Backend("sqlite", f"sqlite:///{path}", lambda: SqliteStore(path),
                       lambda: SqliteStore(tmp_path / "a-file" / "tracker.sqlite3"))
    url: str = request.getfixturevalue("pg_url")
    return Backend("postgres", url, lambda: PostgresStore(url),
                   lambda: PostgresStore("postgresql://postgres:s3cret@127.0.0.1:1/test",
                                         connect_timeout=2))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = open_store(backend.url)
    yield opened
    opened.close()


# Positions built with the real state machine -----------------------------------------------------
def update(order_no: str, status: OrderStatus, traded: int = 0, avg: str | None = None, *,
           at: datetime, txn: TxnType = TxnType.BUY) -> OrderUpdate:
    return OrderUpdate(order_no=order_no, status=status, segment=Segment.NSE_FNO,
                       security_id="49081", txn_type=txn, product="I", quantity=100,
                       traded_qty=traded, avg_traded_price=None if avg is None else Decimal(avg),
                       updated_at=at)


def pending(entry_no: str, created_at: datetime = T0) -> Position:
    return new_position(update(entry_no, OrderStatus.TRANSIT, at=created_at),
                        position_id=position_id_for(entry_no), side=Side.LONG,
                        created_at=created_at)


def step(position: Position, upd: OrderUpdate, role: OrderRole = OrderRole.ENTRY,
         attempt: int | None = None) -> tuple[Position, tuple[Fill, ...]]:
    applied = apply_update(position, upd, role, attempt=attempt)
    assert applied.rejection is None, applied.rejection
    return applied.position, applied.fills


def active(entry_no: str, created_at: datetime = T0) -> Position:
    upd = update(entry_no, OrderStatus.TRADED, 100, "100.00", at=created_at + timedelta(seconds=1))
    return step(pending(entry_no, created_at), upd)[0]


def exiting(entry_no: str, created_at: datetime = T0) -> Position:
    applied = request_exit(active(entry_no, created_at), ExitReason.STOP_LOSS,
                           created_at + timedelta(minutes=5))
    assert applied.rejection is None
    return applied.position


def exited(entry_no: str, created_at: datetime = T0) -> Position:
    upd = update(f"X{entry_no}", OrderStatus.TRADED, 100, "88.00", txn=TxnType.SELL,
                 at=created_at + timedelta(minutes=6))
    return step(exiting(entry_no, created_at), upd, OrderRole.EXIT, attempt=1)[0]


def cancelled(entry_no: str, created_at: datetime = T0) -> Position:
    upd = update(entry_no, OrderStatus.CANCELLED, at=created_at + timedelta(seconds=3))
    return step(pending(entry_no, created_at), upd)[0]


def rich_position() -> tuple[Position, list[Fill]]:
    """EXITING after two entry fills (one at a price with 28 significant digits), marks, an
    exit request and a partial exit fill: every kind of field a position has."""
    position, fills = pending("E1"), list[Fill]()
    for upd, role, attempt in [
        (update("E1", OrderStatus.PENDING, 30, "100.00", at=T0 + timedelta(seconds=1)),
         OrderRole.ENTRY, None),
        (update("E1", OrderStatus.TRADED, 100, "100.10", at=T0 + timedelta(seconds=2)),
         OrderRole.ENTRY, None),
    ]:
        position, new = step(position, upd, role, attempt)
        fills += new
    position = position.model_copy(update={
        "peak_price": Decimal("104.550"), "hwm_pnl": Decimal("425.00"),
        "trail_stop": Decimal("101.936250"), "version": position.version + 1})
    position = request_exit(position, ExitReason.TRAILING_STOP, T0 + timedelta(minutes=3)).position
    exit_fill = update("X1", OrderStatus.PENDING, 40, "101.95", txn=TxnType.SELL,
                       at=datetime(2025, 1, 6, 3, 49, tzinfo=UTC))
    position, new = step(position, exit_fill, OrderRole.EXIT, attempt=1)
    return position, [*fills, *new]


# Schema -------------------------------------------------------------------------------------------
def test_migrate_twice_is_harmless_and_reports_the_version(backend: Backend) -> None:
    fresh = backend.raw()
    try:
        assert fresh.schema_version() == 0
        fresh.migrate()
        fresh.migrate()
        assert fresh.schema_version() == LATEST == 5
        assert set(fresh.counts().values()) == {0}
    finally:
        fresh.close()


# Positions and fills ------------------------------------------------------------------------------
def test_a_position_and_its_fills_round_trip_exactly(store: Store) -> None:
    position, fills = rich_position()
    assert position.status is PositionStatus.EXITING and len(fills) == 3
    store.save_position(position, fills)

    loaded = store.load_position(position.position_id)
    assert loaded == position
    assert loaded is not None and loaded.model_dump_json() == position.model_dump_json()
    assert isinstance(loaded.orders, tuple) and all(
        isinstance(o, TrackedOrder) for o in loaded.orders)
    assert str(loaded.trail_stop) == "101.936250"
    assert all(t is not None and t.utcoffset() is not None
               for t in (loaded.created_at, loaded.opened_at, loaded.exit_requested_at))
    stored_fills = store.fills(position.position_id)
    assert stored_fills == fills
    assert stored_fills[1].price == Decimal(7010) / 70  # 100.1428571428571428571428571
    assert all(isinstance(f.price, Decimal) and f.at and f.at.utcoffset() is not None
               for f in stored_fills)
    assert store.load_position("P-unknown") is None


def test_when_an_older_version_is_written_then_it_is_refused(store: Store) -> None:
    v1 = active("E1")
    v2 = v1.model_copy(update={"peak_price": Decimal("103.5"), "version": v1.version + 1})
    store.save_position(v2)
    with pytest.raises(StaleWriteError):
        store.save_position(v1)
    assert store.load_position(v1.position_id) == v2


def test_when_the_same_version_is_written_again_then_nothing_changes(store: Store) -> None:
    position = active("E1")
    store.save_position(position)
    store.save_position(position)
    assert store.load_position(position.position_id) == position
    assert store.counts()["positions"] == 1


def test_when_the_same_version_carries_other_content_then_it_is_refused(store: Store) -> None:
    position = active("E1")
    store.save_position(position)
    rival = position.model_copy(update={"peak_price": Decimal("120")})
    with pytest.raises(StaleWriteError):
        store.save_position(rival)
    assert store.load_position(position.position_id) == position


def test_a_stale_write_keeps_its_fills_out(store: Store) -> None:
    position, fills = rich_position()
    store.save_position(position)
    older = position.model_copy(update={"version": position.version - 1})
    with pytest.raises(StoreError):
        store.save_position(older, fills)
    assert store.fills(position.position_id) == []


def test_fills_are_idempotent(store: Store) -> None:
    pos = pending("E1")
    pos, first = step(pos, update("E1", OrderStatus.PENDING, 30, "100.00", at=T0))
    store.save_position(pos, first)
    store.save_position(pos, first)
    assert store.fills(pos.position_id) == list(first)
    pos, second = step(pos, update("E1", OrderStatus.TRADED, 100, "100.00", at=T0))
    store.save_position(pos, [*first, *second])
    assert store.fills(pos.position_id) == [*first, *second]
    assert store.counts()["fills"] == 2


def test_save_positions_upserts_many_and_refuses_a_stale_one(store: Store) -> None:
    a, b = active("E1"), pending("E2")
    store.save_positions([a, b, a])
    assert store.list_positions() == [a, b]
    newer_b = b.model_copy(update={"version": b.version + 1, "product": "M"})
    store.save_position(newer_b)
    newer_a = a.model_copy(update={"version": a.version + 1, "product": "M"})
    with pytest.raises(StaleWriteError):
        store.save_positions([newer_a, b])
    assert store.list_positions() == [a, newer_b]  # all or nothing


def marked(position: Position, stop: str, *, versions: int = 1) -> Position:
    """``position`` with a trailing stop tightened to ``stop``, ``versions`` later."""
    return position.model_copy(update={
        "peak_price": Decimal(stop) + 5, "hwm_pnl": Decimal("500"), "trail_stop": Decimal(stop),
        "version": position.version + versions})


def test_save_marks_writes_many_newer_positions_in_one_statement(store: Store) -> None:
    a, b, c = active("E1"), active("E2"), exiting("E3")
    store.save_positions([a, b, c])
    before = store.queries
    written = store.save_marks([marked(a, "101"), marked(b, "102"), marked(a, "103", versions=2),
                                marked(c, "99")])
    assert written == {a.position_id, b.position_id, c.position_id}
    # One statement (PostgreSQL), or one per position in one transaction, one commit (SQLite).
    assert store.queries - before == (1 if isinstance(store, PostgresStore) else 3)
    assert store.load_position(a.position_id) == marked(a, "103", versions=2)  # the newest
    assert store.load_position(b.position_id) == marked(b, "102")
    assert store.load_position(c.position_id) == marked(c, "99")
    assert store.save_marks([]) == set()


def test_save_marks_never_replaces_a_newer_or_equal_version(store: Store) -> None:
    a, b = active("E1"), active("E2")
    newer_a = marked(a, "104", versions=3)  # its owner stored a later state meanwhile
    store.save_positions([newer_a, marked(b, "102")])
    written = store.save_marks([marked(a, "101"), marked(b, "102"), marked(b, "103", versions=2)])
    assert written == {b.position_id}  # b's later version; a's older one, b's repeat: nothing
    assert store.load_position(a.position_id) == newer_a
    assert store.load_position(b.position_id) == marked(b, "103", versions=2)


def test_save_marks_creates_no_position(store: Store) -> None:
    assert store.save_marks([marked(active("E9"), "101")]) == set()
    assert store.load_position(position_id_for("E9")) is None
    assert store.counts()["positions"] == 0


def test_save_marks_is_durable_across_a_reopen(backend: Backend) -> None:
    first = open_store(backend.url)
    position = active("E1")
    first.save_position(position)
    first.save_marks([marked(position, "101.936250")])
    first.close()
    again = open_store(backend.url)
    try:
        loaded = again.load_position(position.position_id)
        assert loaded is not None and str(loaded.trail_stop) == "101.936250"
        assert loaded == marked(position, "101.936250")
    finally:
        again.close()


def test_open_positions_come_oldest_first_in_one_query(store: Store) -> None:
    # Creation times in two zones: the order is by instant, not by the text of the time.
    utc_0400 = datetime(2025, 1, 6, 4, 0, tzinfo=UTC)  # 09:30 IST
    builders = [(active, T0 + timedelta(minutes=20)), (exited, T0 + timedelta(minutes=1)),
                (pending, utc_0400), (cancelled, T0 + timedelta(minutes=2)),
                (exiting, T0)]
    positions = [build(f"E{n}", at) for n, (build, at) in enumerate(builders)]
    for position in positions:
        store.save_position(position)

    before = store.queries
    open_positions = store.load_open_positions()
    assert store.queries - before == 1
    assert [p.position_id for p in open_positions] == ["PE4", "PE2", "PE0"]
    assert [p.status for p in open_positions] == [
        PositionStatus.EXITING, PositionStatus.PENDING, PositionStatus.ACTIVE]


def test_list_positions_with_and_without_status(store: Store) -> None:
    saved = [exited("E0", T0), active("E1", T0 + timedelta(minutes=1)),
             exited("E2", T0 + timedelta(minutes=2))]
    for position in reversed(saved):
        store.save_position(position)
    assert store.list_positions() == saved
    assert store.list_positions(PositionStatus.EXITED) == [saved[0], saved[2]]
    assert store.list_positions(PositionStatus.CANCELLED) == []
    # E0 exited at T0 + 6 min, E2 at T0 + 8 min: a start reads the day's exits only.
    second_exit = saved[2].exited_at
    assert second_exit == T0 + timedelta(minutes=8)
    assert store.list_positions(PositionStatus.EXITED, exited_since=second_exit) == [saved[2]]
    assert store.list_positions(PositionStatus.EXITED,
                                exited_since=second_exit + timedelta(microseconds=1)) == []


def test_the_days_closed_positions_come_plain_as_digests_and_the_others_whole(
        store: Store) -> None:
    plain = exited("E0", T0)
    later = exited("E1", T0 + timedelta(minutes=1))
    # the same, but another kind of order too: not plain (taken whole at a start)
    odd = exited("E2", T0 + timedelta(minutes=2))
    odd = odd.model_copy(update={"version": odd.version + 1, "orders": (*odd.orders, TrackedOrder(
        role=OrderRole.OPPOSITE, progress=OrderProgress(order_no="B2", status=OrderStatus.TRADED,
                                                       traded_qty=0)))})
    for position in (plain, later, odd, active("E3", T0)):
        store.save_position(position)
    day, end = T0 - timedelta(hours=1), T0 + timedelta(days=1)
    before = store.queries
    whole, digests = store.closed_between(day, end)
    assert store.queries - before == 1
    assert whole == [odd]
    assert digests == [plain_of(plain), plain_of(later)]
    # a bound each side: exits at T0 + 6 min and T0 + 7 min
    assert store.closed_between(day, T0 + timedelta(minutes=7))[1] == [plain_of(plain)]
    assert store.closed_between(T0 + timedelta(minutes=7), end)[1] == [plain_of(later)]
    # stored again not plain (a later write): taken whole from then on
    odder = later.model_copy(update={"version": later.version + 1,
                                     "orders": odd.orders[-1:] + later.orders})
    store.save_positions([odder])
    assert store.closed_between(day, end) == ([odder, odd], [plain_of(plain)])


# Raw order updates and parking -------------------------------------------------------------------
def test_raw_order_updates_are_kept_in_order(store: Store) -> None:
    frames = [("{\"Type\":\"order_alert\"}", "O1", True, None),
              ("not json", None, False, "unparsable: Expecting value"),
              ("{\"Data\":{}}", "O2", False, "no OrderNo")]
    seqs = [store.record_order_update(raw, T0 + timedelta(seconds=i), order_no=no,
                                      accepted=ok, reason=why)
            for i, (raw, no, ok, why) in enumerate(frames)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    stored = store.order_updates()
    assert [u.seq for u in stored] == seqs
    assert [(u.raw, u.order_no, u.accepted, u.reason) for u in stored] == frames
    assert [u.received_at for u in stored] == [T0 + timedelta(seconds=i) for i in range(3)]
    assert all(u.received_at.utcoffset() is not None for u in stored)


def test_frames_received_since_a_moment_come_in_the_order_they_were_stored(
        store: Store) -> None:
    """What a start-up reads again (the frames of the exchange day): ``since`` is inclusive,
    and the order is the store's, not the clock's (a clock may step back)."""
    day = T0.replace(hour=0, minute=0)
    received = [day - timedelta(microseconds=1), day + timedelta(hours=2), day,
                datetime(2025, 1, 5, 20, 0, tzinfo=UTC)]  # 01:30 IST on the 6th
    seqs = [store.record_order_update(f"frame {n}", at, order_no=f"O{n}", accepted=True)
            for n, at in enumerate(received)]
    since = store.order_updates(since=day)
    assert [(u.seq, u.raw) for u in since] == [(seqs[1], "frame 1"), (seqs[2], "frame 2"),
                                               (seqs[3], "frame 3")]
    assert since[0].received_at == day + timedelta(hours=2)
    assert [u.seq for u in store.order_updates()] == seqs
    assert store.order_updates(since=day + timedelta(days=1)) == []


def test_frames_after_the_applied_mark_are_what_a_start_reads(backend: Backend,
                                                               store: Store) -> None:
    """``mark_frames`` never moves back and outlives the store; ``order_updates(after=)`` gives
    only the frames stored after the mark, within ``since`` as before."""
    day = T0.replace(hour=0, minute=0)
    seqs = [store.record_order_update(f"frame {n}", T0, order_no=f"O{n}", accepted=True)
            for n in range(4)]
    assert store.frames_mark() == 0
    store.mark_frames(seqs[1])
    store.mark_frames(seqs[0])  # an older mark (a slower writer) changes nothing
    assert store.frames_mark() == seqs[1]
    assert [u.raw for u in store.order_updates(since=day, after=store.frames_mark())] == [
        "frame 2", "frame 3"]
    assert [u.raw for u in store.order_updates(after=seqs[2])] == ["frame 3"]
    store.mark_frames(seqs[3])
    assert store.order_updates(since=day, after=store.frames_mark()) == []
    store.close()
    again = backend.raw()
    again.migrate()
    try:
        assert again.frames_mark() == seqs[3]
    finally:
        again.close()


def frames_batch() -> list[ReceivedFrame]:
    return [ReceivedFrame(raw='{"Type":"order_alert","Data":{"OrderNo":"O1"}}',
                          received_at=T0, order_no="O1", accepted=True),
            ReceivedFrame(raw="not json: \"quotes\", \\ back-slashes, é €, a\nnewline",
                          received_at=T0 + timedelta(microseconds=1), order_no=None,
                          accepted=False, reason="unparsable"),
            ReceivedFrame(raw="{}", received_at=datetime(2025, 1, 6, 3, 46, tzinfo=UTC),
                          order_no="O2", accepted=False, reason="no OrderNo")]


def test_raw_frames_stored_in_one_call_keep_their_order_and_values(store: Store) -> None:
    assert isinstance(store, FrameBatches)
    first = store.record_order_update("before", T0, order_no=None, accepted=True)
    batch = frames_batch()
    seqs = store.record_order_updates(batch)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] > first
    assert store.record_order_updates([]) == []
    stored = store.order_updates()[1:]
    assert [u.seq for u in stored] == seqs
    assert [ReceivedFrame(raw=u.raw, received_at=u.received_at, order_no=u.order_no,
                          accepted=u.accepted, reason=u.reason) for u in stored] == batch


def test_a_batch_with_a_frame_that_cannot_be_stored_stores_none(store: Store) -> None:
    assert isinstance(store, FrameBatches)
    naive = ReceivedFrame(raw="x", received_at=T0.replace(tzinfo=None), order_no=None,
                          accepted=True)
    with pytest.raises(ValueError, match="naive"):
        store.record_order_updates([*frames_batch(), naive])
    assert store.order_updates() == []


def test_parked_updates_are_taken_once_oldest_first(store: Store) -> None:
    store.park_update("O1", "first", T0)
    store.park_update("O2", "other", T0 + timedelta(seconds=1))
    store.park_update("O1", "second", T0 + timedelta(seconds=2))
    assert [p.raw for p in store.parked_updates()] == ["first", "other", "second"]

    taken = store.take_parked("O1")
    assert taken == [ParkedUpdate(order_no="O1", parked_at=T0, raw="first"),
                     ParkedUpdate(order_no="O1", parked_at=T0 + timedelta(seconds=2),
                                  raw="second")]
    assert store.take_parked("O1") == []
    assert [p.raw for p in store.parked_updates()] == ["other"]


def test_parked_updates_taken_with_refile_at_are_stored_again_as_frames(store: Store) -> None:
    """What an un-parking keeps: the updates, as frames after every earlier one, so a start
    reads them again until a mark of applied frames passes them."""
    before = store.record_order_update("earlier", T0, order_no="O0", accepted=True)
    store.park_update("O1", "first", T0)
    store.park_update("O1", "second", T0 + timedelta(seconds=2))
    store.mark_frames(before)
    taken = store.take_parked("O1", refile_at=T0 + timedelta(minutes=1))
    assert [p.raw for p in taken] == ["first", "second"]
    again = store.order_updates(after=store.frames_mark())
    assert [(u.raw, u.order_no, u.reason, u.accepted) for u in again] == [
        ("first", "O1", "unparked", True), ("second", "O1", "unparked", True)]
    assert all(u.seq > before and u.received_at == T0 + timedelta(minutes=1) for u in again)
    assert store.parked_updates() == []


NUL_TEXTS = ["a NUL \x00 inside", "\x00", "ends \\0 with \\ and NUL\x00", "\u2400 starts marked",
             "\u2400\x00\\0", "no NUL: \\0 and \u2400"]


def test_text_with_a_nul_is_stored_and_read_back_exactly(store: Store) -> None:
    assert isinstance(store, FrameBatches)
    for n, text in enumerate(NUL_TEXTS):
        store.record_order_update(text, T0, order_no=f"O{n}{text}", accepted=False,
                                  reason=f"why {text}")
    store.record_order_updates([ReceivedFrame(raw=text, received_at=T0, order_no=text,
                                              accepted=True, reason=text)
                                for text in NUL_TEXTS])
    stored = store.order_updates()
    assert [u.raw for u in stored] == NUL_TEXTS * 2
    assert [u.order_no for u in stored] == [f"O{n}{t}" for n, t in enumerate(NUL_TEXTS)] + \
        NUL_TEXTS
    assert [u.reason for u in stored] == [f"why {t}" for t in NUL_TEXTS] + NUL_TEXTS


def test_parked_text_with_a_nul_is_taken_back_by_its_order_number(store: Store) -> None:
    store.park_update("E\x001", "raw \x00 one", T0)
    store.park_update("E1", "plain", T0)
    assert [p.raw for p in store.parked_updates()] == ["raw \x00 one", "plain"]
    assert store.take_parked("E\x001") == [ParkedUpdate(order_no="E\x001", parked_at=T0,
                                                        raw="raw \x00 one")]
    assert [p.order_no for p in store.parked_updates()] == ["E1"]


def test_a_marks_write_keeps_text_with_a_nul_exactly(store: Store) -> None:
    position = active("E\x001")
    store.save_position(position)
    assert store.save_marks([marked(position, "101")]) == {position.position_id}
    assert store.load_position(position.position_id) == marked(position, "101")
    assert store.list_positions()[0].entry_order_no == "E\x001"


def test_text_the_driver_cannot_encode_is_refused_and_the_store_goes_on(store: Store) -> None:
    assert isinstance(store, FrameBatches)
    surrogate = "a lone surrogate \ud800"
    with pytest.raises(StoreRefused):
        store.record_order_update(surrogate, T0, order_no=None, accepted=False)
    with pytest.raises(StoreRefused):
        store.record_order_updates([*frames_batch(), ReceivedFrame(
            raw=surrogate, received_at=T0, order_no=None, accepted=False)])
    with pytest.raises(StoreRefused):
        store.park_update("E1", surrogate, T0)
    store.record_order_update("fine", T0, order_no=None, accepted=True)
    assert [u.raw for u in store.order_updates()] == ["fine"]
    assert store.parked_updates() == []


# Exits, dead letters, kill switch ----------------------------------------------------------------
def attempt(position_id: str = "PE1", number: int = 1,
            reason: ExitReason = ExitReason.STOP_LOSS) -> ExitAttempt:
    return ExitAttempt(position_id=position_id, attempt=number,
                       client_id=exit_client_id(position_id, number), reason=reason,
                       quantity=75, requested_at=T0 + timedelta(minutes=number))


def test_an_exit_attempt_is_recorded_once_and_updated(store: Store) -> None:
    first = attempt()
    assert store.record_exit_attempt(first) is True
    assert store.record_exit_attempt(attempt(reason=ExitReason.MANUAL)) is False
    assert store.record_exit_attempt(attempt(number=2)) is True
    assert store.record_exit_attempt(attempt("PE9")) is True
    assert store.exit_attempts("PE1") == [first, attempt(number=2)]

    store.update_exit_attempt(first.client_id, order_no="EX1")
    store.update_exit_attempt(first.client_id, outcome="FILLED")
    store.update_exit_attempt("X-nobody-1", outcome="FILLED")
    updated = first.model_copy(update={"order_no": "EX1", "outcome": "FILLED"})
    assert store.exit_attempts("PE1")[0] == updated
    assert store.exit_attempts() == [updated, attempt("PE9"), attempt(number=2)]


def test_an_exit_is_recorded_with_its_position_in_one_write(backend: Backend,
                                                            store: Store) -> None:
    before = active("E1")
    store.save_position(before)
    after = request_exit(before, ExitReason.STOP_LOSS, T0 + timedelta(minutes=1)).position
    queries = store.queries
    assert store.record_exit(attempt("PE1"), after) is True
    # PostgreSQL: one statement (one commit); SQLite: one transaction of two.
    assert store.queries - queries == (1 if backend.name == "postgres" else 2)
    assert store.load_position("PE1") == after
    assert store.exit_attempts("PE1") == [attempt("PE1")]
    # A repeat (a retried message, a restart) changes nothing and says so.
    assert store.record_exit(attempt("PE1", reason=ExitReason.MANUAL), after) is False
    assert store.load_position("PE1") == after
    assert store.exit_attempts("PE1") == [attempt("PE1")]


def test_an_exit_for_a_stale_position_is_refused_but_its_intent_is_kept(store: Store) -> None:
    before = active("E1")
    newer = before.model_copy(update={"version": before.version + 5})
    store.save_position(newer)
    stale = request_exit(before, ExitReason.STOP_LOSS, T0 + timedelta(minutes=1)).position
    assert stale.version < newer.version
    with pytest.raises(StaleWriteError):
        store.record_exit(attempt("PE1"), stale)
    assert store.load_position("PE1") == newer
    assert store.exit_attempts("PE1") == [attempt("PE1")]


def test_many_exits_are_recorded_with_their_positions_in_one_write(backend: Backend,
                                                                   store: Store) -> None:
    befores = [active(f"E{n}") for n in range(1, 4)]
    for before in befores:
        store.save_position(before)
    afters = [request_exit(b, ExitReason.STOP_LOSS, T0 + timedelta(minutes=1)).position
              for b in befores]
    newer = afters[2].model_copy(update={"version": afters[2].version + 3})
    store.save_position(newer)  # the third position's owner wrote a later state already
    queries = store.queries
    written = store.record_exits([(attempt(a.position_id), a) for a in afters])
    # PostgreSQL: one statement (one commit); SQLite: one transaction of two per exit.
    assert store.queries - queries == (1 if backend.name == "postgres" else 6)
    assert written == {"PE1", "PE2"}
    assert [store.load_position(a.position_id) for a in afters] == [*afters[:2], newer]
    assert store.exit_attempts() == [attempt(a.position_id) for a in afters]
    # Again (a repeat): nothing written, nothing doubled.
    assert store.record_exits([(attempt(a.position_id), a) for a in afters]) == set()
    assert len(store.exit_attempts()) == 3
    assert store.record_exits([]) == set()


def letter(n: int) -> DeadLetter:
    return DeadLetter(recorded_at=T0 + timedelta(seconds=n), actor=f"tracker:PE{n}",
                      message_type="PriceChanged", message_id=f"m{n}", correlation_id="c1",
                      causation_id=None, position_id=f"PE{n}", error="ZeroDivisionError: x",
                      payload="{ltp: 101.5}")


def test_dead_letters_are_kept_in_order(store: Store) -> None:
    store.record_dead_letter(letter(2))
    store.record_dead_letter(letter(1))
    assert store.dead_letters() == [letter(2), letter(1)]


def test_kill_switch_latches_once_and_resets(store: Store) -> None:
    assert store.kill_switch() is None
    first = KillSwitch(latched_at=T0, reason="daily loss", day_pnl=Decimal("-5000.50"))
    store.latch_kill_switch(first)
    store.latch_kill_switch(KillSwitch(latched_at=T0 + timedelta(hours=1), reason="again"))
    latched = store.kill_switch()
    assert latched == first and latched is not None and str(latched.day_pnl) == "-5000.50"
    assert store.reset_kill_switch() is True
    assert store.reset_kill_switch() is False
    assert store.kill_switch() is None


def test_counts_report_rows_per_table(store: Store) -> None:
    position, fills = rich_position()
    store.save_position(position, fills)
    store.record_order_update("raw", T0, order_no="E1", accepted=True)
    store.park_update("O9", "raw", T0)
    store.record_exit_attempt(attempt())
    store.record_dead_letter(letter(1))
    store.latch_kill_switch(KillSwitch(latched_at=T0, reason="limit"))
    store.mark_frames(1)
    assert dict(store.counts()) == {
        "positions": 1, "fills": 3, "order_updates": 1, "parked_updates": 1,
        "exit_attempts": 1, "dead_letters": 1, "kill_switch": 1, "frame_marks": 1}


# Durability and failure ---------------------------------------------------------------------------
def test_data_survives_closing_and_reopening(backend: Backend, store: Store) -> None:
    position, fills = rich_position()
    store.save_position(position, fills)
    seq = store.record_order_update("raw", T0, order_no="E1", accepted=True)
    store.park_update("O9", "parked", T0)
    store.record_exit_attempt(attempt())
    store.record_dead_letter(letter(1))
    latch = KillSwitch(latched_at=T0, reason="limit", day_pnl=Decimal("-1.10"))
    store.latch_kill_switch(latch)
    store.close()

    again = open_store(backend.url)
    try:
        assert again.load_open_positions() == [position]
        assert again.fills(position.position_id) == fills
        assert [u.seq for u in again.order_updates()] == [seq]
        assert again.parked_updates() == [ParkedUpdate(order_no="O9", parked_at=T0,
                                                       raw="parked")]
        assert again.exit_attempts() == [attempt()]
        assert again.dead_letters() == [letter(1)]
        assert again.kill_switch() == latch
        assert again.record_order_update("raw", T0, order_no=None, accepted=False) > seq
    finally:
        again.close()


def test_a_store_that_cannot_open_raises_store_error_quickly(backend: Backend) -> None:
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        backend.broken()
    assert time.monotonic() - started < 5
    assert caught.value.__cause__ is not None
    assert "s3cret" not in str(caught.value)


def test_a_closed_store_raises_store_error(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.list_positions()
    store.close()  # closing twice is harmless


def test_calls_from_many_threads_are_safe(store: Store) -> None:
    def record(thread: int) -> None:
        for n in range(25):
            store.record_order_update(f"{thread}:{n}", T0, order_no=None, accepted=True)

    threads = [threading.Thread(target=record, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    seqs = [u.seq for u in store.order_updates()]
    assert len(seqs) == len(set(seqs)) == 100


# Opening by URL (no database server needed) -------------------------------------------------------
def test_no_url_opens_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    opened = open_store(None, tmp_path / "data")
    try:
        assert opened.schema_version() == LATEST
        assert (tmp_path / "data" / "tracker.sqlite3").is_file()
    finally:
        opened.close()


@pytest.mark.parametrize("url", ["mysql://root:s3cret@db/x", "user:s3cret@host/db",
                                 "root:s3cret@db://x"])
def test_an_unknown_scheme_is_a_value_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="scheme") as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
    if url.startswith("mysql"):
        assert "'mysql'" in str(caught.value)


@pytest.mark.parametrize(("url", "safe"), [
    ("postgresql://user:pw@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("postgres://:pw@host/db?sslmode=require", "postgres://:***@host/db?sslmode=require"),
    ("postgresql://host/db?user=u&password=pw", "postgresql://host/db?user=u&password=***"),
    ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
    ("sqlite:////tmp/x.sqlite3", "sqlite:////tmp/x.sqlite3"),
])
def test_redact_url_hides_passwords(url: str, safe: str) -> None:
    assert redact_url(url) == safe


def test_redact_text_hides_a_password_quoted_in_pieces() -> None:
    url = "postgresql://u:p%40ss@h/db"
    text = redact_text(f'bad option near "p@ss" in {url}', url)
    assert "p@ss" not in text and "p%40ss" not in text


@pytest.mark.integration
def test_postgres_reconnects_after_the_server_drops_the_connection(pg_url: str) -> None:
    import psycopg

    name = f"contract-{uuid.uuid4().hex[:8]}"
    store = open_store(f"{pg_url}&application_name={name}")
    try:
        store.save_position(active("E1"))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (name,))
        with pytest.raises(StoreError):
            store.load_open_positions()
        assert store.load_open_positions() == [active("E1")]
    finally:
        store.close()
