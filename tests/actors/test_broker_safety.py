"""What real brokers do, and what must never follow from it: a lost fill or a second exit
(SPEC §11.1-§11.3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from actors.runtime.metrics import Metrics
from actors.system import Parts, System
from actors.tracker.keeper import KeeperContext, PositionKeeper, Target
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.closed import is_plain
from models.common import Segment, Side, TxnType, exit_client_id
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    CancelExitOrder,
    ExitOrderFailed,
    OrderUpdateReceived,
    RequestExit,
)
from models.orders import OrderProgress, OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.position import ExitReason, OrderRole, PositionStatus, TrackedOrder, new_position
from models.wire import parse_order_update
from store.pnl_cache import InMemoryPnLCache
from tests.actors.test_order_updates import Flow, frame
from tests.actors.test_tracker_flow import T0, entry, price
from tests.fakes import FakeStore


@pytest.fixture
def prefixed() -> Iterator[Flow]:
    built = Flow(correlation_prefix="algo-")
    yield built
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def flow() -> Iterator[Flow]:
    built = Flow()
    yield built
    pykka.ActorRegistry.stop_all()


def books_agree(flow: Flow) -> bool:
    report = flow.orders.proxy().books().get(timeout=5)
    assert report.agree, report.line()
    return True


def _without(raw: str, *keys: str) -> str:
    document = json.loads(raw)
    for key in keys:
        document["Data"].pop(key, None)
    return json.dumps(document)


def test_with_a_prefix_policy_a_manual_close_at_the_broker_still_closes_the_position(
        prefixed: Flow) -> None:
    prefixed.send(frame("E1", OrderStatus.TRADED, 100, correlation="algo-1"))
    assert prefixed.store.positions["PE1"].quantity == 100
    # The trader closes it in the broker's app: no prefix, opposite side, same product.
    prefixed.send(frame("M1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="205"))
    position = prefixed.store.positions["PE1"]
    assert (position.status, position.exit_reason) == (PositionStatus.EXITED,
                                                       ExitReason.BROKER_EXIT)
    price(prefixed, "170")  # far below the stop loss: nothing left to exit
    assert prefixed.gateway.placed == {}
    assert "PM1" not in prefixed.store.positions  # no remainder: nothing opened from it
    assert books_agree(prefixed)


def test_with_a_prefix_policy_an_untracked_entry_is_still_not_tracked(prefixed: Flow) -> None:
    prefixed.send(frame("X1", OrderStatus.TRADED, 100))
    assert prefixed.store.positions == {}
    report = prefixed.orders.proxy().books().get(timeout=5)
    assert report.agree and report.untracked == {"NSE_FNO:47012/I": 100}


def _exiting(flow: Flow) -> str:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    price(flow, "170")  # stop loss
    client_id = exit_client_id("PE1", 1)
    assert client_id in flow.gateway.placed
    return client_id


def test_a_traded_exit_update_without_quantities_closes_the_position(flow: Flow) -> None:
    client_id = _exiting(flow)
    traded = frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="170",
                   correlation=client_id)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity"))
    position = flow.store.positions["PE1"]
    assert (position.status, position.exit_reason) == (PositionStatus.EXITED,
                                                       ExitReason.STOP_LOSS)
    assert position.exit_price == Decimal("170")
    price(flow, "160")
    assert list(flow.gateway.placed) == [client_id]  # no second exit
    assert books_agree(flow)


def test_a_traded_exit_update_without_quantities_or_price_closes_it_at_the_known_price(
        flow: Flow) -> None:
    client_id = _exiting(flow)
    traded = frame("X1", OrderStatus.TRADED, 100, txn=TxnType.SELL, avg="170",
                   correlation=client_id)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity", "AvgTradedPrice"))
    position = flow.store.positions["PE1"]
    assert position.status is PositionStatus.EXITED and position.quantity == 0
    assert position.exit_price is not None
    price(flow, "160")
    assert list(flow.gateway.placed) == [client_id]
    assert books_agree(flow)


def test_an_exit_fill_larger_than_the_position_opens_the_opposite_remainder(flow: Flow) -> None:
    client_id = _exiting(flow)
    # The broker fills 150 against our 100 (a manual order raced ours into one fill).
    flow.send(frame("X1", OrderStatus.TRADED, 150, txn=TxnType.SELL, qty=150, avg="170",
                    correlation=client_id))
    position = flow.store.positions["PE1"]
    assert position.status is PositionStatus.EXITED and position.closed_qty == 100
    assert position.excess_qty == 50 and position.exit_price == Decimal("170")
    remainder = [p for p in flow.store.positions.values() if p.position_id != "PE1"]
    assert len(remainder) == 1
    (short,) = remainder
    assert (short.side.value, short.quantity, short.status) == ("SHORT", 50,
                                                                PositionStatus.ACTIVE)
    assert short.entry_price == Decimal("170")
    assert books_agree(flow)



def test_an_update_of_a_closed_position_delivered_again_after_a_restart_opens_nothing() -> None:
    """Found by the model-based search: BUY 1, SELL 1 (a manual close), restart, the SELL's
    frame again (a reconnect, a reconcile): it must find the order, not open a SHORT."""
    store, clock = FakeStore(), ManualClock(T0)

    def start() -> System:
        return System(Parts(store=store, cache=InMemoryPnLCache(),
                            gateway=PaperExchange(TapeMarket([]), start=T0), quotes=None,
                            config=RiskConfig(), clock=clock)).start(ticker=False)

    first = start()
    buy = frame("B1", OrderStatus.TRADED, 1, qty=1)
    sell = frame("B2", OrderStatus.TRADED, 1, txn=TxnType.SELL, qty=1, seconds=1)
    for raw in (buy, sell):
        first.order_frame(raw)
        first.settle()
    assert store.positions["PB1"].status is PositionStatus.EXITED
    first.stop()
    pykka.ActorRegistry.stop_all()
    clock.set(T0 + timedelta(seconds=5))
    second = start()
    try:
        second.order_frame(sell)
        second.settle()
        assert sorted(store.positions) == ["PB1"]
        assert second.books().agree, second.books().line()
    finally:
        second.stop()


def test_a_burst_of_one_orders_partial_fills_reduces_no_more_than_was_open(flow: Flow) -> None:
    """Found by the model-based search: fills that come before the reduced position's close is
    announced must not be allocated to it again."""
    flow.send(frame("B1", OrderStatus.TRADED, 75, qty=75))
    flow.send(frame("M2", OrderStatus.TRADED, 100, txn=TxnType.SELL, qty=100, seconds=1))
    assert flow.store.positions["PM2"].quantity == 25  # the SHORT remainder of the close
    for traded, status in ((25, OrderStatus.PENDING), (50, OrderStatus.PENDING),
                           (75, OrderStatus.TRADED)):
        flow.orders.tell(OrderUpdateReceived(raw=frame("B3", status, traded, qty=75, seconds=2),
                                             correlation_id="burst", sent_at=T0))
    flow.settle()
    assert flow.store.positions["PM2"].status is PositionStatus.EXITED
    remainder = flow.store.positions["PB3"]
    assert (remainder.side.value, remainder.quantity) == ("LONG", 50)
    assert books_agree(flow)


def test_a_traded_frame_without_quantities_of_an_unknown_order_opens_its_whole_quantity(
        flow: Flow) -> None:
    """Found by the model-based search: the order's quantity came in its earlier frames only."""
    flow.send(frame("B7", OrderStatus.PENDING, 0, qty=75))  # parked: no fill yet
    flow.send(frame("B7", OrderStatus.PENDING, 50, qty=75, seconds=1))
    traded = frame("B7", OrderStatus.TRADED, 75, qty=75, avg="200", seconds=2)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity"))
    assert flow.store.positions["PB7"].quantity == 75
    assert books_agree(flow)


