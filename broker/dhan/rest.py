"""The DhanHQ REST client (SPEC §10): blocking calls with explicit timeouts that return ``Answer``
values, over one ``Wire`` (``broker.dhan.wire``: urllib3's connection pool).

Every call waits for a slot of its rate-limit bucket first (at most ``limit_wait`` seconds, else
``LIMITED`` and nothing is sent), sends ``access-token`` / ``client-id`` headers with the current
token, and classifies the answer (``broker.dhan.outcomes``). A refused token is remembered: until
the token source gives another one, calls answer ``TOKEN_INVALID`` without sending anything (no
retry loop). The quote call implements ``broker.ports.QuoteApi`` and so raises the port's
errors. No text leaving this module holds the token.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from loguru import logger

from broker.dhan.book import (
    BrokerOrder,
    BrokerPosition,
    BrokerTrade,
    RowError,
    order_of,
    position_of,
    product_type,
    trade_of,
)
from broker.dhan.launch import Launcher, Request, Ticket
from broker.dhan.limits import Bucket, RateLimits
from broker.dhan.outcomes import Answer, Classified, Outcome, classify, normalised
from broker.dhan.token import Secret, TokenError, TokenSource, scrub
from broker.dhan.wire import PooledWire, Wire, WireError, default_tls
from broker.ports import GatewayError, QuoteThrottled, QuoteTimeout
from models.common import Instrument, Segment, TxnType

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.dhan.co/v2"
MAX_CORRELATION_ID = 30
CONNECT_TIMEOUT, READ_TIMEOUT = 2.0, 3.0
"""Seconds to connect, and to wait for an answer (the default ``timeout``)."""


@dataclass(frozen=True)
class PlacedOrder:
    order_id: str
    status: str | None


@dataclass(frozen=True)
class _Raw:
    """One exchange on the wire: status and parsed body, or the transport failure."""

    status: int | None
    body: object
    readable: bool
    transport: str | None
    sent: bool
    elapsed: float
    waited: float = 0.0
    """Seconds waiting for the rate-limit slot."""


def shared_tls() -> ssl.SSLContext:
    """One TLS context for many clients (a runner's, one per account), made at the start:
    making one per client cost 0.03-0.05 s here, on a partition's hand-over otherwise
    (``bench/takeover.py``). Verification is certifi's roots (``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` honoured)."""
    return default_tls()


class DhanRest:
    """Implements ``QuoteApi``; every order and read call returns an ``Answer``."""

    max_instruments = 1000
    min_interval_seconds = 1.0

    def __init__(self, base_url: str, client_id: str, token_source: TokenSource, *,
                 timeout: float | None = None,
                 limiter: RateLimits | None = None, limit_wait: float = 3.0,
                 wire: Wire | None = None,
                 verify: ssl.SSLContext | bool = True,
                 launcher: Launcher | None = None) -> None:
        """``timeout``: seconds to connect and to wait for an answer (default 2 and 3);
        ``verify``: True makes a TLS context for this client, a context from ``shared_tls``
        is made once for many; ``wire``: another seam than urllib3's pool (unit tests);
        ``launcher``: a wave's placements handed to a process of their own in one write
        (``launch_orders``; None: every placement from its caller's thread)."""
        self.client_id = client_id
        self.tokens = token_source
        self.limiter = limiter if limiter is not None else RateLimits()
        self.limit_wait = limit_wait
        self._headers = {"client-id": client_id, "Accept": "application/json",
                         "Content-Type": "application/json"}
        self._wire: Wire = wire if wire is not None else PooledWire(
            base_url, connect=CONNECT_TIMEOUT if timeout is None else timeout,
            read=READ_TIMEOUT if timeout is None else timeout, verify=verify)
        self._launcher = launcher
        self._refused: Secret | None = None
        self._lock = threading.Lock()
        self.on_token_invalid: Callable[[str], None] | None = None
        """Called (with a safe detail) the first time a token is refused."""
        self.may_send: Callable[[], str | None] | None = None
        """Asked once a request that changes the book (the orders bucket: place, modify,
        cancel) holds its limiter slot, just before it leaves: why it must not leave (a
        runner's lease ends too soon), or None. A reason makes the call ``LIMITED``, nothing
        sent. Checked here, after the wait for a slot (up to ``limit_wait``), not only before
        it: a pause or a wait between a check and the send is the gap fencing cannot close."""

    def close(self) -> None:
        self._wire.close()
        if self._launcher is not None:
            self._launcher.close()

    # Orders -----------------------------------------------------------------------------------
    def place_order(self, *, correlation_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, price: Decimal, product: str | None = None,
                    order_type: str = "LIMIT", validity: str = "DAY") -> Answer[PlacedOrder]:
        body = self._placement(correlation_id=correlation_id, instrument=instrument,
                               txn_type=txn_type, quantity=quantity, price=price,
                               product=product, order_type=order_type, validity=validity)
        return self._order_call("POST", "/orders", body, placement=True)

    def launch_orders(self, orders: Sequence[Mapping[str, Any]]) -> list[Launched | None]:
        """Placements (each ``place_order``'s keyword arguments) handed to the launcher in one
        write, as soon as they are asked for; for each a ``Launched`` (its ``answer()`` is
        ``place_order``'s), or None when it did not go (no launcher, no usable token, the lease
        too short, no free slot now, arguments ``place_order`` refuses): its caller places it
        with ``place_order``, which says why. A slot is taken for each (never waited for)
        and held until its answer is back or given up on."""
        missing: list[Launched | None] = [None] * len(orders)
        if self._launcher is None or not orders:
            return missing
        try:
            token = self.tokens.current()
        except TokenError:
            return missing
        with self._lock:
            if self._refused is not None and token == self._refused:
                return missing
        if self.may_send is not None and self.may_send() is not None:
            return missing
        bodies: list[tuple[int, bytes]] = []
        for index, order in enumerate(orders):
            try:
                body = self._placement(**order)
            except (TypeError, ValueError):
                continue
            if self.limiter.try_acquire(Bucket.ORDERS) != 0.0:
                break  # no room now: these wait for their slots on the ordinary path
            bodies.append((index, _dumps(body).encode("utf-8")))
        if not bodies:
            return missing
        headers = {**self._headers, "access-token": token.reveal()}
        started = time.monotonic()
        tickets = self._launcher.launch([Request("POST", "/orders", content, headers)
                                         for _, content in bodies])
        for (index, _), ticket in zip(bodies, tickets, strict=True):
            missing[index] = Launched(self, ticket, token, started)
        return missing

    def _placement(self, *, correlation_id: str, instrument: Instrument, txn_type: TxnType,
                   quantity: int, price: Decimal, product: str | None = None,
                   order_type: str = "LIMIT", validity: str = "DAY") -> dict[str, Any]:
        if not 0 < len(correlation_id) <= MAX_CORRELATION_ID:
            raise ValueError(f"correlation id must be 1..{MAX_CORRELATION_ID} characters, "
                             f"got {len(correlation_id)}")
        return {"dhanClientId": self.client_id, "correlationId": correlation_id,
                "transactionType": txn_type.value, "exchangeSegment": instrument.segment.value,
                "productType": product_type(product), "orderType": order_type,
                "validity": validity, "securityId": instrument.security_id,
                "quantity": quantity, "price": price}

    def modify_order(self, order_id: str, *, quantity: int, price: Decimal,
                     order_type: str = "LIMIT", validity: str = "DAY") -> Answer[PlacedOrder]:
        body = {"dhanClientId": self.client_id, "orderId": order_id, "orderType": order_type,
                "quantity": quantity, "price": price, "validity": validity}
        return self._order_call("PUT", f"/orders/{_segment(order_id)}", body)

    def cancel_order(self, order_id: str) -> Answer[PlacedOrder]:
        return self._order_call("DELETE", f"/orders/{_segment(order_id)}", None)

    def _order_call(self, method: str, path: str, body: dict[str, Any] | None, *,
                    placement: bool = False) -> Answer[PlacedOrder]:
        raw = self._send(Bucket.ORDERS, method, path, body)
        if isinstance(raw, Answer):
            return raw
        return self._order_answer(raw, method, path, placement=placement)

    def _order_answer(self, raw: _Raw, method: str, path: str, *,
                      placement: bool) -> Answer[PlacedOrder]:
        verdict = classify(raw.status, raw.body, transport=raw.transport, sent=raw.sent,
                           placement=placement, readable=raw.readable)
        value = None
        if verdict.outcome is Outcome.OK:
            fields = normalised(raw.body) if isinstance(raw.body, Mapping) else {}
            order_id, status = fields.get("orderid"), fields.get("orderstatus")
            value = PlacedOrder(  # a modification or cancellation may answer without the id
                order_id=str(order_id) if order_id not in (None, "") else unquote(
                    path.rsplit("/", 1)[-1]),
                status=str(status) if status not in (None, "") else None)
        return self._answer(verdict, raw, value, f"{method} {path}")

    # Reads ------------------------------------------------------------------------------------
    def order(self, order_id: str) -> Answer[BrokerOrder]:
        """``GET /orders/{id}``: DhanHQ answers a one-element array (an object is accepted)."""
        return self._read_one(f"/orders/{_segment(order_id)}")

    def order_by_correlation(self, correlation_id: str) -> Answer[BrokerOrder]:
        """``GET /orders/external/{correlationId}``: the order we tagged, or NOT_FOUND."""
        return self._read_one(f"/orders/external/{_segment(correlation_id)}")

    def orders(self) -> Answer[list[BrokerOrder]]:
        return self._read_list("/orders", order_of)

    def trades(self) -> Answer[list[BrokerTrade]]:
        return self._read_list("/trades", trade_of)

    def positions(self) -> Answer[list[BrokerPosition]]:
        return self._read_list("/positions", position_of)

    def _read_one(self, path: str) -> Answer[BrokerOrder]:
        answer = self._read_list(path, order_of, lookup=True)
        if not answer.ok:
            return Answer(answer.outcome, None, answer.code, answer.detail, answer.http_status,
                          answer.elapsed)
        rows = answer.value or []
        if not rows:
            return Answer(Outcome.NOT_FOUND, None, answer.code, f"GET {path}: no order",
                          answer.http_status, answer.elapsed)
        return Answer(Outcome.OK, rows[0], None, answer.detail, answer.http_status,
                      answer.elapsed)

    def _read_list(self, path: str, parse: Callable[[object], T], *,
                   lookup: bool = False) -> Answer[list[T]]:
        raw = self._send(Bucket.READS, "GET", path, None)
        if isinstance(raw, Answer):
            return Answer(raw.outcome, None, raw.code, raw.detail)
        verdict = classify(raw.status, raw.body, transport=raw.transport, sent=raw.sent,
                           lookup=lookup, readable=raw.readable)
        if verdict.outcome is not Outcome.OK:
            return self._answer(verdict, raw, None, f"GET {path}")
        body = raw.body
        if isinstance(body, Mapping) and isinstance(normalised(body).get("data"), list):
            body = normalised(body)["data"]  # an enveloped list, read liberally
        rows = body if isinstance(body, list) else [body]
        values: list[T] = []
        for row in rows:
            try:
                values.append(parse(row))
            except RowError as error:
                logger.bind(path=path).warning("DhanHQ {}: row skipped: {}", path, error)
        return self._answer(verdict, raw, values, f"GET {path}")

    # Quotes (QuoteApi) --------------------------------------------------------------------------
    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        """``POST /marketfeed/ltp``. ``last_price: 0`` is no price; ids left out are absent.
        Raises ``QuoteThrottled``, ``QuoteTimeout`` or ``GatewayError``."""
        return _prices(self._quote("/marketfeed/ltp", request))

    def circuit_limits(self, request: Mapping[Segment, Sequence[int]]
                       ) -> dict[Instrument, tuple[Decimal, Decimal]]:
        """``POST /marketfeed/quote``: each instrument's circuit limits, (lower, upper); an
        instrument whose limits are missing, not positive or crossed is left out. Raises as
        ``ltp`` (the same quote bucket: one request a second)."""
        return _circuits(self._quote("/marketfeed/quote", request))

    def _quote(self, path: str, request: Mapping[Segment, Sequence[int]]) -> object:
        body = {Segment(segment).value: [int(i) for i in ids] for segment, ids in request.items()}
        raw = self._send(Bucket.QUOTE, "POST", path, body)
        if isinstance(raw, Answer):
            if raw.outcome is Outcome.LIMITED:
                raise QuoteThrottled(f"quote API: {raw.detail}")
            raise GatewayError(f"quote API: {raw.outcome}: {raw.detail}")
        verdict = classify(raw.status, raw.body, transport=raw.transport, sent=raw.sent,
                           readable=raw.readable)
        if verdict.outcome is Outcome.OK:
            return raw.body
        detail = self._answer(verdict, raw, None, f"POST {path}").detail
        if verdict.code == "timeout":
            raise QuoteTimeout(f"quote API: {detail}")
        if raw.status == 429 or verdict.code in ("805", "DH-904"):
            raise QuoteThrottled(f"quote API 429: {detail}")
        raise GatewayError(f"quote API {verdict.outcome}: {detail}")

    # The one seam -------------------------------------------------------------------------------
    def _send(self, bucket: Bucket, method: str, path: str,
              body: dict[str, Any] | None) -> _Raw | Answer[Any]:
        try:
            token = self.tokens.current()
        except TokenError as error:
            return Answer(Outcome.TOKEN_INVALID, code="no-token", detail=str(error))
        with self._lock:
            if self._refused is not None and token == self._refused:
                return Answer(Outcome.TOKEN_INVALID, code="refused",
                              detail="the access token was refused; waiting for a new one")
        asked = time.monotonic()
        with self.limiter.slot(bucket, self.limit_wait) as taken:
            if not taken:
                return Answer(Outcome.LIMITED, code="limited",
                              detail=f"no {bucket} slot within {self.limit_wait:g} s: not sent")
            waited = time.monotonic() - asked
            if bucket is Bucket.ORDERS and self.may_send is not None:
                refusal = self.may_send()
                if refusal is not None:
                    return Answer(Outcome.LIMITED, code="lease", detail=f"{refusal}: not sent",
                                  waited=waited)
            return replace(self._exchange(token, method, path, body), waited=waited)

    def _exchange(self, token: Secret, method: str, path: str,
                  body: dict[str, Any] | None) -> _Raw:
        """The request and its answer (the limiter's slot is held meanwhile: DhanHQ counts
        the request when it arrives, which is surely done once the answer is back)."""
        content = _dumps(body).encode("utf-8") if body is not None else None
        started = time.monotonic()
        try:
            status, answer = self._wire.request(method, path, content, {
                **self._headers, "access-token": token.reveal()})
        except WireError as error:
            return _Raw(None, None, False, self._safe(token, error), error.sent,
                        time.monotonic() - started)
        return _answered(status, answer, time.monotonic() - started)

    def _answer(self, verdict: Classified, raw: _Raw, value: T | None,
                what: str) -> Answer[T]:
        token = self._current_or_none()
        detail = scrub(verdict.detail, [token] if token is not None else [])
        if verdict.outcome is Outcome.TOKEN_INVALID:
            self._refuse(detail)
        elif verdict.outcome not in (Outcome.OK, Outcome.NOT_FOUND):
            logger.bind(call=what, outcome=verdict.outcome.value).warning(
                "DhanHQ {}: {} ({})", what, verdict.outcome.value, detail)
        return Answer(verdict.outcome, value, verdict.code, detail, raw.status, raw.elapsed,
                      raw.waited)

    def _refuse(self, detail: str) -> None:
        token = self._current_or_none()
        with self._lock:
            first = self._refused != token
            self._refused = token
        if first:
            logger.error("DhanHQ refused the access token: {}", detail)
            if self.on_token_invalid is not None:
                self.on_token_invalid(detail)

    def _current_or_none(self) -> Secret | None:
        try:
            return self.tokens.current()
        except TokenError:
            return None

    @staticmethod
    def _safe(token: Secret, error: Exception) -> str:
        text = str(error) if isinstance(error, WireError) else f"{type(error).__name__}: {error}"
        return scrub(text, [token])


def _answered(status: int, answer: bytes, elapsed: float) -> _Raw:
    try:
        parsed: object = json.loads(answer, parse_float=Decimal) if answer.strip() else None
        readable = True
    except ValueError:
        parsed, readable = None, False
    return _Raw(status, parsed, readable, None, True, elapsed)


class Launched:
    """A placement handed to the launcher (``DhanRest.launch_orders``): ``answer()`` waits for
    it and classifies it as ``place_order`` does. Its limiter slot is given back as soon as
    the answer is in (or given up on), whether or not anybody asks for it."""

    def __init__(self, rest: DhanRest, ticket: Ticket, token: Secret, started: float) -> None:
        self._rest, self._ticket, self._token, self._started = rest, ticket, token, started
        self._released = False
        self._lock = threading.Lock()
        ticket.when_done(self._release)

    def unsent(self) -> bool:
        """It never left (the launcher could not take it): place it the ordinary way."""
        return self._ticket.unsent()

    def answer(self) -> Answer[PlacedOrder]:
        try:
            status, data = self._ticket.result()
        except WireError as error:
            raw = _Raw(None, None, False, self._rest._safe(self._token, error), error.sent,
                       time.monotonic() - self._started)
        else:
            raw = _answered(status, data, time.monotonic() - self._started)
        finally:
            self._release()
        return self._rest._order_answer(raw, "POST", "/orders", placement=True)

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._rest.limiter.release(Bucket.ORDERS)


def _segment(value: str) -> str:
    """One URL path segment: an id with ``/``, ``?`` or spaces cannot change the path."""
    return quote(value, safe="")


def _dumps(body: dict[str, Any]) -> str:
    """JSON for DhanHQ, which wants prices as numbers. A price has at most 15 significant digits
    (tick-sized rupees), so the float's shortest repr is the Decimal's own text."""
    return json.dumps({key: float(value) if isinstance(value, Decimal) else value
                       for key, value in body.items()})


def _entries(body: object) -> Iterator[tuple[Instrument, Mapping[str, Any]]]:
    """Each instrument's entry of a quote answer (keys folded: ``normalised``)."""
    data = normalised(body).get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, Mapping):
        raise GatewayError("quote API: answer without data")
    for segment, quotes in data.items():
        if segment not in Segment.__members__ or not isinstance(quotes, Mapping):
            continue
        for security_id, entry in quotes.items():
            if isinstance(entry, Mapping):
                yield (Instrument(segment=Segment(segment), security_id=str(security_id)),
                       normalised(entry))


def _positive(value: object) -> Decimal | None:
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return None
    return number if number.is_finite() and number > 0 else None


def _prices(body: object) -> dict[Instrument, Decimal]:
    prices: dict[Instrument, Decimal] = {}
    for instrument, entry in _entries(body):
        price = _positive(entry.get("lastprice"))
        if price is not None:
            prices[instrument] = price
    return prices


def _circuits(body: object) -> dict[Instrument, tuple[Decimal, Decimal]]:
    limits: dict[Instrument, tuple[Decimal, Decimal]] = {}
    for instrument, entry in _entries(body):
        lower = _positive(entry.get("lowercircuitlimit"))
        upper = _positive(entry.get("uppercircuitlimit"))
        if lower is not None and upper is not None and lower < upper:
            limits[instrument] = (lower, upper)
    return limits
