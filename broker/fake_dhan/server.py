"""A loopback fake DhanHQ (SPEC §10 "Tests"): REST, order-update socket and market feed on one
starlette app served by uvicorn on a thread, at ``127.0.0.1`` on any free port.

It is driven by a ``PaperExchange`` (a placement becomes a paper order; every frame the exchange
sends goes out on every logged-in order socket, PascalCase as DhanHQ documents it, or camelCase
with ``camel_case = True``) and by the paper market (``advance(now)`` moves market and exchange
and sends the ticks to the feeds that subscribed them). It checks the token like DhanHQ: REST 401
with a DH-901 body, the order socket's short binary refusal then a close, the feed's disconnect
packet (reason 808). Every request is recorded with its bucket and three times (monotonic): when
the kernel received the packet holding its last byte (Linux's receive timestamp, where the
socket gives one), when the event loop read that byte, and when its handler began (once its
headers were in, and later by whatever the fake's one event loop was doing: other requests, the
feeds' sends). Every tick records when it was handed to the feeds and when it was written to a
feed's socket.

The paper exchange's work for a placement, a modification or a cancel runs on a worker thread
(``asyncio.to_thread``), not on the event loop: the loop stays free to read the next requests
and to send the feeds' ticks, as a broker reads requests side by side, so a request's ``at`` is
not held back by the exchange's work for the ones before it.

Fault switches (thread-safe, for tests): ``drop_order_sockets``, ``drop_feeds``,
``throttle(bucket, n)``, ``delay_placements(seconds, n)`` (the order is taken, its answer comes
late), ``lose_placements(n)`` (taken, never answered), ``expire_token()``, ``refuse_ip``,
``camel_case``, ``packets_per_message``, ``muted`` (the feeds stay connected and send nothing:
a feed gone quiet, so the session's prices go stale and the quote API prices them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import uvicorn
from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.dhan.feed_codec import (
    MAX_PER_CONNECTION,
    SUBSCRIBE_TICKER,
    FeedDecodeError,
    encode_disconnect,
    encode_ticker,
    parse_subscription,
)
from broker.dhan.limits import Bucket
from broker.dhan.order_socket import bad_login_frame
from broker.fake_dhan.book import PRODUCT_CODES, TradeBook, order_row, position_rows, trade_rows
from broker.fake_dhan.frames import camel_frame
from broker.paper.exchange import PaperExchange
from broker.paper.market import Market
from broker.paper.quotes import PaperQuoteApi
from broker.ports import GatewayError
from models.common import Instrument, Segment, TxnType
from models.orders import OrderUpdate
from models.wire import parse_order_update

MAX_MODIFICATIONS = 25
"""DhanHQ's cap on modifications of one order."""

TOKEN_ERROR = {"errorType": "Invalid_Authentication", "errorCode": "DH-901",
               "errorMessage": "Client ID or user generated access token is invalid or expired."}
THROTTLE_ERROR = {"errorType": "Rate_Limit", "errorCode": "DH-904",
                  "errorMessage": "Too many requests on server from single user breaching rate "
                                  "limits. Try throttling API calls."}
IP_ERROR = {"errorType": "Invalid_IP", "errorCode": "DH-905",
            "errorMessage": "Static IP not whitelisted for order placement"}
NOT_FOUND = {"errorType": "Data_Error", "errorCode": "DH-907",
             "errorMessage": "System is unable to fetch data due to incorrect parameters or "
                             "no data present."}


@dataclass(frozen=True)
class Recorded:
    bucket: Bucket
    method: str
    path: str
    at: float
    """``time.monotonic()`` when the request arrived: its last byte read from the socket
    (the handler's start for a request made without the fake's HTTP protocol)."""
    security_id: str | None = None
    """A placement's ``securityId`` (None for every other request, or one without it)."""
    correlation_id: str | None = None
    """A placement's ``correlationId``."""
    handled: float | None = None
    """``time.monotonic()`` when its handler began: once its headers were in and the event loop
    got to it (before ``at`` when the body came later)."""
    received: float | None = None
    """``time.monotonic()`` when the kernel received the packet holding its last byte (Linux's
    software receive timestamp, ``SO_TIMESTAMPING``): when it reached the fake, however busy
    the fake's event loop was then. None where the socket gives no timestamp."""

    @property
    def arrived(self) -> float:
        """When it reached the fake: the kernel's receive time, else the read of its last byte."""
        return self.at if self.received is None else self.received


