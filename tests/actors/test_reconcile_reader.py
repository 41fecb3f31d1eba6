"""Reading the broker's books into the system (``app/reconcile.py``): the order book goes in as
frames, and the positions are compared; an order that fills between the two reads is read in
again rather than alarmed, and a difference that stays is alarmed once, never traded away."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import ManualClock
from app.reconcile import BookReader, book_update, reconcile_frame
from app.serving import Served
from broker.dhan import BrokerOrder, BrokerPosition, BrokerTrade
from broker.dhan.outcomes import Answer, Outcome
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Instrument, Segment, TxnType
from models.policy import RiskConfig
from store.pnl_cache import InMemoryPnLCache
from store.records import StoredOrderUpdate
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore

FUT = Instrument(segment=Segment.NSE_FNO, security_id="47012")


def order(order_id: str, filled: int) -> BrokerOrder:
    return BrokerOrder(order_id=order_id, status="TRADED" if filled else "PENDING",
                       correlation_id=None, txn_type=TxnType.BUY, instrument=FUT,
                       product="INTRADAY", order_type="MARKET", quantity=50, filled_qty=filled,
                       avg_price=Decimal("200") if filled else None,
                       updated_at=f"2026-12-03 09:{20 + int(order_id[1:]):02d}:00")


class ScriptedBooks:
    """The REST reads a reconcile makes, each answered from its script in turn (the last
    answer repeats)."""

    def __init__(self, orders: list[list[BrokerOrder]], positions: list[int]) -> None:
        self.order_reads, self.position_reads = orders, positions
        self.calls: list[str] = []

    def orders(self) -> Answer[list[BrokerOrder]]:
        self.calls.append("orders")
        value = self.order_reads.pop(0) if len(self.order_reads) > 1 else self.order_reads[0]
        return Answer(Outcome.OK, value)

    def trades(self) -> Answer[list[BrokerTrade]]:
        self.calls.append("trades")
        return Answer(Outcome.OK, [])

    def positions(self) -> Answer[list[BrokerPosition]]:
        self.calls.append("positions")
        net = self.position_reads.pop(0) if len(self.position_reads) > 1 \
            else self.position_reads[0]
        return Answer(Outcome.OK, [BrokerPosition(instrument=FUT, product="INTRADAY",
                                                  net_qty=net)])


@pytest.fixture
def system() -> Iterator[System]:
    exchange = PaperExchange(TapeMarket([]), latency=timedelta(0), start=T0)  # nothing placed
    built = System(Parts(store=FakeStore(), cache=InMemoryPnLCache(), gateway=exchange,
                         quotes=None, config=RiskConfig(), clock=ManualClock(T0)))
    built.start(ticker=False)
    yield built
    built.stop()
    pykka.ActorRegistry.stop_all()


def reader(books: ScriptedBooks, system: System, alarms: list[str]) -> BookReader:
    return BookReader(books, system.order_frame, system,  # type: ignore[arg-type]
                      clock=lambda: T0, alarm=alarms.append)


def given(store: FakeStore) -> list[StoredOrderUpdate]:
    """The frames given in (not those an un-parking stored again)."""
    return [u for u in store.updates if u.reason != "unparked"]


def open_qty(system: System) -> int:
    return sum(p.quantity for p in system.open_positions())


def test_when_an_order_fills_between_the_reads_then_it_is_read_in_not_alarmed(
        system: System) -> None:
    books = ScriptedBooks(orders=[[order("E1", 50), order("E2", 0)],
                                  [order("E1", 50), order("E2", 50)]],
                          positions=[100])  # E2 filled after the first order-book read
    alarms: list[str] = []
    assert reader(books, system, alarms).reconcile()
    system.settle()
    assert open_qty(system) == 100
    assert alarms == []
    assert books.calls == ["orders", "positions", "orders", "positions"]  # rows priced


@pytest.mark.parametrize("way", ["reconcile", "takeover"])
def test_when_the_books_still_differ_then_alarmed_once_and_nothing_traded(
        system: System, way: str) -> None:
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[150])
    alarms: list[str] = []
    books_reader = reader(books, system, alarms)
    assert getattr(books_reader, way)()  # a takeover's positions differ: the book is read
    assert open_qty(system) == 50  # ours as the order book says
    exchange = system.parts.gateway
    assert isinstance(exchange, PaperExchange) and exchange.orders() == []  # nothing traded
    assert len(alarms) == 1 and "differ" in alarms[0]
    assert books_reader.reconciled.differences == {
        "NSE_FNO:47012/I": {"broker": 150, "ours": 50}}


class Seconds:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rechecking(books: ScriptedBooks, system: System, alarms: list[str],
               seconds: Seconds) -> BookReader:
    """A runner's reader: a difference left at a reconcile's end is compared again 5 s on."""
    return BookReader(books, system.order_frame, system,  # type: ignore[arg-type]
                      clock=lambda: T0, alarm=alarms.append, recheck_after=5.0,
                      monotonic=seconds)


@pytest.mark.parametrize("way", ["reconcile", "takeover"])
def test_when_a_fill_is_on_its_way_at_a_runners_reconcile_then_compared_again_not_alarmed(
        system: System, way: str) -> None:
    """E2 filled at DhanHQ, its row not yet in the book at either read of the reconcile: the
    runner's reader waits, then finds it in the book, and the positions agree: no alarm."""
    books = ScriptedBooks(orders=[[order("E1", 50), order("E2", 0)],
                                  [order("E1", 50), order("E2", 0)],
                                  [order("E1", 50), order("E2", 50)]],
                          positions=[100])
    alarms: list[str] = []
    seconds = Seconds()
    books_reader = rechecking(books, system, alarms, seconds)
    assert getattr(books_reader, way)()
    assert alarms == [] and books_reader.reconciled.differences  # shown, not alarmed yet
    calls = len(books.calls)
    seconds.now += 4.9
    assert not books_reader.recheck() and len(books.calls) == calls  # not due: nothing read
    seconds.now += 0.2
    assert books_reader.recheck()
    assert books.calls[calls:] == ["orders", "positions"]
    system.settle()
    assert open_qty(system) == 100 and alarms == []
    assert books_reader.reconciled.differences == {} and books_reader.recheck_at is None
    seconds.now += 60
    assert not books_reader.recheck()  # once


