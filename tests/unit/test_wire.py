"""The one parser of broker order updates (SPEC §4.1): shapes accepted, leniency, strictness,
that it never raises, and that the paper broker's frames parse back to what was sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.common import IST, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.wire import Rejection, parse_order_update, to_dhan_frame

AT = datetime(2025, 1, 6, 10, 15, 30, tzinfo=IST)

DATA: dict[str, Any] = {
    "OrderNo": "1122334455", "ExchOrderNo": "1300000012345", "Status": "TRADED",
    "TxnType": "B", "Quantity": 130, "TradedQty": 130, "RemainingQuantity": 0,
    "AvgTradedPrice": Decimal("182.35"), "TradedPrice": Decimal("182.40"), "Price": 0,
    "SecurityId": "47012", "Exchange": "NSE", "Segment": "D", "Product": "I", "OrderType": "MKT",
    "CorrelationId": "strat-1", "LastUpdatedTime": "2025-01-06 10:15:30",
    "ReasonDescription": "CONFIRMED", "Symbol": "NIFTY 09JAN 23500 CE", "LotSize": 65,
}
EXPECTED = OrderUpdate(
    order_no="1122334455", exch_order_no="1300000012345", status=OrderStatus.TRADED,
    txn_type=TxnType.BUY, quantity=130, traded_qty=130, avg_traded_price=Decimal("182.35"),
    traded_price=Decimal("182.40"), price=Decimal(0), security_id="47012",
    segment=Segment.NSE_FNO, product="I", order_type="MKT", correlation_id="strat-1",
    updated_at=AT, reason="CONFIRMED", symbol="NIFTY 09JAN 23500 CE", lot_size=65)


def dumps(value: object) -> str:
    """JSON text with the test's (short) Decimals written as JSON numbers, as DhanHQ sends them."""
    return json.dumps(value, default=float)


def frame(**changes: Any) -> str:
    """The full frame above with fields replaced (a value of None removes the field)."""
    data = {key: value for key, value in {**DATA, **changes}.items() if value is not None}
    return dumps({"Type": "order_alert", "Data": data})


def pending(**fields: Any) -> str:
    """A minimal PENDING frame: order number, status and the given fields."""
    return dumps({"Type": "order_alert",
                  "Data": {"OrderNo": "7", "Status": "PENDING", **fields}})


def parsed(raw: str | bytes) -> OrderUpdate:
    result = parse_order_update(raw)
    assert isinstance(result, OrderUpdate), result
    return result


def rejected(raw: str | bytes) -> Rejection:
    result = parse_order_update(raw)
    assert isinstance(result, Rejection), result
    return result


# Shapes ------------------------------------------------------------------------------------------
def test_when_dhan_frame_then_every_field_is_typed() -> None:
    assert parsed(frame()) == EXPECTED


def test_when_bare_data_object_then_parsed_like_the_frame() -> None:
    assert parsed(dumps(DATA)) == EXPECTED


def test_when_data_without_type_then_parsed_like_the_frame() -> None:
    assert parsed(dumps({"Data": DATA})) == EXPECTED


def test_when_type_differs_only_in_case_then_accepted() -> None:
    assert parsed(dumps({"Type": "Order_Alert", "Data": DATA})) == EXPECTED


def test_when_utf8_byte_order_mark_then_ignored() -> None:
    assert parsed(b"\xef\xbb\xbf" + frame().encode()) == EXPECTED


def test_when_bytes_then_decoded_as_utf8() -> None:
    assert parsed(frame(Symbol="NIFTY ₹").encode()).symbol == "NIFTY ₹"


def test_when_flat_snake_case_then_parsed() -> None:
    raw = dumps({"order_no": "9", "order_status": "PART_TRADED", "quantity": 100,
                 "filled_quantity": 40, "average_traded_price": "101.50",
                 "transaction_type": "SELL", "security_id": "11536", "exchange_segment": "NSE_EQ",
                 "product": "CNC", "correlation_id": "c-9", "updated_at": "2025-01-06T10:15:30"})

    assert parsed(raw) == OrderUpdate(
        order_no="9", status=OrderStatus.PART_TRADED, quantity=100, traded_qty=40,
        avg_traded_price=Decimal("101.50"), txn_type=TxnType.SELL, security_id="11536",
        segment=Segment.NSE_EQ, product="CNC", correlation_id="c-9", updated_at=AT)


