"""The broker of a paper scale-out deployment (SPEC §13, ``run.py venue``): one process that
every runner reaches, as they would reach DhanHQ.

- **Orders**: the loopback fake DhanHQ (``broker/fake_dhan``) over a paper market and exchange,
  at ``127.0.0.1:PORT``: runners place, chase, cancel and look up their exits there by REST, by
  client id after a takeover.
- **Entries**: a trader's orders, one every ``entry_every`` seconds, for each account in turn
  (client id ``E-<account>-<n>``), long only, filled at the market (in ``partial_fills``
  parts). A client of the fake DhanHQ placing under such a client id trades for that account
  too (the scaling bench's trader, ``bench/scaling.py``).
- **Order updates**: every frame of the exchange goes onto its account's partition subject on
  JetStream, its message id the frame's digest (a repeat is dropped): the connector's part. An
  exit's frames are known by their client id (``X-<position>-<attempt>``, the position named
  after its entry order).
- **Prices**: every step of the market goes to ``prices.<segment>.<security>`` on NATS, and to
  the fake DhanHQ's feeds subscribed to them.
- **Without publishing** (``run.py venue --no-publish``): the venue is only DhanHQ; order
  updates and prices reach NATS through ``run.py connector`` and ``run.py feed``, from its order
  sockets (each account's own) and its feed, as from the real broker.
- **Record** (``record``, ``run.py venue --record PATH`` at its stop): what the failover rig
  checks afterwards: every placement that reached the exchange (client ids, a repeat included:
  the exchange takes a repeated client id as the first order) and each account's net filled
  quantity per (segment, security, product), its book as the broker keeps it.

A paper stand-in: one exchange for all accounts (position ids differ, since one exchange
numbers every order), one token; each account reads its own order book, trades and positions,
named by its client id (the account id) as DhanHQ's ``client-id`` header.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from loguru import logger

from broker.fake_dhan.server import FakeDhan
from broker.paper import default_instruments
from broker.paper.exchange import PaperExchange
from broker.paper.market import PaperMarket
from broker.transport.ports import Transport, TransportError
from models.common import TxnType, parse_exit_client_id
from models.orders import OrderUpdate
from models.wire import parse_order_update

TOKEN = "fake-dhan-token"  # the loopback fake's, not a secret
LINGER = 3.0
"""Seconds the fake DhanHQ stays up after a stop without publishing, the market and the
exchange still: the connectors hear the last frames and read the order book once more."""
CLIENT = "1000000001"


class PaperVenue:
    def __init__(self, transport: Transport, accounts: Sequence[str], *,
                 clock: Callable[[], datetime], instruments: int = 4, seed: int = 7,
                 volatility: float = 0.002, entry_every: float = 2.0, quantity: int = 50,
                 token: str = TOKEN, partial_fills: int = 1, publish: bool = True) -> None:
        self.transport, self.accounts, self.clock = transport, list(accounts), clock
        self.publish = publish
        """False: the order updates and prices stay at the fake DhanHQ (its order sockets and
        feed), for ``run.py connector`` and ``run.py feed`` to carry onto NATS."""
        self.market = PaperMarket(default_instruments(instruments, equity_ratio=0), seed=seed,
                                  volatility=volatility, start=clock())
        self.exchange = PaperExchange(self.market, start=clock(),
                                      latency=timedelta(milliseconds=20),
                                      partial_fills=partial_fills)
        self.fake = FakeDhan(self.exchange, self.market, client_id=CLIENT, valid_token=token)
        self.fake.account_of = self.account_of_order  # each account reads its own books
        self.entry_every, self.quantity = entry_every, quantity
        self.rng = random.Random(seed)
        self.account_of: dict[str, str] = {}
        """Order number → its account: an entry's from its client id, an exit's from its
        entry's (the position it closes is named after its entry order)."""
        self.entries = self.published = 0
        self._lock = threading.Lock()
        self._waiting: deque[tuple[str, str, bytes, str]] = deque()
        """Order updates not published yet (account, message id, frame, order number), in
        order: one NATS refused is tried again, with those behind it, before anything newer
        (the stream de-duplicates a retry by its message id), as a connector does."""
        self._publishing = threading.Lock()
        self.exchange.subscribe(self._frame)

    def run(self, stop: threading.Event, port: int) -> None:
        self.fake.start(port=port)
        logger.info("paper venue: DhanHQ API at {} (token {}), {} accounts", self.fake.rest_url,
                    TOKEN, len(self.accounts))
        next_entry = 0.0
        elapsed = 0.0
        try:
            while not stop.wait(0.1):
                elapsed += 0.1
                now = self.clock()
                ticks = [(instrument, price) for instrument, price, _ in
                         self.market.advance(now)]
                self.fake.publish(ticks)  # to the feeds subscribed to them, if any
                for instrument, price in ticks if self.publish else ():
                    self.transport.publish_price(instrument.segment.value,
                                                 instrument.security_id, str(price).encode())
                self.exchange.advance(now)
                if self._waiting:
                    self._send_waiting()
                if self.accounts and elapsed >= next_entry:
                    next_entry = elapsed + self.entry_every
                    self._enter(now)
            if not self.publish:  # the connectors' last reads: nothing trades meanwhile
                time.sleep(LINGER)
        finally:
            self.fake.stop()

    def _enter(self, now: datetime) -> None:
        account = self.accounts[self.entries % len(self.accounts)]
        self.entries += 1
        instrument = self.rng.choice(self.market.instruments)
        # Long only: an opposite entry of the same account would net against its positions.
        self.exchange.place_order(client_id=f"E-{account}-{self.entries}",
                                  instrument=instrument, txn_type=TxnType.BUY,
                                  quantity=self.quantity, product="I", now=now)

    def _frame(self, frame: str) -> None:
        if not self.publish:
            return  # the connectors carry it, from the fake's order sockets
        update = parse_order_update(frame)
        if not isinstance(update, OrderUpdate):
            logger.warning("paper venue: unreadable frame not published: {:.200}", frame)
            return
        account = self._account(update)
        if account is None:
            logger.warning("paper venue: order {} belongs to no account here",
                           update.order_no)
            return
        digest = hashlib.sha256(frame.encode()).hexdigest()[:32]
        with self._publishing:
            self._waiting.append((account, digest, frame.encode(), update.order_no))
        self._send_waiting()

    def _send_waiting(self) -> None:
        """The waiting order updates published in order until one is refused (it keeps its
        place, and is tried again at the next frame or the next 0.1 s step)."""
        with self._publishing:
            while self._waiting:
                account, digest, data, order_no = self._waiting[0]
                try:
                    self.transport.publish_order_update(account, digest, data)
                except TransportError as error:  # kept: tried again, never dropped
                    logger.error("paper venue: update of order {} not published: {} ({} "
                                 "waiting, tried again)", order_no, error, len(self._waiting))
                    return
                self._waiting.popleft()
                self.published += 1

    def _account(self, update: OrderUpdate) -> str | None:
        return self._account_by(update.order_no, update.correlation_id or "")

    def _account_by(self, order_no: str, correlation: str) -> str | None:
        with self._lock:
            known = self.account_of.get(order_no)
            if known is not None:
                return known
            entry_of, _, number = correlation.removeprefix("E-").rpartition("-")
            if correlation.startswith("E-") and number.isdigit() and entry_of in self.accounts:
                account: str | None = entry_of
            else:
                parsed = parse_exit_client_id(correlation)
                account = self.account_of.get(parsed[0][1:]) \
                    if parsed is not None and parsed[0].startswith("P") else None
            if account is not None:
                self.account_of[order_no] = account
            return account

    def account_of_order(self, order_no: str) -> str | None:
        """The account an order of the exchange belongs to (None: none of these accounts')."""
        with self._lock:
            known = self.account_of.get(order_no)
        if known is not None:
            return known
        try:
            order = self.exchange.order(order_no)
        except KeyError:  # not an order of this exchange
            return None
        return self._account_by(order_no, order.client_id)

    def record(self) -> dict[str, Any]:
        """Placements (in order, repeats included) and each account's book: the net filled
        quantity (BUY +, SELL -) per ``[segment, security, product]``."""
        orders = self.exchange.orders()
        entry_account: dict[str, str] = {}
        for order in orders:
            entry_of, _, number = order.client_id.removeprefix("E-").rpartition("-")
            if order.client_id.startswith("E-") and number.isdigit() and \
                    entry_of in self.accounts:
                entry_account[order.order_no] = entry_of
        books: dict[str, dict[tuple[str, str, str], int]] = {a: {} for a in self.accounts}
        for order in orders:
            account = entry_account.get(order.order_no)
            parsed = parse_exit_client_id(order.client_id)
            if account is None and parsed is not None and parsed[0].startswith("P"):
                account = entry_account.get(parsed[0][1:])
            if account is None or not order.filled_qty:
                continue
            key = (order.instrument.segment.value, order.instrument.security_id,
                   order.product or "")
            sign = 1 if order.txn_type is TxnType.BUY else -1
            book = books[account]
            book[key] = book.get(key, 0) + sign * order.filled_qty
        return {"entries": self.entries, "placements": list(self.fake.placements),
                "books": {account: [[*key, net] for key, net in sorted(book.items())]
                          for account, book in books.items()}}
