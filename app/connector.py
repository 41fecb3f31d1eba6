"""DhanHQ accounts' order updates onto JetStream (SPEC §13: the accounts' connectors), for the
runners, which ack each update once its System has stored it.

``python run.py connector --nats URL --accounts a,b`` runs one ``AccountConnector`` per account:

- **The order socket** (``broker.dhan.OrderSocket``: login as the account, keepalive, reconnect
  with back-off): every frame, raw, is published onto the account's partition subject, its
  message id the frame's digest (JetStream drops a repeat within its window; a runner's System
  ignores an update it holds).
- **The order book** (``GET /orders`` with the account's token): read at the start, after every
  reconnect of the socket (the fills it missed while down) and every ``poll_every`` seconds
  (the socket has no replay and may go quiet while its connection looks healthy). An order
  whose status or filled quantity changed since the last read is published as a frame marked
  ``"Source": "RECONCILE"``, as the live session gives it in (``app/reconcile.py``); one that
  did not change is not published again, so the runners store a day's order book once per
  connector start, not once per read.
- **Nothing is lost to NATS**: a publish that fails keeps its frame, and every frame after it, in
  memory in their order, tried again each second until JetStream takes them. The backlog is
  capped (``backlog_limit``); past it the oldest frame is logged in full and dropped, as the
  order-update actor does in a store outage.
- **A refused token** stops the account's socket (``TOKEN_INVALID``, an ERROR line) and its
  order-book reads until the token source gives another (``DHAN_TOKEN_DIR``'s file rewritten):
  then the socket starts again and the book is read in full.

The connector never trades, and holds no state the runners need: a connector that dies loses
nothing published, and its successor reads the order book at its start.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from app.reconcile import book_update, oldest_first, reconcile_frame, trade_prices
from broker.dhan import DhanRest, LinkState, OrderSocket, Refusal, TokenError, TokenSource
from broker.transport.ports import Transport
from models.accounts import shown

POLL_EVERY = 5.0
"""Seconds between reads of an account's order book (SPEC §10: 5 s while orders are live)."""
RETRY_EVERY = 1.0
"""Seconds between tries of frames JetStream did not take."""
BACKLOG_LIMIT = 100_000
TOKEN_RECHECK = 5.0
"""Seconds between reads of the token source while the token is refused."""


def digest(frame: str) -> str:
    """A frame's message id: the same text is the same message."""
    return hashlib.sha256(frame.encode()).hexdigest()[:32]


@dataclass
class ConnectorStatus:
    account: str
    socket: str
    published: int
    backlog: int
    book_reads: int
    last_error: str | None
    dropped: int = 0
    """Frames dropped past the backlog's cap (each logged in full)."""

    def line(self) -> str:
        text = (f"account {shown(self.account)}: socket {self.socket}, {self.published} "
                f"published, {self.book_reads} order-book reads")
        if self.backlog:
            text += f", {self.backlog} WAITING FOR NATS"
        if self.dropped:
            text += f", {self.dropped} DROPPED (logged)"
        return text + (f" (last error: {self.last_error})" if self.last_error else "")


