"""A live DhanHQ session (SPEC §10): the order socket, the market feed and the REST API around
the actor system, with reconcile, order-book polling and feed subscriptions.

Threads: the order socket and the feed each run on their own (``broker.dhan.link``); the REST
calls of exits run on the gateway actors; this module's ``LiveSession`` runs one more thread,
``dhan-session``, which does everything else that waits on the network:

1. **Reconcile** on start and after every (re)connect of the order socket: frames arriving
   meanwhile are held; ``GET /orders`` (each order becomes one order-update frame, marked
   ``"Source": "RECONCILE"`` in the stored raw text, and goes the way every socket frame goes:
   fills found this way are ordinary fills, external orders move positions like any other),
   ``GET /trades`` (prices for orders whose row has none), ``GET /positions`` (net quantity per
   segment, security and product against our open positions: a difference raises an alarm and
   is shown, and nothing is traded to fix it); then the held frames, in order.
2. **Order-book poll**: every ``poll_active_seconds`` while an exit of ours is in flight,
   every ``poll_idle_seconds`` otherwise; orders whose state changed since the last read go in
   as frames (the socket has no replay and may go quiet while it looks healthy).
3. **Feed subscriptions** follow the open positions (subscribed as they open, unsubscribed as
   they close); the batcher asks the quote API for instruments whose price is stale.
4. **Token**: a warning 30 minutes before expiry; a refused token stops what uses it; the token
   source is read again every few seconds (and on SIGHUP), and a new token restarts the sockets
   and a full reconcile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from loguru import logger

from actors.system import System
from broker.dhan import (
    BrokerOrder,
    BrokerPosition,
    BrokerTrade,
    DhanRest,
    LinkState,
    MarketFeed,
    OrderSocket,
    Secret,
    TokenError,
    TokenSource,
)
from broker.dhan.book import PRODUCT_TYPES
from broker.dhan.gateway import DhanGateway, ShadowGateway
from broker.dhan.token import expires_at
from models.books import BookKey, compare
from models.common import IST, Instrument
from models.orders import OrderUpdate
from models.wire import dhan_time, to_dhan_frame

RECONCILE_MARK = '"Source": "RECONCILE"'
FOLLOW_EVERY = 1.0
"""Seconds between comparisons of the feed's subscriptions with the open positions (the quote
API prices a new position meanwhile)."""
TOKEN_RECHECK = 5.0
"""Seconds between reads of the token source while the token is refused."""


@dataclass
class Reconciled:
    """The last reconcile, for the status line, the console and the report."""

    at: datetime | None = None
    orders: int = 0
    fills: int = 0
    external: int = 0
    differences: dict[str, dict[str, int]] = field(default_factory=dict)
    """``SEGMENT:security:PRODUCT`` → ``{"broker": netQty, "ours": signed open}``."""
    error: str | None = None

    def line(self) -> str:
        if self.at is None:
            return "reconcile: not yet" + (f" ({self.error})" if self.error else "")
        text = f"reconciled {self.at.astimezone(IST):%H:%M:%S}"
        if self.differences:
            text += f", POSITIONS DIFFER on {len(self.differences)}"
        return text + (f" (last try failed: {self.error})" if self.error else "")


class LiveSession:
    """Everything of a live session that is not an actor; ``start`` after ``System.start``."""

    def __init__(self, system: System, rest: DhanRest, gateway: DhanGateway,
                 tokens: TokenSource, *, client_id: str, order_ws_url: str, feed_ws_url: str,
                 clock: Callable[[], datetime], poll_active: float = 5.0,
                 poll_idle: float = 60.0, shadow: ShadowGateway | None = None,
                 correlation_prefix: str | None = None,
                 backoff: tuple[float, ...] | None = None) -> None:
        self.system, self.rest, self.gateway, self.tokens = system, rest, gateway, tokens
        self.shadow = shadow
        self.clock = clock
        self.poll_active, self.poll_idle = poll_active, poll_idle
        self.prefix = correlation_prefix
        extra: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
        self.socket = OrderSocket(order_ws_url, client_id, tokens, sink=self._on_frame,
                                  on_state=self._on_socket_state,
                                  on_connected=self._on_socket_connected, **extra)
        self.feed = MarketFeed(feed_ws_url, client_id, tokens, on_tick=self._on_tick,
                               on_state=self._on_feed_state, **extra)
        self.reconciled = Reconciled()
        self.alarms: list[str] = []
        self._lock = threading.Lock()
        self._held: list[str] | None = None
        """Socket frames held while a reconcile reads the books (None: not holding)."""
        self._reconcile_due = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple[str, int]] = {}
        """Order id → (status, filled quantity) as last given to the system by a read."""
        self._next_poll = self._next_follow = 0.0
        self._refused: Secret | None = None
        self._token_checked = 0.0
        self.socket_state = self.feed_state = LinkState.STOPPED.value
        self.polls = 0
        rest.on_token_invalid = self._on_token_refused
        gateway.on_alarm = self._alarm

    # Life ---------------------------------------------------------------------------------------
    def start(self) -> LiveSession:
        self.gateway.subscribe(self.system.order_frame)
        self._reconcile_due.set()  # at start, before the socket is up: the books first
        self._thread = threading.Thread(target=self._run, name="dhan-session", daemon=True)
        self._thread.start()
        self.socket.start()
        self.feed.start()
        return self

    def stop(self) -> None:
        """Feeds first: no frame or tick arrives after this returns."""
        self._done.set()
        self.socket.stop()
        self.feed.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._drain_held()

    def reload_token(self) -> None:
        """SIGHUP: read the token source again now."""
        self._token_checked = 0.0

    # Inputs from the links ----------------------------------------------------------------------
    def _on_frame(self, frame: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(frame)
                return
        self.gateway.deliver(frame)

    def _on_tick(self, instrument: Instrument, price: Decimal, at: datetime) -> None:
        self.gateway.note_price(instrument, price)
        self.system.tick(instrument, price, self.clock())

    def _on_socket_connected(self) -> None:
        self._reconcile_due.set()

    def _on_socket_state(self, state: LinkState, detail: str) -> None:
        self.socket_state = state.value
        if state is LinkState.TOKEN_INVALID:
            self._on_token_refused(detail)

    def _on_feed_state(self, state: LinkState, detail: str) -> None:
        self.feed_state = state.value
        if state is LinkState.TOKEN_INVALID:
            self._on_token_refused(detail)

    def _on_token_refused(self, detail: str) -> None:
        try:
            token = self.tokens.current()
        except TokenError:
            token = None
        with self._lock:
            first = self._refused is None
            self._refused = token
        if first:
            self._alarm(f"DhanHQ refused the access token ({detail}): calls that need it have "
                        "stopped; put a new token in DHAN_ACCESS_TOKEN's file or send SIGHUP")

    # The session thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self._step()
            except Exception:  # the session thread outlives any one failure
                logger.exception("live session step failed")
            self._done.wait(0.2)

    def _step(self) -> None:
        now = time.monotonic()
        self._check_token(now)
        if self.token_refused:
            return
        if self._reconcile_due.is_set():
            self._reconcile_due.clear()
            if not self.reconcile():
                self._reconcile_due.set()
                self._done.wait(2.0)
            self._next_poll = time.monotonic() + self._poll_every()
        elif now >= self._next_poll:
            self.poll()
            self._next_poll = time.monotonic() + self._poll_every()
        if now >= self._next_follow:  # an ask of the index: once a second is enough
            self._next_follow = now + FOLLOW_EVERY
            self._follow_positions()

    def _poll_every(self) -> float:
        return self.poll_active if self._exits_in_flight() else self.poll_idle

    def _exits_in_flight(self) -> bool:
        try:
            return bool(self.system.status()["positions"].get("EXITING", 0))
        except Exception:  # no answer in time: poll as if an exit were in flight
            return True

    # Reconcile ----------------------------------------------------------------------------------
    def reconcile(self) -> bool:
        """The books after a (re)connect; False when it must be tried again."""
        with self._lock:
            if self._held is None:
                self._held = []
        try:
            orders = self.rest.orders()
            if not orders.ok or orders.value is None:
                self.reconciled.error = f"GET /orders: {orders.outcome.value} {orders.code}"
                logger.warning("reconcile: {}; trying again", self.reconciled.error)
                return False
            trades = self.rest.trades()
            prices = _trade_prices(trades.value or []) if trades.ok else {}
            result = Reconciled(at=self.clock(), orders=len(orders.value))
            for order in _oldest_first(orders.value):
                if self._give(order, prices, force=True):
                    result.fills += 1 if order.filled_qty else 0
                    result.external += 0 if self._ours(order) else 1
            self.system.settle(rounds=1)
            positions = self.rest.positions()
            if positions.ok and positions.value is not None:
                result.differences = self._compare(positions.value)
            else:
                result.error = f"GET /positions: {positions.outcome.value} {positions.code}"
            self.reconciled = result
            logger.info("reconcile: {} orders read, {} with fills given to the trackers; {}",
                        result.orders, result.fills,
                        "positions agree with DhanHQ" if not result.differences
                        else f"POSITIONS DIFFER: {result.differences}")
            return True
        finally:
            self._drain_held()

    def _drain_held(self) -> None:
        while True:
            with self._lock:
                held = self._held
                if not held:
                    self._held = None
                    return
                self._held = []
            for frame in held:
                self.gateway.deliver(frame)

    def poll(self) -> None:
        """The order book read while live: only orders whose state changed go in."""
        answer = self.rest.orders()
        self.polls += 1
        if not answer.ok or answer.value is None:
            logger.warning("order-book poll: {} {}", answer.outcome.value, answer.code)
            return
        given = sum(self._give(order, {}, force=False) for order in _oldest_first(answer.value))
        if given:
            logger.info("order-book poll: {} orders changed since the last read", given)

    def _give(self, order: BrokerOrder, prices: dict[str, Decimal], *, force: bool) -> bool:
        state = (order.status, order.filled_qty)
        if not force and self._seen.get(order.order_id) == state:
            return False
        self._seen[order.order_id] = state
        try:
            frame = order_frame(order, prices.get(order.order_id))
        except ValueError as error:  # a row that cannot be an order update: the rest go on
            logger.warning("order {} from the order book skipped: {}", order.order_id,
                           " ".join(str(error).split()))
            return False
        if frame is None:
            return False
        self.gateway.deliver(frame)
        return True

    def _ours(self, order: BrokerOrder) -> bool:
        corr = order.correlation_id or ""
        return corr.startswith("X-") or (self.prefix is not None and corr.startswith(self.prefix))

    def _compare(self, rows: list[BrokerPosition]) -> dict[str, dict[str, int]]:
        """DhanHQ's ``netQty`` per (segment, security, product) against our open positions
        (``models.books.compare``): a difference is alarmed, never traded away."""
        broker: dict[BookKey, int] = {}
        for row in rows:
            key = (row.instrument.segment, row.instrument.security_id,
                   _product_letter(row.product))
            broker[key] = broker.get(key, 0) + row.net_qty
        report = compare(broker, self.system.open_positions())
        differences = cast(dict[str, dict[str, int]], report.as_dict()["differences"])
        if differences:
            self._alarm("DhanHQ's positions differ from ours (nothing is traded to fix it; "
                        f"every position stays protected): {report.line()}")
        return differences

    # Feed subscriptions ---------------------------------------------------------------------------
    def _follow_positions(self) -> None:
        try:
            open_now = self.system.open_positions()
        except Exception:  # no answer in time: next step
            return
        wanted = {Instrument(segment=p.segment, security_id=p.security_id) for p in open_now}
        have = set(self.feed.subscribed)
        gone, new = have - wanted, wanted - have
        if new:
            self.feed.subscribe(sorted(new, key=_order_key))
        if gone:
            self.feed.unsubscribe(sorted(gone, key=_order_key))

    # Token --------------------------------------------------------------------------------------
    @property
    def token_refused(self) -> bool:
        with self._lock:
            return self._refused is not None

    def _check_token(self, now: float) -> None:
        if now - self._token_checked < (TOKEN_RECHECK if self.token_refused else 60.0):
            return
        self._token_checked = now
        try:
            token = self.tokens.reload()
        except TokenError as error:
            logger.error("DhanHQ access token: {}", error)
            return
        self.tokens.warn_if_expiring(self.clock())
        with self._lock:
            refused, renewed = self._refused, self._refused is not None and token != \
                self._refused
            if renewed:
                self._refused = None
        if refused is None or not renewed:
            return
        logger.warning("a new DhanHQ access token: sockets restart and the books are "
                       "reconciled in full")
        for link in (self.socket, self.feed):
            if not link.running:
                link.start()
        self._reconcile_due.set()

    def token_expires_at(self) -> datetime | None:
        try:
            return expires_at(self.tokens.current())
        except TokenError:
            return None

    # Status -------------------------------------------------------------------------------------
    def _alarm(self, text: str) -> None:
        logger.error("ALARM: {}", text)
        with self._lock:
            self.alarms.append(f"{self.clock().isoformat()} {text}")

    def state(self) -> str:
        if self.token_refused:
            return "TOKEN_INVALID"
        if self.gateway.ip_refused:
            return "IP_REFUSED"
        if self.socket_state != LinkState.LIVE.value:
            return f"ORDER_SOCKET_{self.socket_state}"
        return "UP"

    def gateway_status(self) -> dict[str, Any]:
        """``Parts.gateway_status``: what the console and the report show."""
        return {"kind": "dhan-shadow" if self.shadow is not None else "dhan",
                "state": self.state(), "token_expires_at": self.token_expires_at(),
                "order_socket": self.socket_state, "feed": self.feed_state,
                "feed_subscribed": len(self.feed.subscribed),
                "last_reconcile": self.reconciled.at.isoformat()
                if self.reconciled.at is not None else None,
                "positions_differ": self.reconciled.differences,
                "order_book_polls": self.polls, **self.gateway.status()}

    def status_line(self) -> str:
        expiry = self.token_expires_at()
        left = "" if expiry is None else \
            f" token {_hours(expiry - self.clock())}"
        return (f"dhan {self.state()} | socket {self.socket_state} feed {self.feed_state}"
                f" ({len(self.feed.subscribed)} subscribed) | {self.reconciled.line()}{left}")

    def report(self) -> dict[str, Any]:
        status = self.gateway_status()
        expiry = status.pop("token_expires_at")
        status["token_expires_at"] = expiry.isoformat() if expiry is not None else None
        status["alarms"] = list(self.alarms)
        return status


def order_frame(order: BrokerOrder, trade_price: Decimal | None = None) -> str | None:
    """An order-book row as the order socket's frame (marked as read by reconcile); None for a
    row that cannot be one (no status we know, no instrument)."""
    status = order.order_status
    if status is None or order.instrument is None:
        return None
    price = order.avg_price if order.avg_price and order.avg_price > 0 else trade_price
    update = OrderUpdate(
        order_no=order.order_id, status=status, segment=order.instrument.segment,
        security_id=order.instrument.security_id, txn_type=order.txn_type,
        product=_product_letter(order.product), order_type=order.order_type,
        quantity=order.quantity, traded_qty=order.filled_qty, avg_traded_price=price,
        price=order.price if order.price and order.price > 0 else None,
        correlation_id=order.correlation_id, exch_order_no=order.exchange_order_id,
        updated_at=_time(order.updated_at), reason=order.reason)
    frame = to_dhan_frame(update)
    return frame[:-2] + ", " + RECONCILE_MARK + "}}"


_LETTERS = {name: letter for letter, name in PRODUCT_TYPES.items()}


def _product_letter(product: str | None) -> str | None:
    """The order socket's one-letter product for a REST ``productType``."""
    if product is None:
        return None
    return _LETTERS.get(product.upper(), product)


