"""The running actor system: start-up from the store, feeds in, ordered stop.

``run.py``'s ``build_system`` chooses the adapters (store, cache, gateway, quote API, clock) and
hands them here; this module only wires actors together.

Start-up: load every open position in one query, spawn their trackers, bulk-load the index,
teach the order-update actor their orders, then subscribe to order updates.
Stop: feeds first, then every mailbox drained in pipeline order, marks checkpointed, the PnL cache
flushed, actors stopped, the dispatcher shut down.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pykka
from loguru import logger

from actors.orders.actor import OrderUpdateActor
from actors.pnl.writer import PnLWriterActor
from actors.prices.batcher import LTPBatcherActor, tick_feed
from actors.prices.index import BulkLoad, IndexActor, OpenPositions
from actors.protocol import Checkpoint, Flush, NextDeadline, Snapshot
from actors.runtime.dispatch import Dispatcher
from actors.runtime.metrics import Metrics
from actors.runtime.timers import Schedule, Ticker, fire
from actors.supervisor.actor import RiskSupervisor, Supervision
from actors.tracing.recorder import tracer
from actors.tracker.actor import Peers
from actors.tracker.keeper import KeeperContext
from broker.ports import OrderGateway, QuoteApi
from models.books import BooksReport
from models.common import IST, Instrument
from models.messages import OrderUpdateReceived, new_id
from models.policy import RiskConfig
from models.position import Position, PositionStatus
from models.rules import PriceMark
from store.ports import PnLCache, Store

ASK = 10.0
"""Seconds an edge waits for an actor's answer."""
SETTLE = 300.0
"""Seconds ``settle`` waits for each actor: it waits *behind* everything queued, which under
a backlog can be far more than an ordinary answer."""


@dataclass
class Parts:
    """The concrete adapters, chosen by the composition root."""

    store: Store
    cache: PnLCache
    gateway: OrderGateway
    quotes: QuoteApi | None
    config: RiskConfig
    clock: Callable[[], datetime]
    metrics: Metrics = field(default_factory=Metrics)
    schedule: Schedule = field(default_factory=Schedule)
    supervision: Supervision = field(default_factory=Supervision)
    workers: int = 4
    reserve: int = 4
    """Dispatcher threads that run only urgent work (possible exits): see ``actors/pool.py``."""
    hold: float = 0.02
    """Seconds ordinary work may be held back while urgent work runs (0: never)."""
    correlation_prefix: str | None = None
    deadlines: bool = False
    """Replay on a simulated clock: trackers tell the supervisor their next deadlines (for
    ``next_deadline``), and ``settle`` waits for the trackers' dispatcher to go idle rather
    than asking each tracker."""
    cache_every: timedelta = timedelta(seconds=1)
    """How often the PnL cache is written (0: every flush); the kill switch is valued on every
    flush regardless."""
    switch_interval: float | None = None
    """Seconds a thread may hold the GIL while others wait (``sys.setswitchinterval``); None
    leaves CPython's 5 ms. Measured: 0.5 ms did not lower the price-to-decision latency here
    and cost a quarter of the order-update throughput."""


