"""A simulated strategy (SPEC §3.2, §5): entry orders over time, drawn from a seeded RNG.

Order ``n`` (from 1) is due at ``start + (n - 1) * interval`` with client id
``f"{client_prefix}-{n}"``; its instrument, side and quantity are drawn when the strategy is
built, so the same seed gives the same orders however ``advance`` is called.

Each instrument is traded on one side only, drawn once so that a share ``long_ratio`` of the
instruments is long: an entry opposite to an open position on the same instrument would be read
as closing it (SPEC §3.2, an exit we did not ask for), not as a new position, and the session
would open fewer positions than asked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loguru import logger

from broker.paper.exchange import PaperExchange
from broker.ports import GatewayError
from models.common import Instrument, Segment, Side

QuantityRule = Callable[[random.Random, Instrument], int]
"""Draws an order's quantity for an instrument from the strategy's RNG."""

FNO_LOT = 25


def default_quantity(rng: random.Random, instrument: Instrument) -> int:
    """One to four lots of 25 for derivatives, 1 to 100 shares otherwise."""
    if instrument.segment in (Segment.NSE_FNO, Segment.BSE_FNO):
        return FNO_LOT * rng.randint(1, 4)
    return rng.randint(1, 100)


@dataclass(frozen=True)
class PlannedOrder:
    client_id: str
    due: datetime
    instrument: Instrument
    side: Side
    quantity: int


class PaperStrategy:
    """Places ``positions`` entry orders through the paper exchange, one per ``interval``."""

    def __init__(self, exchange: PaperExchange, instruments: Sequence[Instrument], *, seed: int,
                 positions: int, long_ratio: float = 0.5,
                 quantity: int | QuantityRule = default_quantity,
                 interval: timedelta = timedelta(milliseconds=200), start: datetime,
                 client_prefix: str = "S", product: str | None = "I") -> None:
        if positions < 0:
            raise ValueError(f"positions must not be negative, got {positions}")
        if not 0 <= long_ratio <= 1:
            raise ValueError(f"long_ratio must be between 0 and 1, got {long_ratio}")
        if positions and not instruments:
            raise ValueError("the strategy needs at least one instrument to trade")
        if interval < timedelta(0):
            raise ValueError(f"interval must not be negative, got {interval}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"start must be timezone-aware, got {start!r}")
        self.exchange, self.product = exchange, product
        rule = quantity if callable(quantity) else _fixed(quantity)
        rng = random.Random(seed)
        sides = _sides(rng, instruments, long_ratio)
        self.plan = [_draw(rng, n, instruments, sides, rule, start + interval * (n - 1),
                           client_prefix) for n in range(1, positions + 1)]
        self.order_nos: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self._next = 0

    @property
    def done(self) -> bool:
        return self._next >= len(self.plan)

    def advance(self, now: datetime) -> list[str]:
        """Place every order due by ``now``, each at its due time; return their client ids.

        A refused order is logged and recorded in ``failures``, not retried: a strategy that
        failed to enter simply has one position less.
        """
        placed: list[str] = []
        while self._next < len(self.plan) and self.plan[self._next].due <= now:
            order = self.plan[self._next]
            self._next += 1
            if self._place(order):
                placed.append(order.client_id)
        return placed

    def _place(self, order: PlannedOrder) -> bool:
        try:
            order_no = self.exchange.place_order(
                client_id=order.client_id, instrument=order.instrument,
                txn_type=order.side.entry_txn, quantity=order.quantity, product=self.product,
                now=order.due)
        except GatewayError as error:
            logger.bind(client_id=order.client_id).warning("strategy order {} refused: {}",
                                                           order.client_id, error)
            self.failures[order.client_id] = str(error)
            return False
        self.order_nos[order.client_id] = order_no
        return True


def _fixed(quantity: int) -> QuantityRule:
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    return lambda rng, instrument: quantity


def _sides(rng: random.Random, instruments: Sequence[Instrument],
           long_ratio: float) -> dict[Instrument, Side]:
    """The side each instrument is traded on: ``round(len * long_ratio)`` of them long, which
    ones drawn (at least one of each side when the ratio is strictly between 0 and 1 and there
    are two instruments or more)."""
    distinct = list(dict.fromkeys(instruments))
    longs = round(len(distinct) * long_ratio)
    if 0 < long_ratio < 1 and len(distinct) >= 2:
        longs = min(max(longs, 1), len(distinct) - 1)
    chosen = set(rng.sample(range(len(distinct)), longs))
    return {instrument: Side.LONG if i in chosen else Side.SHORT
            for i, instrument in enumerate(distinct)}


def _draw(rng: random.Random, n: int, instruments: Sequence[Instrument],
          sides: dict[Instrument, Side], rule: QuantityRule, due: datetime,
          prefix: str) -> PlannedOrder:
    instrument = rng.choice(instruments)
    side = sides[instrument]
    quantity = rule(rng, instrument)
    if quantity <= 0:
        raise ValueError(f"the quantity rule gave {quantity} for {instrument}")
    return PlannedOrder(client_id=f"{prefix}-{n}", due=due, instrument=instrument, side=side,
                        quantity=quantity)
