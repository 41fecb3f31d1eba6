"""The DhanHQ market feed client (SPEC §10): ticker subscriptions over one websocket.

URL ``wss://api-feed.dhan.co?version=2&token=…&clientId=…&authType=2`` (the token in the URL: the
URL is never logged). Subscriptions go out as JSON messages of at most 100 instruments, at most
5,000 per connection, and are sent again after every reconnect. Binary messages are decoded by
``broker.dhan.feed_codec``; each ticker becomes ``on_tick(instrument, ltp, received_at)`` with the
local receive time (or, with ``on_ticks``, the ticks of every message already received at once,
after the last of them: a burst's prices reach the session together); a price of 0 means no
price and is dropped; a disconnect packet whose reason is 807-809 means the token was refused
(TOKEN_INVALID, stop). A message that cannot be decoded is logged and skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

from loguru import logger
from websockets.sync.client import ClientConnection

from broker.dhan.feed_codec import (
    MAX_PER_CONNECTION,
    DisconnectPacket,
    FeedDecodeError,
    TickerPacket,
    decode,
    subscription_messages,
)
from broker.dhan.link import BACKOFF, BURST, Link, StateCallback, TokenRefused
from broker.dhan.token import TokenSource
from models.common import Instrument

DEFAULT_URL = "wss://api-feed.dhan.co"
TOKEN_REASONS = frozenset({807, 808, 809})

TickCallback = Callable[[Instrument, Decimal, datetime], None]
TicksCallback = Callable[[list[tuple[Instrument, Decimal, datetime]]], None]


def feed_url(base: str, client_id: str, token: str) -> str:
    query = urlencode({"version": 2, "token": token, "clientId": client_id, "authType": 2})
    return f"{base.rstrip('/')}?{query}"


class MarketFeed(Link):
    def __init__(self, url: str, client_id: str, tokens: TokenSource, *,
                 on_tick: TickCallback | None = None, on_ticks: TicksCallback | None = None,
                 on_state: StateCallback | None = None,
                 on_connected: Callable[[], None] | None = None,
                 backoff: Sequence[float] = BACKOFF, ping_interval: float | None = 10.0,
                 stable_after: float = 30.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__("feed", lambda: feed_url(url, client_id, tokens.current().reveal()),
                         lambda: [tokens.current()], on_state=on_state,
                         on_connected=on_connected, backoff=backoff,
                         ping_interval=ping_interval, stable_after=stable_after,
                         max_queue=4 * BURST)
        if (on_tick is None) == (on_ticks is None):
            raise ValueError("a market feed takes on_tick or on_ticks (one of them)")
        self.on_tick, self.on_ticks, self.clock = on_tick, on_ticks, clock
        self._reading: list[tuple[Instrument, Decimal, datetime]] = []
        """``on_ticks``: the ticks of the messages read since the last burst ended."""
        self._wanted: dict[Instrument, None] = {}
        self._subs_lock = threading.Lock()
        self.ticks = self.dropped = self.bad_messages = 0

    # Subscriptions -----------------------------------------------------------------------------
    @property
    def subscribed(self) -> list[Instrument]:
        with self._subs_lock:
            return list(self._wanted)

    def subscribe(self, instruments: Iterable[Instrument]) -> None:
        """Add instruments (sent now when live, else on connect). Raises ``ValueError`` past
        5,000 instruments on this connection (nothing is added)."""
        with self._subs_lock:
            new = [i for i in dict.fromkeys(instruments) if i not in self._wanted]
            if len(self._wanted) + len(new) > MAX_PER_CONNECTION:
                raise ValueError(f"a feed connection takes at most {MAX_PER_CONNECTION} "
                                 f"instruments: {len(self._wanted)} + {len(new)} asked")
            self._wanted.update(dict.fromkeys(new))
            for message in subscription_messages(new):
                self.send(message)

    def unsubscribe(self, instruments: Iterable[Instrument]) -> None:
        with self._subs_lock:
            gone = [i for i in dict.fromkeys(instruments) if i in self._wanted]
            for instrument in gone:
                del self._wanted[instrument]
            for message in subscription_messages(gone, subscribe=False):
                self.send(message)

    # Link hooks ---------------------------------------------------------------------------------
    def on_open(self, conn: ClientConnection) -> None:
        with self._subs_lock:
            for message in subscription_messages(list(self._wanted)):
                conn.send(message)

    def on_message(self, message: str | bytes) -> None:
        received_at = self.clock()
        if isinstance(message, str):
            logger.debug("dhan feed: text message ignored ({} chars)", len(message))
            return
        try:
            packets = decode(message)
        except FeedDecodeError as error:
            self.bad_messages += 1
            logger.warning("dhan feed: message skipped: {}", error)
            return
        for packet in packets:
            if isinstance(packet, TickerPacket):
                self._tick(packet, received_at)
            elif isinstance(packet, DisconnectPacket):
                if packet.reason in TOKEN_REASONS:
                    raise TokenRefused(f"feed disconnected: reason {packet.reason}")
                logger.warning("dhan feed: server disconnect, reason {}", packet.reason)

    def _tick(self, packet: TickerPacket, received_at: datetime) -> None:
        if packet.ltp <= 0:
            self.dropped += 1
            return
        self.ticks += 1
        if self.on_tick is None:
            self._reading.append((packet.instrument, packet.ltp, received_at))
            return
        try:
            self.on_tick(packet.instrument, packet.ltp, received_at)
        except Exception:  # the price path's failure must not drop the feed
            logger.exception("dhan feed: tick callback failed")

    def on_burst_end(self) -> None:
        burst, self._reading = self._reading, []
        if not burst or self.on_ticks is None:
            return
        try:
            self.on_ticks(burst)
        except Exception:  # the price path's failure must not drop the feed
            logger.exception("dhan feed: ticks callback failed")