def test_when_a_difference_is_still_there_at_the_recheck_then_alarmed_once(
        system: System) -> None:
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[150])
    alarms: list[str] = []
    seconds = Seconds()
    books_reader = rechecking(books, system, alarms, seconds)
    assert books_reader.reconcile()
    assert alarms == []
    seconds.now += 5.0
    assert books_reader.recheck()
    assert len(alarms) == 1 and "differ" in alarms[0]
    assert books_reader.reconciled.differences == {
        "NSE_FNO:47012/I": {"broker": 150, "ours": 50}}
    seconds.now += 60
    assert not books_reader.recheck() and len(alarms) == 1
    exchange = system.parts.gateway
    assert isinstance(exchange, PaperExchange) and exchange.orders() == []  # nothing traded


def test_when_the_books_cannot_be_read_at_the_recheck_then_it_is_tried_again(
        system: System) -> None:
    class Flaky(ScriptedBooks):
        down = False

        def orders(self) -> Answer[list[BrokerOrder]]:
            if self.down:
                self.calls.append("orders down")
                return Answer(Outcome.UNKNOWN, None, "timeout")
            return super().orders()

    books = Flaky(orders=[[order("E1", 50)]], positions=[150])
    alarms: list[str] = []
    seconds = Seconds()
    books_reader = rechecking(books, system, alarms, seconds)
    assert books_reader.reconcile()
    books.down = True
    seconds.now += 5.0
    assert books_reader.recheck()
    assert alarms == [] and books_reader.recheck_at == seconds.now + 5.0  # not alarmed blind
    books.down = False
    seconds.now += 5.0
    assert books_reader.recheck() and len(alarms) == 1


def test_when_a_recheck_raises_then_it_is_kept_for_the_next_step(system: System) -> None:
    class Broken(ScriptedBooks):
        broken = False

        def orders(self) -> Answer[list[BrokerOrder]]:
            if self.broken:
                raise ConnectionError("reset")
            return super().orders()

    books = Broken(orders=[[order("E1", 50)]], positions=[150])
    alarms: list[str] = []
    seconds = Seconds()
    books_reader = rechecking(books, system, alarms, seconds)
    served = Served(system, books=books_reader)
    assert books_reader.reconcile()
    books.broken = True
    seconds.now += 5.0
    served.recheck()  # logged, not raised: the runner's step goes on
    assert books_reader.recheck_at == seconds.now + 5.0 and alarms == []
    books.broken = False
    seconds.now += 5.0
    served.recheck()
    assert len(alarms) == 1


