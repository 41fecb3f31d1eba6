"""A frame stored but never routed before a kill -9 is applied at the restart (SPEC §11.1,
§11.2, §11.4): the start-up routes again the frames stored since the exchange day began,
before exits resume; those already applied change nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from broker.ports import OrderView
from models.books import ours
from models.common import Instrument, Segment, TxnType, exit_client_id
from models.orders import OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.position import PositionStatus
from models.wire import parse_order_update, to_dhan_frame
from store.pnl_cache import InMemoryPnLCache
from store.ports import Store
from store.postgres import PostgresStore
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore
from tests.faults.frames import broker_net, order_lives

INSTRUMENT = Instrument(segment=Segment.NSE_FNO, security_id="47012")


class Wire:
    """The paper exchange's order path into the system. Once ``cut`` (the process is about to
    die), each frame is stored as the order-update actor stores it and goes no further: what a
    kill -9 between storing a frame and routing it leaves behind."""

    def __init__(self, exchange: PaperExchange, store: Store, clock: ManualClock) -> None:
        self.exchange, self.store, self.clock = exchange, store, clock
        self.sink: list[object] = []
        self.placements: list[str] = []
        self.look_ups: list[str] = []
        self.cut = False
        self.lost: list[str] = []
        """Frames the exchange sent before the system subscribed: nobody heard of them."""
        exchange.subscribe(self.carry)

    def carry(self, raw: str) -> None:
        if not self.sink and not self.cut:
            self.lost.append(raw)
        if self.cut:
            update = parse_order_update(raw)
            self.store.record_order_update(raw, self.clock(), order_no=update.order_no,
                                           accepted=isinstance(update, OrderUpdate))
            return
        for sink in self.sink:
            sink(raw)  # type: ignore[operator]

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        self.placements.append(client_id)
        return self.exchange.place_order(client_id=client_id, instrument=instrument,
                                         txn_type=txn_type, quantity=quantity, product=product)

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        self.look_ups.append(client_id)
        return self.exchange.find_order(client_id)

    def subscribe(self, sink: object) -> None:
        self.sink.append(sink)


class Run:
    """One process: the system on ``store`` over an exchange of its own (a killed process
    takes its paper exchange with it) or over ``exchange`` (a broker that outlives it), its
    clock at ``at``."""

    def __init__(self, store: Store, prefix: str, at: datetime, ltp: str = "200",
                 exchange: PaperExchange | None = None) -> None:
        self.store = store
        self.clock = ManualClock(at)
        self.market = TapeMarket([]) if exchange is None else exchange.market
        self.market.set_price(INSTRUMENT, Decimal(ltp), at)
        self.exchange = exchange or PaperExchange(self.market, latency=timedelta(0),
                                                  order_prefix=prefix, start=at)
        self.wire = Wire(self.exchange, store, self.clock)
        self.system = System(Parts(store=store, cache=InMemoryPnLCache(), gateway=self.wire,
                                   quotes=None, config=RiskConfig(), clock=self.clock))
        self.system.start(ticker=False)
        self.system.settle()

    def frame(self, order_no: str, status: OrderStatus, traded: int, *,
              txn: TxnType = TxnType.BUY, seconds: int = 0) -> None:
        self.system.order_frame(entry(order_no, status, traded, txn=txn, seconds=seconds))
        self.system.settle()

    def at(self, moment: datetime, ltp: str) -> None:
        self.clock.set(moment)
        self.exchange.advance(moment)
        self.market.set_price(INSTRUMENT, Decimal(ltp), moment)
        self.system.tick(INSTRUMENT, Decimal(ltp), moment)
        self.system.step(moment, timer=True)
        self.system.settle()

    def placed(self) -> list[str]:
        return [o.client_id for o in self.exchange.orders()]

    def kill(self) -> None:
        self.system.stop()
        pykka.ActorRegistry.stop_all()


def entry(order_no: str, status: OrderStatus, traded: int, *, txn: TxnType = TxnType.BUY,
          seconds: int = 0, avg: str = "200") -> str:
    return to_dhan_frame(OrderUpdate(
        order_no=order_no, status=status, segment=INSTRUMENT.segment,
        security_id=INSTRUMENT.security_id, txn_type=txn, product="I", quantity=100,
        traded_qty=traded, avg_traded_price=Decimal(avg) if traded else None,
        updated_at=T0 + timedelta(seconds=seconds)))


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


STORES = ["fake", pytest.param("postgres", marks=pytest.mark.integration)]
"""The stores a restart test runs on: the fake, and the real PostgreSQL."""


def fake_or_postgres(request: pytest.FixtureRequest,
                     kind: Callable[[str], Store] = PostgresStore) -> Iterator[Store]:
    """The body of a store fixture parametrized with ``STORES``: a ``FakeStore``, or a
    ``kind`` (a ``PostgresStore``, or a class or factory of the same shape) of the test
    database's URL, migrated, closed afterwards."""
    if request.param == "fake":
        yield FakeStore()
        return
    opened = kind(request.getfixturevalue("pg_url"))
    opened.migrate()
    yield opened
    opened.close()


