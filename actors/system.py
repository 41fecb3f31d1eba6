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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pykka
from loguru import logger

from actors.orders.actor import OrderUpdateActor, StoreFrame
from actors.pnl.writer import PnLWriterActor
from actors.prices.batcher import LTPBatcherActor, tick_feed
from actors.prices.edges import PriceEdges
from actors.prices.index import BulkLoad, IndexActor, MarkedPositions, OpenPositions
from actors.protocol import (
    Checkpoint,
    Durable,
    Flush,
    Halt,
    NextDeadline,
    Operator,
    OperatorOutcome,
    ResetKillSwitch,
    Resume,
    Snapshot,
)
from actors.runtime.collector import QuietCollector
from actors.runtime.dispatch import Dispatcher
from actors.runtime.inflight import InFlight, count_into, counting
from actors.runtime.metrics import Metrics
from actors.runtime.pykka_compat import inbox_of
from actors.runtime.timers import Schedule, Ticker, fire
from actors.supervisor.actor import RiskSupervisor, Supervision
from actors.tracing import recorder as tracing
from actors.tracing.recorder import tracer
from actors.tracing.story import narrate, position_story
from actors.tracing.views import Filters, Trace, messages
from actors.tracker.actor import Peers
from actors.tracker.intents import IntentWriterActor
from actors.tracker.keeper import KeeperContext
from actors.tracker.stops import StopWriterActor
from broker.ports import OrderGateway, QuoteApi
from models.accounts import DEFAULT_ACCOUNT, check_account
from models.books import BooksReport
from models.closed import split_closed
from models.common import IST, Instrument, exchange_day_start, next_day_start
from models.messages import Message, OrderUpdateReceived, PlaceExitOrder, RequestExit, new_id
from models.orders import OrderUpdate
from models.policy import ExitPolicy, RiskConfig
from models.position import CLOSED, ExitReason, Position, PositionStatus
from models.rules import PriceMark, freshness_limit, update_marks
from store.ports import PnLCache, Store

ASK = 10.0
"""Seconds an edge waits for an actor's answer."""
SETTLE = 300.0
"""Seconds ``settle`` waits for each actor: it waits *behind* everything queued, which under
a backlog can be far more than an ordinary answer."""


QUIET_FOR = 0.2
"""Seconds without urgent work before a quiet full collection may run (``QuietCollector``)."""