def test_when_flat_uses_alternative_keys_then_parsed() -> None:
    raw = dumps({"order_id": "9", "status": "TRADED", "quantity": 5, "filled_quantity": 5,
                 "average_price": 250, "side": "buy", "segment": "MCX_COMM",
                 "product_type": "INTRADAY", "update_time": "2025-01-06 10:15:30"})

    update = parsed(raw)

    assert (update.order_no, update.avg_traded_price, update.txn_type, update.segment,
            update.product, update.updated_at) == (
        "9", Decimal(250), TxnType.BUY, Segment.MCX_COMM, "INTRADAY", AT)


def test_when_flat_traded_without_filled_quantity_then_quantity_is_traded() -> None:
    raw = dumps({"order_id": "9", "status": "TRADED", "quantity": 25, "average_price": "10"})

    assert (parsed(raw).quantity, parsed(raw).traded_qty) == (25, 25)


def test_when_flat_pending_without_filled_quantity_then_nothing_traded() -> None:
    raw = dumps({"order_id": "9", "status": "PENDING", "quantity": 25})

    assert (parsed(raw).quantity, parsed(raw).traded_qty) == (25, 0)


def test_when_exchange_time_given_then_used_as_update_time() -> None:
    raw = dumps({"order_id": "9", "status": "PENDING", "exchange_time": "2025-01-06 10:15:30"})

    assert parsed(raw).updated_at == AT


@pytest.mark.parametrize(("exchange", "code", "segment"), [
    ("NSE", "E", Segment.NSE_EQ), ("NSE", "D", Segment.NSE_FNO),
    ("NSE", "C", Segment.NSE_CURRENCY), ("BSE", "E", Segment.BSE_EQ),
    ("BSE", "D", Segment.BSE_FNO), ("BSE", "C", Segment.BSE_CURRENCY),
    ("MCX", "M", Segment.MCX_COMM), ("nse", "d", Segment.NSE_FNO)])
def test_when_exchange_and_segment_code_then_mapped(exchange: str, code: str,
                                                    segment: Segment) -> None:
    assert parsed(frame(Exchange=exchange, Segment=code)).segment is segment


def test_when_segment_is_a_full_name_then_used() -> None:
    assert parsed(frame(Exchange=None, Segment="BSE_FNO")).segment is Segment.BSE_FNO


def test_when_exchange_segment_key_given_then_used() -> None:
    raw = frame(Exchange=None, Segment=None, ExchangeSegment="NSE_CURRENCY")

    assert parsed(raw).segment is Segment.NSE_CURRENCY


def test_when_segment_code_has_no_exchange_then_segment_unknown() -> None:
    assert parsed(frame(Exchange=None, Segment="D")).segment is None


# Leniency ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "status"), [
    ("Cancelled", OrderStatus.CANCELLED), ("traded", OrderStatus.TRADED),
    ("PART TRADED", OrderStatus.PART_TRADED), ("part-traded", OrderStatus.PART_TRADED),
    ("PART_TRADED", OrderStatus.PART_TRADED), ("Transit", OrderStatus.TRANSIT),
    ("  rejected ", OrderStatus.REJECTED), ("Expired", OrderStatus.EXPIRED),
    ("CANCELED", OrderStatus.CANCELLED), ("canceled", OrderStatus.CANCELLED)])
def test_when_status_mixed_case_then_normalised(text: str, status: OrderStatus) -> None:
    assert parsed(pending(Status=text)).status is status


@pytest.mark.parametrize(("text", "txn"), [
    ("B", TxnType.BUY), ("b", TxnType.BUY), ("BUY", TxnType.BUY), ("Buy", TxnType.BUY),
    ("S", TxnType.SELL), ("s", TxnType.SELL), ("SELL", TxnType.SELL), ("sell", TxnType.SELL)])
def test_when_txn_type_in_any_form_then_normalised(text: str, txn: TxnType) -> None:
    assert parsed(pending(TxnType=text)).txn_type is txn


def test_when_numbers_arrive_as_strings_then_parsed() -> None:
    raw = frame(Quantity="130", TradedQty=" 65 ", AvgTradedPrice="182.35", LotSize="65",
                Status="PART_TRADED")

    update = parsed(raw)

    assert (update.quantity, update.traded_qty, update.avg_traded_price, update.lot_size) == (
        130, 65, Decimal("182.35"), 65)


def test_when_quantity_is_integral_decimal_text_then_accepted() -> None:
    assert parsed(pending(Quantity="10.0")).quantity == 10


