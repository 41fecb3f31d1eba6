"""The paper broker (SPEC §5): market, exchange, quote API and strategy behind one ``advance``.

Nothing here owns a thread or reads a clock: whoever drives it (a driver thread on the wall
clock, or a replay on a simulated one) calls ``advance(now)``. The parts live in their own
modules and are re-exported here::

    PaperMarket / TapeMarket   prices            broker.paper.market
    PaperExchange              OrderGateway      broker.paper.exchange
    PaperQuoteApi              QuoteApi          broker.paper.quotes
    PaperStrategy              entry orders      broker.paper.strategy
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import Field

from broker.paper.exchange import PaperExchange, PaperOrder, split_quantity
from broker.paper.market import Market, PaperMarket, TapeError, TapeMarket, Tick, read_tape
from broker.paper.quotes import PaperQuoteApi
from broker.paper.strategy import PaperStrategy, PlannedOrder, default_quantity
from models.common import Frozen, Instrument, Segment

__all__ = [
    "Market", "PaperBroker", "PaperConfig", "PaperExchange", "PaperMarket", "PaperOrder",
    "PaperQuoteApi", "PaperStrategy", "PlannedOrder", "TapeError", "TapeMarket", "Tick",
    "default_instruments", "default_quantity", "entry_interval", "read_tape", "split_quantity",
]

FNO_BASE_ID = 40000
EQ_BASE_ID = 11000


class PaperConfig(Frozen):
    """What a paper session simulates; every field has a default."""

    positions: int = Field(default=20, ge=0)
    instruments: int = Field(default=10, ge=1)
    seed: int = 7
    latency_ms: int = Field(default=50, ge=0)
    slippage: Decimal = Field(default=Decimal(0), ge=0)
    partial_fills: int = Field(default=1, ge=1)
    long_ratio: float = Field(default=0.5, ge=0, le=1)
    interval_ms: int = Field(default=200, ge=0)
    equity_ratio: float = Field(default=0.2, ge=0, le=1)
    """Share of the instruments in NSE_EQ; the rest are NSE_FNO."""
    step_ms: int = Field(default=100, ge=1)
    volatility: float = Field(default=0.002, ge=0)


def default_instruments(count: int, equity_ratio: float = 0.2) -> list[Instrument]:
    """NSE_FNO ids 40000, 40001, … and a few NSE_EQ ids 11000, 11001, …"""
    equities = min(count, round(count * equity_ratio))
    fno = [Instrument(segment=Segment.NSE_FNO, security_id=str(FNO_BASE_ID + i))
           for i in range(count - equities)]
    eq = [Instrument(segment=Segment.NSE_EQ, security_id=str(EQ_BASE_ID + i))
          for i in range(equities)]
    return fno + eq


def entry_interval(positions: int, interval: timedelta, duration: timedelta | None, *,
                   burst: bool = False, share: float = 0.5) -> timedelta:
    """The gap between entry orders that places all ``positions`` within the first ``share`` of
    a session of ``duration``: ``interval`` when they fit at that pace, closer together when
    not, none at all for a ``burst`` (all at the start). Without a duration (a session until
    Ctrl-C) the pace is ``interval``."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if burst or positions <= 1:
        return timedelta(0)
    if duration is None or interval * (positions - 1) <= duration * share:
        return interval
    return duration * share / (positions - 1)


class PaperBroker:
    """The parts wired together. ``advance`` moves market, strategy, then exchange, and returns
    the market's ticks for the price feed."""

    def __init__(self, config: PaperConfig, *, start: datetime,
                 instruments: Sequence[Instrument] | None = None, market: Market | None = None,
                 quote_clock: Callable[[], float] = time.monotonic,
                 order_prefix: str = "PB") -> None:
        """``order_prefix`` should differ between runs that share a store, so order numbers of
        a new simulated exchange never collide with those of an earlier one."""
        self.config = config
        self.instruments = list(instruments) if instruments is not None else \
            default_instruments(config.instruments, config.equity_ratio)
        self.market: Market = market if market is not None else PaperMarket(
            self.instruments, seed=config.seed, step_seconds=config.step_ms / 1000,
            volatility=config.volatility, start=start)
        self.exchange = PaperExchange(
            self.market, latency=timedelta(milliseconds=config.latency_ms),
            slippage=config.slippage, partial_fills=config.partial_fills, start=start,
            order_prefix=order_prefix)
        self.quotes = PaperQuoteApi(self.market, clock=quote_clock)
        # seed + 1: the strategy's draws are not a replay of the market's random stream.
        self.strategy = PaperStrategy(
            self.exchange, self.instruments, seed=config.seed + 1, positions=config.positions,
            long_ratio=config.long_ratio, interval=timedelta(milliseconds=config.interval_ms),
            start=start)

    def advance(self, now: datetime) -> list[Tick]:
        ticks = self.market.advance(now)
        self.strategy.advance(now)
        self.exchange.advance(now)
        return ticks