@dataclass
class Parts:
    """The concrete adapters of one account, chosen by the composition root: a ``System``
    serves one account (its store, cache, gateway and limits are that account's), and several
    Systems may run side by side in one process, each with its own."""

    store: Store
    cache: PnLCache
    gateway: OrderGateway
    quotes: QuoteApi | None
    config: RiskConfig
    clock: Callable[[], datetime]
    account: str = DEFAULT_ACCOUNT
    """The account served: the store's (checked when the parts are made)."""
    metrics: Metrics = field(default_factory=Metrics)
    schedule: Schedule = field(default_factory=Schedule)
    supervision: Supervision = field(default_factory=Supervision)
    workers: int = 4
    gateways: int | None = None
    """Gateway actors placing exits (None: the supervisor's default, ``GATEWAYS``)."""
    reserve: int = 4
    """Dispatcher threads that run only urgent work (possible exits): see ``actors/pool.py``."""
    hold: float = 0.02
    """Seconds ordinary work may be held back while urgent work runs (0: never)."""
    launch: Callable[[list[PlaceExitOrder]], object] | None = None
    """The intent writer hands each wave's exit orders to this together, right after their
    intents are committed (the live session's ``DhanGateway.launch_exits``); None: each
    gateway actor sends its own."""
    correlation_prefix: str | None = None
    deadlines: bool = False
    """Event-driven replay: trackers tell the supervisor their next deadlines (for
    ``next_deadline``); implies ``settle_on_idle``."""
    settle_on_idle: bool = False
    """Replay on a simulated clock (stepped too): ``settle`` waits for the trackers' dispatcher
    to go idle rather than asking each tracker (asking them, a stepped replay of a whole day
    took over 15 min; waiting for idle, under 2.5 min)."""
    cache_every: timedelta = timedelta(seconds=1)
    """How often the PnL cache is written (0: every flush); the kill switch is valued on every
    flush regardless."""
    gateway_status: Callable[[], dict[str, Any]] | None = None
    """The broker gateway's state for the console: ``kind``, ``state`` (``UP`` or a reason,
    e.g. ``TOKEN_INVALID``), ``token_expires_at`` (aware datetime or None); None: the
    gateway needs no token and is always up (paper, replay)."""
    urgent_prices: bool = False
    """A tick beyond an exit edge flushes its batch at once rather than at the next
    ``Schedule.flush_every`` (``actors/prices/edges.py``): live and paper sessions. Off where
    batches must be the clock's alone (replays, stepped benchmarks)."""
    connections_ahead: bool = True
    """Open the store's connections for every writer at the start (beside it, not before);
    False: as writes need them (a runner serving many accounts on one server: ten per account
    ahead would run PostgreSQL out of connections, ``max_connections`` being 100 by default)."""
    mark_every: float | None = 30.0
    """Seconds between marks of how far the stored frames are applied while the system runs
    with its ticker (``System.mark_frames``: a start then reads only the frames after the
    mark); None: at the orderly stop only."""
    quiet_collections: float | None = None
    """Seconds between the cyclic collector's full passes, each made at a moment when no
    urgent work has run for ``QUIET_FOR`` (``actors/runtime/collector.py``); None: CPython's
    own, after bursts of allocation such as a wave of exits. The thresholds are the process's:
    for a process that runs one system (the live session)."""
    switch_interval: float | None = None
    """Seconds a thread may hold the GIL while others wait (``sys.setswitchinterval``); None
    leaves CPython's 5 ms. Measured: 0.5 ms did not lower the price-to-decision latency here
    and cost a quarter of the order-update throughput."""

    def __post_init__(self) -> None:
        check_account(self.account)
        if self.store.account != self.account:  # another account's rows: a wiring bug
            raise ValueError(f"the store serves account {self.store.account!r}, the system "
                             f"{self.account!r}")


@dataclass(frozen=True, slots=True)
class PositionView:
    """An open position as the operator console shows it: peak, high-water mark and trailing
    stop as last marked, and its instrument's last price (``None``: not priced yet)."""

    position: Position
    mark: PriceMark | None
    unprotected: bool = False
    quarantined: bool = False
    peak_price: Decimal | None = None
    """As last marked by the position's tracker (the index's ``position`` moves only with
    orders); ``marked`` folds it in."""
    hwm_pnl: Decimal | None = None

    def marked(self, policy: ExitPolicy) -> Position:
        """The position with its last marks: peak, high-water mark and the never-loosening
        trailing stop that peak sets (``rules.update_marks``)."""
        if self.peak_price is None:
            return self.position
        position = update_marks(self.position, self.peak_price, policy)
        hwm = max(self.hwm_pnl or position.hwm_pnl, self.position.hwm_pnl)
        return position if hwm == position.hwm_pnl else position.model_copy(
            update={"hwm_pnl": hwm})