def test_when_price_is_a_json_number_then_decimal_is_exact() -> None:
    raw = '{"OrderNo": "7", "Status": "TRADED", "Quantity": 1, "TradedQty": 1, ' \
          '"AvgTradedPrice": 0.1000000000000000055511151231257827}'

    assert parsed(raw).avg_traded_price == Decimal("0.1000000000000000055511151231257827")


def test_when_unknown_fields_then_ignored() -> None:
    assert parsed(frame(Remarks="x", Nested={"a": [1]}, OffMktFlag="0")) == EXPECTED


def test_when_optional_fields_missing_then_none() -> None:
    assert parsed(pending()) == OrderUpdate(order_no="7", status=OrderStatus.PENDING)


def test_when_optional_text_is_blank_then_none() -> None:
    update = parsed(pending(CorrelationId="", Symbol="  ", LastUpdatedTime="", Price=""))

    assert (update.correlation_id, update.symbol, update.updated_at, update.price) == (
        None, None, None, None)


def test_when_ids_are_json_numbers_then_they_become_text() -> None:
    update = parsed(dumps({"OrderNo": 1122, "Status": "PENDING", "SecurityId": 47012}))

    assert (update.order_no, update.security_id) == ("1122", "47012")


def test_when_partial_fill_reported_as_pending_then_status_stays_pending() -> None:
    update = parsed(frame(Status="PENDING", TradedQty=50))

    assert (update.status, update.quantity, update.traded_qty) == (OrderStatus.PENDING, 130, 50)


@pytest.mark.parametrize("field", ["TradedPrice", "Price"])
def test_when_fill_priced_only_by_a_fallback_price_then_accepted(field: str) -> None:
    raw = pending(Status="TRADED", Quantity=10, TradedQty=10, AvgTradedPrice=0, **{field: "99"})

    assert parsed(raw).fill_price == Decimal(99)


def test_when_time_is_naive_then_it_is_ist() -> None:
    updated_at = parsed(pending(LastUpdatedTime="2025-01-06 10:15:30")).updated_at

    assert updated_at == AT
    assert updated_at is not None and updated_at.utcoffset() == timedelta(hours=5, minutes=30)


def test_when_time_has_an_offset_then_the_instant_is_kept() -> None:
    updated_at = parsed(pending(LastUpdatedTime="2025-01-06T04:45:30Z")).updated_at

    assert updated_at == AT
    assert updated_at is not None and updated_at.utcoffset() == timedelta(0)


# Strictness --------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["", "not json", "{", '{"OrderNo": "1",}', "[" * 100_000])
def test_when_not_json_then_rejected(raw: str) -> None:
    assert rejected(raw).reason.startswith("payload is not valid JSON")


@pytest.mark.parametrize(("raw", "shown"), [
    ("[]", "a list"), ('"x"', '"x"'), ("42", "42"), ("null", "null"), ("1.5", "1.5")])
def test_when_not_an_object_then_rejected(raw: str, shown: str) -> None:
    assert rejected(raw).reason == f"payload must be a JSON object, got {shown}"


@pytest.mark.parametrize(("data", "shown"), [(None, "null"), ([], "a list"), ("x", '"x"')])
def test_when_data_is_not_an_object_then_rejected(data: object, shown: str) -> None:
    raw = dumps({"Type": "order_alert", "Data": data})

    assert rejected(raw).reason == f"Data must be an object, got {shown}"


def test_when_type_is_not_order_alert_then_rejected() -> None:
    raw = dumps({"Type": "position_alert", "Data": DATA})

    assert rejected(raw).reason == "Type must be 'order_alert', got \"position_alert\""


def test_when_order_number_missing_then_rejected() -> None:
    assert rejected(frame(OrderNo=None)).reason == (
        "missing order number (OrderNo, order_no or order_id)")


def test_when_status_missing_then_rejected() -> None:
    assert rejected(frame(Status=None)).reason == (
        "missing order status (Status, order_status or status)")


def test_when_status_unknown_then_read_as_a_live_order_never_as_failed() -> None:
    """Issue 15 "Bad input": a status nobody knows cannot prove the order over, and its fill
    must not be dropped; the anomaly travels with the update (the actor alarms it)."""
    filled = parsed(frame(Status="OPEN"))
    assert (filled.status, filled.traded_qty) == (OrderStatus.PART_TRADED, 130)
    assert filled.anomaly == 'unknown Status "OPEN": read as PART_TRADED (a live order)'
    assert parsed(pending(Status="QUEUED")).status is OrderStatus.PENDING
    assert parsed(frame()).anomaly is None


