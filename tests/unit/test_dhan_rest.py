"""The DhanHQ REST client's wire details: its requests and its reading of answers through a
test wire that hands each request to a handler (written with httpx's request and response
types), then ``PooledWire`` itself against loopback sockets: what counts as sent."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal

import httpx
import pytest
import urllib3

from broker.dhan.limits import Bucket, RateLimits
from broker.dhan.outcomes import Answer, Outcome
from broker.dhan.rest import DhanRest, PlacedOrder, shared_tls
from broker.dhan.token import TokenSource
from broker.dhan.wire import OneWriteHTTPConnection, PooledWire, WireError
from broker.ports import GatewayError, QuoteThrottled, QuoteTimeout
from models.common import Instrument, Segment, TxnType

FNO = Instrument(segment=Segment.NSE_FNO, security_id="49081")
TOKEN = "the-secret-token-value"


def client(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[DhanRest,
                                                                       list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    rest = DhanRest("https://api.example/v2", "1000000001", TokenSource(token=TOKEN),
                    limiter=RateLimits(), wire=HandlerWire(record))
    return rest, seen


class HandlerWire:
    """A ``Wire`` that answers with ``handler``: a connection failure it raises is "not sent",
    any other transport failure "sent"."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def request(self, method: str, path: str, body: bytes | None,
                headers: Mapping[str, str]) -> tuple[int, bytes]:
        request = httpx.Request(method, "https://api.example/v2" + path, content=body,
                                headers=dict(headers))
        try:
            response = self.handler(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise WireError(f"{type(error).__name__}: {error}", sent=False) from None
        except httpx.HTTPError as error:
            raise WireError(f"{type(error).__name__}: {error}", sent=True) from None
        return response.status_code, response.read()

    def close(self) -> None:
        return None


def place(rest: DhanRest) -> Answer[PlacedOrder]:
    return rest.place_order(correlation_id="X-P1-1", instrument=FNO, txn_type=TxnType.SELL,
                            quantity=75, price=Decimal("101.05"), product="I")


def test_placement_body_and_headers_are_dhans() -> None:
    rest, seen = client(lambda r: httpx.Response(200, json={"orderId": "1125",
                                                            "orderStatus": "TRANSIT"}))
    answer = place(rest)
    assert answer.outcome is Outcome.OK
    [request] = seen
    assert (request.method, request.url.path) == ("POST", "/v2/orders")
    assert request.headers["access-token"] == TOKEN
    assert request.headers["client-id"] == "1000000001"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "dhanClientId": "1000000001", "correlationId": "X-P1-1", "transactionType": "SELL",
        "exchangeSegment": "NSE_FNO", "productType": "INTRADAY", "orderType": "LIMIT",
        "validity": "DAY", "securityId": "49081", "quantity": 75, "price": 101.05}


def test_ids_go_in_one_path_segment() -> None:
    rest, seen = client(lambda r: httpx.Response(200, json=[]))
    assert rest.order_by_correlation("../orders?x=1").outcome is Outcome.NOT_FOUND
    assert seen[0].url.raw_path == b"/v2/orders/external/..%2Forders%3Fx%3D1"


def test_an_unreadable_2xx_is_unknown() -> None:
    rest, _ = client(lambda r: httpx.Response(200, content=b"<html>gateway</html>"))
    answer = place(rest)
    assert (answer.outcome, answer.code) == (Outcome.UNKNOWN, "200")


def test_transport_failures_after_and_before_sending() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    assert place(client(timeout)[0]).outcome is Outcome.UNKNOWN
    answer = place(client(refused)[0])
    assert (answer.outcome, answer.code) == (Outcome.REJECTED, "not-sent")


def test_a_get_order_answer_of_one_element_is_the_order() -> None:
    rest, _ = client(lambda r: httpx.Response(200, json=[{
        "orderId": "1125", "orderStatus": "TRADED", "filledQty": "75", "quantity": 75}]))
    answer = rest.order("1125")
    assert answer.ok and answer.value is not None
    assert (answer.value.order_id, answer.value.filled_qty) == ("1125", 75)


