"""DhanHQ's market feed onto NATS for the runners (SPEC §13: prices on plain subjects per
instrument), ``python run.py feed --nats URL --accounts a,b``.

- **What it subscribes**: the instruments of the accounts' open positions, read from PostgreSQL
  every ``follow_every`` seconds (one query per account: ``SqlStore.open_instruments``), so it
  needs no runner to tell it; an instrument is subscribed at DhanHQ as a position on it opens
  and unsubscribed once none is open (``broker.dhan.MarketFeed``: messages of at most 100
  instruments, sent again after every reconnect, at most 5,000 on the connection).
- **What it publishes**: each ticker's last traded price as decimal text on
  ``prices.<segment>.<security>`` (the runners' ``AccountSystems`` subscribe to what their
  positions need). A price is a moment's value: one NATS refuses is counted and dropped, not
  kept (the runners' Systems price a stale instrument through the quote API meanwhile).
- **Faults**: the feed reconnects with back-off; a read of the positions that fails keeps the
  subscriptions as they are; a refused token stops the feed (``TOKEN_INVALID``, an ERROR line)
  until the token source gives another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger

from broker.dhan import LinkState, MarketFeed, Refusal, TokenError, TokenSource
from broker.transport.ports import Transport
from models.common import Instrument

FOLLOW_EVERY = 1.0
"""Seconds between reads of the open positions' instruments."""


@dataclass
class FeedStatus:
    feed: str
    subscribed: int
    published: int
    refused: int
    last_error: str | None

    def line(self) -> str:
        text = (f"feed {self.feed}, {self.subscribed} instruments, {self.published} prices "
                f"published")
        if self.refused:
            text += f", {self.refused} NATS refused"
        return text + (f" (last error: {self.last_error})" if self.last_error else "")


class PriceFeed:
    """``PriceFeed(transport, tokens, instruments, feed_ws_url=..., client_id=...)``: ``run`` it
    on a thread of its own until ``stop`` is set."""

    def __init__(self, transport: Transport, tokens: TokenSource,
                 instruments: Callable[[], set[Instrument]], *, feed_ws_url: str,
                 client_id: str, follow_every: float = FOLLOW_EVERY,
                 status_every: float = 30.0, backoff: tuple[float, ...] | None = None) -> None:
        self.transport, self.tokens, self.instruments = transport, tokens, instruments
        self.follow_every, self.status_every = follow_every, status_every
        extra: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
        self.feed = MarketFeed(feed_ws_url, client_id, tokens, on_tick=self._tick,
                               on_state=self._on_state, **extra)
        self.state = LinkState.STOPPED.value
        self.published = self.refused = 0
        self.last_error: str | None = None
        self.refusal = Refusal(tokens)
        self._lock = threading.Lock()

    def status(self) -> FeedStatus:
        error = "TOKEN_INVALID" if self.refusal.active else self.last_error
        with self._lock:
            published, refused = self.published, self.refused
        return FeedStatus(self.state, len(self.feed.subscribed), published, refused, error)

    def run(self, stop: threading.Event) -> None:
        self.feed.start()
        next_status = time.monotonic() + self.status_every
        try:
            while True:
                try:
                    self.step()
                except Exception:  # the loop outlives any one failure
                    logger.opt(exception=True).error("price feed: step failed")
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_every
                    logger.info("price feed: {}", self.status().line())
                if stop.wait(self.follow_every):
                    break
        finally:
            self.feed.stop()

    def step(self) -> None:
        """Follow the open positions' instruments (or, the token refused, look for a new
        one)."""
        if self.refusal.active:
            self._check_token()
            return
        try:
            wanted = self.instruments()
        except Exception as error:  # the database away: the subscriptions stay as they are
            self.last_error = f"positions not read: {type(error).__name__}"
            logger.warning("price feed: open positions not read ({}); subscriptions kept",
                           error)
            return
        have = set(self.feed.subscribed)
        gone, new = have - wanted, wanted - have
        if new:
            try:
                self.feed.subscribe(sorted(new, key=_key))
            except ValueError as error:  # past 5,000 on the connection
                self.last_error = str(error)
                logger.error("price feed: {}", error)
        if gone:
            self.feed.unsubscribe(sorted(gone, key=_key))
        if new or gone:
            logger.info("price feed: {} instruments subscribed ({} new, {} dropped)",
                        len(self.feed.subscribed), len(new), len(gone))

    def _tick(self, instrument: Instrument, price: Decimal, at: datetime) -> None:
        try:
            self.transport.publish_price(instrument.segment.value, instrument.security_id,
                                         str(price).encode())
        except Exception as error:  # a price is a moment's: dropped, the next one follows
            with self._lock:
                self.refused += 1
                first = self.refused == 1 or self.refused % 1000 == 0
            if first:
                logger.error("price feed: NATS refused {} prices so far ({})", self.refused,
                             error)
            self.last_error = f"NATS: {type(error).__name__}"
            return
        with self._lock:
            self.published += 1

    def _on_state(self, state: LinkState, detail: str) -> None:
        self.state = state.value
        if state is LinkState.TOKEN_INVALID and self.refusal.refuse():
            logger.error("price feed: DhanHQ refused the access token ({}); the feed stops "
                         "until a new token is given", detail)

    def _check_token(self) -> None:
        try:
            token = self.tokens.reload()
        except TokenError as error:
            logger.error("price feed: access token: {}", error)
            return
        if not self.refusal.cleared_by(token):
            return
        logger.warning("price feed: a new access token: the feed starts again")
        self.last_error = None
        self.feed.start()


def _key(instrument: Instrument) -> tuple[str, str]:
    return instrument.segment.value, instrument.security_id
