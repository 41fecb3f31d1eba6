"""Every DhanHQ answer is classified: placed, rejected, unknown, token invalid, IP refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.dhan.book import RowError, order_of, position_of, product_type, status_text, trade_of
from broker.dhan.outcomes import Outcome, classify, error_of
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus


def err(code: str, message: str = "m", kind: str = "Order_Error") -> dict[str, str]:
    return {"errorType": kind, "errorCode": code, "errorMessage": message}


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, {"orderId": "112111182198", "orderStatus": "TRANSIT"}, Outcome.OK),
    (200, {"OrderId": 42, "OrderStatus": "PENDING"}, Outcome.OK),
    (200, {"orderStatus": "TRANSIT"}, Outcome.UNKNOWN),  # no orderId: not proof of placement
    (400, err("DH-903"), Outcome.REJECTED),
    (400, err("DH-905"), Outcome.REJECTED),
    (400, err("DH-906"), Outcome.REJECTED),
    (400, {"foo": 1}, Outcome.REJECTED),
    (429, err("DH-904"), Outcome.UNKNOWN),
    (429, None, Outcome.UNKNOWN),
    (400, err("DH-904"), Outcome.UNKNOWN),
    (500, err("DH-908"), Outcome.UNKNOWN),
    (400, err("DH-909"), Outcome.UNKNOWN),
    (400, err("DH-910"), Outcome.UNKNOWN),
    (502, None, Outcome.UNKNOWN),
    (401, err("DH-901", kind="Invalid_Authentication"), Outcome.TOKEN_INVALID),
    (400, err("DH-901"), Outcome.TOKEN_INVALID),
    (403, None, Outcome.TOKEN_INVALID),
    (400, {"data": {"808": "Authentication Failed"}, "status": "failed"},
     Outcome.TOKEN_INVALID),
    (403, err("DH-905", "Static IP not whitelisted for order placement"), Outcome.IP_REFUSED),
    (400, err("DH-902", "Request from an IP address not in the whitelist"), Outcome.IP_REFUSED),
])
def test_placement_answers(status: int, body: object, expected: Outcome) -> None:
    assert classify(status, body, placement=True).outcome is expected


def test_an_unreadable_body_is_unknown_even_on_2xx() -> None:
    assert classify(200, None, placement=True, readable=False).outcome is Outcome.UNKNOWN
    assert classify(400, None, readable=False).outcome is Outcome.UNKNOWN


def test_a_timeout_after_sending_is_unknown_and_no_connection_is_not_sent() -> None:
    timeout = classify(None, None, transport="ReadTimeout: timed out", placement=True)
    assert (timeout.outcome, timeout.code) == (Outcome.UNKNOWN, "timeout")
    reset = classify(None, None, transport="RemoteProtocolError: reset", placement=True)
    assert (reset.outcome, reset.code) == (Outcome.UNKNOWN, "transport")
    refused = classify(None, None, transport="ConnectError", sent=False, placement=True)
    assert (refused.outcome, refused.code) == (Outcome.REJECTED, "not-sent")


def test_lookups_say_not_found_for_missing_orders() -> None:
    assert classify(404, err("DH-907", "no data"), lookup=True).outcome is Outcome.NOT_FOUND
    assert classify(200, [], lookup=True).outcome is Outcome.NOT_FOUND
    assert classify(200, [{"orderId": "1"}], lookup=True).outcome is Outcome.OK
    assert classify(429, None, lookup=True).outcome is Outcome.UNKNOWN


def test_error_bodies_of_both_apis_are_read() -> None:
    assert error_of(err("DH-905", "bad qty")) == ("DH-905", "Order_Error bad qty")
    assert error_of({"ErrorCode": "DH-906", "ErrorMessage": "x"})[0] == "DH-906"
    assert error_of({"data": {"805": "Too many"}, "status": "failed"}) == ("805", "Too many")
    assert error_of("text") == (None, "")


def test_order_rows_are_read_liberally() -> None:
    order = order_of({"OrderId": 7, "order_status": "Part-Traded", "transactionType": "SELL",
                      "exchangeSegment": "NSE_FNO", "securityId": 49081, "quantity": "75",
                      "filledQty": "25", "averageTradedPrice": 101.5, "correlationId": "NA",
                      "productType": "INTRADAY", "price": "0"})
    assert (order.order_id, order.status, order.order_status) == ("7", "PART_TRADED",
                                                                   OrderStatus.PART_TRADED)
    assert order.txn_type is TxnType.SELL
    assert order.instrument == Instrument(segment=Segment.NSE_FNO, security_id="49081")
    assert (order.quantity, order.filled_qty, order.avg_price) == (75, 25, Decimal("101.5"))
    assert order.correlation_id is None
    assert order_of({"orderId": "1", "orderStatus": "MODIFIED"}).order_status is None


@pytest.mark.parametrize("row", [{"orderStatus": "PENDING"}, [1], {"orderId": "1",
                                                                   "quantity": "ten"}])
def test_unreadable_order_rows_raise_row_error(row: object) -> None:
    with pytest.raises(RowError):
        order_of(row)


def test_trade_and_position_rows() -> None:
    trade = trade_of({"orderId": "9", "exchangeTradeId": "T1", "transactionType": "BUY",
                      "exchangeSegment": "NSE_EQ", "securityId": "11536",
                      "tradedQuantity": 10, "tradedPrice": "2501.35"})
    assert (trade.quantity, trade.price, trade.txn_type) == (10, Decimal("2501.35"), TxnType.BUY)
    position = position_of({"exchangeSegment": "NSE_FNO", "securityId": "49081",
                            "productType": "INTRADAY", "netQty": "-75", "positionType": "SHORT"})
    assert (position.net_qty, position.product) == (-75, "INTRADAY")
    with pytest.raises(RowError):
        position_of({"netQty": 1})


def test_products_and_statuses_are_normalised() -> None:
    assert [product_type(p) for p in ("I", "C", "M", None, "margin")] == [
        "INTRADAY", "CNC", "MARGIN", "INTRADAY", "MARGIN"]
    assert [status_text(s) for s in ("Traded", "Part-Traded", "PART_TRADED", "Canceled")] == [
        "TRADED", "PART_TRADED", "PART_TRADED", "CANCELLED"]


@given(st.one_of(st.none(), st.integers(100, 599)),
       st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=10),
       st.booleans(), st.booleans())
def test_any_answer_is_classified_and_only_a_2xx_is_ok(status: int | None, body: object,
                                                       placement: bool, lookup: bool) -> None:
    verdict = classify(status, body, transport=None if status else "ReadError: reset",
                       placement=placement, lookup=lookup)
    assert verdict.outcome in Outcome
    if verdict.outcome is Outcome.OK:
        assert status is not None and 200 <= status < 300
    if status is not None and status >= 500:
        assert verdict.outcome in (Outcome.UNKNOWN, Outcome.TOKEN_INVALID, Outcome.IP_REFUSED)