def test_a_fill_that_crashes_its_tracker_reaches_the_restarted_tracker(flow: Flow) -> None:
    """Found by the model-based search: the fill the tracker was storing when it crashed was
    dead-lettered with the crash, so the position kept quantity the broker had closed."""
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    flow.store.crash_fills = 1  # the write of the next fill crashes the tracker
    flow.send(frame("M1", OrderStatus.TRADED, 40, txn=TxnType.SELL, qty=40, avg="205",
                    seconds=1))
    assert flow.store.crash_fills == 0  # it did crash
    assert flow.store.positions["PE1"].quantity == 60
    assert books_agree(flow)


def test_an_entry_fill_that_crashes_its_new_tracker_still_opens_the_position(flow: Flow) -> None:
    flow.store.crash_fills = 1
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    assert flow.store.crash_fills == 0
    assert flow.store.positions["PE1"].quantity == 100
    assert books_agree(flow)


def test_a_fill_that_crashes_the_restarted_tracker_too_is_dead_lettered_as_poison(
        flow: Flow) -> None:
    flow.send(frame("E1", OrderStatus.TRADED, 100))
    flow.store.crash_fills = 2  # the fill breaks its tracker, and the next one
    flow.send(frame("M1", OrderStatus.TRADED, 40, txn=TxnType.SELL, qty=40, avg="205",
                    seconds=1))
    assert flow.store.crash_fills == 0
    poison = [letter for letter in flow.store.letters if letter.error.startswith("poison")]
    assert [letter.message_type for letter in poison] == ["ApplyProgress"]
    report = flow.orders.proxy().books().get(timeout=5)
    assert not report.agree, "a fill lost to poison shows as a difference"
    # handed on once only: the position is still owned and takes the fills that follow
    flow.send(frame("M2", OrderStatus.TRADED, 30, txn=TxnType.SELL, qty=30, avg="205",
                    seconds=2))
    assert flow.store.positions["PE1"].quantity == 70