def test_quotes_skip_zero_prices_and_missing_ids() -> None:
    body = {"data": {"NSE_FNO": {"49081": {"last_price": 368.15}, "49082": {"last_price": 0}},
                     "NSE_EQ": {"11536": {"LastPrice": "2501.5"}}}, "status": "success"}
    rest, seen = client(lambda r: httpx.Response(200, json=body))
    prices = rest.ltp({Segment.NSE_FNO: [49081, 49082, 49083], Segment.NSE_EQ: [11536]})
    assert prices == {FNO: Decimal("368.15"),
                      Instrument(segment=Segment.NSE_EQ, security_id="11536"): Decimal("2501.5")}
    assert json.loads(seen[0].content) == {"NSE_FNO": [49081, 49082, 49083], "NSE_EQ": [11536]}


def test_circuit_limits_come_from_the_quote_endpoint_and_bad_rows_are_left_out() -> None:
    body = {"data": {"NSE_FNO": {"49081": {"last_price": 368.15, "lower_circuit_limit": 294.5,
                                           "upper_circuit_limit": 441.8},
                                 "49082": {"last_price": 12, "lower_circuit_limit": 0,
                                           "upper_circuit_limit": 14.4},
                                 "49083": {"lower_circuit_limit": 20, "upper_circuit_limit": 10},
                                 "49084": "not an entry"},
                     "NSE_EQ": {"11536": {"LowerCircuitLimit": "2001.2",
                                          "UpperCircuitLimit": "3001.8"}}}, "status": "success"}
    rest, seen = client(lambda r: httpx.Response(200, json=body))
    limits = rest.circuit_limits({Segment.NSE_FNO: [49081, 49082, 49083, 49084],
                                  Segment.NSE_EQ: [11536]})
    assert limits == {FNO: (Decimal("294.5"), Decimal("441.8")),
                      Instrument(segment=Segment.NSE_EQ, security_id="11536"):
                      (Decimal("2001.2"), Decimal("3001.8"))}
    assert seen[0].url.path.endswith("/marketfeed/quote")


def test_a_throttled_circuit_read_raises_quote_throttled() -> None:
    rest, _ = client(lambda r: httpx.Response(
        429, json={"data": {"805": "Too many requests"}, "status": "failed"}))
    with pytest.raises(QuoteThrottled):
        rest.circuit_limits({Segment.NSE_FNO: [49081]})


@pytest.mark.parametrize(("response", "error"), [
    (httpx.Response(429, json={"data": {"805": "Too many requests"}, "status": "failed"}),
     QuoteThrottled),
    (httpx.Response(500, json={"data": {"800": "Internal"}, "status": "failed"}), GatewayError),
])
def test_quote_failures_raise_the_ports_errors(response: httpx.Response,
                                               error: type[Exception]) -> None:
    rest, _ = client(lambda r: response)
    with pytest.raises(error):
        rest.ltp({Segment.NSE_FNO: [49081]})


def test_a_quote_timeout_raises_quote_timeout() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(QuoteTimeout):
        client(timeout)[0].ltp({Segment.NSE_FNO: [49081]})


def test_a_shared_tls_context_still_verifies_certificates_and_host_names() -> None:
    context = shared_tls()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the default roots are loaded
    rest = DhanRest("https://api.example/v2", "1000000001", TokenSource(token=TOKEN),
                    verify=context)
    rest.close()