def test_when_the_books_agree_then_read_once(system: System) -> None:
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
    alarms: list[str] = []
    assert reader(books, system, alarms).reconcile()
    assert alarms == [] and books.calls == ["orders", "positions"]


def test_when_the_order_book_cannot_be_read_then_tried_again_later(system: System) -> None:
    class Down(ScriptedBooks):
        def orders(self) -> Answer[list[BrokerOrder]]:
            return Answer(Outcome.UNKNOWN, None, "timeout")

    books_reader = reader(Down([[]], [0]), system, [])
    assert not books_reader.reconcile()
    assert books_reader.reconciled.error == "GET /orders: UNKNOWN timeout"



def test_when_the_system_holds_an_order_already_then_a_reconcile_gives_only_what_changed(
        system: System) -> None:
    """A new owner's reconcile late in a day reads every order of it: those the system holds
    already are not given (nor stored) again; one that moved on is."""
    store = system.parts.store
    assert isinstance(store, FakeStore)
    first = reader(ScriptedBooks(orders=[[order("E1", 50), order("E2", 0)]], positions=[50]),
                   system, [])
    assert first.reconcile()
    system.settle()
    stored = len(given(store))
    assert stored == 2 and first.reconciled.held == 0

    moved = reader(ScriptedBooks(orders=[[order("E1", 50), order("E2", 50)]], positions=[100]),
                   system, [])  # a reader of its own: what a takeover's reconcile starts from
    assert moved.reconcile()
    system.settle()
    assert open_qty(system) == 100
    assert moved.reconciled.held == 1 and moved.reconciled.fills == 1
    assert len(given(store)) == stored + 1  # E2's fill only
    assert '"OrderNo": "E2"' in given(store)[-1].raw

    again = reader(ScriptedBooks(orders=[[order("E1", 50), order("E2", 50)]], positions=[100]),
                   system, [])
    assert again.reconcile()
    system.settle()
    assert again.reconciled.held == 2 and again.reconciled.fills == 0
    assert len(given(store)) == stored + 1 and open_qty(system) == 100


