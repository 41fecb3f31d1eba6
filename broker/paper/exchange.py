"""The paper exchange (SPEC §5): MARKET orders filled at the price current when they arrive.

An order is accepted at once (TRANSIT, then PENDING) and arrives at the exchange ``latency``
later, where it fills at the market's price then, plus ``slippage`` against the trader, in
``partial_fills`` parts ``latency`` apart. A LIMIT (``LMT``) order fills only while the market
is at or better than its price (a buy at or below, a sell at or above), at the market price
(slippage never past the limit), in ``partial_fills`` parts at least ``latency`` apart; one
that is not marketable on arrival works until it is, checked at every ``advance``.
``modify_order`` changes a live order's price or quantity and emits a PENDING update carrying
the new values (DhanHQ sends "Modified"; our vocabulary has no such status, and a
modification changes nothing in the order's progress). ``rest_next`` /
``resting`` make placements rest unfilled until cancelled or modified to a marketable price.
Every update goes to the subscribers as the raw text of a DhanHQ websocket frame, so paper and
live share every code path after the gateway.

Orders are numbered in the order they arrive (``PB1``, ``PB2``, ...), or with
``numbering="client"`` named by their client id (``order_prefix`` + client id): placements made
at one instant by several threads arrive in whichever order the threads run, so a replay names
its exits by client id to be the same run after run.

Time moves only through ``advance(now)`` (or the ``now`` of a placement); with zero latency an
order fills before ``place_order`` returns. The placing thread (an actor) and the driving thread
may differ, so one re-entrant lock serialises every call: this is the simulated broker's own
state, not domain data.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from loguru import logger

from broker.paper.market import TICK, Market
from broker.ports import GatewayError, OrderView
from models.common import IST, Instrument, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.wire import to_dhan_frame

EXCH_ORDER_BASE = 1_100_000_000_000_000
"""Exchange order numbers are numeric, as NSE's are; the paper ones count up from here."""


@dataclass(frozen=True)
class PaperOrder:
    """One order as the paper exchange sees it (for tests and reports)."""

    client_id: str
    order_no: str
    exch_order_no: str
    instrument: Instrument
    txn_type: TxnType
    quantity: int
    product: str | None
    placed_at: datetime
    status: OrderStatus = OrderStatus.TRANSIT
    filled_qty: int = 0
    traded_value: Decimal = Decimal(0)
    reason: str | None = None
    order_type: str = "MKT"
    price: Decimal | None = None
    """The limit price of an ``LMT`` order; None for a MARKET order."""
    modifications: int = 0

    @property
    def avg_price(self) -> Decimal | None:
        """Volume-weighted average price of what has filled, unrounded."""
        return self.traded_value / self.filled_qty if self.filled_qty else None

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_qty


@dataclass(order=True, frozen=True)
class _Due:
    """Something that happens to an order at ``at``: a fill of ``qty``, or a rejection."""

    at: datetime
    seq: int
    order_no: str = field(compare=False)
    qty: int = field(compare=False)
    reject: bool = field(default=False, compare=False)


def split_quantity(quantity: int, parts: int) -> list[int]:
    """``quantity`` in at most ``parts`` equal-ish positive parts, larger ones first."""
    base, extra = divmod(quantity, parts)
    return [base + 1 if i < extra else base for i in range(parts) if base or i < extra]


def frame_of(update: OrderUpdate) -> str:
    """The DhanHQ frame of ``update``, with the ``RemainingQuantity`` DhanHQ also sends."""
    frame = to_dhan_frame(update)
    if update.quantity is None or not frame.endswith("}}"):
        return frame
    remaining = update.quantity - update.traded_qty
    return f'{frame[:-2]}, "RemainingQuantity": {remaining}}}}}'