def _time(text: str | None) -> datetime | None:
    try:
        return dhan_time(text) if text else None
    except (ValueError, OverflowError):
        return None  # the order's time is not needed to apply it


def _oldest_first(orders: list[BrokerOrder]) -> list[BrokerOrder]:
    """DhanHQ lists the newest first; the system takes them in the order they happened."""
    return sorted(orders, key=lambda o: o.updated_at or "")


def _trade_prices(trades: list[BrokerTrade]) -> dict[str, Decimal]:
    """Each order's average traded price from the trade book."""
    value: dict[str, Decimal] = {}
    qty: dict[str, int] = {}
    for trade in trades:
        if trade.price is None or trade.quantity <= 0:
            continue
        value[trade.order_id] = value.get(trade.order_id, Decimal(0)) + \
            trade.price * trade.quantity
        qty[trade.order_id] = qty.get(trade.order_id, 0) + trade.quantity
    return {order: value[order] / qty[order] for order in value}


def _order_key(instrument: Instrument) -> tuple[str, str]:
    return instrument.segment.value, instrument.security_id


def _hours(left: timedelta) -> str:
    seconds = int(left.total_seconds())
    if seconds <= 0:
        return "EXPIRED"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def would_exit_rows(shadow: ShadowGateway, attempts: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``would_exit``: each exit ``--shadow`` decided, with its position and
    reason from the stored exit attempt (``attempts``: client id → ``ExitAttempt``)."""
    rows: list[dict[str, Any]] = []
    for entry in shadow.would_exits():
        attempt = attempts.get(entry.client_id)
        rows.append({
            "client_id": entry.client_id,
            "position_id": getattr(attempt, "position_id", None),
            "reason": str(getattr(attempt, "reason", "")) or None,
            "segment": entry.instrument.segment.value,
            "security_id": entry.instrument.security_id,
            "transaction_type": entry.txn_type.value, "quantity": entry.quantity,
            "product": entry.product,
            "limit_price": str(entry.limit_price) if entry.limit_price is not None else None,
            "last_price": str(entry.last_price) if entry.last_price is not None else None,
            "at": entry.at.isoformat()})
    return rows

