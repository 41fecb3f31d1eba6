"""The DhanHQ client against the loopback fake DhanHQ, over real sockets on 127.0.0.1.

Placement outcomes (placed, rejected, unknown on timeout / 429, resolved by correlation id),
token refusal on REST and both sockets, reconnect with back-off, feed subscriptions in chunks of
100 with ticks arriving, the client's own rate limits, and the token never in a log line or an
exception's text.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from loguru import logger

from broker.dhan import (
    Answer,
    Bucket,
    DhanRest,
    LinkState,
    MarketFeed,
    OrderSocket,
    Outcome,
    PlacedOrder,
    RateLimits,
    TokenSource,
)
from broker.dhan.gateway import DhanGateway
from broker.dhan.link import backoff_delay
from broker.fake_dhan import FakeDhan
from broker.fake_dhan import server as server_module
from broker.leased import lease_refusal, leased
from broker.paper.exchange import PaperExchange
from broker.paper.market import PaperMarket
from broker.ports import GatewayError, QuoteThrottled
from models.common import IST, Instrument, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.wire import parse_order_update

T0 = datetime(2025, 1, 6, 10, 0, tzinfo=IST)
FNO = Instrument(segment=Segment.NSE_FNO, security_id="49081")
EQ = Instrument(segment=Segment.NSE_EQ, security_id="11536")
CLIENT = "1000000001"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.fake-dhan-secret-token.c2ln"
FAST = (0.2, 0.4, 0.8)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


class Venue:
    """A still paper market and exchange behind the fake, and the clients' token source."""

    def __init__(self) -> None:
        self.market = PaperMarket([FNO, EQ], seed=1, volatility=0,
                                  start_prices={FNO: Decimal("100"), EQ: Decimal("2500")})
        self.market.advance(T0)
        self.exchange = PaperExchange(self.market, start=T0, latency=timedelta(0))
        self.fake = FakeDhan(self.exchange, self.market, client_id=CLIENT, valid_token=TOKEN)
        self.tokens = TokenSource(token=TOKEN)
        self.clients: list[DhanRest] = []

    def rest(self, *, timeout: float = 2.0, limits: RateLimits | None = None,
             tokens: TokenSource | None = None) -> DhanRest:
        client = DhanRest(self.fake.rest_url, CLIENT, tokens or self.tokens, timeout=timeout,
                          limiter=limits)
        self.clients.append(client)
        return client

    def place(self, rest: DhanRest, client_id: str, price: str = "101",
              txn: TxnType = TxnType.BUY) -> Answer[PlacedOrder]:
        return rest.place_order(correlation_id=client_id, instrument=FNO, txn_type=txn,
                                quantity=75, price=Decimal(price), product="I")


@pytest.fixture
def venue() -> Iterator[Venue]:
    venue = Venue()
    venue.fake.start()
    yield venue
    for client in venue.clients:
        client.close()
    venue.fake.stop()


# Placement outcomes ----------------------------------------------------------------------------
def test_a_placement_is_placed_and_its_frames_come_on_the_order_socket(venue: Venue) -> None:
    frames: list[str] = []
    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, venue.tokens, sink=frames.append,
                         backoff=FAST, login_grace=0.2)
    socket.start()
    wait_until(lambda: socket.state is LinkState.LIVE)
    rest = venue.rest()
    answer = rest.place_order(correlation_id="X-P1-1", instrument=FNO, txn_type=TxnType.SELL,
                              quantity=75, price=Decimal("99.5"), product="I")
    assert answer.outcome is Outcome.OK and answer.value is not None
    assert answer.value.status == "TRANSIT"  # DhanHQ's usual first answer
    wait_until(lambda: len(frames) == 3)
    updates = [parse_order_update(frame) for frame in frames]
    assert all(isinstance(u, OrderUpdate) for u in updates)
    last = updates[-1]
    assert isinstance(last, OrderUpdate)
    assert (last.order_no, last.status, last.correlation_id, last.order_type) == (
        answer.value.order_id, OrderStatus.TRADED, "X-P1-1", "LMT")
    found = rest.order(answer.value.order_id)
    assert found.ok and found.value is not None and found.value.filled_qty == 75
    socket.stop()
    assert socket.state is LinkState.STOPPED and not socket.running