# PooledWire on loopback sockets --------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A one-connection-at-a-time server on a loopback port whose behaviour the test sets:
    ``answer`` (a normal answer), ``close`` (read the request, close without an answer) or
    ``silent`` (read it and never answer)."""
    mode: list[str] = ["answer"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:  # the whole request read before any answer
                body += conn.recv(4096)
            if mode[0] == "answer":
                # "close": the client must not send its next request on this connection,
                # which this server closes (a race the client could lose under load)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
                conn.close()
            elif mode[0] == "close":
                conn.close()
            else:
                held.append(conn)
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], mode
    stop.set()
    thread.join(timeout=5)
    listener.close()


ANSWER = b'{"orderId": "1125"}'


def _post(wire: PooledWire) -> tuple[int, bytes]:
    return wire.request("POST", "/orders", b"{}", {"access-token": TOKEN})


def test_pooled_wire_answers_and_says_what_was_sent(server: tuple[int, list[str]]) -> None:
    port, mode = server
    wire = PooledWire(f"http://127.0.0.1:{port}/v2", connect=1.0, read=0.3)
    try:
        assert _post(wire) == (200, ANSWER)
        mode[0] = "close"  # read, then closed without an answer: it may have been acted on
        with pytest.raises(WireError) as closed:
            _post(wire)
        assert closed.value.sent
        mode[0] = "silent"  # no answer within the read timeout
        with pytest.raises(WireError) as silent:
            _post(wire)
        assert silent.value.sent and "timeout" in str(silent.value).lower()
        assert TOKEN not in str(closed.value) + str(silent.value)
    finally:
        wire.close()


def _recording(base: type[urllib3.connection.HTTPConnection]) -> tuple[type, list[bytes]]:
    """A connection class over ``base`` whose socket writes are kept."""
    writes: list[bytes] = []

    class Writes:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def sendall(self, data: bytes) -> None:
            writes.append(bytes(data))
            self._sock.sendall(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._sock, name)

    class Recording(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            self.sock = Writes(self.sock)  # type: ignore[has-type, arg-type]

    return Recording, writes


@pytest.mark.parametrize(("base", "expected"), [(OneWriteHTTPConnection, 1),
                                                (urllib3.connection.HTTPConnection, 2)])
def test_a_request_leaves_with_its_body_in_one_write(server: tuple[int, list[str]],
                                                     base: type, expected: int) -> None:
    """Ours writes the headers and the body together (urllib3's own: two writes, with the
    interpreter given up between them); a request without a body is one write either way."""
    port, _ = server
    wire = PooledWire(f"http://127.0.0.1:{port}/v2", connect=1.0, read=1.0)
    wire._pool.ConnectionCls, writes = _recording(base)
    try:
        assert wire.request("POST", "/orders", b'{"a": 1}', {"access-token": TOKEN}) == (
            200, ANSWER)
        assert len(writes) == expected
        assert writes[0].startswith(b"POST /v2/orders HTTP/1.1\r\n")
        assert b"".join(writes).endswith(b'\r\n\r\n{"a": 1}')
        writes.clear()
        assert wire.request("GET", "/orders", None, {"access-token": TOKEN})[0] == 200
        assert len(writes) == 1 and writes[0].startswith(b"GET /v2/orders")
    finally:
        wire.close()


def test_pooled_wire_refused_connection_is_not_sent() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wire = PooledWire(f"http://127.0.0.1:{port}/v2", connect=1.0, read=1.0)
    with pytest.raises(WireError) as refused:
        _post(wire)
    assert not refused.value.sent
    wire.close()


def test_pooled_wire_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        PooledWire("ftp://api.example/v2", connect=1.0, read=1.0)


def test_an_answer_says_how_long_it_waited_for_its_slot() -> None:
    class SlowLimits(RateLimits):
        def acquire(self, bucket: Bucket, timeout: float) -> bool:
            time.sleep(0.03)  # as if the window were full for 30 ms
            return super().acquire(bucket, timeout)

    rest = DhanRest("https://api.example/v2", "1000000001", TokenSource(token=TOKEN),
                    limiter=SlowLimits(), wire=HandlerWire(
                        lambda r: httpx.Response(200, json={"orderId": "1125"})))
    answer = place(rest)
    assert answer.ok and 0.03 <= answer.waited < 1.0
    assert place(client(lambda r: httpx.Response(200, json={"orderId": "1126"}))[0]).waited \
        < 0.03


def test_a_header_the_wire_refuses_is_not_sent_and_its_value_is_not_told(
        server: tuple[int, list[str]]) -> None:
    port, _ = server
    wire = PooledWire(f"http://127.0.0.1:{port}/v2", connect=1.0, read=1.0)
    with pytest.raises(WireError) as refused:
        wire.request("POST", "/orders", b"{}", {"access-token": TOKEN + "\nX-Evil: 1"})
    assert not refused.value.sent
    rest = DhanRest(f"http://127.0.0.1:{port}/v2", "1000000001",
                    TokenSource(token=TOKEN + "\nX"), limiter=RateLimits())
    answer = place(rest)
    assert (answer.outcome, answer.code) == (Outcome.REJECTED, "not-sent")
    assert TOKEN not in answer.detail
    wire.close()
    rest.close()