def _books_agree(store: Store) -> bool:
    """Every fill the stored frames report (both runs') against the stored open positions."""
    net = {key: qty for key, qty in broker_net(order_lives(store)).items() if qty}
    return net == {k: v for k, v in ours(store.load_open_positions()).items() if v}


def _attempts(store: FakeStore) -> list[tuple[str, int, str]]:
    return sorted((a.position_id, a.attempt, a.client_id) for a in store.exit_attempts())


def test_an_exit_fill_stored_but_never_routed_before_a_kill_ends_the_exit_at_restart() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.wire.cut = True  # the exit fills at once; its frames are stored, then the kill
    first.at(T0 + timedelta(seconds=1), "170")
    assert first.placed() == [exit_client_id("PE1", 1)]
    first.kill()
    assert store.positions["PE1"].status is PositionStatus.EXITING
    second = Run(store, "Y", T0 + timedelta(seconds=5), ltp="170")
    position = store.positions["PE1"]
    assert (position.status, position.exit_price) == (PositionStatus.EXITED, Decimal("170"))
    assert second.placed() == []  # the attempt that filled is not placed again
    assert [a.client_id for a in store.exit_attempts()] == [exit_client_id("PE1", 1)]
    assert _books_agree(store)
    assert second.system.books().agree


def test_an_entry_stored_but_never_routed_opens_its_position_at_restart() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.wire.cut = True
    first.wire.carry(entry("E2", OrderStatus.TRADED, 100, seconds=2))
    first.kill()
    assert "PE2" not in store.positions
    Run(store, "Y", T0 + timedelta(seconds=5))
    assert store.positions["PE2"].status is PositionStatus.ACTIVE
    assert store.positions["PE2"].quantity == 100
    assert _books_agree(store)


def test_a_restart_applies_only_the_exchange_days_frames_and_changes_nothing_applied() -> None:
    store = FakeStore()
    yesterday = T0 - timedelta(days=1)
    store.record_order_update(entry("E0", OrderStatus.TRADED, 100), yesterday, order_no="E0",
                              accepted=True)  # a day that ended: the broker's book is new
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.at(T0 + timedelta(seconds=1), "170")  # PE1's stop loss: its exit fills
    first.frame("E2", OrderStatus.PENDING, 40, seconds=2)
    first.frame("W9", OrderStatus.PENDING, 0, seconds=3)  # an order nobody knows: parked
    first.frame("E3", OrderStatus.TRADED, 100, seconds=4)
    first.exchange.resting = True
    first.at(T0 + timedelta(seconds=5), "170")  # PE2's and PE3's exits rest at the exchange
    first.system.order_frame(entry("E4", OrderStatus.TRADED, 100, seconds=6, avg="170"))
    first.system.settle()
    first.kill()
    statuses = {pid: p.status for pid, p in store.positions.items()}
    assert statuses == {"PE1": PositionStatus.EXITED, "PE2": PositionStatus.EXITING,
                        "PE3": PositionStatus.EXITING, "PE4": PositionStatus.ACTIVE}
    before = (dict(store.positions), list(store.parked), _attempts(store),
              dict(store.fill_rows))
    second = Run(store, "Y", T0 + timedelta(seconds=8), ltp="170")
    second.system.settle()  # the resumed exits' fills
    after = (dict(store.positions), list(store.parked), _attempts(store),
             dict(store.fill_rows))
    assert "PE0" not in store.positions
    assert after[0]["PE1"] == before[0]["PE1"] and after[0]["PE4"] == before[0]["PE4"]
    assert after[1:3] == before[1:3]  # nothing parked twice, no new attempt
    assert {k: v for k, v in after[3].items() if k[0] in ("PE1", "PE4")} == {
        k: v for k, v in before[3].items() if k[0] in ("PE1", "PE4")}
    # The exits in flight at the stop resume, each once, after the frames were applied and
    # once the system hears the exchange (their fills come at once).
    assert second.wire.lost == []
    assert sorted(second.placed()) == [exit_client_id("PE2", 1), exit_client_id("PE3", 1)]
    assert store.positions["PE2"].status is PositionStatus.EXITED
    assert store.positions["PE2"].entry_qty == 40  # its entry order stayed partly filled


