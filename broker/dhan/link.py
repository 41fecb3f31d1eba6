"""One websocket link on its own thread (SPEC §10): connect, serve, and on any loss reconnect with
jittered back-off (1, 2, 5, 10, 30, 60 s) — except when the token is refused, which stops the
link (no retry loop; a new token and ``start()`` resume it).

The order socket and the market feed are built on ``Link``: they say what to send once connected
(``on_open``), what a message means (``on_message``) and what to do once the messages received
so far have all been read (``on_burst_end``: the feed hands its ticks over then, together); the
link reports its state through a callback::

    CONNECTING ──▶ LIVE ──(loss)──▶ RECONNECTING ──▶ LIVE …
         └──────────┴──(token refused)──▶ TOKEN_INVALID        stop() ──▶ STOPPED

Every text that leaves (logs, states' details) is scrubbed of the token and of a URL embedding it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum

from loguru import logger
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidStatus,
    WebSocketException,
)
from websockets.sync.client import ClientConnection, connect

from broker.dhan.token import Secret, TokenError, scrub

BACKOFF: tuple[float, ...] = (1, 2, 5, 10, 30, 60)
BURST = 64
"""Messages at most handed over as one burst (``Link.on_burst_end`` after them): the messages
received already, not more, so a backlog still ends a burst this often (decoding 64 ticker
messages takes about a millisecond, which the first of them waits)."""


class _Scrubbed(logging.Filter):
    """websockets' own log records with any ``token=`` URL parameter redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


def _websockets_logger() -> logging.Logger:
    """The logger given to websockets: WARNING and up only (its DEBUG lines echo frames, and the
    login frame holds the token), scrubbed. Configured on first use, not at import."""
    log = logging.getLogger("broker.dhan.websockets")
    if not any(isinstance(f, _Scrubbed) for f in log.filters):
        log.setLevel(logging.WARNING)
        log.addFilter(_Scrubbed())
    return log


class LinkState(StrEnum):
    CONNECTING = "CONNECTING"
    LIVE = "LIVE"
    RECONNECTING = "RECONNECTING"
    TOKEN_INVALID = "TOKEN_INVALID"
    STOPPED = "STOPPED"


class TokenRefused(Exception):
    """Raised by a link's hooks when the server refused the token."""


StateCallback = Callable[[LinkState, str], None]


def backoff_delay(attempt: int, schedule: Sequence[float] = BACKOFF,
                  rng: random.Random | None = None) -> float:
    """The ``attempt``-th delay of ``schedule`` (the last one repeats), jittered ±20 %."""
    base = schedule[min(attempt, len(schedule) - 1)]
    return base * (rng or random).uniform(0.8, 1.2)