class PaperExchange:
    """A simulated DhanHQ order gateway over a ``Market``; implements ``OrderGateway``."""

    def __init__(self, market: Market, *, latency: timedelta = timedelta(milliseconds=50),
                 slippage: Decimal = Decimal(0), partial_fills: int = 1,
                 order_prefix: str = "PB", reject_client_ids: set[str] | None = None,
                 start: datetime | None = None,
                 numbering: Literal["arrival", "client"] = "arrival") -> None:
        if latency < timedelta(0):
            raise ValueError(f"latency must not be negative, got {latency}")
        if slippage < 0:
            raise ValueError(f"slippage must not be negative, got {slippage}")
        if partial_fills < 1:
            raise ValueError(f"partial_fills must be at least 1, got {partial_fills}")
        self.market, self.latency, self.slippage = market, latency, slippage
        self.partial_fills, self.order_prefix = partial_fills, order_prefix
        if numbering not in ("arrival", "client"):
            raise ValueError(f"numbering must be 'arrival' or 'client', got {numbering!r}")
        self.numbering = numbering
        self.reject_client_ids = set(reject_client_ids or ())
        self.now: datetime | None = None
        self.placed_count = 0
        self._orders: dict[str, PaperOrder] = {}
        self._by_client: dict[str, str] = {}
        self._due: list[_Due] = []
        self._seq = 0
        self._fail = self._reject = self._rest = 0
        self.resting = False
        """Every placement rests unfilled until cancelled or modified to a marketable price."""
        self._resting: set[str] = set()
        self._working: dict[str, None] = {}  # LMT orders waiting for the market, in arrival order
        self._part_due: dict[str, datetime] = {}
        """A partly filled LMT order's next part is due then (``partial_fills`` > 1)."""
        self._sinks: list[Callable[[str], None]] = []
        self._lock = threading.RLock()
        if start is not None:
            self.advance(start)

    # OrderGateway ------------------------------------------------------------------------------
    def subscribe(self, sink: Callable[[str], None]) -> None:
        with self._lock:
            self._sinks.append(sink)

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None, order_type: str = "MKT",
                    price: Decimal | None = None, now: datetime | None = None) -> str:
        """Accept a MARKET (``MKT``) or LIMIT (``LMT``, with ``price``) order and return its
        number; the same ``client_id`` again returns the first order's number and places
        nothing. Raises ``GatewayError`` when refused."""
        with self._lock:
            at = self._time(now)
            known = self._by_client.get(client_id)
            if known is not None:
                return known
            self._refuse_if_needed(client_id, instrument, quantity)
            _check_order_type(client_id, order_type, price)
            order = self._accept(client_id, instrument, txn_type, quantity, product, at,
                                 order_type=order_type, price=price)
            self._process_due(at)  # with zero latency the order has filled already
            return order.order_no

    def modify_order(self, order_no: str, *, price: Decimal | None = None,
                     quantity: int | None = None, now: datetime | None = None) -> None:
        """Change a live order's limit price (it becomes an ``LMT`` order) and/or its total
        quantity; emits a PENDING update with the new values. A resting order modified to a
        price works like any limit order from then on. Raises ``GatewayError`` for an unknown
        or terminal order, or a change that cannot apply."""
        with self._lock:
            at = self._time(now)
            order = self._live(order_no, "modify")
            if price is None and quantity is None:
                raise GatewayError(f"modify: nothing to change on order {order_no}")
            if price is not None and price <= 0:
                raise GatewayError(f"modify: price must be positive, got {price}")
            if quantity is not None and quantity <= order.filled_qty:
                raise GatewayError(f"modify: quantity {quantity} must exceed the "
                                   f"{order.filled_qty} already traded on order {order_no}")
            changed = replace(order, modifications=order.modifications + 1,
                              quantity=order.quantity if quantity is None else quantity,
                              price=order.price if price is None else price,
                              order_type="LMT" if price is not None else order.order_type)
            self._orders[order_no] = changed
            if price is not None and order_no in self._resting:
                self._resting.discard(order_no)
                self._working[order_no] = None
            self._update(changed, at, status=OrderStatus.PENDING)
            self._work(at)

    def find_order(self, client_id: str) -> OrderView | None:
        """``OrderGateway.find_order``: the order placed with ``client_id``, as the book shows
        it."""
        order = self.lookup(client_id)
        if order is None:
            return None
        return OrderView(order_no=order.order_no, client_id=client_id, status=order.status,
                         quantity=order.quantity, traded_qty=order.filled_qty,
                         avg_price=order.avg_price)

    def lookup(self, client_id: str) -> PaperOrder | None:
        """The order placed with ``client_id`` (its CorrelationId), or None."""
        with self._lock:
            order_no = self._by_client.get(client_id)
            return None if order_no is None else self._orders[order_no]

    def cancel_order(self, order_no: str, *, now: datetime | None = None) -> None:
        """Cancel what has not filled yet; the update carries the cumulative traded quantity."""
        with self._lock:
            at = self._time(now)
            order = self._live(order_no, "cancel")
            self._resting.discard(order_no)
            self._working.pop(order_no, None)
            self._update(order, at, status=OrderStatus.CANCELLED, reason="Cancelled by user")

    # Driving -------------------------------------------------------------------------------
    def advance(self, now: datetime) -> None:
        """Move the exchange's time to ``now`` and process every fill due by then."""
        with self._lock:
            self._process_due(self._time(now))

    def fail_next(self, n: int = 1) -> None:
        """The next ``n`` placements raise ``GatewayError`` (nothing is placed)."""
        with self._lock:
            self._fail += n

    def reject_next(self, n: int = 1) -> None:
        """The next ``n`` placements are accepted, then REJECTED when they arrive."""
        with self._lock:
            self._reject += n

    def rest_next(self, n: int = 1) -> None:
        """The next ``n`` placements are accepted (TRANSIT, PENDING), then rest unfilled until
        cancelled or modified to a marketable price."""
        with self._lock:
            self._rest += n

    # Views -----------------------------------------------------------------------------------
    def orders(self) -> list[PaperOrder]:
        with self._lock:
            return list(self._orders.values())

    def order(self, order_no: str) -> PaperOrder:
        with self._lock:
            return self._orders[order_no]

    @property
    def pending_events(self) -> int:
        with self._lock:
            return len(self._due)

    # Internals -----------------------------------------------------------------------------
    def _time(self, now: datetime | None) -> datetime:
        """The exchange's time after ``now``: it never runs backwards."""
        if now is not None:
            if now.tzinfo is None or now.utcoffset() is None:
                raise ValueError(f"now must be timezone-aware, got {now!r}")
            if self.now is None or now > self.now:
                self._process_due(now)
                self.now = now
        if self.now is None:
            raise GatewayError("the paper exchange has no time yet: advance it or pass now=")
        return self.now

    def _live(self, order_no: str, action: str) -> PaperOrder:
        order = self._orders.get(order_no)
        if order is None:
            raise GatewayError(f"{action}: unknown order {order_no}")
        if order.status.terminal:
            raise GatewayError(f"{action}: order {order_no} is already {order.status}")
        return order

    def _refuse_if_needed(self, client_id: str, instrument: Instrument, quantity: int) -> None:
        if client_id in self.reject_client_ids:
            raise GatewayError(f"order {client_id} refused by the paper exchange")
        if self._fail > 0:
            self._fail -= 1
            raise GatewayError(f"order {client_id} failed: paper exchange told to fail")
        if quantity <= 0:
            raise GatewayError(f"order {client_id}: quantity must be positive, got {quantity}")
        if not instrument.segment.tradable:
            raise GatewayError(f"order {client_id}: {instrument.segment} is not tradable")

    def _accept(self, client_id: str, instrument: Instrument, txn_type: TxnType, quantity: int,
                product: str | None, at: datetime, *, order_type: str = "MKT",
                price: Decimal | None = None) -> PaperOrder:
        self.placed_count += 1
        number = self.placed_count
        name = client_id if self.numbering == "client" else str(number)
        order = PaperOrder(client_id=client_id, order_no=f"{self.order_prefix}{name}",
                           exch_order_no=str(EXCH_ORDER_BASE + number), instrument=instrument,
                           txn_type=txn_type, quantity=quantity, product=product, placed_at=at,
                           order_type=order_type, price=price)
        self._orders[order.order_no] = order
        self._by_client[client_id] = order.order_no
        logger.bind(order_no=order.order_no, client_id=client_id).debug(
            "paper order {} {} {} x{}", order.order_no, txn_type, instrument, quantity)
        self._emit(order, at)
        arrival = at + self.latency
        if self._reject > 0:
            self._reject -= 1
            self._schedule(_Due(arrival, self._next_seq(), order.order_no, 0, reject=True))
            return order
        self._update(order, at, status=OrderStatus.PENDING)
        if self.resting or self._rest > 0:
            self._rest = max(0, self._rest - 1)
            self._resting.add(order.order_no)
            return order
        for k, qty in enumerate(split_quantity(quantity, self.partial_fills)):
            self._schedule(_Due(arrival + self.latency * k, self._next_seq(), order.order_no, qty))
        return order

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _schedule(self, due: _Due) -> None:
        heapq.heappush(self._due, due)

    def _process_due(self, now: datetime) -> None:
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            order = self._orders[due.order_no]
            if order.status.terminal:
                continue  # cancelled before it arrived
            if due.reject:
                self._update(order, due.at, status=OrderStatus.REJECTED,
                             reason="RMS: rejected by the paper exchange (reject_next)")
            elif order.order_type == "LMT":
                self._working[order.order_no] = None
            else:
                self._fill(order, due.at, due.qty)
        self._work(now)

    def _work(self, now: datetime) -> None:
        """Fill every working LIMIT order the market has reached, in arrival order."""
        for order_no in list(self._working):
            order = self._orders[order_no]
            if order.status.terminal:
                del self._working[order_no]
                continue
            market = self.market.get(order.instrument)
            if market is None or order.price is None or not _marketable(order, market):
                continue
            due = self._part_due.get(order_no)
            if due is not None and now < due:
                continue
            part = split_quantity(order.quantity, self.partial_fills)[0]
            self._fill(order, now, min(order.remaining, part), limit=order.price)
            if self._orders[order_no].status.terminal:
                del self._working[order_no]
                self._part_due.pop(order_no, None)
            else:
                self._part_due[order_no] = now + self.latency

    def _fill(self, order: PaperOrder, at: datetime, qty: int,
              limit: Decimal | None = None) -> None:
        price = self.market.get(order.instrument)
        if price is None:
            self._update(order, at, status=OrderStatus.REJECTED,
                         reason=f"no market price for {order.instrument}")
            return
        price = self._slipped(order.txn_type, price)
        if limit is not None:  # slippage never takes a limit order past its price
            price = min(price, limit) if order.txn_type is TxnType.BUY else max(price, limit)
        qty = min(qty, order.remaining)  # a modification may have lowered the quantity
        if qty <= 0:
            return
        filled = order.filled_qty + qty
        status = OrderStatus.TRADED if filled == order.quantity else OrderStatus.PENDING
        self._update(order, at, status=status, filled_qty=filled,
                     traded_value=order.traded_value + price * qty, traded_price=price)

    def _slipped(self, txn_type: TxnType, price: Decimal) -> Decimal:
        """Slippage goes against the trader: a buy pays more, a sell gets less."""
        if txn_type is TxnType.BUY:
            return price + self.slippage
        return max(TICK, price - self.slippage)

    def _update(self, order: PaperOrder, at: datetime, *, status: OrderStatus,
                filled_qty: int | None = None, traded_value: Decimal | None = None,
                traded_price: Decimal | None = None, reason: str | None = None) -> None:
        changed = replace(order, status=status, reason=reason or order.reason,
                          filled_qty=order.filled_qty if filled_qty is None else filled_qty,
                          traded_value=order.traded_value if traded_value is None
                          else traded_value)
        self._orders[order.order_no] = changed
        if status is OrderStatus.REJECTED:
            logger.bind(order_no=order.order_no).warning("paper order {} rejected: {}",
                                                         order.order_no, reason)
        self._emit(changed, at, traded_price=traded_price, reason=reason)

    def _emit(self, order: PaperOrder, at: datetime, *, traded_price: Decimal | None = None,
              reason: str | None = None) -> None:
        frame = frame_of(order_update(order, at, traded_price=traded_price, reason=reason))
        for sink in list(self._sinks):
            try:
                sink(frame)
            except Exception:  # one broken subscriber must not stop the exchange or the others
                logger.exception("paper exchange: an order-update subscriber failed")


