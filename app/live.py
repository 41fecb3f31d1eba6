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
   **Circuit limits** of each instrument with an open position are read once from the quote
   endpoint and every exit price is kept inside them (``broker/dhan/circuits.py``).
4. **Token**: a warning 30 minutes before expiry; a refused token stops what uses it; the token
   source is read again every few seconds (and on SIGHUP), and a new token restarts the sockets
   and a full reconcile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from loguru import logger

from actors.system import System
from app.reconcile import BookReader, Reconciled
from broker.dhan import (
    DhanRest,
    LinkState,
    MarketFeed,
    OrderSocket,
    Refusal,
    TokenError,
    TokenSource,
)
from broker.dhan.circuits import CircuitReader, order_key
from broker.dhan.gateway import DhanGateway, ShadowGateway
from broker.dhan.token import expires_at
from models.common import Instrument

FOLLOW_EVERY = 1.0
"""Seconds between comparisons of the feed's subscriptions with the open positions (the quote
API prices a new position meanwhile)."""
TOKEN_RECHECK = 5.0
"""Seconds between reads of the token source while the token is refused."""


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
        extra: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
        self.socket = OrderSocket(order_ws_url, client_id, tokens, sink=self._on_frame,
                                  on_state=self._on_socket_state,
                                  on_connected=self._on_socket_connected, **extra)
        self.feed = MarketFeed(feed_ws_url, client_id, tokens, on_ticks=self._on_ticks,
                               on_state=self._on_feed_state, clock=clock, **extra)
        self.alarms: list[str] = []
        self.books = BookReader(rest, gateway.deliver, system, clock=clock, alarm=self._alarm,
                                correlation_prefix=correlation_prefix)
        self._lock = threading.Lock()
        self._held: list[str] | None = None
        """Socket frames held while a reconcile reads the books (None: not holding)."""
        self._reconcile_due = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_poll = self._next_follow = 0.0
        self.circuits = CircuitReader(rest, gateway)
        self.refusal = Refusal(tokens)
        self._token_checked = 0.0
        self.socket_state = self.feed_state = LinkState.STOPPED.value
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

    def _on_ticks(self, ticks: list[tuple[Instrument, Decimal, datetime]]) -> None:
        """A burst of the feed's ticks, together: its crossing prices reach the index in one
        batch (``System.ticks``). Each keeps the time its message was read (the session's
        clock), so a price's age counts the rest of the burst's reading."""
        for instrument, price, _ in ticks:
            self.gateway.note_price(instrument, price)
        self.system.ticks(ticks)

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
        if self.refusal.refuse():
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
        """The books after a (re)connect (``BookReader.reconcile``), frames from the socket
        held meanwhile; False when it must be tried again."""
        with self._lock:
            if self._held is None:
                self._held = []
        try:
            return self.books.reconcile()
        finally:
            self._drain_held()

    @property
    def reconciled(self) -> Reconciled:
        return self.books.reconciled

    @property
    def polls(self) -> int:
        return self.books.polls

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
        self.books.poll()

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
            self.feed.subscribe(sorted(new, key=order_key))
        if gone:
            self.feed.unsubscribe(sorted(gone, key=order_key))
        self.circuits.read(wanted)

    # Token --------------------------------------------------------------------------------------
    @property
    def token_refused(self) -> bool:
        return self.refusal.active

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
        if not self.refusal.cleared_by(token):
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
                "circuits_known": self.gateway.circuits_known(),
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