def test_when_the_system_cannot_say_what_it_holds_then_every_order_is_given(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(updates: object) -> list[bool]:
        raise pykka.Timeout("no answer")

    assert reader(ScriptedBooks(orders=[[order("E1", 50)]], positions=[50]), system,
                  []).reconcile()
    system.settle()
    monkeypatch.setattr(system, "news", slow)
    again = reader(ScriptedBooks(orders=[[order("E1", 50)]], positions=[50]), system, [])
    assert again.reconcile()
    assert again.reconciled.held == 0 and again.reconciled.fills == 1
    system.settle()
    assert open_qty(system) == 50  # given again, it changed nothing


def test_when_a_filled_orders_row_has_no_price_then_the_trade_book_prices_it(
        system: System) -> None:
    class Priced(ScriptedBooks):
        def trades(self) -> Answer[list[BrokerTrade]]:
            self.calls.append("trades")
            return Answer(Outcome.OK, [BrokerTrade(
                order_id="E1", trade_id="T1", txn_type=TxnType.BUY, instrument=FUT,
                product="INTRADAY", quantity=50, price=Decimal("201"), time=None)])

    unpriced = replace(order("E1", 50), avg_price=None)
    books = Priced(orders=[[unpriced]], positions=[50])
    assert reader(books, system, []).reconcile()
    system.settle()
    assert books.calls == ["orders", "trades", "positions"]
    assert [p.entry_price for p in system.open_positions()] == [Decimal("201")]


# A runner's takeover (SPEC §13): positions first, the order book only on a difference --------
def test_when_a_takeovers_positions_agree_then_the_order_book_is_not_read(
        system: System) -> None:
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
    alarms: list[str] = []
    assert reader(books, system, alarms).reconcile()  # the old owner's state: E1 held
    books.calls.clear()
    successor = reader(books, system, alarms)
    assert successor.takeover()
    assert books.calls == ["positions"] and alarms == []
    assert successor.reconciled.book_read is False and successor.reconciled.at == T0
    assert open_qty(system) == 50


def test_a_takeovers_reconcile_waits_for_no_exit_being_placed() -> None:
    """A takeover resumes its exits at once, and many queue behind DhanHQ's order limit (10 a
    second): the positions' comparison waits for what reached the positions, not for the
    gateway (``System.settle_books``). Here the one exit's placement is held until the
    reconcile is over; a reconcile that waited for the gateway would wait for it."""
    placing, release = threading.Event(), threading.Event()

    class Held(PaperExchange):
        def place_order(self, **kwargs: Any) -> str:
            if kwargs["client_id"].startswith("X-"):
                placing.set()
                release.wait(30)
            return super().place_order(**kwargs)

    clock = ManualClock(T0)
    exchange = Held(TapeMarket([]), latency=timedelta(0), start=T0)
    built = System(Parts(store=FakeStore(), cache=InMemoryPnLCache(), gateway=exchange,
                         quotes=None, config=RiskConfig(), clock=clock))
    built.start(ticker=False)
    try:
        books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
        assert reader(books, built, []).reconcile()  # 50 long at 200
        built.tick(FUT, Decimal("150"), clock())  # far below its stop loss
        built.step(clock(), timer=False)
        assert placing.wait(10)  # the exit's placement is under way, held
        done: list[bool] = []
        taking = threading.Thread(target=lambda: done.append(reader(books, built,
                                                                    []).takeover()))
        taking.start()
        taking.join(10)
        assert done == [True] and not release.is_set()  # over while the exit was held
        assert open_qty(built) == 50  # EXITING, nothing filled yet: the books agree
    finally:
        release.set()
        built.stop()
        pykka.ActorRegistry.stop_all()


def test_when_a_takeovers_positions_differ_then_the_order_book_is_read_in(
        system: System) -> None:
    # E1 filled at the broker; its update never reached the stream.
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
    alarms: list[str] = []
    successor = reader(books, system, alarms)
    assert successor.takeover()
    system.settle()
    assert books.calls == ["positions", "orders", "positions"]
    assert open_qty(system) == 50 and alarms == []  # read in: agree now, nothing alarmed
    assert successor.reconciled.book_read is True and successor.reconciled.fills == 1


def test_when_a_takeovers_positions_differ_then_the_stream_is_caught_up_before_the_book(
        system: System) -> None:
    """A fill on its way (at the broker, not yet through the stream) shows as a difference:
    the catch-up takes it in and the positions are compared again; the order book (every
    order of the day) is read only when they still differ."""
    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
    caught: list[int] = []

    def catch_up() -> None:  # the stream brings E1's fill
        caught.append(1)
        fill = book_update(order("E1", 50), None)
        assert fill is not None
        system.order_frame(reconcile_frame(fill))

    successor = reader(books, system, [])
    assert successor.takeover(catch_up)
    assert caught == [1] and books.calls == ["positions", "positions"]  # no book read
    assert successor.reconciled.book_read is False and open_qty(system) == 50
    # a difference the stream cannot explain: the book is read after all
    books = ScriptedBooks(orders=[[order("E1", 50), order("E2", 50)]], positions=[100])
    successor = reader(books, system, [])
    assert successor.takeover(lambda: caught.append(2))
    system.settle()
    assert caught == [1, 2] and books.calls == ["positions", "positions", "orders", "positions"]
    assert successor.reconciled.book_read is True and open_qty(system) == 100


def test_when_a_takeover_cannot_read_the_positions_then_tried_again_later(
        system: System) -> None:
    class Down(ScriptedBooks):
        def positions(self) -> Answer[list[BrokerPosition]]:
            self.calls.append("positions")
            return Answer(Outcome.UNKNOWN, None, "timeout")

    books = Down([[order("E1", 50)]], [0])
    successor = reader(books, system, [])
    assert not successor.takeover()
    assert successor.reconciled.error == "GET /positions: UNKNOWN timeout"
    assert books.calls == ["positions"]


def test_a_runner_reads_the_whole_book_at_a_takeover_only_when_told_to(system: System) -> None:
    from app.serving import Served

    books = ScriptedBooks(orders=[[order("E1", 50)]], positions=[50])
    assert reader(books, system, []).reconcile()  # E1 held
    books.calls.clear()
    assert Served(system, books=reader(books, system, [])).reconcile()
    assert books.calls == ["positions"]
    books.calls.clear()
    assert Served(system, books=reader(books, system, []), read_book=True).reconcile()
    assert books.calls == ["orders", "positions"]  # run.py runner --read-book