def test_an_exit_in_flight_at_a_kill_is_looked_up_by_client_id_and_not_placed_again() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.wire.sink.clear()  # the process stops hearing the broker: its exit's fill is lost
    first.at(T0 + timedelta(seconds=1), "170")
    first.exchange.advance(T0 + timedelta(seconds=2))  # filled at the broker
    assert first.wire.placements == [exit_client_id("PE1", 1)]
    first.kill()
    assert store.positions["PE1"].status is PositionStatus.EXITING
    second = Run(store, "Y", T0 + timedelta(seconds=5), ltp="170", exchange=first.exchange)
    second.system.settle()
    position = store.positions["PE1"]
    assert (position.status, position.exit_price) == (PositionStatus.EXITED, Decimal("170"))
    assert second.wire.look_ups == [exit_client_id("PE1", 1)]
    assert second.wire.placements == []  # found filled: not sent again


def test_an_exit_intent_never_sent_before_a_kill_is_placed_once_after_its_look_up() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.wire.place_order = _never_sent  # type: ignore[method-assign]
    first.at(T0 + timedelta(seconds=1), "170")
    first.kill()  # the intent is stored; no order reached the broker
    assert store.positions["PE1"].status is PositionStatus.EXITING
    second = Run(store, "Y", T0 + timedelta(seconds=5), ltp="170", exchange=first.exchange)
    second.at(T0 + timedelta(seconds=6), "170")
    assert second.wire.look_ups[:1] == [exit_client_id("PE1", 1)]
    assert second.wire.placements == [exit_client_id("PE1", 1)]  # the same attempt, once
    exited = store.positions["PE1"]
    assert exited.status is PositionStatus.EXITED


def _never_sent(**order: object) -> str:
    raise TimeoutError("the process died while sending")


def test_a_restart_after_an_orderly_stop_routes_again_no_frame_its_positions_hold() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.frame("E2", OrderStatus.PENDING, 0, seconds=1)
    first.frame("E2", OrderStatus.PART_TRADED, 40, seconds=2)
    first.exchange.resting = True
    first.at(T0 + timedelta(seconds=3), "170")  # both exits rest at the exchange
    first.kill()  # an orderly stop: every stored frame was applied and stored
    assert len(store.order_updates()) >= 5
    second = Run(store, "Y", T0 + timedelta(seconds=5), ltp="170")
    assert second.system.recovered == 0  # each one held by its stored position
    assert _books_agree(store)


def test_a_restart_routes_again_a_frame_stored_after_its_positions_last_write() -> None:
    store = FakeStore()
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.frame("E2", OrderStatus.PART_TRADED, 40, seconds=1)
    first.wire.cut = True
    first.wire.carry(entry("E2", OrderStatus.PART_TRADED, 70, seconds=2))
    first.kill()
    assert store.positions["PE2"].quantity == 40
    second = Run(store, "Y", T0 + timedelta(seconds=5))
    assert second.system.recovered == 1  # E2's second fill, and only it
    assert store.positions["PE2"].quantity == 70 and _books_agree(store)