RECEIVED = "fake_dhan.received"
"""The key of a request's ``scope["state"]`` holding when its last byte was read."""
KERNEL_RECEIVED = "fake_dhan.kernel_received"
"""The key of a request's ``scope["state"]`` holding when the kernel received its last byte."""

_SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)  # Linux's value where Python lacks it
_SCM_TIMESTAMPING = _SO_TIMESTAMPING
_RX_SOFTWARE_STAMPS = (1 << 3) | (1 << 4)
"""``SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE``: stamp each packet as the
kernel receives it, and report those stamps with the data."""
_STAMPS_SPACE = socket.CMSG_SPACE(48)  # three timespecs: software, (deprecated), hardware


class _StampingSocket:
    """A connection's socket whose ``recv`` also keeps when the kernel received the last packet
    it read (``received``, on ``time.monotonic()``; None until a read carried a stamp).

    asyncio's transports read with ``recv``, which drops the timestamps a socket can attach to
    its data; this one reads with ``recvmsg`` and keeps them. For TCP the kernel reports the
    stamp of the last packet a read took from the queue: the one holding the read's last byte.
    Every other attribute is the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.received: float | None = None
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPING, _RX_SOFTWARE_STAMPS)

    def recv(self, size: int) -> bytes:
        data, ancillary, _flags, _address = self._sock.recvmsg(size, _STAMPS_SPACE)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPING and len(payload) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", payload)
                if seconds or nanoseconds:  # CLOCK_REALTIME, carried over to monotonic
                    self.received = (seconds + nanoseconds / 1e9 - time.time()
                                     + time.monotonic())
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _StampingLoop(asyncio.SelectorEventLoop):
    """An event loop whose HTTP connections (``_StampedH11``) read through a
    ``_StampingSocket``. asyncio has no public hook for a transport's reads: this overrides the
    selector loop's transport factory, which every accepted connection goes through; a socket
    that refuses the timestamp option is served as it is (no kernel stamp then)."""

    def _make_socket_transport(self, sock: Any, protocol: Any, waiter: Any = None, *,
                               extra: Any = None, server: Any = None) -> Any:
        if isinstance(protocol, _StampedH11) and isinstance(sock, socket.socket):
            try:
                sock = protocol.stamps = _StampingSocket(sock)
            except OSError as refused:
                logger.debug("no receive timestamps on the fake's connection: {}", refused)
        return super()._make_socket_transport(  # type: ignore[misc]
            sock, protocol, waiter, extra=extra, server=server)


class _StampedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, stamping each request with when its last byte was read
    (``time.monotonic()``, in its ``scope["state"]``): the moment it had reached the fake
    whole, whenever the event loop got to its handler (which starts once the headers are in,
    maybe before the body); and, on a ``_StampingLoop``, with when the kernel received the
    packet that held that byte."""

    stamps: _StampingSocket | None = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        super().data_received(data)
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.more_body:
            state = cycle.scope["state"]
            state.setdefault(RECEIVED, now)
            if self.stamps is not None and self.stamps.received is not None:
                state.setdefault(KERNEL_RECEIVED, self.stamps.received)


Sent = Callable[[float], None]


class _Peer:
    """One websocket: messages pushed from any thread go out in order."""

    def __init__(self, ws: WebSocket, loop: asyncio.AbstractEventLoop,
                 client: str | None = None) -> None:
        self.ws, self.loop, self.client = ws, loop, client
        """``client``: the client id an order socket logged in with."""
        self.queue: asyncio.Queue[tuple[str | bytes | None, Sent | None]] = asyncio.Queue()
        self.subscribed: set[Instrument] = set()

    def push(self, message: str | bytes | None, on_sent: Sent | None = None) -> None:
        """``on_sent(time.monotonic())`` is called just before the message is written."""
        with contextlib.suppress(RuntimeError):  # a stopped server: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (message, on_sent))

    async def pump(self) -> None:
        while True:
            message, on_sent = await self.queue.get()
            if message is None:
                break
            if on_sent is not None:
                on_sent(time.monotonic())
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_text(message)
        await self.ws.close()