def test_the_fake_records_what_the_live_benchmark_measures(venue: Venue) -> None:
    """A placement's arrival with its security and correlation ids; the first time each price
    of an instrument was published (a price published again keeps its first time)."""
    before = time.monotonic()
    venue.fake.publish([(FNO, Decimal("100"))])
    first = venue.fake.published[FNO]
    venue.fake.publish([(FNO, Decimal("100"))])
    assert venue.fake.published[FNO] == first and first[0] == Decimal("100")
    venue.fake.publish([(FNO, Decimal("94"))])
    moved = venue.fake.published[FNO]
    assert moved[0] == Decimal("94") and before <= first[1] <= moved[1]
    rest = venue.rest()
    assert venue.place(rest, "X-B1-1", price="94").ok
    assert rest.orders().ok
    placed = [r for r in venue.fake.requests if r.method == "POST"]
    assert [(r.bucket, r.path, r.security_id, r.correlation_id) for r in placed] == [
        (Bucket.ORDERS, "/v2/orders", "49081", "X-B1-1")]
    assert moved[1] <= placed[0].at <= time.monotonic()
    reads = [r for r in venue.fake.requests if r.method == "GET"]
    assert [(r.security_id, r.correlation_id) for r in reads] == [(None, None)]


def test_a_tick_is_stamped_when_written_to_a_feed_socket(venue: Venue) -> None:
    """``wired``: the first time each price went out on a feed's socket, after it was handed
    over (``published``) and before the client read it; a tick no feed took is not wired."""
    venue.fake.publish([(FNO, Decimal("100"))])
    assert FNO in venue.fake.published and FNO not in venue.fake.wired
    seen: list[float] = []
    feed = MarketFeed(venue.fake.feed_ws_url, CLIENT, venue.tokens,
                      on_tick=lambda i, p, t: seen.append(time.monotonic()), backoff=(0.2,))
    feed.subscribe([FNO])
    feed.start()
    try:
        wait_until(lambda: len(venue.fake.feed_requests) == 1)
        venue.fake.publish([(FNO, Decimal("94"))])
        wait_until(lambda: len(seen) == 1)
        handed, wired = venue.fake.published[FNO], venue.fake.wired[FNO]
        assert wired[0] == handed[0] == Decimal("94")
        assert handed[1] <= wired[1] <= seen[0]
        venue.fake.publish([(FNO, Decimal("94"))])
        wait_until(lambda: len(seen) == 2)
        assert venue.fake.wired[FNO] == wired  # the same price again keeps its first time
    finally:
        feed.stop()