def test_a_manual_close_traded_without_quantities_before_its_partial_fills_closes_it(
        flow: Flow) -> None:
    """Found by the model-based search: the TRADED frame came first, without quantities (no
    fill known: parked); the partial fills that followed made the order a known untracked
    order, but the parked frame was never taken back, and the books hid the difference as
    untracked quantity."""
    flow.send(frame("E1", OrderStatus.TRADED, 75, qty=75))
    traded = frame("M1", OrderStatus.TRADED, 75, txn=TxnType.SELL, qty=75, avg="205",
                   seconds=3)
    flow.send(_without(traded, "TradedQty", "Quantity", "RemainingQuantity"))
    flow.send(frame("M1", OrderStatus.PENDING, 25, txn=TxnType.SELL, qty=75, avg="205",
                    seconds=1))
    flow.send(frame("M1", OrderStatus.PENDING, 50, txn=TxnType.SELL, qty=75, avg="205",
                    seconds=2))
    position = flow.store.positions["PE1"]
    assert (position.status, position.quantity) == (PositionStatus.EXITED, 0)
    assert flow.orders.proxy().parked.get(timeout=5) == 0
    report = flow.orders.proxy().books().get(timeout=5)
    assert report.agree and report.untracked == {}, report.line()



# A flat position keeps no live exit (SPEC §11.2), whichever write closes it ---------------------
def _keeper_with_a_live_exit() -> PositionKeeper:
    """PE1 LONG 100, EXITING, its exit order EX1 acknowledged and resting (PENDING)."""
    keeper = PositionKeeper(new_position(entry(order_no="E1"), position_id="PE1", side=Side.LONG,
                                         created_at=T0),
                            KeeperContext(store=FakeStore(), config=RiskConfig(),
                                          clock=lambda: T0, metrics=Metrics()))
    keeper.handle(ApplyOrderUpdate(position_id="PE1", update=entry(order_no="E1"),
                                   role=OrderRole.ENTRY, correlation_id="e", sent_at=T0))
    keeper.handle(RequestExit(reason=ExitReason.STOP_LOSS, position_id="PE1",
                              correlation_id="x", sent_at=T0))
    resting = OrderUpdate(order_no="EX1", status=OrderStatus.PENDING, segment=Segment.NSE_FNO,
                          security_id="47012", txn_type=TxnType.SELL, quantity=100,
                          traded_qty=0, correlation_id=exit_client_id("PE1", 1), updated_at=T0)
    keeper.handle(ApplyOrderUpdate(position_id="PE1", update=resting, role=OrderRole.EXIT,
                                   attempt=1, correlation_id="x", sent_at=T0))
    assert keeper.position.status is PositionStatus.EXITING
    return keeper


def _manual_close(qty: int = 100) -> ApplyProgress:
    return ApplyProgress(position_id="PE1", role=OrderRole.OPPOSITE, correlation_id="m",
                         sent_at=T0, progress=OrderProgress(
                             order_no="M1", status=OrderStatus.TRADED, traded_qty=qty,
                             traded_value=Decimal(205 * qty), quantity=qty, updated_at=T0))


def _status(keeper: PositionKeeper) -> PositionStatus:
    return keeper.position.status


def _cancels(out: list[tuple[Target, object]]) -> list[str]:
    return [m.order_no for _, m in out if isinstance(m, CancelExitOrder)]


def test_a_close_stored_with_a_run_of_updates_cancels_the_live_exit() -> None:
    """Found by the model-based search: the manual close came in a burst of updates, so its
    write waited for the last of them (``store_unsaved``), which did not cancel our exit."""
    keeper = _keeper_with_a_live_exit()
    assert keeper.handle(_manual_close(), more=True) == []  # its write waits for the next
    nothing_new = OrderUpdate(order_no="EX1", status=OrderStatus.PENDING,
                              segment=Segment.NSE_FNO, security_id="47012",
                              txn_type=TxnType.SELL, quantity=100, traded_qty=0,
                              correlation_id=exit_client_id("PE1", 1), updated_at=T0)
    out = keeper.handle(ApplyOrderUpdate(position_id="PE1", update=nothing_new,
                                         role=OrderRole.EXIT, attempt=1, correlation_id="x",
                                         sent_at=T0))
    assert keeper.position.status is PositionStatus.EXITED
    assert _cancels(out) == ["EX1"]