class System:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.dispatcher = Dispatcher(workers=parts.workers, name="trackers",
                                     reserve=parts.reserve, hold=parts.hold,
                                     count_idle=parts.deadlines)
        self.ticker: Ticker | None = None
        self._pings: list[Any] | None = None
        self.started_at: datetime | None = None
        self._stopped = False

    # Start ------------------------------------------------------------------------------------
    def start(self, *, ticker: bool = True,
              on_step: Callable[[datetime], None] | None = None) -> System:
        collecting = gc.isenabled()
        gc.disable()  # start-up makes few cycles but many objects: see below
        try:
            self._start(ticker=ticker, on_step=on_step)
        finally:
            if collecting:
                gc.enable()
        return self

    def _start(self, *, ticker: bool, on_step: Callable[[datetime], None] | None) -> None:
        p = self.parts
        if p.switch_interval is not None:
            sys.setswitchinterval(p.switch_interval)
        self.dispatcher.start()
        # Every tracker thread, the order-update actor and the supervisor may write at once.
        p.store.prepare(p.workers + p.reserve + 2)
        self.started_at = p.clock()
        active = tracer()
        if active is not None:  # what a trace's story needs to value a position
            active.lifecycle("system", "start", at=self.started_at.isoformat(),
                             fee_per_order=str(p.config.policy.fee_per_order))
        ctx = KeeperContext(store=p.store, config=p.config, clock=p.clock, metrics=p.metrics)
        stale = p.config.policy.stale_after_seconds
        self.batcher = LTPBatcherActor.start(None, p.quotes, p.clock, p.metrics,
                                             stale_after=timedelta(seconds=float(stale)))
        self._feed = tick_feed(self.batcher)
        self.index = IndexActor.start(self.batcher, refresh=timedelta(seconds=float(stale)) * 0.8,
                                      metrics=p.metrics,
                                      gate=self.dispatcher.yield_to_urgent)
        self.batcher.proxy().set_index(self.index).get(timeout=ASK)
        self.supervisor = RiskSupervisor.start(ctx, p.gateway, supervision=p.supervision,
                                               dispatcher=self.dispatcher)
        self.pnl = PnLWriterActor.start(p.cache, p.config.policy, p.metrics, p.clock,
                                        self.supervisor, cache_every=p.cache_every,
                                        gate=self.dispatcher.yield_to_urgent)
        self.index.proxy().set_pnl(self.pnl).get(timeout=ASK)
        self.orders = OrderUpdateActor.start(p.store, self.supervisor, p.clock, p.metrics,
                                             correlation_prefix=p.correlation_prefix,
                                             gate=self.dispatcher.yield_to_urgent)
        peers = Peers(supervisor=self.supervisor, index=self.index, pnl=self.pnl,
                      batcher=self.batcher, orders=self.orders, deadlines=p.deadlines)
        self.supervisor.proxy().wire(peers).get(timeout=ASK)
        self._load()
        # Everything alive now (code, adapters, the loaded book) is moved out of the cyclic
        # collector's sight: a full collection otherwise walks all of it and stops every thread
        # for a hundred milliseconds or more, mid-session. The cost: cyclic garbage among these
        # objects (a start-up tracker that stops) is not reclaimed; it is bounded by the book
        # loaded at start-up. The collector is off until then: the objects of a 10,000-position
        # start-up made it run full collections over the growing book several times (1 s of a
        # 3 s start). What start-up left as cyclic garbage is frozen with the rest rather than
        # collected first: a full collection to find it walked the whole book (0.26-0.31 s at
        # 10,000 positions) and found ~70 objects.
        gc.freeze()
        logger.debug("start-up: {} objects frozen", gc.get_freeze_count())
        p.gateway.subscribe(self.order_frame)
        if ticker:
            self.ticker = Ticker(p.clock, p.schedule, flush_to=[self.batcher],
                                 timer_to=[self.supervisor, self.orders],
                                 on_step=on_step).start()

    def _load(self) -> None:
        positions = self.parts.store.load_open_positions()
        routes = self.supervisor.proxy().start_positions(positions).get(timeout=60)
        self.index.tell(BulkLoad(routes=tuple(routes)))
        self.orders.proxy().load(positions).get(timeout=60)
        today = self.parts.clock().astimezone(IST).date()
        closed = [p for p in self.parts.store.list_positions(PositionStatus.EXITED)
                  if p.exited_at is not None and p.exited_at.astimezone(IST).date() == today]
        self.pnl.proxy().seed(positions, closed).get(timeout=60)
        logger.info("supervising {} open positions from the store", len(positions))

    # Feeds ------------------------------------------------------------------------------------
    def order_frame(self, raw: str) -> None:
        """A raw broker frame: the gateway's sink."""
        self.orders.tell(OrderUpdateReceived(raw=raw, correlation_id=new_id(),
                                             sent_at=self.parts.clock()))

    def tick(self, instrument: Instrument, ltp: Any, at: datetime) -> None:
        self._feed(instrument, PriceMark(ltp=ltp, at=at))

    def step(self, now: datetime, *, timer: bool) -> None:
        """Advance time by hand (replay): a flush and, when asked, a timer."""
        fire(now, flush_to=[self.batcher], timer_to=[self.supervisor, self.orders],
             timer=timer)

    def next_deadline(self) -> datetime | None:
        """The earliest instant at which a timer can change a decision (``DUE``: the next
        timer; None: none can). Needs ``Parts.deadlines``; ask it after ``settle``."""
        moment: datetime | None = self.supervisor.ask(NextDeadline(), block=True, timeout=SETTLE)
        return moment

    # Views ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = self.supervisor.ask(Snapshot(), block=True, timeout=ASK)
        snapshot["metrics"] = self.parts.metrics.snapshot()
        snapshot["max_price_age_s"] = self.batcher.proxy().price_age(self.parts.clock()).get(
            timeout=ASK)
        snapshot["books"] = self.books().line()
        return snapshot

    def books(self) -> BooksReport:
        """The broker's book against ours (SPEC §11.1), as the order-update actor sees them;
        meaningful once the system has settled."""
        report: BooksReport = self.orders.proxy().books().get(timeout=ASK)
        return report

    def open_positions(self) -> list[Position]:
        result: list[Position] = self.index.ask(OpenPositions(), block=True, timeout=ASK)
        return result

    def settle(self, rounds: int = 3) -> None:
        """Wait until what was told has been handled (FIFO mailboxes, pipeline order)."""
        if self.parts.deadlines:
            self._settle_on_idle(rounds)
            return
        for _ in range(rounds):
            self.orders.proxy().parked.get(timeout=SETTLE)
            self.batcher.proxy().pending.get(timeout=SETTLE)
            self.index.ask(OpenPositions(), timeout=SETTLE)
            self.supervisor.ask(Snapshot(), timeout=SETTLE)
            for gateway in self.supervisor.proxy().gateway_refs.get(timeout=SETTLE):
                gateway.ask(Snapshot(), timeout=SETTLE)
            for ref in self.supervisor.proxy().tracker_refs().get(timeout=SETTLE):
                try:
                    ref.ask(Snapshot(), timeout=SETTLE)
                except pykka.ActorDeadError:
                    continue
            self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=SETTLE)

    def _settle_on_idle(self, rounds: int) -> None:
        """``settle`` for a replay: each singleton in pipeline order (the exit gateways after the
        supervisor) answers a cheap question
        (an attribute, through a proxy made once) once it has handled what was queued before
        it, and the trackers are waited for all at once, until their dispatcher is idle."""
        if self._pings is None:
            gateways = self.supervisor.proxy().gateway_refs.get(timeout=SETTLE)
            self._pings = [ref.proxy() for ref in (self.orders, self.batcher, self.index,
                                                   self.supervisor, *gateways)]
        for _ in range(rounds):
            for proxy in self._pings:
                proxy.actor_urn.get(timeout=SETTLE)
            if not self.dispatcher.wait_idle(SETTLE):
                raise TimeoutError(f"trackers still busy after {SETTLE:g} s")
            self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=SETTLE)

    # Stop -------------------------------------------------------------------------------------
    def quiesce(self) -> None:
        """Stop the feeds and wait until every mailbox is empty and the cache is flushed."""
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        self.settle()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.quiesce()
        for ref in self.supervisor.proxy().tracker_refs().get(timeout=ASK):
            try:
                ref.ask(Checkpoint(), timeout=ASK)
            except pykka.ActorDeadError:
                continue
        self.supervisor.proxy().checkpoint_quarantined().get(timeout=ASK)
        self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=ASK)
        pykka.ActorRegistry.stop_all(block=True, timeout=ASK)
        self.dispatcher.shutdown()
        logger.info("stopped: mailboxes drained, state flushed")