class System:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.dispatcher = Dispatcher(workers=parts.workers, name="trackers",
                                     reserve=parts.reserve, hold=parts.hold,
                                     count_idle=parts.deadlines or parts.settle_on_idle)
        self.ticker: Ticker | None = None
        self._pings: list[Any] | None = None
        """Proxies of the singletons ``settle`` waits for, in pipeline order (made once)."""
        self._stops_ping: Any = None
        self._intents_ping: list[Any] = []
        """The intent writer, then those it tells (the supervisor, the gateway actors)."""
        self._proxies: dict[str, Any] = {}
        """Each singleton's proxy by actor URN, made once (``_proxy``)."""
        self._quoter: pykka.ActorRef[Any] | None = None
        """The batcher's ``QuoteActor`` (None without a quote API)."""
        self.started_at: datetime | None = None
        self._stopped = False
        self.inflight = InFlight() if parts.deadlines or parts.settle_on_idle else None
        """A replay's count of the messages in flight (``settle``)."""
        self._idle_total = -1
        """``inflight.total`` when the last settle ended, idle."""
        self.startup: dict[str, float] = {}
        """Seconds each phase of the last start took (logged once it is over)."""
        self._lapped = 0.0
        self.recovered = 0
        """Stored frames the last start routed again (``OrderUpdateActor.recover``)."""
        self._marked = 0
        """The last mark of applied frames this system stored (``mark_frames``)."""
        self._marking = threading.Event()
        """Set at the stop: the thread marking applied frames ends."""
        self._marker: threading.Thread | None = None
        self.collector: QuietCollector | None = None
        """The cyclic collector's full passes at quiet moments (``Parts.quiet_collections``)."""

    @property
    def account(self) -> str:
        """The account this system serves (fixed for its life)."""
        return self.parts.account

    # Start ------------------------------------------------------------------------------------
    def start(self, *, ticker: bool = True,
              on_step: Callable[[datetime], None] | None = None) -> System:
        collecting = gc.isenabled()
        gc.disable()  # start-up makes few cycles but many objects: see below
        began = self._lapped = time.perf_counter()
        self.startup = {}
        try:
            self._start(ticker=ticker, on_step=on_step)
        finally:
            if collecting:
                gc.enable()
        if self.parts.quiet_collections is not None:
            self.collector = QuietCollector(
                lambda: self.dispatcher.calm_for(QUIET_FOR), every=self.parts.quiet_collections,
                patience=self.parts.quiet_collections, metrics=self.parts.metrics).start()
        logger.info("account {} started in {:.3f} s ({}; {} stored frames routed again)",
                    self.parts.account, time.perf_counter() - began,
                    ", ".join(f"{name} {took:.3f}" for name, took in self.startup.items()),
                    self.recovered)
        return self

    def _lap(self, name: str) -> None:
        """The phase of the start that ends now took the time since the last one ended
        (``startup``: a hand-over waits for all of them)."""
        now = time.perf_counter()
        self.startup[name] = now - self._lapped
        self._lapped = now

    def _start(self, *, ticker: bool, on_step: Callable[[datetime], None] | None) -> None:
        p = self.parts
        if self.inflight is not None:
            count_into(self.inflight)  # every inbox made from now on counts its messages
        if p.switch_interval is not None:
            sys.setswitchinterval(p.switch_interval)
        self.dispatcher.start()
        self._lap("dispatcher")
        if p.connections_ahead:
            self._prepare_store()
        self.started_at = p.clock()
        active = tracer()
        if active is not None:  # what a trace's story needs to value a position
            active.lifecycle("system", "start", at=self.started_at.isoformat(),
                             fee_per_order=str(p.config.policy.fee_per_order))
        ctx = KeeperContext(store=p.store, config=p.config, clock=p.clock, metrics=p.metrics)
        stale = freshness_limit(p.config.policy)
        self.edges = PriceEdges() if p.urgent_prices else None
        self.batcher = LTPBatcherActor.start(None, p.quotes, p.clock, p.metrics,
                                             stale_after=stale, edges=self.edges,
                                             ahead=self.dispatcher)
        self._feed = tick_feed(self.batcher)
        self._quoter = self._proxy(self.batcher).quoter.get(timeout=ASK)
        self.index = IndexActor.start(self.batcher, refresh=stale * 0.8,
                                      metrics=p.metrics,
                                      gate=self.dispatcher.yield_to_urgent, edges=self.edges,
                                      ahead=self.dispatcher)
        self._proxy(self.batcher).set_index(self.index).get(timeout=ASK)
        self.supervisor = RiskSupervisor.start(ctx, p.gateway, supervision=p.supervision,
                                               dispatcher=self.dispatcher, gateways=p.gateways)
        self.pnl = PnLWriterActor.start(p.cache, p.config.policy, p.metrics, p.clock,
                                        self.supervisor, cache_every=p.cache_every,
                                        gate=self.dispatcher.yield_to_urgent)
        self._proxy(self.index).set_pnl(self.pnl).get(timeout=ASK)
        self.orders = OrderUpdateActor.start(p.store, self.supervisor, p.clock, p.metrics,
                                             correlation_prefix=p.correlation_prefix,
                                             gate=self.dispatcher.yield_to_urgent)
        self.stops = StopWriterActor.start(p.store, p.metrics, p.clock)
        self.intents = IntentWriterActor.start(p.store, p.metrics, p.clock, self.supervisor,
                                               launch=p.launch,
                                               gather=self.dispatcher.wait_for_urgent)
        peers = Peers(supervisor=self.supervisor, index=self.index, pnl=self.pnl,
                      batcher=self.batcher, orders=self.orders, deadlines=p.deadlines,
                      stops=self.stops, intents=self.intents)
        self._proxy(self.supervisor).wire(peers).get(timeout=ASK)
        self._lap("actors")
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
        self._lap("freeze")
        p.gateway.subscribe(self.order_frame)
        # Exits in flight at the last stop resume only now: the frames of an order placed
        # before the gateway had a sink would be lost.
        self._proxy(self.supervisor).resume_exits().get(timeout=60)
        self._lap("resume")
        if ticker:
            self.ticker = Ticker(p.clock, p.schedule, flush_to=[self.batcher],
                                 timer_to=[self.supervisor, self.orders],
                                 on_step=on_step).start()
            if p.mark_every:
                self._marker = threading.Thread(target=self._mark_every, args=(p.mark_every,),
                                                name=f"frame-marks-{p.account}", daemon=True)
                self._marker.start()

    def _prepare_store(self) -> None:
        """Every tracker thread, the order-update actor and the supervisor may write at once:
        their connections are opened beside the start, not before it (opening ten took
        0.03-0.12 s of a runner's takeover, ``bench/takeover.py``); until they are, a write
        opens its own (``ConnectionPool.take``)."""
        store, count = self.parts.store, self.parts.workers + self.parts.reserve + 2

        def prepare() -> None:
            try:
                store.prepare(count)
            except Exception as error:  # opened on demand instead; the start goes on
                logger.warning("account {}: store connections not opened ahead: {}",
                               self.parts.account, type(error).__name__)

        threading.Thread(target=prepare, name=f"prepare-{self.parts.account}",
                         daemon=True).start()

    def _load(self) -> None:
        positions = self.parts.store.load_open_positions()
        self._lap("load")
        routes = self._proxy(self.supervisor).start_positions(positions).get(timeout=60)
        self.index.tell(BulkLoad(routes=tuple(routes)))
        self._lap("trackers")
        now = self.parts.clock()
        # The plain ones stored as their digests (``models.closed``): little to read and
        # little work each; the others whole.
        closed, digests = self.parts.store.closed_between(exchange_day_start(now),
                                                          next_day_start(now))
        self._lap("closed")
        closed, plain, tangled = split_closed(closed, positions, digests)
        closed += self._whole(tangled)
        self._lap("plain")
        # The orders of today's closed positions too: an update of one of them delivered
        # again after the restart (a reconnect, a reconcile) must find its owner, not open a
        # position of its own.
        known = sorted(closed + positions, key=lambda p: (p.created_at, p.position_id))
        self._proxy(self.orders).load(known, plain).get(timeout=60)
        self._proxy(self.pnl).seed(positions, closed, plain).get(timeout=60)
        self._lap("seed")
        # A frame stored but not routed when the last run died (a kill -9 between the two) is
        # routed now, before exits resume: it may have ended an exit in flight, which must not
        # be placed again.
        self.recovered = self._proxy(self.orders).recover(
            exchange_day_start(self.parts.clock())).get(timeout=120)
        self._lap("recover")
        logger.info("supervising {} open positions from the store", len(positions))

    # Applied frames ---------------------------------------------------------------------------
    def mark_frames(self) -> int | None:
        """Store how far the stored frames are applied (``Store.mark_frames``): the next start
        routes again only the frames after the mark (``OrderUpdateActor.recover``), not every
        frame of the day. Safe at any moment while the system runs; the mark is written only
        when, in this order:

        1. the order-update actor names the sequence number through which it has routed every
           stored frame (the day's stored frames were read at the start, nothing waits in
           memory for the store, no frame failed to route);
        2. the supervisor, asked after it (so it has forwarded what those frames told it), holds
           nothing unstored (a keeper of its own in a store outage, messages waiting for a
           tracker's restart, a failed tracker) and names its live trackers;
        3. each of them, asked after what was forwarded to it, has stored all it applied.

        So every change a frame up to the mark made is in the store by then: a frame is never
        passed over unapplied. The mark written, or None when it was not (not ready, or
        nothing new since the last)."""
        through: int | None = self._proxy(self.orders).frames_routed().get(timeout=ASK)
        if through is None or through <= self._marked:
            return None
        trackers: list[pykka.ActorRef[Any]] | None = self.supervisor.ask(
            Durable(), block=True, timeout=ASK)
        if trackers is None:
            return None
        for ref in trackers:
            try:
                if not ref.ask(Durable(), block=True, timeout=ASK):
                    return None
            except pykka.ActorDeadError:  # failed meanwhile: not known to be stored
                return None
        self.parts.store.mark_frames(through)
        self._marked = through
        return through

    def _mark_quietly(self, *, at_stop: bool = False) -> None:
        try:
            marked = self.mark_frames()
        except Exception as error:  # a mark is a shortcut for the next start, never needed
            logger.warning("account {}: applied frames not marked ({}): the next start reads "
                           "more of the day's frames", self.parts.account,
                           type(error).__name__)
            return
        if marked is not None:
            (logger.info if at_stop else logger.debug)(
                "account {}: stored frames applied through #{}", self.parts.account, marked)

    def _mark_every(self, seconds: float) -> None:
        while not self._marking.wait(seconds):
            self._mark_quietly()

    def _end_marker(self, wait: float = ASK) -> None:
        """End the marking thread; ``wait``: how long a mark under way may take to finish."""
        self._marking.set()
        if self._marker is not None:
            self._marker.join(timeout=wait)
            self._marker = None

    # Feeds ------------------------------------------------------------------------------------
    def order_frame(self, raw: str) -> None:
        """A raw broker frame: the gateway's sink. A frame sent while an actor's handler calls
        the broker (the paper exchange answers a placement at once) is a consequence of the
        message being handled; any other is an outside event."""
        cause = tracing.handling()
        ids = cause.caused() if isinstance(cause, Message) else {"correlation_id": new_id()}
        self.orders.tell(OrderUpdateReceived(raw=raw, sent_at=self.parts.clock(), **ids))

    def store_frames(self, raws: Sequence[str], timeout: float = ASK) -> bool:
        """Raw broker frames from a runner's transport (SPEC §13), in order: handled now, and
        True once they are all stored durably (in one write), so that the transport may forget
        them (a new owner routes the stored frames again at its start); False when they are
        not (ack nothing: they come again, and the order-update actor ignores an update it
        has seen)."""
        at = self.parts.clock()
        frames = tuple(OrderUpdateReceived(raw=raw, sent_at=at, correlation_id=new_id(),
                                           source="transport") for raw in raws)
        stored: bool = self.orders.ask(StoreFrame(frames), block=True, timeout=timeout)
        return stored

    def tick(self, instrument: Instrument, ltp: Any, at: datetime) -> None:
        self._feed(instrument, PriceMark(ltp=ltp, at=at))

    def ticks(self, ticks: Iterable[tuple[Instrument, Any, datetime]]) -> None:
        """Several ticks at once, in order (a feed's burst): prices beyond an exit edge among
        them reach the index together, in one urgent batch."""
        self._feed.many((instrument, PriceMark(ltp=ltp, at=at)) for instrument, ltp, at in ticks)

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
        snapshot["account"] = self.parts.account
        snapshot["metrics"] = self.parts.metrics.snapshot()
        snapshot["alarms"] = self.parts.metrics.alarms()
        snapshot["max_price_age_s"] = self._proxy(self.batcher).price_age(self.parts.clock()).get(
            timeout=ASK)
        snapshot["books"] = self.books().line()
        return snapshot

    def news(self, updates: list[OrderUpdate]) -> list[bool]:
        """For each update, whether handing it in could change anything here
        (``OrderUpdateActor.news``): a reconcile gives only those, so a takeover's read of a
        day's order book costs what changed, not the day."""
        answer: list[bool] = self._proxy(self.orders).news(updates).get(timeout=ASK)
        return answer

    def _proxy(self, ref: pykka.ActorRef[Any]) -> Any:
        """``ref``'s proxy, made once per actor: making one introspects every attribute of
        the actor, which holds the interpreter for milliseconds (the order-update actor's,
        made each second for the status line, stalled the live session's exit path by ~7 ms
        a second, measured). A proxy stays valid for its actor's life; two threads that
        race here only make one twice."""
        proxy = self._proxies.get(ref.actor_urn)
        if proxy is None:
            proxy = self._proxies[ref.actor_urn] = ref.proxy()
        return proxy

    def books(self) -> BooksReport:
        """The broker's book against ours (SPEC §11.1), as the order-update actor sees them;
        meaningful once the system has settled."""
        report: BooksReport = self._proxy(self.orders).books().get(timeout=ASK)
        return report

    def open_positions(self) -> list[Position]:
        result: list[Position] = self.index.ask(OpenPositions(), block=True, timeout=ASK)
        return result

    # Operator console (SPEC §12): asked from the HTTP server's thread, always with a timeout --
    def positions(self, status: dict[str, Any] | None = None) -> Iterator[PositionView]:
        """Every open position with its last price and marks (``status``: a ``status()`` the
        caller already has, for the UNPROTECTED and quarantined flags). The actors are asked
        at once; each view is made as it is taken, so a caller that takes one at a time holds
        one at a time (the console on a big book: few objects for the cyclic collector)."""
        status = self.status() if status is None else status
        found: tuple[list[Position], dict[Instrument, PriceMark]] = self.index.ask(
            MarkedPositions(), block=True, timeout=ASK)
        peaks, hwms = self._proxy(self.pnl).peaks().get(timeout=ASK)
        unprotected, quarantined = set(status["unprotected"]), set(status["quarantined"])
        positions, by_instrument = found
        marks = {(i.segment, i.security_id): mark for i, mark in by_instrument.items()}
        return (PositionView(position=p, mark=marks.get((p.segment, p.security_id)),
                             peak_price=peaks.get(p.position_id), hwm_pnl=hwms.get(p.position_id),
                             unprotected=p.position_id in unprotected,
                             quarantined=p.position_id in quarantined) for p in positions)

    def request_exit(self, position_id: str, operator: Operator) -> bool:
        """Close one open position (``MANUAL``); False when no open position has that id."""
        known = {p.position_id: p for p in self.open_positions()}
        position = known.get(position_id)
        if position is None or position.status in CLOSED:
            return False
        self.supervisor.tell(RequestExit(
            reason=ExitReason.MANUAL, position_id=position_id, correlation_id=new_id(),
            sent_at=self.parts.clock(), detail=f"operator {operator.name} ({operator.address})"))
        return True

    def flatten(self, operator: Operator) -> int:
        """Close every open position (``MANUAL``); returns how many were open."""
        count = len(self.open_positions())
        self.supervisor.tell(RequestExit(
            reason=ExitReason.MANUAL, correlation_id=new_id(), sent_at=self.parts.clock(),
            detail=f"flatten by operator {operator.name} ({operator.address})"))
        return count

    def halt(self, operator: Operator) -> OperatorOutcome:
        return self._operator(Halt(operator, new_id(), new_id()))

    def resume(self, operator: Operator) -> OperatorOutcome:
        return self._operator(Resume(operator, new_id(), new_id()))

    def reset_kill_switch(self, operator: Operator) -> OperatorOutcome:
        return self._operator(ResetKillSwitch(operator, new_id(), new_id()))

    def _operator(self, command: Halt | Resume | ResetKillSwitch) -> OperatorOutcome:
        outcome: OperatorOutcome = self.supervisor.ask(command, block=True, timeout=ASK)
        return outcome

    def story(self, position_id: str) -> dict[str, Any] | None:
        """One position's story (SPEC §8): its trace records still in the flight recorders,
        told as ``run.py trace --position`` tells them, and its stored fills and exit
        attempts. None when the store does not know the position."""
        store = self.parts.store
        position = store.load_position(position_id)
        if position is None:
            return None
        active = tracing.tracer()
        records = []
        if active is not None:
            for actor in list(active.rings):
                if actor.startswith(f"tracker:{position_id}#") or actor == "supervisor":
                    records += [r for r in active.dump(actor)
                                if r.get("position_id") == position_id]
        told = narrate(position_story(records, position_id))
        return {"position": position,
                "trace": [*told, "", "messages:",
                          *messages(Trace(records), Filters(position=position_id))],
                "fills": store.fills(position_id),
                "exit_attempts": store.exit_attempts(position_id)}

    def _whole(self, position_ids: list[str]) -> list[Position]:
        """Closed positions stored plain whose orders another position holds too
        (``models.closed.entangled``): read whole, the start reasons about them whole."""
        found = [self.parts.store.load_position(pid) for pid in position_ids]
        return [p for p in found if p is not None]

    def closed_today(self) -> list[Position]:
        """Positions exited during the current exchange day, from the store."""
        now = self.parts.clock()
        today = now.astimezone(IST).date()
        return [p for p in self.parts.store.list_positions(
                    PositionStatus.EXITED, exited_since=exchange_day_start(now))
                if p.exited_at is not None and p.exited_at.astimezone(IST).date() == today]

    def mailbox_depths(self) -> dict[str, int]:
        """Messages waiting per singleton actor, and in all tracker mailboxes together."""
        depths = {name: _depth(ref) for name, ref in (
            ("orders", self.orders), ("batcher", self.batcher), ("index", self.index),
            ("pnl", self.pnl), ("supervisor", self.supervisor), ("stops", self.stops),
            ("intents", self.intents))}
        refs = self._proxy(self.supervisor).tracker_refs().get(timeout=ASK)
        depths["trackers"] = sum(_depth(ref) for ref in refs)
        return depths

    def gateway_status(self) -> dict[str, Any]:
        if self.parts.gateway_status is not None:
            return self.parts.gateway_status()
        return {"kind": type(self.parts.gateway).__name__, "state": "UP",
                "token_expires_at": None}

    def yield_to_urgent(self) -> None:
        """For work beside the actors (the console): wait while possible exits are being
        decided on the trackers' dispatcher (bounded by its ``hold``)."""
        self.dispatcher.yield_to_urgent()

    def store_reachable(self) -> bool:
        try:
            self.parts.store.schema_version()
        except Exception as error:  # any failure of the store is "not ready", never a crash
            logger.warning("readiness: store unreachable: {}", type(error).__name__)
            return False
        return True

    def settle(self, rounds: int = 3) -> None:
        """Wait until what was told has been handled (FIFO mailboxes, pipeline order): each
        singleton, in pipeline order, answers a cheap question (an attribute, through a proxy
        made once: making a proxy introspects the actor) once it has handled what was queued
        before it, then each live tracker, the intent writer and those it tells (the
        supervisor, the gateway actors), the stop writer and the PnL writer."""
        if self.parts.deadlines or self.parts.settle_on_idle:
            self._settle_on_idle(rounds)
            return
        pings = self._singleton_pings()
        for _ in range(rounds):
            for proxy in pings:
                proxy.actor_urn.get(timeout=SETTLE)
            self._ask_trackers()
            for proxy in self._intents_ping:  # the exits trackers decided: stored and placed
                try:
                    proxy.actor_urn.get(timeout=SETTLE)
                except pykka.ActorDeadError:  # a stopped writer: the trackers store their own
                    continue
            self._stops_ping.actor_urn.get(timeout=SETTLE)  # the stops trackers sent: stored
            self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=SETTLE)

    def settle_books(self) -> None:
        """Wait until what was told has reached the open positions (``open_positions``): the
        order-update actor, then the supervisor (trackers started for positions it opened),
        then each tracker (what it changed told to the index before its answer). What a
        reconcile compares with the broker's positions needs no more. Unlike ``settle`` it
        waits for no gateway: a takeover resumes its exits at once, and those queued behind
        DhanHQ's order limit (10 a second) change no position until their fills come."""
        if self.parts.deadlines or self.parts.settle_on_idle:
            self.settle(rounds=1)
            return
        for ref in (self.orders, self.supervisor):
            self._proxy(ref).actor_urn.get(timeout=SETTLE)
        self._ask_trackers()

    def _ask_trackers(self) -> None:
        for ref in self._tracker_refs():
            try:
                ref.ask(Snapshot(), timeout=SETTLE)
            except pykka.ActorDeadError:
                continue

    def _singleton_pings(self) -> list[Any]:
        """Proxies of the singletons before the trackers, in pipeline order (made once)."""
        if self._pings is None:
            gateways = self._proxy(self.supervisor).gateway_refs.get(timeout=SETTLE)
            quoter = () if self._quoter is None else (self._quoter, self.batcher)
            self._pings = [self._proxy(ref) for ref in (self.orders, self.batcher, *quoter,
                                                   self.index, self.supervisor, *gateways)]
            self._stops_ping = self._proxy(self.stops)
            self._intents_ping = [self._proxy(ref) for ref in (self.intents, self.supervisor,
                                                          *gateways) if ref.is_alive()]
        return self._pings


    def _tracker_refs(self) -> list[pykka.ActorRef[Any]]:
        refs: list[pykka.ActorRef[Any]] = self._proxy(self.supervisor).tracker_refs().get(
            timeout=SETTLE)
        return refs

    def _settle_on_idle(self, rounds: int) -> None:
        """``settle`` for a replay: until no message is in flight anywhere (queued or being
        handled, ``actors.runtime.inflight``), then a complete PnL flush, ``rounds`` times,
        and until what the last flush told (the day's PnL to the supervisor) is handled. Once
        idle, a system that has been put no message since has nothing to settle."""
        inflight = self.inflight
        assert inflight is not None, "made for deadlines / settle_on_idle"
        if inflight.count <= 0 and inflight.total == self._idle_total:
            return  # not a message put since the last settle ended: nothing can have changed
        for _ in range(rounds):
            self._wait_idle(inflight)
            self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=SETTLE)
        self._wait_idle(inflight)
        self._idle_total = inflight.total

    @staticmethod
    def _wait_idle(inflight: InFlight) -> None:
        if not inflight.wait_idle(SETTLE):
            raise TimeoutError(f"{inflight.count} messages still in flight after {SETTLE:g} s")

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
        self._end_marker()
        self.quiesce()
        for ref in self._proxy(self.supervisor).tracker_refs().get(timeout=ASK):
            try:
                ref.ask(Checkpoint(), timeout=ASK)
            except pykka.ActorDeadError:
                continue
        self._proxy(self.supervisor).checkpoint_quarantined().get(timeout=ASK)
        self._mark_quietly(at_stop=True)
        self.pnl.ask(Flush(at=self.parts.clock(), complete=True), timeout=ASK)
        self._stop_actors()
        self.dispatcher.shutdown()
        if self.collector is not None:
            self.collector.stop()
        if self.inflight is not None and counting() is self.inflight:
            count_into(None)
        logger.info("stopped: mailboxes drained, state flushed")

    def abandon(self) -> None:
        """Stop at once, without the orderly stop's checkpoints and flushes: a runner whose
        partition lease is lost (SPEC §13). The store and the gateway refuse by then (the
        lease is revoked), so what the actors still handle before their stop writes and sends
        nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._end_marker(wait=0)  # a mark under way is refused by the store: the lease is lost
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        self._stop_actors()
        self.dispatcher.shutdown()
        if self.collector is not None:
            self.collector.stop()
        logger.info("account {}: stopped at once (its partition's lease is lost)",
                    self.parts.account)

    def _stop_actors(self) -> None:
        """Stop this system's actors only (another account's system in the same process goes
        on), newest first as pykka's ``stop_all`` would: the trackers, then the singletons in
        the reverse of their start (each stops the helpers it started: the supervisor its
        gateway actors, the PnL writer its cache writer, the batcher its quote actor)."""
        trackers = self._proxy(self.supervisor).tracker_refs().get(timeout=ASK)
        for ref in [*reversed(trackers), self.intents, self.stops, self.orders, self.pnl,
                    self.supervisor, self.index, self.batcher]:
            ref.stop(block=True, timeout=ASK)


def _depth(ref: pykka.ActorRef[Any]) -> int:
    inbox = inbox_of(ref)
    return int(inbox.qsize()) if inbox is not None else 0