def _check_order_type(client_id: str, order_type: str, price: Decimal | None) -> None:
    if order_type not in ("MKT", "LMT"):
        raise GatewayError(f"order {client_id}: order type must be MKT or LMT, got "
                           f"{order_type!r}")
    if order_type == "LMT" and (price is None or price <= 0):
        raise GatewayError(f"order {client_id}: a LMT order needs a positive price, got {price}")


def _marketable(order: PaperOrder, market: Decimal) -> bool:
    """A buy limit fills at or below its price, a sell limit at or above."""
    assert order.price is not None
    if order.txn_type is TxnType.BUY:
        return market <= order.price
    return market >= order.price


def order_update(order: PaperOrder, at: datetime, *, traded_price: Decimal | None = None,
                 reason: str | None = None) -> OrderUpdate:
    """The update the exchange sends for ``order`` in its current state, at ``at``."""
    return OrderUpdate(
        order_no=order.order_no, exch_order_no=order.exch_order_no, status=order.status,
        segment=order.instrument.segment, security_id=order.instrument.security_id,
        txn_type=order.txn_type, product=order.product, order_type=order.order_type,
        price=order.price,
        quantity=order.quantity, traded_qty=order.filled_qty,
        avg_traded_price=order.avg_price, traded_price=traded_price,
        correlation_id=order.client_id, reason=reason,
        updated_at=at.astimezone(IST).replace(microsecond=0))
