"""The paper exchange: MARKET orders filled at the price current on arrival, DhanHQ frames out."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.paper.exchange import PaperExchange, order_update, split_quantity
from broker.paper.market import PaperMarket
from broker.ports import GatewayError, OrderGateway
from models.common import IST, Instrument, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.wire import parse_order_update

T0 = datetime(2025, 1, 6, 10, 0, tzinfo=IST)
FNO = Instrument(segment=Segment.NSE_FNO, security_id="49081")
EQ = Instrument(segment=Segment.NSE_EQ, security_id="11536")
LATENCY = timedelta(seconds=2)


class Desk:
    """A still market (zero volatility), an exchange on it, and every frame it sent."""

    def __init__(self, **options: object) -> None:
        self.market = PaperMarket([FNO, EQ], seed=1, volatility=0,
                                  start_prices={FNO: Decimal("100"), EQ: Decimal("200")})
        self.market.advance(T0)
        options.setdefault("latency", LATENCY)
        self.exchange = PaperExchange(self.market, start=T0, **options)  # type: ignore[arg-type]
        self.frames: list[str] = []
        self.exchange.subscribe(self.frames.append)

    def place(self, client_id: str = "C1", instrument: Instrument = FNO,
              txn: TxnType = TxnType.BUY, qty: int = 100, now: datetime | None = None) -> str:
        return self.exchange.place_order(client_id=client_id, instrument=instrument,
                                         txn_type=txn, quantity=qty, product="I", now=now)

    def updates(self) -> list[OrderUpdate]:
        parsed = [parse_order_update(frame) for frame in self.frames]
        assert all(isinstance(update, OrderUpdate) for update in parsed), parsed
        return [update for update in parsed if isinstance(update, OrderUpdate)]

    def statuses(self) -> list[tuple[OrderStatus, int]]:
        return [(u.status, u.traded_qty) for u in self.updates()]

    def move(self, price: str, at: datetime) -> None:
        self.market.set_price(FNO, Decimal(price), at)


def test_paper_exchange_is_an_order_gateway() -> None:
    gateway: OrderGateway = Desk().exchange
    assert callable(gateway.place_order)


def test_placing_emits_transit_then_pending_at_once_and_no_fill_before_latency() -> None:
    desk = Desk()
    order_no = desk.place()
    assert order_no == "PB1"
    assert desk.statuses() == [(OrderStatus.TRANSIT, 0), (OrderStatus.PENDING, 0)]
    desk.exchange.advance(T0 + LATENCY - timedelta(milliseconds=1))
    assert len(desk.frames) == 2


def test_order_numbers_are_the_prefix_and_a_counter() -> None:
    desk = Desk(order_prefix="ZZ")
    assert [desk.place(f"C{i}") for i in range(1, 4)] == ["ZZ1", "ZZ2", "ZZ3"]
    assert desk.exchange.placed_count == 3


def test_orders_named_by_client_id_keep_their_names_whatever_order_they_arrive_in() -> None:
    names = []
    for clients in (["X-P1-1", "X-P2-1", "X-P3-2"], ["X-P3-2", "X-P1-1", "X-P2-1"]):
        desk = Desk(order_prefix="R", numbering="client")
        names.append({client: desk.place(client) for client in clients})
        assert desk.updates()[0].order_no == "R" + clients[0]
    assert names[0] == names[1] == {"X-P1-1": "RX-P1-1", "X-P2-1": "RX-P2-1", "X-P3-2": "RX-P3-2"}
    desk = Desk(order_prefix="R", numbering="client")
    assert desk.place("X-P1-1") == desk.place("X-P1-1") == "RX-P1-1"  # placed once
    assert desk.exchange.placed_count == 1
    with pytest.raises(ValueError, match="numbering"):
        Desk(numbering="by-hash")


def test_fill_uses_the_price_current_when_the_order_arrives_not_when_placed() -> None:
    desk = Desk()
    desk.place()
    desk.move("107.35", T0 + timedelta(seconds=1))
    desk.exchange.advance(T0 + LATENCY)
    filled = desk.updates()[-1]
    assert (filled.status, filled.traded_qty) == (OrderStatus.TRADED, 100)
    assert filled.avg_traded_price == filled.traded_price == Decimal("107.35")
    assert filled.updated_at == T0 + LATENCY


def test_zero_latency_fills_before_place_order_returns() -> None:
    desk = Desk(latency=timedelta(0))
    desk.place()
    assert desk.statuses() == [(OrderStatus.TRANSIT, 0), (OrderStatus.PENDING, 0),
                               (OrderStatus.TRADED, 100)]
    assert desk.exchange.orders()[0].avg_price == Decimal("100")


@pytest.mark.parametrize("txn, expected", [(TxnType.BUY, "100.50"), (TxnType.SELL, "99.50")])
def test_slippage_goes_against_the_trader(txn: TxnType, expected: str) -> None:
    desk = Desk(latency=timedelta(0), slippage=Decimal("0.50"))
    desk.place(txn=txn)
    assert desk.updates()[-1].avg_traded_price == Decimal(expected)


def test_sell_slippage_never_drives_the_price_below_one_tick() -> None:
    desk = Desk(latency=timedelta(0), slippage=Decimal("500"))
    desk.place(txn=TxnType.SELL)
    assert desk.updates()[-1].avg_traded_price == Decimal("0.05")


def test_partial_fills_report_cumulative_quantity_and_the_exact_vwap() -> None:
    desk = Desk(partial_fills=3)
    desk.place(qty=100)
    desk.move("101.05", T0 + LATENCY)
    desk.exchange.advance(T0 + LATENCY)
    desk.move("99.95", T0 + 2 * LATENCY)
    desk.exchange.advance(T0 + 2 * LATENCY)
    desk.move("100.10", T0 + 3 * LATENCY)
    desk.exchange.advance(T0 + 3 * LATENCY)
    fills = desk.updates()[2:]
    assert [(u.status, u.traded_qty) for u in fills] == [
        (OrderStatus.PENDING, 34), (OrderStatus.PENDING, 67), (OrderStatus.TRADED, 100)]
    assert [u.traded_price for u in fills] == [Decimal("101.05"), Decimal("99.95"),
                                               Decimal("100.10")]
    value = Decimal("101.05") * 34 + Decimal("99.95") * 33 + Decimal("100.10") * 33
    assert fills[0].avg_traded_price == Decimal("101.05")
    assert fills[1].avg_traded_price == (Decimal("101.05") * 34 + Decimal("99.95") * 33) / 67
    assert fills[2].avg_traded_price == value / 100 == Decimal("100.3735")


def test_remaining_quantity_in_each_frame_is_quantity_minus_traded() -> None:
    desk = Desk(partial_fills=2)
    desk.place(qty=75)
    desk.exchange.advance(T0 + 3 * LATENCY)
    remaining = [json.loads(frame)["Data"]["RemainingQuantity"] for frame in desk.frames]
    assert remaining == [75, 75, 37, 0]


@given(quantity=st.integers(1, 10_000), parts=st.integers(1, 20))
def test_split_quantity_gives_equal_ish_positive_parts_adding_up(quantity: int,
                                                                 parts: int) -> None:
    split = split_quantity(quantity, parts)
    assert sum(split) == quantity
    assert len(split) == min(quantity, parts)
    assert max(split) - min(split) <= 1 and min(split) > 0


def test_the_same_client_id_returns_the_first_order_and_places_nothing() -> None:
    desk = Desk()
    first = desk.place("C1")
    again = desk.place("C1", instrument=EQ, txn=TxnType.SELL, qty=5)
    assert again == first
    assert desk.exchange.placed_count == 1 and len(desk.frames) == 2


def test_fail_next_refuses_placements_and_places_nothing() -> None:
    desk = Desk()
    desk.exchange.fail_next(2)
    for client_id in ("C1", "C1"):
        with pytest.raises(GatewayError, match="told to fail"):
            desk.place(client_id)
    assert desk.frames == [] and desk.exchange.placed_count == 0
    assert desk.place("C1") == "PB1"


def test_a_refused_placement_does_not_use_up_idempotency() -> None:
    desk = Desk()
    desk.place("C1")
    desk.exchange.fail_next(1)
    assert desk.place("C1") == "PB1"
    with pytest.raises(GatewayError):
        desk.place("C2")


def test_reject_client_ids_are_refused_every_time() -> None:
    desk = Desk(reject_client_ids={"BAD"})
    for _ in range(2):
        with pytest.raises(GatewayError, match="BAD refused"):
            desk.place("BAD")
    assert desk.place("GOOD") == "PB1"


def test_reject_next_accepts_the_order_then_rejects_it_with_a_reason() -> None:
    desk = Desk()
    desk.exchange.reject_next(1)
    order_no = desk.place("C1")
    desk.exchange.advance(T0 + LATENCY)
    rejected = desk.updates()[-1]
    assert [u.status for u in desk.updates()] == [OrderStatus.TRANSIT, OrderStatus.REJECTED]
    assert (rejected.order_no, rejected.traded_qty) == (order_no, 0)
    assert rejected.reason is not None and "RMS" in rejected.reason
    assert desk.place("C2") == "PB2"
    desk.exchange.advance(T0 + 2 * LATENCY)
    assert desk.exchange.order("PB2").status is OrderStatus.TRADED


def test_cancel_stops_the_unfilled_remainder_and_carries_the_traded_quantity() -> None:
    desk = Desk(partial_fills=2)
    order_no = desk.place(qty=100)
    desk.exchange.advance(T0 + LATENCY)
    desk.exchange.cancel_order(order_no, now=T0 + LATENCY + timedelta(seconds=1))
    desk.exchange.advance(T0 + 10 * LATENCY)
    cancelled = desk.updates()[-1]
    assert desk.statuses()[2:] == [(OrderStatus.PENDING, 50), (OrderStatus.CANCELLED, 50)]
    assert cancelled.avg_traded_price == Decimal("100")
    assert json.loads(desk.frames[-1])["Data"]["RemainingQuantity"] == 50
    assert desk.exchange.pending_events == 0


def test_cancel_before_arrival_cancels_everything() -> None:
    desk = Desk()
    desk.exchange.cancel_order(desk.place())
    desk.exchange.advance(T0 + 5 * LATENCY)
    assert desk.statuses() == [(OrderStatus.TRANSIT, 0), (OrderStatus.PENDING, 0),
                               (OrderStatus.CANCELLED, 0)]


def test_cancelling_a_traded_or_unknown_order_is_a_gateway_error() -> None:
    desk = Desk(latency=timedelta(0))
    order_no = desk.place()
    with pytest.raises(GatewayError, match="already TRADED"):
        desk.exchange.cancel_order(order_no)
    with pytest.raises(GatewayError, match="unknown order NOPE"):
        desk.exchange.cancel_order("NOPE")


@pytest.mark.parametrize("instrument, qty, message", [
    (FNO, 0, "quantity must be positive"),
    (Instrument(segment=Segment.IDX_I, security_id="13"), 1, "IDX_I is not tradable"),
])
def test_invalid_orders_are_refused(instrument: Instrument, qty: int, message: str) -> None:
    with pytest.raises(GatewayError, match=message):
        Desk().place(instrument=instrument, qty=qty)


def test_an_instrument_without_a_market_price_is_rejected_on_arrival() -> None:
    desk = Desk(latency=timedelta(0))
    desk.place(instrument=Instrument(segment=Segment.NSE_FNO, security_id="1"))
    rejected = desk.updates()[-1]
    assert rejected.status is OrderStatus.REJECTED
    assert rejected.reason == "no market price for NSE_FNO:1"


def test_an_exchange_that_was_never_advanced_refuses_orders_without_now() -> None:
    exchange = PaperExchange(PaperMarket([FNO], seed=1))
    with pytest.raises(GatewayError, match="no time yet"):
        exchange.place_order(client_id="C", instrument=FNO, txn_type=TxnType.BUY,
                             quantity=1, product=None)


def test_placing_with_now_first_processes_what_was_due_before() -> None:
    desk = Desk()
    desk.place("C1")
    desk.place("C2", now=T0 + LATENCY + timedelta(seconds=1))
    assert [(u.order_no, u.status) for u in desk.updates()[2:]] == [
        ("PB1", OrderStatus.TRADED), ("PB2", OrderStatus.TRANSIT), ("PB2", OrderStatus.PENDING)]


def test_the_exchange_clock_never_runs_backwards() -> None:
    desk = Desk()
    desk.exchange.advance(T0 + timedelta(seconds=10))
    desk.place(now=T0)
    assert desk.exchange.orders()[0].placed_at == T0 + timedelta(seconds=10)


def test_updates_of_several_orders_come_out_in_time_order() -> None:
    desk = Desk(partial_fills=2)
    for i in range(4):
        desk.place(f"C{i}", now=T0 + timedelta(seconds=i))
    desk.exchange.advance(T0 + timedelta(minutes=1))
    times = [u.updated_at for u in desk.updates()]
    assert times == sorted(times)  # type: ignore[type-var]
    assert all(o.status is OrderStatus.TRADED for o in desk.exchange.orders())


def test_every_frame_parses_back_into_the_update_the_exchange_meant() -> None:
    desk = Desk(latency=timedelta(0))
    desk.place("C9", instrument=EQ, txn=TxnType.SELL, qty=7)
    order = desk.exchange.order("PB1")
    expected = OrderUpdate(
        order_no="PB1", exch_order_no=order.exch_order_no, status=OrderStatus.TRADED,
        segment=Segment.NSE_EQ, security_id="11536", txn_type=TxnType.SELL, product="I",
        order_type="MKT", quantity=7, traded_qty=7, avg_traded_price=Decimal("200"),
        traded_price=Decimal("200"), correlation_id="C9", updated_at=T0)
    assert desk.updates()[-1] == expected
    assert order_update(order, T0, traded_price=Decimal("200")) == expected


def test_orders_report_what_was_placed_and_filled() -> None:
    desk = Desk(latency=timedelta(0))
    desk.place("C1", qty=3)
    (order,) = desk.exchange.orders()
    assert (order.client_id, order.order_no, order.instrument, order.txn_type, order.quantity,
            order.filled_qty, order.avg_price, order.status, order.placed_at) == (
        "C1", "PB1", FNO, TxnType.BUY, 3, 3, Decimal("100"), OrderStatus.TRADED, T0)


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    desk = Desk()
    seen: list[str] = []

    def broken(frame: str) -> None:
        raise RuntimeError("subscriber down")

    desk.exchange.subscribe(broken)
    desk.exchange.subscribe(seen.append)
    desk.place()
    assert len(seen) == 2 == len(desk.frames)


# LIMIT orders, modification, look-up and resting ---------------------------------------------
def place_limit(desk: Desk, price: str, *, client_id: str = "L1", txn: TxnType = TxnType.BUY,
                qty: int = 100) -> str:
    return desk.exchange.place_order(client_id=client_id, instrument=FNO, txn_type=txn,
                                     quantity=qty, product="I", order_type="LMT",
                                     price=Decimal(price))


def test_marketable_buy_limit_fills_at_the_market_price_on_arrival() -> None:
    desk = Desk()
    order_no = place_limit(desk, "101")
    desk.exchange.advance(T0 + LATENCY)
    order = desk.exchange.order(order_no)
    assert order.status is OrderStatus.TRADED
    assert order.avg_price == Decimal("100")
    last = desk.updates()[-1]
    assert (last.order_type, last.price, last.traded_price) == ("LMT", Decimal("101"),
                                                               Decimal("100"))


def test_buy_limit_below_market_works_until_the_market_comes_down_to_it() -> None:
    desk = Desk()
    order_no = place_limit(desk, "99")
    desk.exchange.advance(T0 + LATENCY)
    assert desk.exchange.order(order_no).status is OrderStatus.PENDING
    desk.move("99.50", T0 + LATENCY * 2)
    desk.exchange.advance(T0 + LATENCY * 2)
    assert desk.exchange.order(order_no).status is OrderStatus.PENDING
    desk.move("98.75", T0 + LATENCY * 3)
    desk.exchange.advance(T0 + LATENCY * 3)
    order = desk.exchange.order(order_no)
    assert (order.status, order.avg_price) == (OrderStatus.TRADED, Decimal("98.75"))


def test_sell_limit_fills_only_at_or_above_its_price() -> None:
    desk = Desk()
    order_no = place_limit(desk, "100.50", txn=TxnType.SELL)
    desk.exchange.advance(T0 + LATENCY)
    assert desk.exchange.order(order_no).status is OrderStatus.PENDING
    desk.move("100.50", T0 + LATENCY * 2)
    desk.exchange.advance(T0 + LATENCY * 2)
    order = desk.exchange.order(order_no)
    assert (order.status, order.avg_price) == (OrderStatus.TRADED, Decimal("100.50"))


def test_slippage_never_takes_a_limit_order_past_its_price() -> None:
    desk = Desk(slippage=Decimal("2"))
    order_no = place_limit(desk, "101")
    desk.exchange.advance(T0 + LATENCY)
    assert desk.exchange.order(order_no).avg_price == Decimal("101")


def test_limit_order_needs_a_positive_price_and_a_known_type() -> None:
    desk = Desk()
    with pytest.raises(GatewayError, match="positive price"):
        desk.exchange.place_order(client_id="X", instrument=FNO, txn_type=TxnType.BUY,
                                  quantity=1, product="I", order_type="LMT")
    with pytest.raises(GatewayError, match="MKT or LMT"):
        desk.exchange.place_order(client_id="Y", instrument=FNO, txn_type=TxnType.BUY,
                                  quantity=1, product="I", order_type="SL")
    assert desk.exchange.orders() == []


def test_modify_to_a_marketable_price_fills_the_working_order() -> None:
    desk = Desk()
    order_no = place_limit(desk, "95")
    desk.exchange.advance(T0 + LATENCY)
    desk.exchange.modify_order(order_no, price=Decimal("100.25"))
    order = desk.exchange.order(order_no)
    assert (order.status, order.price, order.modifications) == (
        OrderStatus.TRADED, Decimal("100.25"), 1)
    statuses = [(u.status, u.price) for u in desk.updates()]
    assert statuses[-2:] == [(OrderStatus.PENDING, Decimal("100.25")),
                             (OrderStatus.TRADED, Decimal("100.25"))]


def test_modify_quantity_keeps_the_order_working_with_the_new_quantity() -> None:
    desk = Desk()
    order_no = place_limit(desk, "95", qty=100)
    desk.exchange.advance(T0 + LATENCY)
    desk.exchange.modify_order(order_no, quantity=50)
    assert desk.updates()[-1].quantity == 50
    desk.move("94", T0 + LATENCY * 2)
    desk.exchange.advance(T0 + LATENCY * 2)
    order = desk.exchange.order(order_no)
    assert (order.status, order.filled_qty) == (OrderStatus.TRADED, 50)


def test_modify_refuses_unknown_terminal_and_empty_changes() -> None:
    desk = Desk(latency=timedelta(0))
    filled = desk.place("F1")
    with pytest.raises(GatewayError, match="already TRADED"):
        desk.exchange.modify_order(filled, price=Decimal("1"))
    with pytest.raises(GatewayError, match="unknown order"):
        desk.exchange.modify_order("NOPE", price=Decimal("1"))
    desk.exchange.rest_next()
    resting = desk.place("R1")
    with pytest.raises(GatewayError, match="nothing to change"):
        desk.exchange.modify_order(resting)
    with pytest.raises(GatewayError, match="must exceed"):
        desk.exchange.modify_order(resting, quantity=0)


def test_rest_next_orders_rest_until_cancelled() -> None:
    desk = Desk(latency=timedelta(0))
    desk.exchange.rest_next(1)
    resting = desk.place("R1")
    desk.exchange.advance(T0 + timedelta(minutes=5))
    assert desk.exchange.order(resting).status is OrderStatus.PENDING
    normal = desk.place("N1")
    assert desk.exchange.order(normal).status is OrderStatus.TRADED
    desk.exchange.cancel_order(resting)
    assert desk.exchange.order(resting).status is OrderStatus.CANCELLED


def test_resting_order_modified_to_a_marketable_price_fills() -> None:
    desk = Desk(latency=timedelta(0))
    desk.exchange.resting = True
    order_no = desk.place("R1", txn=TxnType.SELL)
    desk.exchange.modify_order(order_no, price=Decimal("105"))  # not marketable: still works
    desk.exchange.advance(T0 + timedelta(seconds=1))
    assert desk.exchange.order(order_no).status is OrderStatus.PENDING
    desk.exchange.modify_order(order_no, price=Decimal("99"))
    order = desk.exchange.order(order_no)
    assert (order.status, order.avg_price) == (OrderStatus.TRADED, Decimal("100"))


def test_lookup_finds_an_order_by_its_client_id() -> None:
    desk = Desk()
    order_no = desk.place("CID-7")
    found = desk.exchange.lookup("CID-7")
    assert found is not None and found.order_no == order_no
    assert desk.exchange.lookup("CID-8") is None


def test_every_frame_of_limit_orders_parses() -> None:
    desk = Desk()
    place_limit(desk, "99", client_id="A")
    place_limit(desk, "101", client_id="B", txn=TxnType.SELL)
    desk.exchange.advance(T0 + LATENCY)
    desk.move("102", T0 + LATENCY * 2)
    desk.exchange.advance(T0 + LATENCY * 2)
    assert all(isinstance(parse_order_update(f), OrderUpdate) for f in desk.frames)
    assert [o.status for o in desk.exchange.orders()] == [OrderStatus.PENDING,
                                                         OrderStatus.TRADED]
