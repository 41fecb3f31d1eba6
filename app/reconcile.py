"""Reading an account's books at DhanHQ into the system (SPEC §10 reconcile, SPEC §13 takeover).

``BookReader`` is the one place that turns the broker's order book into order-update frames and
compares the broker's positions with ours:

1. ``GET /orders``, oldest first: each order becomes an order update (``order_update``). The
   system says which of them it holds already (``System.news``: a takeover late in a busy day
   reads hundreds of orders it has); each of the others becomes one frame (marked ``"Source":
   "RECONCILE"`` in the stored raw text) handed to ``deliver``, and goes the way every socket
   frame goes (fills found this way are ordinary fills, external orders move positions like any
   other). ``GET /trades`` (read only then) gives the price of a filled order whose row has
   none.
2. The system settles (``System.settle_books``: up to the open positions, no gateway),
   then ``GET /positions``: DhanHQ's net quantity per (segment, security, product) against
   our open positions (``models.books.compare``). A difference raises an alarm
   and is shown; nothing is traded to fix it. Before the alarm the order book is read once
   more and its changed orders given in (an order that filled between the two reads is not a
   difference), and the positions compared again. A runner's reader (``recheck_after``)
   waits a few seconds more and does that once again (``recheck``) before it alarms: a fill
   on its way to a runner that just took a busy account over is not a difference either.
3. ``poll``: the order book read again while live; only orders whose state changed since the
   last read go in.
4. ``takeover``: a runner's reconcile of an account it takes over (SPEC §13), once the
   stream's waiting order updates are in. The positions are compared first; the order book
   is read (``reconcile``) only when they differ. The stream is complete by construction
   (the connector publishes every socket frame, and every order that changed in the book it
   reads at its start, after every reconnect and every 5 s), so a takeover late in a busy
   day does not read thousands of orders to learn nothing; a difference (a fill the stream
   has not brought yet, an order placed elsewhere) still reads them all.

The live session (``app/live.py``) reconciles on start and after every reconnect of its order
socket; a runner reconciles each account of a partition it takes over before serving it
(``app/serving.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import cast

from loguru import logger

from actors.system import System
from broker.dhan import BrokerOrder, BrokerPosition, BrokerTrade, DhanRest
from broker.dhan.book import PRODUCT_TYPES
from models.books import BookKey, compare
from models.common import IST
from models.orders import OrderUpdate
from models.wire import dhan_time, to_dhan_frame

RECONCILE_MARK = '"Source": "RECONCILE"'
RECHECK_AFTER = 5.0
"""Seconds a runner's reconcile waits, when the positions still differ at its end, before it
compares them once more and alarms only a difference that is still there
(``BookReader(recheck_after=...)``): on a busy account a fill on its way to a runner that just
took the account over shows as a difference for a moment."""


@dataclass
class Reconciled:
    """The last reconcile, for the status line, the console and the report."""

    at: datetime | None = None
    orders: int = 0
    fills: int = 0
    external: int = 0
    held: int = 0
    """Orders whose state the system held already: not given again."""
    book_read: bool = True
    """False: a takeover whose positions agreed, so the order book was not read."""
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


class BookReader:
    """``BookReader(rest, deliver, system)``: one account's order book read into ``system``
    through ``deliver`` (a frame in, as from the order socket); ``alarm`` hears differences."""

    def __init__(self, rest: DhanRest, deliver: Callable[[str], object], system: System, *,
                 clock: Callable[[], datetime], alarm: Callable[[str], None],
                 correlation_prefix: str | None = None, recheck_after: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rest, self.deliver, self.system = rest, deliver, system
        self.clock, self.alarm, self.prefix = clock, alarm, correlation_prefix
        self.recheck_after, self.monotonic = recheck_after, monotonic
        """``recheck_after``: None, a difference left at a reconcile's end is alarmed at once;
        else it is compared again that many seconds later (``recheck``), and alarmed only if
        it is still there."""
        self.reconciled = Reconciled()
        self.polls = 0
        self.recheck_at: float | None = None
        """``monotonic()`` after which a difference found at a reconcile's end is compared
        again (``recheck``); None: none waits."""
        self._seen: dict[str, tuple[str, int]] = {}
        """Order id → (status, filled quantity) as last given to the system by a read."""

    def reconcile(self) -> bool:
        """Every order of the book in, then the positions compared; False (and
        ``reconciled.error`` says why) when the order book could not be read: try again."""
        began = time.perf_counter()
        orders = self.rest.orders()
        if not orders.ok or orders.value is None:
            self.reconciled.error = f"GET /orders: {orders.outcome.value} {orders.code}"
            logger.warning("reconcile: {}; trying again", self.reconciled.error)
            return False
        result = Reconciled(at=self.clock(), orders=len(orders.value))
        alarm_now = self.recheck_after is None
        self.recheck_at = None
        read = self._updates(oldest_first(orders.value), self._prices(orders.value))
        fetched = time.perf_counter()
        news = self._news([update for _, update in read])
        checked = time.perf_counter()
        for (order, update), new in zip(read, news, strict=True):
            self._seen[order.order_id] = (order.status, order.filled_qty)
            result.external += 0 if self._ours(order) else 1
            if not new:
                result.held += 1
                continue
            self.deliver(reconcile_frame(update))
            result.fills += 1 if order.filled_qty else 0
        for last in (False, True):
            self.system.settle_books()
            positions = self.rest.positions()
            if not positions.ok or positions.value is None:
                result.error = f"GET /positions: {positions.outcome.value} {positions.code}"
                break
            result.differences = self._compare(positions.value, alarm=last and alarm_now)
            if not result.differences or last:
                break
            # An order may have filled between the two reads: the changed ones in, once more.
            again = self.rest.orders()
            if not again.ok or again.value is None:
                self._compare(positions.value, alarm=alarm_now)
                break
            result.fills += self._give_changed(again.value)
        self.reconciled = result
        if result.differences and not alarm_now:
            assert self.recheck_after is not None
            self.recheck_at = self.monotonic() + self.recheck_after
            logger.info("reconcile{}: positions differ from DhanHQ's ({}): compared again in "
                        "{:g} s, and alarmed if they still differ", self._of(),
                        result.differences, self.recheck_after)
        logger.info("reconcile{}: {} orders read, {} held here already, {} with fills given "
                    "to the trackers; {} (read {:.3f} s, checked {:.3f} s, in all {:.3f} s)",
                    self._of(),
                    result.orders, result.held, result.fills,
                    "positions agree with DhanHQ" if not result.differences
                    else f"POSITIONS DIFFER: {result.differences}", fetched - began,
                    checked - fetched, time.perf_counter() - began)
        return True

    def takeover(self, catch_up: Callable[[], object] | None = None) -> bool:
        """A takeover's reconcile: ``GET /positions`` against our open positions; the whole
        order book read (``reconcile``) only when they differ. ``catch_up``: when they differ,
        first take in what the stream brought since (a fill on its way while the positions
        were read shows as a difference), then compare once more: reading the book costs
        about 40 µs an order (0.25-0.35 s at DhanHQ's daily cap, on loopback). False (tried
        again) when the books could not be read."""
        began = time.perf_counter()
        differences = self._positions_differ()
        if differences is None:
            return False
        if differences and catch_up is not None:
            logger.info("reconcile{}: positions differ from DhanHQ's ({}): the stream's "
                        "updates since taken in, then compared again", self._of(), differences)
            catch_up()
            differences = self._positions_differ()
            if differences is None:
                return False
        if differences:
            logger.info("reconcile{}: positions differ from DhanHQ's ({}): the order book is "
                        "read", self._of(), differences)
            return self.reconcile()
        self.reconciled = Reconciled(at=self.clock(), book_read=False)
        self.recheck_at = None
        logger.info("reconcile{}: positions agree with DhanHQ, the order book not read "
                    "({:.3f} s)", self._of(), time.perf_counter() - began)
        return True

    def recheck(self) -> bool:
        """A difference left at a reconcile's end (``recheck_after``), once ``recheck_at`` is
        past: the changed orders of the book given in, then the positions compared again; a
        difference still there is alarmed, one gone is logged as such. False when nothing
        was due; a read that fails (or raises) is tried again ``recheck_after`` s later."""
        if self.recheck_at is None or self.monotonic() < self.recheck_at:
            return False
        assert self.recheck_after is not None
        self.recheck_at = self.monotonic() + self.recheck_after  # kept should this fail
        orders = self.rest.orders()
        read = orders.ok and orders.value is not None
        if read:
            self._give_changed(orders.value or [])
        differences = self._positions_differ(alarm=read)
        if differences is None or not read:
            logger.warning("reconcile{}: the books could not be read to compare the positions "
                           "again; tried again in {:g} s", self._of(), self.recheck_after)
            return True
        self.recheck_at = None
        self.reconciled.differences = differences
        logger.info("reconcile{}: positions compared again: {}", self._of(),
                    "they agree with DhanHQ's now" if not differences
                    else f"POSITIONS DIFFER: {differences}")
        return True

    def _give_changed(self, orders: list[BrokerOrder]) -> int:
        """The orders whose state changed since the last read given in; how many of them
        have fills."""
        return sum(1 for order in oldest_first(orders)
                   if self._give(order, {}, force=False) and order.filled_qty)

    def _positions_differ(self, *, alarm: bool = False) -> dict[str, dict[str, int]] | None:
        """The system settled, ``GET /positions`` compared with ours (alarmed only with
        ``alarm``); None when the positions could not be read (``reconciled.error`` says
        why)."""
        self.system.settle_books()
        positions = self.rest.positions()
        if not positions.ok or positions.value is None:
            self.reconciled.error = f"GET /positions: {positions.outcome.value} {positions.code}"
            logger.warning("reconcile: {}; trying again", self.reconciled.error)
            return None
        return self._compare(positions.value, alarm=alarm)

    def _of(self) -> str:
        return f" of {self.system.account}" if self.system.account else ""

    def poll(self) -> None:
        """The order book read while live: only orders whose state changed go in."""
        answer = self.rest.orders()
        self.polls += 1
        if not answer.ok or answer.value is None:
            logger.warning("order-book poll: {} {}", answer.outcome.value, answer.code)
            return
        given = sum(self._give(order, {}, force=False) for order in oldest_first(answer.value))
        if given:
            logger.info("order-book poll: {} orders changed since the last read", given)

    def _give(self, order: BrokerOrder, prices: dict[str, Decimal], *, force: bool) -> bool:
        state = (order.status, order.filled_qty)
        if not force and self._seen.get(order.order_id) == state:
            return False
        self._seen[order.order_id] = state
        update = book_update(order, prices.get(order.order_id))
        if update is None:
            return False
        self.deliver(reconcile_frame(update))
        return True

    def _prices(self, orders: list[BrokerOrder]) -> dict[str, Decimal]:
        """Average prices from the trade book, read only when a filled order's row has none
        (DhanHQ's rows carry it: a takeover late in a day need not read every trade)."""
        if not any(o.filled_qty and not (o.avg_price and o.avg_price > 0) for o in orders):
            return {}
        trades = self.rest.trades()
        return trade_prices(trades.value or []) if trades.ok else {}

    def _updates(self, orders: list[BrokerOrder], prices: dict[str, Decimal]
                 ) -> list[tuple[BrokerOrder, OrderUpdate]]:
        """The rows that are order updates, each with its update."""
        found = ((order, book_update(order, prices.get(order.order_id))) for order in orders)
        return [(order, update) for order, update in found if update is not None]

    def _news(self, updates: list[OrderUpdate]) -> list[bool]:
        """Which updates could change something in the system (``System.news``); all of them
        when it cannot say (an update held already changes nothing when given)."""
        try:
            return self.system.news(updates)
        except Exception as error:  # a slow or stopping system: give everything, as before
            logger.warning("reconcile: what the system holds not known ({}); every order "
                           "given", type(error).__name__)
            return [True] * len(updates)

    def _ours(self, order: BrokerOrder) -> bool:
        corr = order.correlation_id or ""
        return corr.startswith("X-") or (self.prefix is not None and corr.startswith(self.prefix))

    def _compare(self, rows: list[BrokerPosition], *, alarm: bool = True
                 ) -> dict[str, dict[str, int]]:
        """DhanHQ's ``netQty`` per (segment, security, product) against our open positions
        (``models.books.compare``): a difference is alarmed, never traded away."""
        broker: dict[BookKey, int] = {}
        for row in rows:
            key = (row.instrument.segment, row.instrument.security_id,
                   _product_letter(row.product))
            broker[key] = broker.get(key, 0) + row.net_qty
        report = compare(broker, self.system.open_positions())
        differences = cast(dict[str, dict[str, int]], report.as_dict()["differences"])
        if differences and alarm:
            self.alarm("DhanHQ's positions differ from ours (nothing is traded to fix it; "
                       f"every position stays protected): {report.line()}")
        return differences


def reconcile_frame(update: OrderUpdate) -> str:
    """An update as the order socket's frame, marked as read by reconcile."""
    frame = to_dhan_frame(update)
    return frame[:-2] + ", " + RECONCILE_MARK + "}}"


def book_update(order: BrokerOrder, trade_price: Decimal | None) -> OrderUpdate | None:
    """``order_update``, with a row that cannot be an order update logged and skipped (the
    rest of the book goes on)."""
    try:
        return order_update(order, trade_price)
    except ValueError as error:  # a row that cannot be an order update: the rest go on
        logger.warning("order {} from the order book skipped: {}", order.order_id,
                       " ".join(str(error).split()))
        return None


def order_update(order: BrokerOrder, trade_price: Decimal | None = None) -> OrderUpdate | None:
    """An order-book row as an order update; None for a row that cannot be one (no status we
    know, no instrument)."""
    status = order.order_status
    if status is None or order.instrument is None:
        return None
    price = order.avg_price if order.avg_price and order.avg_price > 0 else trade_price
    return OrderUpdate(
        order_no=order.order_id, status=status, segment=order.instrument.segment,
        security_id=order.instrument.security_id, txn_type=order.txn_type,
        product=_product_letter(order.product), order_type=order.order_type,
        quantity=order.quantity, traded_qty=order.filled_qty, avg_traded_price=price,
        price=order.price if order.price and order.price > 0 else None,
        correlation_id=order.correlation_id, exch_order_no=order.exchange_order_id,
        updated_at=_time(order.updated_at), reason=order.reason)


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


def oldest_first(orders: list[BrokerOrder]) -> list[BrokerOrder]:
    """DhanHQ lists the newest first; the system takes them in the order they happened."""
    return sorted(orders, key=lambda o: o.updated_at or "")


def trade_prices(trades: list[BrokerTrade]) -> dict[str, Decimal]:
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