def test_a_request_is_stamped_when_read_not_when_its_handler_runs(
        venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two placements read in one turn of the fake's event loop: the second's handler waits for
    the first's (made to hold the loop here); its ``at`` is when it was read, its ``handled``
    later."""
    rests = [venue.rest(), venue.rest()]
    for n, rest in enumerate(rests):  # each client's connection open before the test
        assert venue.place(rest, f"X-W{n}-1").ok
    parse = server_module._placement

    def slow(body: dict[str, object]) -> dict[str, object]:
        time.sleep(0.1)  # on the event loop
        return parse(body)

    monkeypatch.setattr(server_module, "_placement", slow)
    loop = venue.fake._loop
    assert loop is not None
    loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop busy while both requests come
    time.sleep(0.05)
    senders = [threading.Thread(target=venue.place, args=(rest, f"X-S{n}-1"))
               for n, rest in enumerate(rests)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(5)
    both = [r for r in venue.fake.requests if (r.correlation_id or "").startswith("X-S")]
    assert len(both) == 2
    first, second = sorted(both, key=lambda r: r.handled or 0.0)
    assert first.handled is not None and second.handled is not None
    assert abs(second.at - first.at) < 0.05  # read together
    assert second.handled - second.at >= 0.09  # handled after the first's 0.1 s


def test_the_exchanges_work_leaves_the_event_loop_free(venue: Venue) -> None:
    """A placement whose paper exchange work takes 0.3 s does not hold up a second placement:
    it is read, placed and answered meanwhile."""
    rests = [venue.rest(timeout=5.0), venue.rest(timeout=5.0)]
    for n, rest in enumerate(rests):
        assert venue.place(rest, f"X-V{n}-1").ok
    place = venue.exchange.place_order

    def slow(**order: object) -> str:
        if order["client_id"] == "X-V0-2":
            time.sleep(0.3)
        return place(**order)  # type: ignore[arg-type]

    venue.exchange.place_order = slow  # type: ignore[method-assign]
    answered: dict[str, float] = {}

    def send(rest: DhanRest, client_id: str) -> None:
        assert venue.place(rest, client_id).ok
        answered[client_id] = time.monotonic()

    started = time.monotonic()
    slow_one = threading.Thread(target=send, args=(rests[0], "X-V0-2"))
    slow_one.start()
    time.sleep(0.05)
    send(rests[1], "X-V1-2")
    slow_one.join(5)
    assert answered["X-V1-2"] - started < 0.25 < answered["X-V0-2"] - started


def test_a_request_in_two_reads_is_stamped_when_whole(venue: Venue) -> None:
    """Its headers, then its body 0.1 s later: the request arrived with its last byte, its
    handler began with the headers. The next request on the same connection has a stamp of
    its own."""
    def request(correlation: str) -> tuple[bytes, bytes]:
        body = json.dumps({"correlationId": correlation, "exchangeSegment": "NSE_FNO",
                           "securityId": "49081", "transactionType": "BUY", "quantity": 75,
                           "orderType": "LIMIT", "productType": "INTRADAY",
                           "validity": "DAY", "price": 101, "dhanClientId": CLIENT}).encode()
        return (f"POST /v2/orders HTTP/1.1\r\nHost: 127.0.0.1\r\naccess-token: {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode(), body

    def answered(conn: socket.socket) -> int:
        answer = http.client.HTTPResponse(conn)
        answer.begin()
        answer.read()
        return answer.status

    with socket.create_connection(("127.0.0.1", venue.fake.port), timeout=5) as conn:
        head, body = request("X-T1-1")
        sent = time.monotonic()
        conn.sendall(head)
        time.sleep(0.1)
        whole = time.monotonic()
        conn.sendall(body)
        assert answered(conn) == 200
        again = time.monotonic()
        conn.sendall(b"".join(request("X-T1-2")))
        assert answered(conn) == 200
    one, two = [r for r in venue.fake.requests if r.method == "POST"]
    assert one.handled is not None and two.handled is not None
    assert sent <= one.handled < whole <= one.at  # the handler began before the body came
    assert again <= two.at
    assert one.received is not None and two.received is not None
    assert whole <= one.received <= one.at  # the kernel's stamp of the body's packet
    assert again <= two.received <= two.at


def test_a_request_reaching_a_busy_fake_is_stamped_by_the_kernel_on_arrival(
        venue: Venue) -> None:
    """The fake's event loop is held for 0.3 s while a placement comes: the kernel's receive
    stamp (``received``, the benchmark's arrival) is when it came, the loop's read (``at``)
    when the loop got to it."""
    rest = venue.rest(timeout=5.0)
    assert venue.place(rest, "X-K0-1").ok  # the connection open before the test
    loop = venue.fake._loop
    assert loop is not None
    loop.call_soon_threadsafe(time.sleep, 0.3)
    time.sleep(0.05)
    sent = time.monotonic()
    assert venue.place(rest, "X-K0-2").ok
    [placed] = [r for r in venue.fake.requests if r.correlation_id == "X-K0-2"]
    assert placed.received is not None
    assert sent <= placed.received < sent + 0.1 < placed.at
    assert placed.arrived == placed.received


def test_a_refused_placement_is_rejected(venue: Venue) -> None:
    venue.exchange.fail_next()
    answer = venue.place(venue.rest(), "X-R1-1")
    assert (answer.outcome, answer.code) == (Outcome.REJECTED, "DH-906")
    assert venue.exchange.orders() == []


def test_a_lost_answer_is_unknown_and_resolved_by_correlation_id(venue: Venue) -> None:
    venue.fake.lose_placements(1)
    rest = venue.rest(timeout=0.5)
    answer = rest.place_order(correlation_id="X-U1-1", instrument=FNO, txn_type=TxnType.BUY,
                              quantity=75, price=Decimal("101"))
    assert (answer.outcome, answer.code) == (Outcome.UNKNOWN, "timeout")
    resolved = rest.order_by_correlation("X-U1-1")
    assert resolved.ok and resolved.value is not None
    assert resolved.value.order_status is OrderStatus.TRADED
    assert rest.order_by_correlation("X-U1-2").outcome is Outcome.NOT_FOUND


def test_a_late_answer_is_unknown_and_the_order_was_taken_once(venue: Venue) -> None:
    venue.fake.delay_placements(1.0)
    rest = venue.rest(timeout=0.3)
    assert venue.place(rest, "X-L1-1").outcome is Outcome.UNKNOWN
    assert len(venue.exchange.orders()) == 1
    assert rest.order_by_correlation("X-L1-1").ok  # resolved: it was placed
    assert venue.fake.placements == ["X-L1-1"]


def test_429_on_placement_is_unknown_and_on_quotes_raises_throttled(venue: Venue) -> None:
    rest = venue.rest()
    venue.fake.throttle(Bucket.ORDERS)
    answer = venue.place(rest, "X-T1-1")
    assert (answer.outcome, answer.code) == (Outcome.UNKNOWN, "DH-904")
    assert rest.order_by_correlation("X-T1-1").outcome is Outcome.NOT_FOUND
    venue.fake.throttle(Bucket.QUOTE)
    with pytest.raises(QuoteThrottled):
        rest.ltp({Segment.NSE_FNO: [49081]})
    venue.fake.throttle(Bucket.READS)
    assert rest.orders().outcome is Outcome.UNKNOWN


def test_static_ip_refusal_is_reported_as_such(venue: Venue) -> None:
    venue.fake.refuse_ip = True
    answer = venue.place(venue.rest(), "X-I1-1")
    assert answer.outcome is Outcome.IP_REFUSED
    assert "whitelisted" in answer.detail


def test_modify_and_cancel_a_resting_order(venue: Venue) -> None:
    rest = venue.rest()
    venue.exchange.rest_next(2)
    first, second = (venue.place(rest, "X-M1-1", price="95").value,
                     venue.place(rest, "X-M1-2", price="95").value)
    assert first is not None and second is not None
    modified = rest.modify_order(first.order_id, quantity=75, price=Decimal("100.5"))
    assert modified.ok and modified.value is not None
    assert modified.value.status == "TRADED"
    assert rest.cancel_order(second.order_id).ok
    assert venue.exchange.order(second.order_id).status is OrderStatus.CANCELLED
    refused = rest.cancel_order(second.order_id)
    assert (refused.outcome, refused.code) == (Outcome.REJECTED, "DH-906")


def test_an_order_takes_at_most_25_modifications(venue: Venue) -> None:
    rest = venue.rest()
    rest.limit_wait = 5.0
    venue.exchange.rest_next()
    placed = venue.place(rest, "X-M2-1", price="90").value
    assert placed is not None
    for k in range(25):
        price = Decimal("90") + Decimal("0.05") * k
        assert rest.modify_order(placed.order_id, quantity=75, price=price).ok
    refused = rest.modify_order(placed.order_id, quantity=75, price=Decimal("91.5"))
    assert (refused.outcome, refused.code) == (Outcome.REJECTED, "DH-906")
    assert venue.exchange.order(placed.order_id).modifications == 25


def test_books_and_quotes(venue: Venue) -> None:
    rest = venue.rest()
    venue.place(rest, "X-B1-1", price="101")
    venue.place(rest, "X-B1-2", price="99", txn=TxnType.SELL)
    orders, trades, positions = rest.orders(), rest.trades(), rest.positions()
    assert orders.ok and [o.correlation_id for o in orders.value or []] == ["X-B1-1", "X-B1-2"]
    assert trades.ok and [(t.txn_type, t.quantity) for t in trades.value or []] == [
        (TxnType.BUY, 75), (TxnType.SELL, 75)]
    assert positions.ok and [(p.instrument, p.net_qty) for p in positions.value or []] == [
        (FNO, 0)]
    time.sleep(1.0)  # the fake's quote API allows one request a second
    prices = rest.ltp({Segment.NSE_FNO: [49081, 1], Segment.NSE_EQ: [11536]})
    assert prices == {FNO: Decimal("100"), EQ: Decimal("2500")}  # unknown id 1 left out


def test_the_clients_own_limiter_keeps_orders_within_ten_a_second(venue: Venue) -> None:
    rest = venue.rest()
    rest.limit_wait = 3.0
    assert rest.orders().ok  # the connection is open before the first order is timed
    for k in range(13):
        assert venue.place(rest, f"X-S{k}-1").outcome is Outcome.OK
    times = [r.at for r in venue.fake.requests_in(Bucket.ORDERS)]
    assert len(times) == 13
    # the fake stamps arrival, so one request's transit time (well under 0.1 s) may shorten a gap
    assert all(times[i + 10] - times[i] >= 0.9 for i in range(len(times) - 10))


def test_the_limiter_answers_limited_without_sending(venue: Venue) -> None:
    rest = venue.rest(limits=RateLimits({Bucket.ORDERS: "1/minute"}))
    rest.limit_wait = 0.1
    assert venue.place(rest, "X-Q1-1").outcome is Outcome.OK
    limited = venue.place(rest, "X-Q2-1")
    assert limited.outcome is Outcome.LIMITED
    assert len(venue.fake.requests_in(Bucket.ORDERS)) == 1


def test_a_lease_that_ends_while_an_order_waits_for_its_slot_sends_nothing(venue: Venue) -> None:
    """A runner's exit checked its lease, then waited for a rate-limit slot past the lease's
    end (or its process was paused there): checked again as it leaves, it is not sent (the new
    owner may have looked it up and placed it by now)."""
    rest = venue.rest(limits=RateLimits({Bucket.ORDERS: "1/second"}))
    rest.limit_wait = 3.0
    deadline = time.monotonic() + 0.8  # margin 0.5 s: the lease allows a send for 0.3 s more
    guarded = leased(DhanGateway(rest), lambda: deadline, margin=0.5)
    rest.may_send = lease_refusal(lambda: deadline, 0.5)
    assert venue.place(rest, "X-Q1-1").outcome is Outcome.OK  # the window's one slot taken
    venue.market.advance(T0 + timedelta(seconds=1))
    with pytest.raises(GatewayError, match="not sent"):  # passes the first check, then waits
        guarded.place_order(client_id="X-Q2-1", instrument=FNO, txn_type=TxnType.SELL,
                            quantity=75, product="I")
    assert [r.correlation_id for r in venue.fake.requests_in(Bucket.ORDERS)] == ["X-Q1-1"]
    assert venue.exchange.lookup("X-Q2-1") is None


# Tokens ----------------------------------------------------------------------------------------
def test_a_refused_token_stops_rest_calls_until_a_new_one_comes(venue: Venue) -> None:
    tokens = TokenSource(token="a-wrong-token")
    rest = venue.rest(tokens=tokens)
    refusals: list[str] = []
    rest.on_token_invalid = refusals.append
    first = rest.orders()
    assert (first.outcome, first.code, first.http_status) == (Outcome.TOKEN_INVALID, "DH-901",
                                                               401)
    sent = len(venue.fake.requests)
    assert rest.positions().outcome is Outcome.TOKEN_INVALID
    assert len(venue.fake.requests) == sent  # not sent again: no retry loop
    assert len(refusals) == 1
    tokens.set(TOKEN)
    assert rest.orders().ok


def test_the_order_socket_reports_a_refused_login_and_stops(venue: Venue) -> None:
    states: list[LinkState] = []
    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, TokenSource(token="a-wrong-token"),
                         sink=lambda frame: None, on_state=lambda s, d: states.append(s),
                         backoff=FAST)
    socket.start()
    wait_until(lambda: not socket.running)
    assert states == [LinkState.CONNECTING, LinkState.TOKEN_INVALID]
    assert venue.fake.logins == 0 and socket.connects == 0


def test_the_feed_reports_a_refused_token_and_stops(venue: Venue) -> None:
    feed = MarketFeed(venue.fake.feed_ws_url, CLIENT, TokenSource(token="a-wrong-token"),
                      on_tick=lambda *tick: None, backoff=FAST)
    feed.start()
    wait_until(lambda: not feed.running)
    assert feed.state is LinkState.TOKEN_INVALID


def test_an_expired_token_drops_the_sockets_and_they_stop_on_reconnect(venue: Venue) -> None:
    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, venue.tokens, sink=lambda f: None,
                         backoff=FAST, login_grace=0.1)
    socket.start()
    wait_until(lambda: socket.state is LinkState.LIVE)
    venue.fake.expire_token()
    wait_until(lambda: not socket.running)
    assert socket.state is LinkState.TOKEN_INVALID
    assert venue.rest().orders().outcome is Outcome.TOKEN_INVALID


# Reconnects ------------------------------------------------------------------------------------
def test_the_order_socket_reconnects_after_a_drop_with_back_off(venue: Venue) -> None:
    frames: list[str] = []
    connected: list[float] = []
    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, venue.tokens, sink=frames.append,
                         on_connected=lambda: connected.append(time.monotonic()),
                         backoff=(0.5, 1.0), login_grace=0.1)
    socket.start()
    wait_until(lambda: len(connected) == 1)
    venue.fake.drop_order_sockets()
    wait_until(lambda: len(connected) == 2)
    assert socket.delays and 0.4 <= socket.delays[0] <= 0.6
    assert connected[1] - connected[0] >= 0.4
    assert venue.fake.logins == 2
    venue.place(venue.rest(), "X-C1-1")
    wait_until(lambda: len(frames) == 3)  # frames flow on the new connection
    venue.fake.camel_case = True
    venue.place(venue.rest(), "X-C1-2")
    wait_until(lambda: len(frames) == 6)
    last = json.loads(frames[-1])["Data"]
    assert (last["orderNo"], last["status"], last["tradedQty"]) == ("PB2", "Traded", 75)
    parsed = parse_order_update(frames[-1])
    assert isinstance(parsed, OrderUpdate) and parsed.status is OrderStatus.TRADED
    socket.stop()


def test_fills_while_disconnected_are_not_replayed_but_are_in_the_books(venue: Venue) -> None:
    frames: list[str] = []
    books: list[list[str]] = []
    rest = venue.rest()

    def reconcile() -> None:  # what the gateway does on every (re)connect
        answer = rest.orders()
        books.append([o.status for o in answer.value or []])

    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, venue.tokens, sink=frames.append,
                         on_connected=reconcile, backoff=(1.0,), login_grace=0.1)
    socket.start()
    wait_until(lambda: len(books) == 1)
    venue.fake.drop_order_sockets()
    wait_until(lambda: socket.state is LinkState.RECONNECTING)
    assert venue.place(rest, "X-D1-1").ok  # fills at once, while nobody listens
    wait_until(lambda: len(books) == 2)
    assert frames == [] and books == [[], ["TRADED"]]
    socket.stop()


def test_back_off_follows_the_schedule_with_jitter() -> None:
    schedule = (1, 2, 5, 10, 30, 60)
    for attempt, base in enumerate([*schedule, 60, 60]):
        delay = backoff_delay(attempt, schedule)
        assert 0.8 * base <= delay <= 1.2 * base


def test_the_feed_subscribes_in_chunks_of_100_ticks_arrive_and_it_resubscribes(
        venue: Venue) -> None:
    ticks: list[tuple[Instrument, Decimal, datetime]] = []
    instruments = [Instrument(segment=Segment.NSE_FNO, security_id=str(40000 + i))
                   for i in range(250)]
    feed = MarketFeed(venue.fake.feed_ws_url, CLIENT, venue.tokens,
                      on_tick=lambda i, p, t: ticks.append((i, p, t)), backoff=(0.2,))
    feed.subscribe(instruments)
    feed.start()
    wait_until(lambda: len(venue.fake.feed_requests) == 3)
    assert venue.fake.feed_requests == [(15, 100), (15, 100), (15, 50)]
    venue.fake.packets_per_message = 3
    venue.fake.publish([(instruments[0], Decimal("368.15")), (instruments[1], Decimal("0")),
                        (instruments[2], Decimal("12.05")), (FNO, Decimal("1"))])
    wait_until(lambda: len(ticks) == 2)
    assert [(i, p) for i, p, _ in ticks] == [(instruments[0], Decimal("368.15")),
                                             (instruments[2], Decimal("12.05"))]
    assert all(t.tzinfo is not None for _, _, t in ticks)
    assert feed.dropped == 1  # the zero price
    feed.unsubscribe(instruments[:1])
    wait_until(lambda: len(venue.fake.feed_requests) == 4)
    assert venue.fake.feed_requests[-1] == (16, 1)
    venue.fake.drop_feeds()
    wait_until(lambda: len(venue.fake.feed_requests) == 7)
    assert venue.fake.feed_requests[4:] == [(15, 100), (15, 100), (15, 49)]
    feed.stop()


def test_the_feed_hands_over_the_messages_already_received_at_once(venue: Venue) -> None:
    """With ``on_ticks``, each call holds the ticks of every message received by then: twenty
    messages that came while the feed's thread was busy arrive in one call, in order."""
    instruments = [Instrument(segment=Segment.NSE_FNO, security_id=str(41000 + i))
                   for i in range(20)]
    bursts: list[list[tuple[Instrument, Decimal, datetime]]] = []
    busy, go = threading.Event(), threading.Event()

    def on_ticks(ticks: list[tuple[Instrument, Decimal, datetime]]) -> None:
        bursts.append(ticks)
        if len(bursts) == 1:
            busy.set()
            go.wait(5)  # the feed's thread held here while the next twenty come

    feed = MarketFeed(venue.fake.feed_ws_url, CLIENT, venue.tokens, on_ticks=on_ticks,
                      backoff=(0.2,))
    feed.subscribe([FNO, *instruments])
    feed.start()
    try:
        wait_until(lambda: len(venue.fake.feed_requests) == 1)
        venue.fake.publish([(FNO, Decimal("100"))])
        assert busy.wait(5)
        venue.fake.publish([(i, Decimal("94")) for i in instruments])  # twenty messages
        wait_until(lambda: all(i in venue.fake.wired for i in instruments))
        time.sleep(0.2)  # read by the connection, not yet taken by the feed's thread
        go.set()
        wait_until(lambda: sum(len(b) for b in bursts) == 21)
        assert [len(b) for b in bursts] == [1, 20]
        assert [i for i, _, _ in bursts[1]] == instruments
    finally:
        go.set()
        feed.stop()
    with pytest.raises(ValueError, match="on_tick or on_ticks"):
        MarketFeed(venue.fake.feed_ws_url, CLIENT, venue.tokens)


# Secrets ---------------------------------------------------------------------------------------
def test_the_token_never_reaches_a_log_line_or_an_exception(venue: Venue) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG",
                      backtrace=True, diagnose=False)
    records = _Collect()  # the libraries' stdlib logging too, at DEBUG
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    texts: list[str] = []
    try:
        texts += _failures_with(venue)
    finally:
        logger.remove(sink)
        root.removeHandler(records)
        root.setLevel(level)
    assert any(line.startswith("urllib3") for line in records.lines)
    lines += records.lines
    assert lines, "the failures were logged"
    for text in lines + texts:
        assert TOKEN not in text and "fake-dhan-secret-token" not in text


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def _failures_with(venue: Venue) -> list[str]:
    """Drive every failure path that could carry the token; return the texts they produced."""
    texts: list[str] = []
    wrong = TokenSource(token=TOKEN + "x")  # a refused token that contains the real one
    rest = venue.rest(tokens=wrong)
    texts += [repr(rest.orders()), repr(rest.place_order(
        correlation_id="X-S1-1", instrument=FNO, txn_type=TxnType.BUY, quantity=1,
        price=Decimal("1")))]
    try:
        venue.rest(tokens=wrong).ltp({Segment.NSE_FNO: [49081]})
    except GatewayError as error:
        texts.append(str(error))
    feed = MarketFeed(venue.fake.feed_ws_url, CLIENT, wrong, on_tick=lambda *t: None)
    feed.start()
    wait_until(lambda: not feed.running)
    socket = OrderSocket(venue.fake.order_ws_url, CLIENT, wrong, sink=lambda f: None)
    socket.start()
    wait_until(lambda: not socket.running)
    dead = MarketFeed("ws://127.0.0.1:1", CLIENT, venue.tokens, on_tick=lambda *t: None,
                      backoff=(0.05,))
    dead.start()
    wait_until(lambda: len(dead.delays) >= 2)
    dead.stop()
    lost = venue.rest(timeout=0.2)
    venue.fake.lose_placements(1)
    texts.append(repr(lost.place_order(correlation_id="X-S2-1", instrument=FNO,
                                       txn_type=TxnType.BUY, quantity=1, price=Decimal("1"))))
    texts += [str(venue.tokens.current()), repr(venue.tokens.current())]
    return texts