class FakeDhan:
    def __init__(self, exchange: PaperExchange, market: Market, *, client_id: str = "1000000001",
                 valid_token: str = "fake-dhan-token") -> None:
        self.exchange, self.market = exchange, market
        self.client_id, self.valid_token = client_id, valid_token
        self.quotes = PaperQuoteApi(market)
        self.trades = TradeBook()
        self.requests: list[Recorded] = []
        self.feed_requests: list[tuple[int, int]] = []
        """(request code, instrument count) of every feed subscription message."""
        self.published: dict[Instrument, tuple[Decimal, float]] = {}
        """Each instrument's last published price and the ``time.monotonic()`` it was first
        published at that price, just before it went to the feeds (a price published again
        keeps its first time)."""
        self.wired: dict[Instrument, tuple[Decimal, float]] = {}
        """Each instrument's last price written to a feed's socket and the
        ``time.monotonic()`` it was first written at that price (``published`` or later: the
        feeds' sends wait for the fake's event loop)."""
        self.logins = 0
        self.placements: list[str] = []
        """The correlation id of every placement taken. The paper exchange answers a repeated
        correlation id with the first order (DhanHQ would place a second one), so a test of
        "never placed twice" asserts on this list."""
        self.account_of: Callable[[str], str | None] | None = None
        """Order number → the account (DhanHQ client id) it belongs to. Set, the fake keeps
        several accounts in one exchange as DhanHQ keeps them apart: a read (order book, one
        order, a look-up by correlation id, trades, positions) answers with the orders of the
        account its ``client-id`` header names, and their trades, only; an order socket logs in
        as any account (with the one token) and hears that account's orders only."""
        self.camel_case = False
        self.refuse_ip = False
        self.packets_per_message = 1
        self.muted = False
        """While set, no tick goes out on any feed (nor counts as published)."""
        self._lock = threading.Lock()
        self._throttle: dict[Bucket, int] = {}
        self._delays: list[float] = []
        self._lost = 0
        self._order_peers: set[_Peer] = set()
        self._feed_peers: set[_Peer] = set()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self.port = 0
        exchange.subscribe(self._on_frame)

    # Addresses ----------------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    @property
    def order_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/order-update"

    @property
    def feed_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    # Life ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0, port: int = 0) -> FakeDhan:
        """Serve on ``127.0.0.1:port`` (0: any free port, ``self.port`` then)."""
        app = Starlette(routes=[
            Route("/v2/orders", self._place, methods=["POST"]),
            Route("/v2/orders", self._orders, methods=["GET"]),
            Route("/v2/orders/external/{correlation_id}", self._by_correlation, methods=["GET"]),
            Route("/v2/orders/{order_id}", self._order, methods=["GET"]),
            Route("/v2/orders/{order_id}", self._modify, methods=["PUT"]),
            Route("/v2/orders/{order_id}", self._cancel, methods=["DELETE"]),
            Route("/v2/trades", self._trades, methods=["GET"]),
            Route("/v2/positions", self._positions, methods=["GET"]),
            Route("/v2/marketfeed/ltp", self._ltp, methods=["POST"]),
            Route("/v2/marketfeed/quote", self._full_quote, methods=["POST"]),
            WebSocketRoute("/order-update", self._order_socket),
            WebSocketRoute("/feed", self._feed),
        ])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                http=_StampedH11, ws="websockets-sansio", lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fake-dhan", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake DhanHQ did not start")
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def _serve(self) -> None:
        loop = self._loop = _StampingLoop()
        self._closing = asyncio.Event()
        assert self._server is not None
        loop.run_until_complete(self._server.serve())
        loop.close()

    def stop(self) -> None:
        if self._server is None or self._loop is None:
            return
        self.drop_order_sockets()
        self.drop_feeds()
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeDhan:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Driving ------------------------------------------------------------------------------------
    def advance(self, now: datetime) -> None:
        """Move market and exchange to ``now``; the market's ticks go to the feeds."""
        ticks = self.market.advance(now)
        self.exchange.advance(now)
        self.publish((instrument, price) for instrument, price, _ in ticks)

    def publish(self, ticks: Iterable[tuple[Instrument, Decimal]], ltt: int | None = None) -> None:
        """Send ticks to every feed subscribed to them, ``packets_per_message`` per message."""
        if self.muted:
            return
        stamp = int(time.time()) if ltt is None else ltt
        priced = list(ticks)
        packets = [(instrument, price, encode_ticker(instrument, price, stamp))
                   for instrument, price in priced]
        sent = time.monotonic()
        with self._lock:
            peers, per = list(self._feed_peers), max(1, self.packets_per_message)
            for instrument, price in priced:
                known = self.published.get(instrument)
                if known is None or known[0] != price:
                    self.published[instrument] = (price, sent)
        for peer in peers:
            mine = [packet for packet in packets if packet[0] in peer.subscribed]
            for start in range(0, len(mine), per):
                chunk = mine[start:start + per]
                peer.push(b"".join(packet for _, _, packet in chunk),
                          functools.partial(self._wired, [(i, p) for i, p, _ in chunk]))

    def _wired(self, ticks: list[tuple[Instrument, Decimal]], at: float) -> None:
        with self._lock:
            for instrument, price in ticks:
                known = self.wired.get(instrument)
                if known is None or known[0] != price:
                    self.wired[instrument] = (price, at)

    # Faults -------------------------------------------------------------------------------------
    def drop_order_sockets(self) -> None:
        with self._lock:
            peers = list(self._order_peers)
        for peer in peers:
            peer.push(None)

    def drop_feeds(self) -> None:
        with self._lock:
            peers = list(self._feed_peers)
        for peer in peers:
            peer.push(None)

    def throttle(self, bucket: Bucket, n: int = 1) -> None:
        """The next ``n`` calls of ``bucket`` are answered 429."""
        with self._lock:
            self._throttle[bucket] = self._throttle.get(bucket, 0) + n

    def delay_placements(self, seconds: float, n: int = 1) -> None:
        """The next ``n`` placements are taken at once and answered ``seconds`` later."""
        with self._lock:
            self._delays.extend([seconds] * n)

    def lose_placements(self, n: int = 1) -> None:
        """The next ``n`` placements are taken and never answered."""
        with self._lock:
            self._lost += n

    def expire_token(self, new_valid_token: str = "") -> None:
        """The current token stops working (REST 401, sockets refused on their next login);
        open sockets are dropped."""
        with self._lock:
            self.valid_token = new_valid_token
        self.drop_order_sockets()
        self.drop_feeds()

    def requests_in(self, bucket: Bucket) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.bucket is bucket]

    # Order frames -------------------------------------------------------------------------------
    def _on_frame(self, frame: str) -> None:
        update = parse_order_update(frame)
        if isinstance(update, OrderUpdate):
            self.trades.record(update)
        with self._lock:
            text = camel_frame(frame) if self.camel_case else frame
            peers = list(self._order_peers)
            account_of = self.account_of
        # Several accounts: each order socket hears its own account's orders only.
        owner = account_of(update.order_no) if account_of is not None and \
            isinstance(update, OrderUpdate) else None
        for peer in peers:
            if account_of is None or peer.client == owner:
                peer.push(text)

    # REST ---------------------------------------------------------------------------------------
    def _admit(self, request: Request, bucket: Bucket, *, at: float | None = None,
               placement: tuple[str | None, str | None] = (None, None)) -> Response | None:
        """Record the request (its handler began ``at``, now if not given; its last byte read
        when its scope says, once the body has been awaited; a placement's security and
        correlation ids); the refusal to answer instead, if any."""
        handled = time.monotonic() if at is None else at
        state = request.scope.get("state", {})
        read, kernel = state.get(RECEIVED), state.get(KERNEL_RECEIVED)
        arrived = read if isinstance(read, float) else handled
        with self._lock:
            self.requests.append(Recorded(
                bucket, request.method, request.url.path, arrived, *placement, handled=handled,
                received=kernel if isinstance(kernel, float) else None))
            token_ok = request.headers.get("access-token") == self.valid_token != ""
            throttled = self._throttle.get(bucket, 0) > 0
            if token_ok and throttled:
                self._throttle[bucket] -= 1
            refuse_ip = self.refuse_ip
        if not token_ok:
            return JSONResponse(TOKEN_ERROR, status_code=401)
        if throttled:
            if bucket is Bucket.QUOTE:
                return JSONResponse({"data": {"805": "Too many requests"}, "status": "failed"},
                                    status_code=429)
            return JSONResponse(THROTTLE_ERROR, status_code=429)
        if refuse_ip and bucket is Bucket.ORDERS:
            return JSONResponse(IP_ERROR, status_code=403)
        return None

    def _scope(self, request: Request) -> tuple[str, Callable[[str], bool]]:
        """The client id a read answers as, and which order numbers are that account's."""
        account_of = self.account_of
        if account_of is None:
            return self.client_id, lambda _order_no: True
        client = request.headers.get("client-id", "")
        return client, lambda order_no: account_of(order_no) == client

    async def _place(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        try:
            document = json.loads(body, parse_float=Decimal)
        except ValueError:
            document = None
        refused = self._admit(request, Bucket.ORDERS, at=arrived, placement=_ids(document))
        if refused is not None:
            return refused
        try:
            if not isinstance(document, dict):
                raise ValueError("the body is not a JSON object")
            order = _placement(document)
        except (ValueError, KeyError, TypeError, InvalidOperation) as error:
            return _input_error(f"invalid order: {error}")
        try:
            order_no = await asyncio.to_thread(self.exchange.place_order, **order)
        except GatewayError as error:
            return _order_error(str(error))
        with self._lock:
            self.placements.append(order["client_id"])
            delay = self._delays.pop(0) if self._delays else None
            lost = self._lost > 0
            self._lost -= 1 if lost else 0
        if lost:
            await self._hang()
        if delay is not None:
            await asyncio.sleep(delay)
        return JSONResponse({"orderId": order_no, "orderStatus": "TRANSIT"})  # as DhanHQ answers

    async def _hang(self) -> None:
        """No answer: wait until the server stops (the client times out first)."""
        if self._closing is not None:
            await self._closing.wait()

    async def _modify(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.ORDERS)
        if refused is not None:
            return refused
        order_no = request.path_params["order_id"]
        known = [o for o in self.exchange.orders() if o.order_no == order_no]
        if known and known[0].modifications >= MAX_MODIFICATIONS:
            return _order_error(f"order {order_no}: at most {MAX_MODIFICATIONS} modifications")
        try:
            body = json.loads(await request.body(), parse_float=Decimal)
            price = _decimal(body.get("price"))
            quantity = int(body["quantity"]) if body.get("quantity") is not None else None
        except (ValueError, KeyError, TypeError, InvalidOperation, AttributeError) as error:
            return _input_error(f"invalid modification: {error}")
        try:
            await asyncio.to_thread(self.exchange.modify_order, order_no, price=price,
                                    quantity=quantity)
        except GatewayError as error:
            return _order_error(str(error))
        return JSONResponse({"orderId": order_no,
                             "orderStatus": self.exchange.order(order_no).status.value})

    async def _cancel(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.ORDERS)
        if refused is not None:
            return refused
        order_no = request.path_params["order_id"]
        try:
            await asyncio.to_thread(self.exchange.cancel_order, order_no)
        except GatewayError as error:
            return _order_error(str(error))
        return JSONResponse({"orderId": order_no, "orderStatus": "CANCELLED"})

    async def _orders(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.READS)
        if refused is not None:
            return refused
        client, mine = self._scope(request)
        return JSONResponse([order_row(o, client) for o in self.exchange.orders()
                             if mine(o.order_no)])

    async def _order(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.READS)
        if refused is not None:
            return refused
        order_no = request.path_params["order_id"]
        client, mine = self._scope(request)
        known = [o for o in self.exchange.orders() if o.order_no == order_no]
        if not known or not mine(order_no):
            return JSONResponse(NOT_FOUND, status_code=404)
        return JSONResponse([order_row(known[0], client)])  # DhanHQ: a 1-element array

    async def _by_correlation(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.READS)
        if refused is not None:
            return refused
        client, mine = self._scope(request)
        order = self.exchange.lookup(request.path_params["correlation_id"])
        if order is None or not mine(order.order_no):
            return JSONResponse(NOT_FOUND, status_code=404)
        return JSONResponse(order_row(order, client))

    async def _trades(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.READS)
        if refused is not None:
            return refused
        client, mine = self._scope(request)
        return JSONResponse(trade_rows([t for t in self.trades.trades() if mine(t.order_no)],
                                       client))

    async def _positions(self, request: Request) -> Response:
        refused = self._admit(request, Bucket.READS)
        if refused is not None:
            return refused
        client, mine = self._scope(request)
        return JSONResponse(position_rows(
            [t for t in self.trades.trades() if mine(t.order_no)], client))

    async def _ltp(self, request: Request) -> Response:
        return await self._quote(request, full=False)

    async def _full_quote(self, request: Request) -> Response:
        """``POST /v2/marketfeed/quote``: the last price with the circuit limits
        (``quotes.circuits``; the other fields of DhanHQ's answer, depth and OHLC, are left
        out: nothing here reads them)."""
        return await self._quote(request, full=True)

    async def _quote(self, request: Request, *, full: bool) -> Response:
        refused = self._admit(request, Bucket.QUOTE)
        if refused is not None:
            return refused
        answer = self.quotes.handle_json((await request.body()).decode("utf-8", "replace"),
                                         full=full)
        failed = '"status": "failed"' in answer
        status = 429 if failed and '"805"' in answer else 400 if failed else 200
        return Response(answer, status_code=status, media_type="application/json")

    # Sockets ------------------------------------------------------------------------------------
    async def _order_socket(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            login = json.loads(await asyncio.wait_for(ws.receive_text(), 5))
            request = login["LoginReq"]
            client = str(request.get("ClientId"))
            # Several accounts (``account_of``): any of them logs in with the one token.
            good = (request.get("MsgCode") == 42 and request.get("Token") == self.valid_token
                    and (client == self.client_id or self.account_of is not None)
                    and bool(self.valid_token))
        except (TimeoutError, ValueError, KeyError, TypeError, AttributeError,
                WebSocketDisconnect):
            good = False
        if not good:
            await ws.send_bytes(bad_login_frame(808))
            await ws.close()
            return
        with self._lock:
            self.logins += 1
        await self._serve_peer(ws, self._order_peers, reader=None, client=client)

    async def _feed(self, ws: WebSocket) -> None:
        await ws.accept()
        params = ws.query_params
        if params.get("token") != self.valid_token or not self.valid_token \
                or params.get("clientId") != self.client_id:
            await ws.send_bytes(encode_disconnect(808))
            await ws.close()
            return
        await self._serve_peer(ws, self._feed_peers, reader=self._feed_request)

    async def _serve_peer(self, ws: WebSocket, peers: set[_Peer], reader: Any,
                          client: str | None = None) -> None:
        peer = _Peer(ws, asyncio.get_running_loop(), client)
        with self._lock:
            peers.add(peer)
        pump = asyncio.create_task(peer.pump())
        try:
            while not pump.done():
                receive = asyncio.create_task(ws.receive())
                done, _ = await asyncio.wait({receive, pump},
                                             return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    break
                if reader is not None and message.get("text") is not None:
                    reader(peer, message["text"])
        finally:
            with self._lock:
                peers.discard(peer)
            pump.cancel()

    def _feed_request(self, peer: _Peer, text: str) -> None:
        try:
            code, instruments = parse_subscription(text)
        except FeedDecodeError as error:
            logger.warning("fake DhanHQ feed: bad request: {}", error)
            return
        with self._lock:
            self.feed_requests.append((code, len(instruments)))
        if code == SUBSCRIBE_TICKER:
            peer.subscribed.update(instruments)
            if len(peer.subscribed) > MAX_PER_CONNECTION:
                peer.push(encode_disconnect(805))
                peer.push(None)
        else:
            peer.subscribed.difference_update(instruments)


def _ids(document: object) -> tuple[str | None, str | None]:
    """A placement body's ``securityId`` and ``correlationId``, as far as it has them."""
    if not isinstance(document, dict):
        return None, None
    security, correlation = document.get("securityId"), document.get("correlationId")
    return (None if security is None else str(security),
            None if correlation is None else str(correlation))


def _placement(body: dict[str, Any]) -> dict[str, Any]:
    order_type = {"LIMIT": "LMT", "MARKET": "MKT"}.get(str(body["orderType"]).upper())
    if order_type is None:
        raise ValueError(f"orderType {body['orderType']!r} is not supported")
    correlation = str(body.get("correlationId") or "")
    if len(correlation) > 30:
        raise ValueError("correlationId is longer than 30 characters")
    return {"client_id": correlation or f"noid-{time.monotonic_ns()}",
            "instrument": Instrument(segment=Segment(body["exchangeSegment"]),
                                     security_id=str(body["securityId"])),
            "txn_type": TxnType(str(body["transactionType"]).upper()),
            "quantity": int(body["quantity"]),
            "product": PRODUCT_CODES.get(str(body.get("productType", "INTRADAY")).upper(), "I"),
            "order_type": order_type,
            "price": _decimal(body.get("price")) if order_type == "LMT" else None}


def _decimal(value: object) -> Decimal | None:
    return None if value in (None, "", 0) else Decimal(str(value))


def _input_error(message: str) -> Response:
    return JSONResponse({"errorType": "Input_Exception", "errorCode": "DH-905",
                         "errorMessage": message[:200]}, status_code=400)


def _order_error(message: str) -> Response:
    return JSONResponse({"errorType": "Order_Error", "errorCode": "DH-906",
                         "errorMessage": message[:200]}, status_code=400)