def test_a_close_of_an_active_position_cancels_an_exit_that_still_rests() -> None:
    """Found by the model-based search: an attempt given up as failed (the position ACTIVE
    again) may still rest at the broker; a close from ACTIVE left it live on a flat
    position."""
    keeper = _keeper_with_a_live_exit()
    keeper.handle(ExitOrderFailed(position_id="PE1", attempt=1,
                                  client_id=exit_client_id("PE1", 1), reason="timed out",
                                  correlation_id="x", sent_at=T0))
    assert _status(keeper) is PositionStatus.ACTIVE
    out = keeper.handle(_manual_close())
    assert _status(keeper) is PositionStatus.EXITED
    assert _cancels(out) == ["EX1"]


def test_an_order_split_between_positions_is_counted_once_after_a_restart() -> None:
    """Found by the model-based search: a manual SELL that reduced two positions was not
    counted in the books after a restart (the positions loaded recorded only their shares),
    and its later fills must go on reducing them, never past what was open."""
    store, clock = FakeStore(), ManualClock(T0)

    def start() -> System:
        return System(Parts(store=store, cache=InMemoryPnLCache(),
                            gateway=PaperExchange(TapeMarket([]), start=T0), quotes=None,
                            config=RiskConfig(), clock=clock)).start(ticker=False)

    first = start()
    for raw in (frame("B1", OrderStatus.TRADED, 50, qty=50),
                frame("B2", OrderStatus.TRADED, 50, qty=50, seconds=1),
                frame("M1", OrderStatus.PENDING, 75, txn=TxnType.SELL, qty=150, seconds=2)):
        first.order_frame(raw)
        first.settle()
    assert store.positions["PB1"].status is PositionStatus.EXITED
    assert store.positions["PB2"].quantity == 25
    assert first.books().agree, first.books().line()
    first.stop()
    pykka.ActorRegistry.stop_all()
    clock.set(T0 + timedelta(seconds=5))
    second = start()
    try:
        second.settle()
        assert second.books().agree, second.books().line()
        # the rest of the order: 25 closes PB2, 50 opens a SHORT of its own
        second.order_frame(frame("M1", OrderStatus.TRADED, 150, txn=TxnType.SELL, qty=150,
                                 seconds=6))
        second.settle()
        assert store.positions["PB2"].status is PositionStatus.EXITED
        opened = {p.position_id: (p.side.value, p.quantity) for p in store.positions.values()
                  if p.status not in (PositionStatus.EXITED,)}
        assert opened == {"PM1": ("SHORT", 50)}, opened
        assert second.books().agree, second.books().line()
    finally:
        second.stop()


def test_a_plain_closed_positions_exit_frame_delivered_again_after_a_restart_opens_nothing(
) -> None:
    """A position our own exit closed is learnt at the restart from its orders alone
    (``models.closed``): its exit order's frame told again, even without the client id (a
    reconcile's order-book row may lack it), must find its owner, not open a SHORT."""
    def parse(raw: str) -> OrderUpdate:
        update = parse_order_update(raw)
        assert isinstance(update, OrderUpdate)
        return update

    store, clock = FakeStore(), ManualClock(T0 + timedelta(minutes=10))
    buy = frame("B1", OrderStatus.TRADED, 1, qty=1)
    sell = frame("X1", OrderStatus.TRADED, 1, txn=TxnType.SELL, qty=1, avg="190", seconds=60)
    entry_progress = OrderProgress.empty("B1").merge(parse(buy))
    exit_progress = OrderProgress.empty("X1").merge(parse(sell))
    closed = new_position(parse(buy), position_id="PB1", side=Side.LONG,
                          created_at=T0).model_copy(update={
        "status": PositionStatus.EXITED, "opened_at": T0, "exit_attempt": 1,
        "exit_reason": ExitReason.STOP_LOSS, "exited_at": T0 + timedelta(seconds=60),
        "orders": (TrackedOrder(role=OrderRole.ENTRY, progress=entry_progress),
                   TrackedOrder(role=OrderRole.EXIT, progress=exit_progress, attempt=1))})
    assert is_plain(closed)  # learnt from its orders alone at the start
    store.save_positions([closed])
    system = System(Parts(store=store, cache=InMemoryPnLCache(),
                          gateway=PaperExchange(TapeMarket([]), start=T0), quotes=None,
                          config=RiskConfig(), clock=clock)).start(ticker=False)
    try:
        for raw in (sell, buy):
            system.order_frame(raw)
            system.settle()
        assert sorted(store.positions) == ["PB1"]
        assert store.positions["PB1"] == closed
        assert system.books().agree, system.books().line()
    finally:
        system.stop()