class AccountConnector:
    """``AccountConnector(account, rest, tokens, transport, order_ws_url=...)``: ``start`` it,
    ``step`` it from one thread (the order book and the retries), ``stop`` it."""

    def __init__(self, account: str, rest: DhanRest, tokens: TokenSource, transport: Transport,
                 *, order_ws_url: str, poll_every: float = POLL_EVERY,
                 retry_every: float = RETRY_EVERY, backlog_limit: int = BACKLOG_LIMIT,
                 backoff: tuple[float, ...] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.account, self.rest, self.tokens, self.transport = account, rest, tokens, transport
        self.poll_every, self.retry_every, self.backlog_limit = poll_every, retry_every, \
            backlog_limit
        self.clock = clock
        extra: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
        self.socket = OrderSocket(order_ws_url, account, tokens, sink=self._on_frame,
                                  on_state=self._on_state, on_connected=self._on_connected,
                                  **extra)
        self.socket_state = LinkState.STOPPED.value
        self.published = self.book_reads = self.dropped = 0
        self.last_error: str | None = None
        self._backlog: deque[str] = deque()
        self._lock = threading.Lock()
        """Held while the backlog changes."""
        self._sending = threading.Lock()
        """Held by the one thread sending the backlog, oldest first: frames leave in the order
        they came."""
        self._book_due = threading.Event()
        self._seen: dict[str, tuple[str, int]] = {}
        """Order id → (status, filled quantity) as last published from the order book."""
        self._next_read = self._next_retry = self._next_token_check = 0.0
        self.refusal = Refusal(tokens)
        rest.on_token_invalid = self._on_token_refused

    # Life ---------------------------------------------------------------------------------------
    def start(self) -> AccountConnector:
        self._book_due.set()  # the book first: what happened before the socket was up
        self.socket.start()
        return self

    def stop(self) -> None:
        self.socket.stop()
        self._next_retry = 0.0
        self._flush()
        with self._lock:
            if self._backlog:
                logger.error("connector of {}: stopping with {} frames NATS never took; "
                             "their raw text: {}", shown(self.account), len(self._backlog),
                             list(self._backlog))

    def status(self) -> ConnectorStatus:
        with self._lock:
            backlog = len(self._backlog)
        error = "TOKEN_INVALID" if self.refusal.active else self.last_error
        return ConnectorStatus(self.account, self.socket_state, self.published, backlog,
                               self.book_reads, error, self.dropped)

    # The loop -----------------------------------------------------------------------------------
    def step(self) -> None:
        """Read the order book when due, try the backlog when due; from one thread."""
        now = self.clock()
        if self.refusal.active:
            if now < self._next_token_check:
                return
            self._next_token_check = now + TOKEN_RECHECK
            self._check_token()
            if self.refusal.active:
                return
        if self._book_due.is_set() or now >= self._next_read:
            full = self._book_due.is_set()
            self._book_due.clear()
            self._next_read = now + self.poll_every
            self._read_book(full=full)
        if now >= self._next_retry:
            self._flush()

    # Inputs -------------------------------------------------------------------------------------
    def _on_frame(self, frame: str) -> None:
        self._publish([frame])

    def _on_connected(self) -> None:
        self._book_due.set()

    def _on_state(self, state: LinkState, detail: str) -> None:
        self.socket_state = state.value
        if state is LinkState.TOKEN_INVALID:
            self._on_token_refused(detail)

    def _on_token_refused(self, detail: str) -> None:
        if self.refusal.refuse():
            logger.error("connector of {}: DhanHQ refused the access token ({}); its socket "
                         "and order-book reads stop until a new token is given",
                         shown(self.account), detail)

    def _check_token(self) -> None:
        try:
            token = self.tokens.reload()
        except TokenError as error:
            logger.error("connector of {}: access token: {}", shown(self.account), error)
            return
        if not self.refusal.cleared_by(token):
            return
        logger.warning("connector of {}: a new access token: the socket starts again and the "
                       "order book is read in full", shown(self.account))
        self.last_error = None
        if not self.socket.running:
            self.socket.start()
        self._seen.clear()
        self._book_due.set()

    # The order book -----------------------------------------------------------------------------
    def _read_book(self, *, full: bool) -> None:
        answer = self.rest.orders()
        if not answer.ok or answer.value is None:
            self.last_error = f"GET /orders: {answer.outcome.value} {answer.code}"
            logger.warning("connector of {}: {}; read again in {:g} s", shown(self.account),
                           self.last_error, self.poll_every)
            if full:
                self._book_due.set()  # a missed fill may hide there: read in full again
            return
        self.book_reads += 1
        changed = [o for o in oldest_first(answer.value)
                   if self._seen.get(o.order_id) != (o.status, o.filled_qty)]
        prices: Mapping[str, Any] = {}
        if any(o.filled_qty and not (o.avg_price and o.avg_price > 0) for o in changed):
            trades = self.rest.trades()  # a price for a filled order whose row has none
            prices = trade_prices(trades.value or []) if trades.ok else {}
        frames = []
        for order in changed:
            self._seen[order.order_id] = (order.status, order.filled_qty)
            update = book_update(order, prices.get(order.order_id))
            if update is not None:
                frames.append(reconcile_frame(update))
        if frames:
            logger.info("connector of {}: {} orders changed in the order book{}",
                        shown(self.account), len(frames), " (read in full)" if full else "")
        self._publish(frames)

    # Publishing ---------------------------------------------------------------------------------
    def _publish(self, frames: list[str]) -> None:
        """Queue ``frames`` behind those waiting; send now unless NATS is failing (then the
        step's retry sends them: the socket's thread never waits out a NATS time-out)."""
        with self._lock:
            self._backlog.extend(frames)
            while len(self._backlog) > self.backlog_limit:
                self.dropped += 1
                logger.error("connector of {}: frame dropped, {} already wait for NATS; its "
                             "raw text is recorded only here: {}", shown(self.account),
                             self.backlog_limit, self._backlog.popleft())
        if self.clock() >= self._next_retry:
            self._flush()

    def _flush(self) -> None:
        """Publish the backlog in order, up to the first failure; one thread at a time (one
        already sending sends these too, or, when it was just done, this one goes on)."""
        while self._sending.acquire(blocking=False):
            try:
                self._send()
            finally:
                self._sending.release()
            with self._lock:
                if not self._backlog or self.clock() < self._next_retry:
                    return

    def _send(self) -> None:
        """Publish the backlog in order, up to the first failure (``_sending`` is held)."""
        while True:
            with self._lock:
                if not self._backlog:
                    break
                frame = self._backlog[0]
            try:
                self.transport.publish_order_update(self.account, digest(frame),
                                                    frame.encode())
            except Exception as error:  # NATS down or slow: kept, in order, tried again
                if self.last_error is None or not self.last_error.startswith("NATS"):
                    logger.error("connector of {}: frames wait for NATS ({})",
                                 shown(self.account), error)
                self.last_error = f"NATS: {type(error).__name__}"
                self._next_retry = self.clock() + self.retry_every
                return
            with self._lock:
                self._backlog.popleft()
                self.published += 1
        if self.last_error is not None and self.last_error.startswith("NATS"):
            logger.info("connector of {}: NATS takes frames again", shown(self.account))
            self.last_error = None


class Connectors:
    """The connectors of several accounts, stepped by one thread (``run``)."""

    def __init__(self, connectors: list[AccountConnector], *, step_every: float = 0.2,
                 status_every: float = 30.0) -> None:
        self.connectors, self.step_every, self.status_every = connectors, step_every, \
            status_every

    def run(self, stop: threading.Event) -> None:
        for connector in self.connectors:
            connector.start()
        next_status = time.monotonic() + self.status_every
        try:
            while not stop.wait(self.step_every):
                for connector in self.connectors:
                    try:
                        connector.step()
                    except Exception:  # one account's failure takes no other down
                        logger.opt(exception=True).error("connector of {}: step failed",
                                                         shown(connector.account))
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_every
                    for connector in self.connectors:
                        logger.info("connector: {}", connector.status().line())
        finally:
            for connector in self.connectors:
                connector.stop()

    def report(self) -> dict[str, dict[str, Any]]:
        return {c.account: vars(c.status()) for c in self.connectors}