def test_when_txn_type_unknown_then_rejected() -> None:
    assert rejected(frame(TxnType="X")).reason == (
        'unknown TxnType "X" (expected B, S, BUY or SELL)')


@pytest.mark.parametrize("field", ["TradedQty", "Quantity", "LotSize"])
@pytest.mark.parametrize(("value", "shown"), [
    ("abc", '"abc"'), (-5, "-5"), ("-5", '"-5"'), (Decimal("1.5"), "1.5"), ("1.5", '"1.5"'),
    (True, "true"), ([1], "a list")])
def test_when_quantity_not_a_non_negative_integer_then_rejected_naming_field(
        field: str, value: object, shown: str) -> None:
    assert rejected(frame(**{field: value})).reason == (
        f"{field} must be a non-negative integer, got {shown}")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_when_quantity_not_finite_then_rejected(constant: str) -> None:
    raw = f'{{"OrderNo": "7", "Status": "PENDING", "TradedQty": {constant}}}'

    assert rejected(raw).reason == f"TradedQty must be a non-negative integer, got {constant}"


def test_when_number_absurdly_large_then_rejected() -> None:
    assert rejected(pending(Quantity="1E+999999")).reason == (
        'Quantity is out of range (at most 1E+15), got "1E+999999"')


def test_when_traded_exceeds_quantity_then_the_traded_quantity_is_kept() -> None:
    update = parsed(frame(TradedQty=131))
    assert (update.traded_qty, update.quantity) == (131, 131)
    assert update.anomaly == "TradedQty 131 exceeds Quantity 130: the 131 traded are kept"


@pytest.mark.parametrize("field", ["AvgTradedPrice", "TradedPrice", "Price"])
def test_when_price_negative_then_rejected_naming_field(field: str) -> None:
    assert rejected(frame(**{field: "-1.5"})).reason == (
        f'{field} must be a non-negative number, got "-1.5"')


def test_when_fill_has_no_price_then_rejected() -> None:
    raw = frame(AvgTradedPrice=0, TradedPrice=None, Price=0)

    assert rejected(raw).reason == ("traded quantity 130 has no positive AvgTradedPrice, "
                                    "TradedPrice or Price (a fill without a price)")


def test_when_exchange_segment_pair_unknown_then_rejected() -> None:
    assert rejected(frame(Exchange="MCX", Segment="D")).reason == (
        'unknown Exchange/Segment pair "MCX"/"D"')


def test_when_segment_unknown_then_rejected() -> None:
    assert rejected(frame(Exchange=None, Segment="NYSE")).reason == 'unknown Segment "NYSE"'


@pytest.mark.parametrize("text", ["yesterday", "2025-13-06 10:15:30", "2025-01-06 25:00:00"])
def test_when_time_unparsable_then_rejected(text: str) -> None:
    assert rejected(frame(LastUpdatedTime=text)).reason == (
        f'LastUpdatedTime is not a date-time: "{text}"')


def test_when_time_not_text_then_rejected() -> None:
    assert rejected(frame(LastUpdatedTime=1736140530)).reason == (
        "LastUpdatedTime must be a date-time text, got 1736140530")


def test_when_rejected_then_raw_kept_exactly_and_order_no_found() -> None:
    raw = frame(TxnType="WHATEVER") + "  \n"

    assert rejected(raw).raw == raw
    assert rejected(raw).order_no == "1122334455"


def test_when_rejected_bytes_then_raw_is_their_utf8_text() -> None:
    rejection = rejected(b'{"OrderNo": "7", "Status": "PENDING", "TxnType": "\xff"}')

    assert rejection.raw == '{"OrderNo": "7", "Status": "PENDING", "TxnType": "\ufffd"}'
    assert (rejection.order_no, rejection.reason) == (
        "7", 'unknown TxnType "\\ufffd" (expected B, S, BUY or SELL)')


def test_when_status_not_text_then_rejected() -> None:
    assert rejected(frame(Status=5)).reason == "Status must be text, got 5"


def test_when_text_has_a_lone_surrogate_then_rejected() -> None:
    raw = '{"OrderNo": "7", "Status": "PENDING", "Symbol": "\\ud800"}'

    assert rejected(raw).reason == 'Symbol must be valid Unicode text, got "\\ud800"'


def test_when_order_number_itself_invalid_then_rejection_has_none() -> None:
    assert rejected(frame(OrderNo=[1])).order_no is None