class Link:
    """Runs ``connect → on_open → on_message…`` on a daemon thread until ``stop()``."""

    def __init__(self, name: str, url: Callable[[], str], secrets: Callable[[], list[Secret]],
                 *, on_state: StateCallback | None = None,
                 on_connected: Callable[[], None] | None = None,
                 backoff: Sequence[float] = BACKOFF, stable_after: float = 30.0,
                 open_timeout: float = 5.0, ping_interval: float | None = 10.0,
                 ping_timeout: float | None = 10.0, rng: random.Random | None = None,
                 max_queue: int = 16) -> None:
        self.name = name
        self.max_queue = max_queue
        """Messages the connection reads ahead of this thread (websockets' high-water mark; it
        stops reading the socket past it): a burst is at most what it holds."""
        self._url, self._secrets = url, secrets
        self._on_state, self._on_connected = on_state, on_connected
        self.backoff, self.stable_after = tuple(backoff), stable_after
        self.open_timeout, self.ping_interval, self.ping_timeout = (
            open_timeout, ping_interval, ping_timeout)
        self._rng = rng or random.Random()
        self._ws_log = _websockets_logger()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: ClientConnection | None = None
        self._lock = threading.Lock()
        self.state = LinkState.STOPPED
        self.connects = 0
        """Successful connections so far (the first one and every reconnect)."""
        self.delays: list[float] = []
        """Every back-off delay waited, in order (for tests and status)."""

    # Hooks (subclasses) ------------------------------------------------------------------------
    def on_open(self, conn: ClientConnection) -> None:
        """Send what the server needs first (login, subscriptions). May raise ``TokenRefused``."""

    def on_message(self, message: str | bytes) -> None:
        """One message. May raise ``TokenRefused``."""

    def on_burst_end(self) -> None:
        """The messages already received have all been handed to ``on_message`` (called after
        each burst, even one cut short by an error)."""

    # Control ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or, after TOKEN_INVALID or stop, restart) the link's thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"dhan-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and join the thread."""
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            conn.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def send(self, text: str) -> bool:
        """Send on the open connection; False when there is none."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.send(text)
        except (ConnectionClosed, OSError):
            return False
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # The loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        self._set(LinkState.CONNECTING, "")
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                outcome = self._session()
            except TokenRefused as refused:
                self._set(LinkState.TOKEN_INVALID, self._safe(str(refused)))
                return
            if self._stopping.is_set():
                break
            if time.monotonic() - started >= self.stable_after:
                attempt = 0
            delay = backoff_delay(attempt, self.backoff, self._rng)
            attempt += 1
            self.delays.append(delay)
            self._set(LinkState.RECONNECTING, f"{outcome}; retrying in {delay:.1f} s")
            self._stopping.wait(delay)
        self._set(LinkState.STOPPED, "")

    def _session(self) -> str:
        """One connection from connect to loss; returns why it ended."""
        try:
            url = self._url()
            conn = connect(url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                           ping_timeout=self.ping_timeout, close_timeout=2, compression=None,
                           max_size=2**22, max_queue=self.max_queue, proxy=None,
                           logger=self._ws_log)
        except TokenError as error:
            raise TokenRefused(str(error)) from None
        except InvalidStatus as error:
            if error.response.status_code in (401, 403):
                raise TokenRefused(f"handshake refused: HTTP {error.response.status_code}"
                                   ) from None
            return self._safe(f"handshake refused: HTTP {error.response.status_code}")
        except (OSError, TimeoutError, WebSocketException) as error:
            return self._safe(f"cannot connect: {type(error).__name__}: {error}")
        with conn:  # websockets wants its connections used as context managers
            self._conn = conn
            try:
                return self._serve(conn)
            except ConnectionClosed as closed:
                return self._safe(f"connection lost: {closed}")
            except (OSError, TimeoutError, WebSocketException) as error:
                return self._safe(f"connection failed: {type(error).__name__}: {error}")
            finally:
                self._conn = None

    def _serve(self, conn: ClientConnection) -> str:
        if self._stopping.is_set():
            return "stopped"
        self.on_open(conn)
        self.connects += 1
        self._set(LinkState.LIVE, "")
        self._connected()
        while True:
            try:
                message = conn.recv()
            except ConnectionClosedOK:
                return "closed by the server"
            try:
                if not self._burst(conn, message):
                    return "closed by the server"
            finally:
                self.on_burst_end()

    def _burst(self, conn: ClientConnection, message: str | bytes) -> bool:
        """``message`` and each one already received after it (``BURST`` at most), without
        waiting for more; False when the server closed the connection meanwhile."""
        self.on_message(message)
        for _ in range(BURST - 1):
            try:
                message = conn.recv(timeout=0)
            except TimeoutError:
                break
            except ConnectionClosedOK:
                return False
            self.on_message(message)
        return True

    def _connected(self) -> None:
        if self._on_connected is None:
            return
        try:
            self._on_connected()
        except Exception:  # the gateway's reconcile failing must not take the socket down
            logger.exception("dhan {}: on_connected callback failed", self.name)

    def _set(self, state: LinkState, detail: str) -> None:
        self.state = state
        log = logger.bind(link=self.name, state=state.value)
        if state in (LinkState.RECONNECTING, LinkState.TOKEN_INVALID):
            log.warning("dhan {}: {} {}", self.name, state.value, detail)
        else:
            log.info("dhan {}: {}", self.name, state.value)
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                logger.exception("dhan {}: state callback failed", self.name)

    def _safe(self, text: str) -> str:
        try:
            secrets = self._secrets()
        except TokenError:
            secrets = []
        return scrub(text, secrets)
