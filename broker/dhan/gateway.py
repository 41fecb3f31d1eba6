"""``DhanGateway``: the ``OrderGateway`` port on DhanHQ's REST API (SPEC §10 "Exit orders",
"Outcomes"), called only from gateway actors (each call blocks that actor, never another).

- An exit is a LIMIT order at the protective price (``models.protection``) of the newest last
  price the session has seen (``note_price``; a quote call when it has none), with the
  position's product and the exit client id as ``correlationId``.
- Outcomes: OK is placed; a refusal (REJECTED, LIMITED, a refused token) raises
  ``DhanGatewayError`` (a ``GatewayError``: the keeper retries with back-off); an answer that
  proves nothing (UNKNOWN) raises ``PlacementUnknown``, which is *not* a ``GatewayError``, so
  the gateway actor looks the order up instead of sending it again. A static-IP refusal stops
  placement (every later exit is refused at once, with the same clear message) until
  ``retry_ip_after`` has passed, and raises the alarm once.
- ``chase`` re-prices a resting exit toward the market (``PUT /orders/{id}``).
- ``launch_exits``: a wave's exits, their intents just committed, handed to the REST client's
  launcher together (``DhanRest.launch_orders``, ``broker/dhan/launch.py``) by the thread that
  committed them; the gateway actor's ``place_order`` for each then takes that placement's
  answer instead of sending it (one order either way; one not launched is placed as before).
- ``ShadowGateway`` (``--shadow``) places, modifies and cancels nothing: it records the exit it
  would have placed and refuses with ``ShadowExit``.

Nothing here logs or raises the token: the REST client's details are scrubbed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger

from broker.dhan.book import BrokerOrder
from broker.dhan.outcomes import Answer, Outcome
from broker.dhan.rest import DhanRest, Launched
from broker.ports import GatewayError, OrderView
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus
from models.protection import DEFAULT_TICK, chase_price, protective_price


class DhanGatewayError(GatewayError):
    """DhanHQ did not take the request; ``code`` is its error code (the console's label)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class PlacementUnknown(Exception):
    """The placement may or may not have been taken (timeout, reset, 5xx, 429, an unreadable
    answer): look it up by client id, never send it again blindly."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LookUpFailed(Exception):
    """A look-up got no usable answer; it is tried again at the keeper's next time-out."""


class ShadowExit(GatewayError):
    """``--shadow``: the exit was decided and recorded, and not placed."""

    code = "SHADOW"


@dataclass(frozen=True)
class WouldExit:
    """An exit ``--shadow`` decided and did not place (the report's ``would_exit``)."""

    client_id: str
    instrument: Instrument
    txn_type: TxnType
    quantity: int
    limit_price: Decimal | None
    last_price: Decimal | None
    product: str | None
    at: datetime


@dataclass
class _Placed:
    client_id: str
    instrument: Instrument
    txn_type: TxnType
    quantity: int
    limit: Decimal
    modifications: int = 0


@dataclass(frozen=True)
class _Launch:
    launched: Launched
    last: Decimal
    limit: Decimal


@dataclass
class GatewayState:
    """What the status line, the report and the console show of order placement."""

    placements: int = 0
    launched: int = 0
    """Placements launched ahead of their gateway actors (``launch_exits``)."""
    rejections: int = 0
    unknown: int = 0
    modifications: int = 0
    cancels: int = 0
    ip_refused_at: float | None = None
    last_error: str | None = None
    codes: dict[str, int] = field(default_factory=dict)


class DhanGateway:
    """``OrderGateway`` on ``DhanRest``; order updates reach ``subscribe``'s sink from the
    order socket and from reconcile (``deliver``)."""

    chases = True

    def __init__(self, rest: DhanRest, *, protection_pct: Decimal = Decimal("0.01"),
                 tick: Decimal = DEFAULT_TICK, max_modifications: int = 10,
                 chase_after_seconds: float = 1.5, retry_ip_after: float = 60.0,
                 on_alarm: Callable[[str], None] | None = None) -> None:
        self.rest = rest
        self.protection_pct, self.tick = protection_pct, tick
        self.max_modifications = max_modifications
        self.chase_after_seconds = chase_after_seconds
        self.retry_ip_after = retry_ip_after
        self.on_alarm = on_alarm
        self.state = GatewayState()
        self._last: dict[Instrument, Decimal] = {}
        self._circuits: dict[Instrument, tuple[Decimal, Decimal]] = {}
        self._placed: dict[str, _Placed] = {}
        self._launched: dict[str, _Launch] = {}
        """Client id → its placement launched ahead, for its gateway actor's ``place_order``."""
        self._lock = threading.Lock()
        self._sink: Callable[[str], None] | None = None

    # Prices and frames --------------------------------------------------------------------------
    def note_price(self, instrument: Instrument, price: Decimal) -> None:
        """The newest last price of ``instrument`` (every feed tick and quote passes here)."""
        self._last[instrument] = price

    def last_price(self, instrument: Instrument) -> Decimal | None:
        return self._last.get(instrument)

    def note_circuits(self, instrument: Instrument, lower: Decimal, upper: Decimal) -> None:
        """The instrument's circuit limits today (``DhanRest.circuit_limits``): every exit
        price is kept inside them (an order priced outside is rejected by the exchange)."""
        self._circuits[instrument] = (lower, upper)

    def circuits(self, instrument: Instrument) -> tuple[Decimal, Decimal] | None:
        return self._circuits.get(instrument)

    def circuits_known(self) -> int:
        return len(self._circuits)

    def limit_price(self, instrument: Instrument, last: Decimal, txn_type: TxnType) -> Decimal:
        """The protective price of an exit now (``models.protection``), inside the circuit
        limits when they are known."""
        lower, upper = self._band(instrument, last)
        return protective_price(last, txn_type, self.protection_pct, tick=self.tick,
                                lower_circuit=lower, upper_circuit=upper)

    def _band(self, instrument: Instrument, last: Decimal
              ) -> tuple[Decimal, Decimal] | tuple[None, None]:
        """The circuit limits to price inside; none when unknown, or when the last price is
        outside them: the exchange has moved the band since they were read (F&O bands are
        relaxed during the day), and an exit clamped to the old one would never fill. Those
        limits are forgotten, so that they are read again."""
        band = self._circuits.get(instrument)
        if band is None:
            return None, None
        if not band[0] <= last <= band[1]:
            self._circuits.pop(instrument, None)
            logger.warning("{}:{} last price {} is outside its circuit limits {}-{}: the band "
                           "has moved; exits priced without it until it is read again",
                           instrument.segment.value, instrument.security_id, last, *band)
            return None, None
        return band

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def deliver(self, frame: str) -> None:
        """One raw order-update frame (socket or reconcile) to the system."""
        if self._sink is not None:
            self._sink(frame)

    # OrderGateway -------------------------------------------------------------------------------
    def launch_exits(self, orders: Sequence[Any]) -> int:
        """Exit orders (``PlaceExitOrder``: client id, instrument, side, quantity, product)
        launched together, ahead of their gateway actors (see the module's docstring); only
        those whose instrument has a last price in hand (no quote call on the caller's
        thread). How many were launched."""
        if self.state.ip_refused_at is not None:
            return 0
        ready: list[tuple[Any, Decimal, Decimal]] = []
        for order in orders:
            last = self._last.get(order.instrument)
            if last is not None:
                ready.append((order, last, self.limit_price(order.instrument, last,
                                                            order.txn_type)))
        launched = self.rest.launch_orders([
            {"correlation_id": order.client_id, "instrument": order.instrument,
             "txn_type": order.txn_type, "quantity": order.quantity, "price": limit,
             "product": order.product} for order, _, limit in ready])
        count = 0
        with self._lock:
            for (order, last, limit), handle in zip(ready, launched, strict=True):
                if handle is not None:
                    self._launched[order.client_id] = _Launch(handle, last, limit)
                    count += 1
            self.state.launched += count
        return count

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        with self._lock:
            launch = self._launched.pop(client_id, None)
        if launch is not None and launch.launched.unsent():  # never left: sent from here
            logger.warning("exit {} was not launched (the launch process could not take it): "
                           "sent by its gateway actor", client_id)
            launch = None
        if launch is not None:  # sent already: its answer, never a second request
            last, limit = launch.last, launch.limit
            answer = launch.launched.answer()
        else:
            self._refuse_while_ip_refused()
            last = self._reference(instrument)
            limit = self.limit_price(instrument, last, txn_type)
            answer = self.rest.place_order(correlation_id=client_id, instrument=instrument,
                                           txn_type=txn_type, quantity=quantity, price=limit,
                                           product=product)
        self._count(answer)
        if answer.ok and answer.value is not None:
            self.state.placements += 1
            with self._lock:
                self._placed[answer.value.order_id] = _Placed(client_id, instrument, txn_type,
                                                              quantity, limit)
            logger.info("exit {} placed as order {}: {} {} {} LIMIT {} (last {}; slot wait "
                        "{:.1f} ms)", client_id, answer.value.order_id, txn_type.value, quantity,
                        instrument.security_id, limit, last, answer.waited * 1000)
            return answer.value.order_id
        self._raise(answer, f"exit {client_id}")
        raise AssertionError("unreachable")  # pragma: no cover

    def find_order(self, client_id: str) -> OrderView | None:
        answer = self.rest.order_by_correlation(client_id)
        if answer.outcome is Outcome.NOT_FOUND:
            return None
        if not answer.ok or answer.value is None:
            raise LookUpFailed(f"look-up of {client_id}: {answer.outcome.value} "
                               f"({answer.code}: {answer.detail})")
        return order_view(answer.value, client_id)

    def cancel_order(self, order_no: str) -> None:
        answer = self.rest.cancel_order(order_no)
        self._count(answer)
        if not answer.ok:
            self._raise(answer, f"cancel of {order_no}")
        self.state.cancels += 1
        with self._lock:
            self._placed.pop(order_no, None)

    def modify_order(self, order_no: str, *, price: Decimal, quantity: int) -> None:
        self._refuse_while_ip_refused()
        answer = self.rest.modify_order(order_no, quantity=quantity, price=price)
        self._count(answer)
        if not answer.ok:
            self._raise(answer, f"modification of {order_no}")
        self.state.modifications += 1

    # Chasing ------------------------------------------------------------------------------------
    def chase(self, order_no: str) -> Decimal | None:
        """Move a resting exit order's limit toward the market (SPEC §10): the new limit, or
        None when there is nothing to do (not ours, at its last modification, no newer price,
        already at or past the protective price). Raises ``GatewayError`` when DhanHQ refuses
        (the order has finished, most likely)."""
        with self._lock:
            placed = self._placed.get(order_no)
        if placed is None or placed.modifications >= self.max_modifications:
            return None
        last = self._last.get(placed.instrument)
        if last is None:
            return None
        lower, upper = self._band(placed.instrument, last)
        price = chase_price(placed.limit, last, placed.txn_type, self.protection_pct,
                            tick=self.tick, lower_circuit=lower, upper_circuit=upper)
        if price is None:
            return None
        self.modify_order(order_no, price=price, quantity=placed.quantity)
        with self._lock:
            placed.limit, placed.modifications = price, placed.modifications + 1
        logger.info("exit {} chased: order {} now LIMIT {} (last {}, modification {})",
                    placed.client_id, order_no, price, last, placed.modifications)
        return price

    def modifications_left(self, order_no: str) -> int:
        with self._lock:
            placed = self._placed.get(order_no)
        return 0 if placed is None else self.max_modifications - placed.modifications

    def forget(self, order_no: str) -> None:
        """The exit order has ended (filled, cancelled, replaced): no more chasing."""
        with self._lock:
            self._placed.pop(order_no, None)

    # Status -------------------------------------------------------------------------------------
    @property
    def ip_refused(self) -> bool:
        return self.state.ip_refused_at is not None

    def status(self) -> dict[str, Any]:
        s = self.state
        return {"placements": s.placements, "launched": s.launched,
                "rejections": s.rejections, "unknown": s.unknown,
                "modifications": s.modifications, "cancels": s.cancels,
                "ip_refused": self.ip_refused, "last_error": s.last_error}

    # Internals ----------------------------------------------------------------------------------
    def _reference(self, instrument: Instrument) -> Decimal:
        last = self._last.get(instrument)
        if last is not None:
            return last
        try:  # no tick yet (a position found at start, a quiet instrument): ask for one
            prices = self.rest.ltp({instrument.segment: [int(instrument.security_id)]})
        except (GatewayError, ValueError) as error:
            raise DhanGatewayError(f"no last price to protect an exit on "
                                   f"{instrument.segment.value}:{instrument.security_id} "
                                   f"({error})", code="NO_PRICE") from None
        price = prices.get(instrument)
        if price is None:
            raise DhanGatewayError(f"no last price to protect an exit on "
                                   f"{instrument.segment.value}:{instrument.security_id}",
                                   code="NO_PRICE")
        self._last.setdefault(instrument, price)
        return price

    def _refuse_while_ip_refused(self) -> None:
        since = self.state.ip_refused_at
        if since is None:
            return
        if time.monotonic() - since < self.retry_ip_after:
            raise DhanGatewayError("order placement stopped: DhanHQ refused this machine's IP "
                                   "(whitelist the static IP in DhanHQ's API settings)",
                                   code="IP_REFUSED")
        self.state.ip_refused_at = None  # try once more; a new refusal stops it again

    def _count(self, answer: Answer[Any]) -> None:
        if answer.ok:
            return
        code = answer.code or answer.outcome.value
        self.state.codes[code] = self.state.codes.get(code, 0) + 1
        self.state.last_error = f"{answer.outcome.value} {code}"

    def _raise(self, answer: Answer[Any], what: str) -> None:
        text = f"{what}: {answer.outcome.value} ({answer.code}: {answer.detail})"
        if answer.outcome is Outcome.UNKNOWN:
            self.state.unknown += 1
            raise PlacementUnknown(text, code=answer.code)
        self.state.rejections += 1
        if answer.outcome is Outcome.IP_REFUSED:
            first = self.state.ip_refused_at is None
            self.state.ip_refused_at = time.monotonic()
            message = ("DhanHQ refused the order because this machine's IP is not the account's "
                       "whitelisted static IP: order placement is stopped; exits are decided "
                       "and traced but not placed until the IP is whitelisted")
            if first:
                logger.error("ALARM: {}", message)
                if self.on_alarm is not None:
                    self.on_alarm(message)
            raise DhanGatewayError(f"{what}: static IP not whitelisted ({answer.detail})",
                                   code="IP_REFUSED")
        raise DhanGatewayError(text, code=answer.code)


class NotingQuotes:
    """The quote API (``QuoteApi``) whose answers also reach the gateway's last prices, so an
    exit on a quiet instrument is priced from the newest quote."""

    def __init__(self, rest: DhanRest, gateway: DhanGateway) -> None:
        self.rest, self.gateway = rest, gateway
        self.max_instruments = rest.max_instruments
        self.min_interval_seconds = rest.min_interval_seconds

    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        prices = self.rest.ltp(request)
        for instrument, price in prices.items():
            self.gateway.note_price(instrument, price)
        return prices


class ShadowGateway:
    """``--shadow``: decides and records, never places, modifies or cancels."""

    chases = False

    def __init__(self, live: DhanGateway, clock: Callable[[], datetime]) -> None:
        self.live, self.clock = live, clock
        self.would: list[WouldExit] = []
        self._lock = threading.Lock()

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self.live.subscribe(sink)

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        last = self.live.last_price(instrument)
        limit = self.live.limit_price(instrument, last, txn_type) if last is not None \
            else None
        entry = WouldExit(client_id=client_id, instrument=instrument, txn_type=txn_type,
                          quantity=quantity, limit_price=limit, last_price=last,
                          product=product, at=self.clock())
        with self._lock:
            self.would.append(entry)
        logger.warning("SHADOW: would place exit {}: {} {} {} LIMIT {} (last {})", client_id,
                       txn_type.value, quantity, instrument.security_id, limit, last)
        raise ShadowExit(f"shadow mode: exit {client_id} not placed")

    def find_order(self, client_id: str) -> OrderView | None:
        return None  # nothing was placed

    def cancel_order(self, order_no: str) -> None:
        raise ShadowExit(f"shadow mode: order {order_no} not cancelled")

    def would_exits(self) -> list[WouldExit]:
        with self._lock:
            return list(self.would)


def order_view(order: BrokerOrder, client_id: str) -> OrderView:
    """DhanHQ's order row as the port's ``OrderView``; a status we have no name for
    (``MODIFIED``, ``TRIGGERED``) is a live order (PENDING)."""
    status = order.order_status or OrderStatus.PENDING
    quantity = order.quantity if order.quantity is not None else order.filled_qty
    return OrderView(order_no=order.order_id, client_id=order.correlation_id or client_id,
                     status=status, quantity=max(quantity, order.filled_qty),
                     traded_qty=order.filled_qty, avg_price=order.avg_price)