# Properties --------------------------------------------------------------------------------------
KEYS = sorted({*DATA, "Type", "Data", "ExchangeSegment", "order_no", "order_id", "order_status",
               "status", "quantity", "filled_quantity", "average_price", "transaction_type",
               "side", "segment", "exchange_segment", "updated_at"})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["TRADED", "pending", "B", "NSE", "D", "NSE_FNO", "-1", "1.5", "10",
                       "2025-01-06 10:15:30", "NaN", "1E+99999"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=8)
FIELDS = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), JSON, max_size=12)


def check_outcome(raw: str | bytes) -> None:
    result = parse_order_update(raw)
    assert isinstance(result, OrderUpdate | Rejection)
    if isinstance(result, Rejection):
        assert result.raw == (raw if isinstance(raw, str) else raw.decode(errors="replace"))
    else:
        assert result.quantity is None or result.traded_qty <= result.quantity
        assert result.traded_qty == 0 or result.fill_price is not None
        assert result.updated_at is None or result.updated_at.utcoffset() is not None


@given(st.text() | st.binary())
def test_never_raises_on_arbitrary_text_or_bytes(raw: str | bytes) -> None:
    check_outcome(raw)


@given(JSON)
def test_never_raises_on_arbitrary_json(value: object) -> None:
    check_outcome(json.dumps(value))


@given(FIELDS, st.booleans())
def test_never_raises_on_objects_with_random_fields(fields: dict[str, Any], wrap: bool) -> None:
    check_outcome(json.dumps({"Type": "order_alert", "Data": fields} if wrap else fields))


# NUL excluded: the parser rejects it in an id and replaces it in free text (tested apart).
TEXT = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1,
               max_size=12).map(str.strip).filter(bool)
PRICE = st.decimals(min_value=0, max_value=10**7, places=2)
# hypothesis takes naive bounds and attaches the zone from `timezones`
EARLIEST, LATEST = datetime(2000, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001 - see above
TIMES = st.datetimes(min_value=EARLIEST, max_value=LATEST, timezones=st.sampled_from([IST, UTC]))


@st.composite
def updates(draw: st.DrawFn) -> OrderUpdate:
    quantity = draw(st.integers(0, 10**6))
    traded = draw(st.integers(0, quantity))
    avg = draw(PRICE.filter(lambda p: p > 0) if traded else st.none() | PRICE)
    optional = {name: draw(st.none() | TEXT) for name in (
        "security_id", "product", "order_type", "correlation_id", "exch_order_no", "reason",
        "symbol")}
    return OrderUpdate(
        order_no=draw(TEXT), status=draw(st.sampled_from(OrderStatus)),
        segment=draw(st.sampled_from(Segment)), txn_type=draw(st.sampled_from(TxnType)),
        quantity=quantity, traded_qty=traded, avg_traded_price=avg,
        traded_price=draw(st.none() | PRICE), price=draw(st.none() | PRICE),
        updated_at=draw(st.none() | TIMES.map(lambda t: t.replace(microsecond=0))),
        lot_size=draw(st.none() | st.integers(0, 10**4)), **optional)


@given(updates())
def test_round_trip_through_dhan_frame_preserves_the_update(update: OrderUpdate) -> None:
    assert parse_order_update(to_dhan_frame(update)) == update


def test_dhan_frame_has_the_live_stream_shape() -> None:
    frame_data = json.loads(to_dhan_frame(EXPECTED), parse_float=Decimal)

    assert frame_data == {"Type": "order_alert", "Data": {
        key: value for key, value in DATA.items() if key != "RemainingQuantity"}}


def test_camel_case_frames_as_the_live_socket_sends_them_are_read() -> None:
    frame = ('{"Type": "order_alert", "Data": {"orderNo": "1125", "exchOrderNo": "1100", '
             '"status": "Part-Traded", "txnType": "S", "quantity": 75, "tradedQty": 25, '
             '"avgTradedPrice": 101.5, "securityId": "49081", "exchange": "NSE", '
             '"segment": "D", "product": "I", "orderType": "LMT", "price": 101, '
             '"correlationId": "X-P1-1", "lastUpdatedTime": "2025-01-06 10:00:01", '
             '"reasonDescription": "ok"}}')
    update = parse_order_update(frame)
    assert isinstance(update, OrderUpdate), update
    assert (update.order_no, update.exch_order_no, update.status, update.traded_qty) == (
        "1125", "1100", OrderStatus.PART_TRADED, 25)
    assert (update.avg_traded_price, update.correlation_id, update.order_type) == (
        Decimal("101.5"), "X-P1-1", "LMT")
    assert update.segment is Segment.NSE_FNO and update.updated_at is not None
