"""RiskSupervisor: supervision, exit execution, portfolio limits, trading state (SPEC §2).

It is the hub between order flow and trackers: it starts one ``TrackerActor`` per position,
forwards each position's messages to its current incarnation, restarts a failed tracker from the
store (the breaking message is dead-lettered, never replayed; the messages queued behind it, a
fill or an exit request among them, go to the next incarnation first), and after ``max_restarts`` in
``window`` quarantines the position: the supervisor then runs that position's ``PositionKeeper``
itself, so its exit rules keep being evaluated. Many failures at once open a breaker that pauses
restarts (the failed positions are kept protected the same way meanwhile).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.gateway.actor import GatewayActor, exit_order
from actors.protocol import (
    DUE,
    Checkpoint,
    ClearKillSwitch,
    DeadlineChanged,
    Durable,
    ExitAudit,
    Halt,
    NextDeadline,
    Operator,
    OperatorOutcome,
    PortfolioValued,
    ProtectionChanged,
    ResetKillSwitch,
    Resume,
    ResumeExit,
    Route,
    Snapshot,
    TrackerFailed,
    Undelivered,
)
from actors.runtime.dispatch import Dispatcher, SingletonActor, default_dispatcher
from actors.supervisor.audits import PendingAudits
from actors.tracing.recorder import tracer
from actors.tracker.actor import Peers, TrackerActor, deliver
from actors.tracker.keeper import KeeperContext, PositionKeeper, Target
from broker.ports import OrderGateway
from models.common import IST, Instrument
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    CancelExitOrder,
    CreatePosition,
    ExitOrderChased,
    ExitOrderFailed,
    ExitOrderLookedUp,
    ExitOrderPlaced,
    ExitOrderUnknown,
    ExitRequested,
    ExitSettled,
    LookUpExitOrder,
    Message,
    PlaceExitOrder,
    PositionChanged,
    PositionClosed,
    PositionOpened,
    PriceUpdate,
    RequestExit,
    TimerFired,
    new_id,
)
from models.position import CLOSED, ExitReason, Position, PositionStatus
from models.rules import kill_switch_breached
from store.ports import LeaseLost, StoreError
from store.records import DeadLetter, KillSwitch


@dataclass
class Supervision:
    max_restarts: int = 3
    window: timedelta = timedelta(seconds=60)
    mass_failures: int = 20
    mass_window: timedelta = timedelta(seconds=10)
    pause: timedelta = timedelta(seconds=5)
    backoff: timedelta = timedelta(seconds=1)
    """Wait before the second restart in ``window``, doubling with each failure after it (the
    first restart is at once); meanwhile the supervisor keeps the position itself."""
    backoff_cap: timedelta = timedelta(seconds=30)

    def restart_delay(self, failures: int) -> timedelta:
        """How long a position waits for its restart after ``failures`` in the window."""
        if failures <= 1:
            return timedelta(0)
        delay: timedelta = min(self.backoff_cap, self.backoff * 2 ** (failures - 2))
        return delay


@dataclass
class _Child:
    position_id: str
    instrument: Instrument
    ref: ActorRef[Any] | None
    incarnation: int = 0
    failures: deque[datetime] = field(default_factory=deque)
    keeper: PositionKeeper | None = None
    """Set while the supervisor itself owns the position (quarantine or paused restarts)."""
    quarantined: bool = False
    pending: list[Message] = field(default_factory=list)
    """Messages that reached a crashed tracker before its restart: delivered to the next one."""
    restart_at: datetime | None = None
    """When the supervisor hands a position it keeps during a restart's back-off to a new
    tracker."""


_RETRIED_KEPT = 10_000
"""Order updates remembered as handed on after a crash (the oldest forgotten first)."""


class RiskSupervisor(SingletonActor):
    trace_kind = "supervisor"

    def __init__(self, context: KeeperContext, gateway: OrderGateway, *,
                 supervision: Supervision | None = None,
                 dispatcher: Dispatcher | None = None, gateways: int | None = None) -> None:
        super().__init__()
        self.gateways = self.GATEWAYS if gateways is None else max(1, gateways)
        self.dispatcher = dispatcher or default_dispatcher()
        self.ctx, self.gateway = context, gateway
        self.rules = supervision or Supervision()
        self.children: dict[str, _Child] = {}
        self._gateway_of: dict[str, ActorRef[Any]] = {}
        self._gateway_turn = itertools.count()
        self.gateway_refs: list[ActorRef[Any]] = []
        """The ``GatewayActor``s this supervisor's exits go through (its children)."""
        self.peers: Peers | None = None
        self.halted = False
        self.operator_halt: Operator | None = None
        """Set by an operator's ``Halt`` (``halted`` is the kill switch's latch)."""
        self.failures: deque[datetime] = deque()
        self.paused_until: datetime | None = None
        self.exits: Counter[str] = Counter()
        self.status: dict[str, str] = {}
        self.day_net: Decimal | None = None
        self.unprotected: set[str] = set()
        self.rearm_below: tuple[date, Decimal] | None = None
        """After an operator's reset: the day's net that trips the kill switch again."""
        self._latch: KillSwitch | None = None
        """A latch the store has not taken yet."""
        self._orphans: list[tuple[str, Message]] = []
        """Messages for a position the store could not be asked about (it was failing): tried
        again at each timer, never dropped."""
        self._kept: dict[str, _Child] = {}
        """The children whose keeper the supervisor runs itself (quarantined, or adopted while
        restarts are paused)."""
        self.deadlines: dict[str, datetime | None] = {}
        """Each tracker's next deadline, as it told (``DeadlineChanged``, replay only)."""
        self._retried: OrderedDict[str, None] = OrderedDict()
        """Order updates that broke a tracker once and were handed to its next owner (by
        message id): one that breaks again is poison (``_handed_on``)."""
        self.audits = PendingAudits(context.store, context.clock)
        """Exit attempts' audit columns the store did not take, written at the timers."""

    GATEWAYS = 4
    """Gateway actors by default: a slow broker call holds up only the positions routed to its
    actor (a position's calls all go to one, in order). A live session has more
    (``Parts.gateways``): each DhanHQ call blocks its actor for a round trip, and a wave of
    exits goes out in parallel up to the order limiter's 10/s."""

    def on_start(self) -> None:
        self.gateway_refs = [GatewayActor.start(self.gateway, self.ctx.clock, self.ctx.metrics,
                                                self.actor_ref) for _ in range(self.gateways)]

    def on_stop(self) -> None:
        for ref in self.gateway_refs:
            ref.stop()
        self.audits.close()

    def wire(self, peers: Peers) -> None:
        """Set the peers (supervisor = this actor) before the first message."""
        self.peers = peers

    # Start-up ---------------------------------------------------------------------------------
    def start_positions(self, positions: list[Position]) -> list[tuple[Position, ActorRef[Any]]]:
        """Spawn a tracker per open position; returns the routes for the index's bulk load.
        Exits in flight wait for ``resume_exits``."""
        latch = self.ctx.store.kill_switch()
        now = self.ctx.clock()
        if latch is not None and self.ctx.config.portfolio.latch_in_force(latch.latched_at, now):
            self.halted = True
            logger.error("kill switch latched at {} ({}): trading HALTED", latch.latched_at,
                         latch.reason)
        elif latch is not None:
            logger.warning("kill switch latched at {} ({}), an earlier exchange day: it does not "
                           "carry over (portfolio.kill_switch_carries = false)",
                           latch.latched_at, latch.reason)
        routes = []
        for position in positions:
            child = self._spawn(position)
            assert child.ref is not None
            routes.append((position, child.ref))
            self.status[position.position_id] = position.status
        return routes

    def resume_exits(self) -> int:
        """Have every EXITING position resume its exit attempt (start-up, once the frames
        stored before the stop are applied again: one of them may have ended the attempt);
        how many were told. A tracker no longer EXITING by then ignores it."""
        told = 0
        for position_id, status in self.status.items():
            child = self.children.get(position_id)
            if status is not PositionStatus.EXITING or child is None:
                continue
            if child.keeper is not None:
                self._deliver(child.keeper.handle(ResumeExit()))
            elif child.ref is not None:
                try:
                    child.ref.tell(ResumeExit())
                except ActorDeadError:  # crashed already: its restart reports to _failed
                    continue
            told += 1
        return told

    def _spawn(self, position: Position, incarnation: int = 0, *,
               unstored: bool = False) -> _Child:
        assert self.peers is not None
        ref = TrackerActor.start_on(self.dispatcher, position, self.ctx, self.peers,
                                    incarnation=incarnation, halted=self.halted,
                                    unstored=unstored,
                                    gateway=self._gateway_for(position.position_id))
        instrument = Instrument(segment=position.segment, security_id=position.security_id)
        child = self.children.get(position.position_id)
        if child is None:
            child = _Child(position.position_id, instrument, ref, incarnation)
            self.children[position.position_id] = child
        child.ref, child.incarnation, child.keeper = ref, incarnation, None
        child.restart_at = None
        self._kept.pop(position.position_id, None)
        _lifecycle(f"tracker:{position.position_id}#{incarnation}",
                   "restart" if incarnation else "spawn", position_id=position.position_id)
        return child

    # Messages ---------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except LeaseLost as error:  # the partition goes to its next owner: nothing written
            logger.warning("supervisor: {} not handled: {}", type(message).__name__, error)
            return None
        except Exception as error:  # the supervisor must outlive any single bad message
            logger.opt(exception=error).error("supervisor failed on {}", type(message).__name__)
            self._dead_letter("supervisor", message, f"{type(error).__name__}: {error}")
            return None

    def _dispatch(self, message: Any) -> Any:
        match message:
            case ApplyOrderUpdate() | ApplyProgress() | ExitOrderPlaced() | ExitOrderFailed() \
                    | ExitOrderUnknown() | ExitOrderLookedUp():
                self._forward(message.position_id, message)
            case LookUpExitOrder() | CancelExitOrder():
                self._to_gateway(message)
            case CreatePosition():
                self._create(message)
            case PriceUpdate():
                self._quarantined_price(message)
            case ExitRequested():
                if not message.placed:  # else its tracker told the gateway actor itself
                    self._place_exit(message)
            case RequestExit():
                self._request_exit(message)
            case TrackerFailed():
                self._failed(message)
            case Undelivered():
                self._redeliver(message.position_id, message.messages)
            case PositionOpened() | PositionChanged() | PositionClosed():
                self._position_event(message)
            case ProtectionChanged():
                if message.unprotected:
                    self.unprotected.add(message.position_id)
                else:
                    self.unprotected.discard(message.position_id)
            case PortfolioValued():
                self._portfolio(message)
            case TimerFired():
                self._timer(message)
                for ref in self.gateway_refs:  # they chase resting exit orders
                    ref.tell(message)
            case ExitOrderChased():
                logger.bind(position_id=message.position_id).info(
                    "exit order {} re-priced to {} (modification {})", message.order_no,
                    message.price, message.modification)
            case Snapshot():
                return self.snapshot()
            case Durable():
                return self._durable()
            case Halt() | Resume() | ResetKillSwitch():
                return self._operator(message)
            case DeadlineChanged():
                self.deadlines[message.position_id] = message.at
            case ExitAudit():
                self.audits.add(message)
            case NextDeadline():
                return self.next_deadline()
            case _:
                logger.warning("supervisor ignores {}", type(message).__name__)
        return None

    def _forward(self, position_id: str, message: Message) -> None:
        child = self.children.get(position_id)
        if child is None:
            try:
                stored = self.ctx.store.load_position(position_id)
            except StoreError as error:
                self._orphans.append((position_id, message))
                logger.bind(position_id=position_id).error(
                    "cannot look up {} for a {} ({}); kept, tried again each second",
                    position_id, type(message).__name__, error)
                return
            if stored is None:
                self._dead_letter("supervisor", message, f"unknown position {position_id}")
                return
            child = self._spawn(stored)
            self._route(child)
        self._send(child, message)

    def _send(self, child: _Child, message: Message) -> None:
        if child.keeper is not None:
            self._deliver(child.keeper.handle(message))
            return
        if child.ref is None:
            child.pending.append(message)
            return
        try:
            child.ref.tell(message)
        except ActorDeadError:
            child.pending.append(message)  # never lost: replayed to the next incarnation

    def _flush_pending(self, child: _Child) -> None:
        pending, child.pending = child.pending, []
        for message in pending:
            self._send(child, message)

    def _create(self, message: CreatePosition) -> None:
        position = message.position
        if position.position_id in self.children:
            return
        child = self._spawn(position)
        self._route(child)
        self.status[position.position_id] = position.status

    def _route(self, child: _Child) -> None:
        assert self.peers is not None
        ref = self.actor_ref if child.keeper is not None else child.ref
        assert ref is not None
        self.peers.index.tell(Route(child.position_id, child.instrument, ref))

    def _deliver(self, out: list[tuple[Target, object]]) -> None:
        assert self.peers is not None
        for target, message in out:
            if target is Target.SUPERVISOR:
                self._dispatch(message)
            else:
                deliver(self.peers, [(target, message)])

    def _quarantined_price(self, message: PriceUpdate) -> None:
        for child in list(self._kept.values()):  # the few the supervisor keeps, not them all
            if child.keeper is not None and child.instrument == message.instrument:
                self._deliver(child.keeper.handle(message))

    # Exits ------------------------------------------------------------------------------------
    def _place_exit(self, message: ExitRequested) -> None:
        """An exit of a position the supervisor keeps (its trackers tell their gateway actor
        themselves). The gateway actor places it and answers with a message: the supervisor
        never waits on the broker."""
        self._to_gateway(exit_order(message, self.ctx.clock()))
        _let_gateway_run()

    def _to_gateway(self, message: LookUpExitOrder | CancelExitOrder | PlaceExitOrder) -> None:
        self._gateway_for(message.position_id).tell(message)

    def _gateway_for(self, position_id: str) -> ActorRef[Any]:
        """A position's calls go to one gateway actor, in order, whoever sends them (each of
        its trackers is given it, and the supervisor uses it for the positions it keeps);
        positions take the actors in turn, so a slow call holds up as few others as possible."""
        ref = self._gateway_of.get(position_id)
        if ref is None:
            refs = self.gateway_refs
            ref = self._gateway_of[position_id] = refs[next(self._gateway_turn) % len(refs)]
        return ref

    def _request_exit(self, message: RequestExit) -> None:
        if message.position_id is not None:
            self._forward(message.position_id, message)
            return
        for position_id, child in self.children.items():
            if self.status.get(position_id) not in CLOSED:
                self._forward(child.position_id, message)

    def _portfolio(self, message: PortfolioValued) -> None:
        self.day_net = message.net
        rearm = self.rearm_below
        if rearm is not None and rearm[0] != message.at.astimezone(IST).date():
            self.rearm_below = rearm = None  # a new exchange day: the limit alone again
        if self.halted or not kill_switch_breached(message.net, self.ctx.config.portfolio) or (
                rearm is not None and message.net > rearm[1]):
            return
        self.halted = True
        self._latch = KillSwitch(latched_at=message.at, reason="daily loss limit breached",
                                 day_pnl=message.net)
        self._store_latch()
        logger.error("KILL SWITCH: day net {} <= -{}; trading HALTED, exiting everything",
                     message.net, self.ctx.config.portfolio.daily_loss_limit)
        self._request_exit(RequestExit(reason=ExitReason.KILL_SWITCH, correlation_id=new_id(),
                                       sent_at=message.at, detail="daily loss limit"))

    def _position_event(self, message: PositionOpened | PositionChanged | PositionClosed) -> None:
        position = message.position
        before = self.status.get(position.position_id)
        self.status[position.position_id] = position.status
        if isinstance(message, PositionClosed):
            self.unprotected.discard(position.position_id)
            gateway = self._gateway_of.pop(position.position_id, None)
            if gateway is not None:
                gateway.tell(ExitSettled(position_id=position.position_id,
                                         sent_at=self.ctx.clock(), **message.caused()))
            if before not in CLOSED and position.exit_reason:
                self.exits[position.exit_reason] += 1
        elif before == PositionStatus.EXITING and position.status != PositionStatus.EXITING:
            gateway = self._gateway_of.get(position.position_id)
            if gateway is not None:  # the exit failed or was cancelled: a new attempt follows
                gateway.tell(ExitSettled(position_id=position.position_id,
                                         sent_at=self.ctx.clock(), **message.caused()))
        if isinstance(message, PositionOpened) and self.halted:
            self._forward(position.position_id, RequestExit(
                reason=ExitReason.KILL_SWITCH, position_id=position.position_id,
                sent_at=self.ctx.clock(), **message.caused()))
        elif isinstance(message, PositionOpened) and self.operator_halt is not None:
            self._forward(position.position_id, RequestExit(
                reason=ExitReason.MANUAL, position_id=position.position_id,
                sent_at=self.ctx.clock(), detail="opened while trading is halted by the operator",
                **message.caused()))

    def next_deadline(self) -> datetime | None:
        """The earliest instant at which a timer can change anything here (``DUE``: the next
        timer; None: no timer can): the end of a restart pause, and each open position's next
        deadline (a tracker that has not told one is due)."""
        moments: list[datetime | None] = [self.paused_until,
                                          self.audits.next_try or DUE if self.audits else None]
        for child in self.children.values():
            if self.status.get(child.position_id) in CLOSED:
                continue
            moments.append(child.keeper.next_deadline() if child.keeper is not None
                           else self.deadlines.get(child.position_id, DUE))
        return min((moment for moment in moments if moment is not None), default=None)

    def _timer(self, message: TimerFired) -> None:
        now = self.ctx.clock()
        if self.halted:
            self._check_latch(now, message)
        self.audits.write()
        if self._orphans:
            orphans, self._orphans = self._orphans, []
            for position_id, orphan in orphans:
                self._forward(position_id, orphan)
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
        if self.paused_until is None:
            for child in list(self._kept.values()):
                keeper = child.keeper
                if keeper is not None and not child.quarantined and (
                        child.restart_at is None or now >= child.restart_at):
                    self._restart(child, keeper.position, unstored=keeper.unstored)
        for child in list(self.children.values()):
            if self.status.get(child.position_id) in CLOSED:
                continue
            if child.ref is not None and not child.ref.is_alive():
                continue  # crashed, restart on its way: timers are not worth queueing
            self._send(child, message)

    def _store_latch(self) -> bool:
        """The latch is durable (SPEC §3.4) before a reset can be read back; a store that fails
        leaves it pending, stored at the next timer, trading HALTED meanwhile."""
        if self._latch is None:
            return True
        try:
            self.ctx.store.latch_kill_switch(self._latch)
        except StoreError as error:
            logger.error("cannot store the kill switch latch ({}): HALTED in memory, storing "
                         "again each second", error)
            return False
        self._latch = None
        return True

    def _check_latch(self, now: datetime, cause: TimerFired) -> None:
        """While HALTED, once a second: an operator's reset (``run.py reset-kill-switch``
        clears the store's latch) or a new exchange day resumes trading. After a reset the
        switch trips again only if the day's net falls another ``daily_loss_limit`` below
        where it stood at the reset (else the same loss would trip it at once)."""
        if not self._store_latch():
            return
        try:
            latch = self.ctx.store.kill_switch()
        except StoreError as error:
            logger.warning("cannot read the kill switch latch ({}); still HALTED", error)
            return
        if latch is not None and self.ctx.config.portfolio.latch_in_force(latch.latched_at, now):
            return
        self.halted = False
        if latch is None and self.day_net is not None:
            self.rearm_below = (now.astimezone(IST).date(),
                                self.day_net - self.ctx.config.portfolio.daily_loss_limit)
        logger.warning("kill switch {}: trading RUNNING again", "reset by an operator"
                       if latch is None else f"of {latch.latched_at:%Y-%m-%d} ends with its day")
        for child in self.children.values():
            if self.status.get(child.position_id) not in CLOSED:
                self._send(child, ClearKillSwitch())  # type: ignore[arg-type]

    # Supervision ------------------------------------------------------------------------------
    def _failed(self, message: TrackerFailed) -> None:
        child = self.children.get(message.position_id)
        handed = self._handed_on(message)
        if child is None or message.incarnation != child.incarnation:
            self._redeliver(message.position_id, handed)
            return
        # What was queued behind the breaking message is older than anything told since:
        # first in line for the next incarnation (or the supervisor's own keeper).
        child.pending[:0] = handed
        if handed:
            logger.bind(position_id=message.position_id).warning(
                "{} messages queued behind the failure go to its next owner: {}",
                len(handed), ", ".join(type(m).__name__ for m in handed))
        log = logger.bind(position_id=message.position_id)
        log.log("WARNING" if message.lease_lost else "ERROR", "tracker failed (incarnation {}): "
                "{}", message.incarnation, message.error)
        if not message.lease_lost:  # under a lost lease the store refuses it too
            self._dead_letter(f"tracker:{message.position_id}#{message.incarnation}", message,
                              message.error)
        now = message.at
        self._note_failure(child, now)
        delay = self.rules.restart_delay(len(child.failures))
        if self.paused_until is not None and now < self.paused_until:
            self._adopt(child, message, quarantine=False)
        elif len(child.failures) > self.rules.max_restarts:
            log.error("QUARANTINED after {} failures in {}; the supervisor keeps evaluating its "
                      "exit rules", len(child.failures), self.rules.window)
            self._adopt(child, message, quarantine=True)
        elif delay:
            log.warning("restart {} of {} in {} (back-off); the supervisor keeps it meanwhile",
                        len(child.failures), self.rules.window, delay)
            self._adopt(child, message, quarantine=False)
            child.restart_at = now + delay
        else:
            self._restart(child, message.position, unstored=message.unstored)

    def _handed_on(self, message: TrackerFailed) -> tuple[Any, ...]:
        """What a failed tracker's next owner gets: the messages it had not handled and, the
        first time it breaks one, the order update that broke it (a fill is never lost to a
        crash), after the updates applied before it; an update that breaks the next owner
        too is poison: dead-lettered, not handed on again."""
        undelivered, retry = message.undelivered, message.retry
        if retry is None:
            return undelivered
        if message.lease_lost:  # not the update's fault: handed on, not counted as poison
            return (*undelivered[:message.applied], retry, *undelivered[message.applied:])
        log = logger.bind(position_id=message.position_id)
        if retry.message_id in self._retried:
            del self._retried[retry.message_id]
            log.error("POISON: {} broke the tracker again after its restart: dead-lettered, "
                      "the broker's book will show the difference", type(retry).__name__)
            self._dead_letter(f"tracker:{message.position_id}#{message.incarnation}", retry,
                              f"poison: broke two owners of the position: {message.error}")
            return undelivered
        self._retried[retry.message_id] = None
        while len(self._retried) > _RETRIED_KEPT:
            self._retried.popitem(last=False)
        log.warning("{} broke the tracker: handed to its next owner once",
                    type(retry).__name__)
        return (*undelivered[:message.applied], retry, *undelivered[message.applied:])

    def _redeliver(self, position_id: str, messages: tuple[Any, ...]) -> None:
        """Messages a failed tracker never handled: to the position's current owner."""
        child = self.children.get(position_id)
        if messages:
            logger.bind(position_id=position_id).warning(
                "{} messages a failed tracker had not handled: delivered again", len(messages))
        for message in messages:
            if child is None:
                self._dead_letter("supervisor", message, f"unknown position {position_id}")
            else:
                self._send(child, message)

    def _note_failure(self, child: _Child, now: datetime) -> None:
        for queue, window in ((child.failures, self.rules.window),
                              (self.failures, self.rules.mass_window)):
            queue.append(now)
            while queue and now - queue[0] > window:
                queue.popleft()
        if len(self.failures) >= self.rules.mass_failures and self.paused_until is None:
            self.paused_until = now + self.rules.pause
            logger.error("{} tracker failures in {}: restarts paused until {}",
                         len(self.failures), self.rules.mass_window, self.paused_until)

    def _restart(self, child: _Child, last: Position | None, *, unstored: bool = False) -> None:
        """A new tracker from the newest state known: the store's, or ``last`` (the failed
        owner's) when the store cannot answer or ``unstored`` says the store is behind it. The
        new tracker stores a state the store does not hold yet; it never starts empty."""
        position, behind = self._newest(child.position_id, last, unstored)
        if position is None:
            logger.error("{} has no known state: cannot restart it", child.position_id)
            return
        self.ctx.metrics.incr("actor_restarts")
        self._spawn(position, child.incarnation + 1, unstored=behind)
        self._route(child)
        self._flush_pending(child)

    def _newest(self, position_id: str, last: Position | None,
                unstored: bool) -> tuple[Position | None, bool]:
        """The state to continue from, and whether the store is behind it."""
        try:
            stored = self.ctx.store.load_position(position_id)
        except Exception as error:  # the store may be what is failing
            logger.bind(position_id=position_id).error(
                "cannot read {} ({}); continuing from its last state in memory", position_id,
                error)
            return last, last is not None
        if last is not None and (stored is None or last.version > stored.version or (
                unstored and last.version == stored.version)):
            # The store is behind: a failed write, or a tightened stop still with the stop
            # writer (SPEC §11.5): a stop in force never loosens across a restart.
            return last, True
        return stored, False

    def _adopt(self, child: _Child, message: TrackerFailed, *, quarantine: bool) -> None:
        position, behind = self._newest(child.position_id, message.position, message.unstored)
        self._keep(child, position, quarantine=quarantine, unstored=behind)

    def _keep(self, child: _Child, position: Position | None, *,
              quarantine: bool = False, unstored: bool = False) -> None:
        """The supervisor runs the position's keeper itself: it is never without an owner."""
        if position is None:
            logger.error("{} has no known state: cannot protect it", child.position_id)
            return
        child.keeper = PositionKeeper(position, self.ctx, halted=self.halted,
                                      unstored=unstored)
        self._kept[child.position_id] = child
        child.quarantined = quarantine
        _lifecycle(f"tracker:{child.position_id}#{child.incarnation}",
                   "quarantine" if quarantine else "adopted_while_paused",
                   position_id=child.position_id)
        child.ref = None
        self._route(child)
        self._flush_pending(child)

    def _dead_letter(self, actor: str, message: Any, error: str) -> None:
        self.ctx.metrics.incr("dead_letters")
        _lifecycle(actor, "dead_letter", error=error[:200],
                   message_id=getattr(message, "message_id", None),
                   correlation_id=getattr(message, "correlation_id", None),
                   position_id=getattr(message, "position_id", None))
        try:
            self.ctx.store.record_dead_letter(DeadLetter(
                recorded_at=self.ctx.clock(), actor=actor,
                message_type=getattr(message, "message_type", type(message).__name__),
                message_id=getattr(message, "message_id", None),
                correlation_id=getattr(message, "correlation_id", None),
                causation_id=getattr(message, "causation_id", None),
                position_id=getattr(message, "position_id", None), error=error,
                payload=getattr(message, "payload", None) or repr(message)[:500]))
        except Exception as failure:
            logger.error("could not record a dead letter: {}", failure)

    def tracker_refs(self) -> list[ActorRef[Any]]:
        """Live tracker actors, for an orderly drain at stop (asked from the edge)."""
        return [c.ref for c in self.children.values() if c.ref is not None and c.ref.is_alive()]

    def _durable(self) -> list[ActorRef[Any]] | None:
        """``Durable``: the live trackers to ask, or None when a position's state is not all
        stored here (see ``Durable``)."""
        if self._orphans:
            return None
        refs: list[ActorRef[Any]] = []
        for child in self.children.values():
            if child.pending:
                return None
            if child.keeper is not None:
                if not child.keeper.durable:
                    return None
            elif child.ref is None or not child.ref.is_alive():
                return None  # failed: its next owner is not started yet
            else:
                refs.append(child.ref)
        return refs

    def checkpoint_quarantined(self) -> None:
        for child in self._kept.values():
            if child.keeper is not None:
                child.keeper.handle(Checkpoint())

    def snapshot(self) -> dict[str, Any]:
        statuses = Counter(self.status.values())
        return {"trading_state": self._trading_state(),
                "kill_switch": self.halted,
                "halted_by": None if self.operator_halt is None else {
                    "operator": self.operator_halt.name, "at": self.operator_halt.at.isoformat()},
                "positions": dict(statuses), "exits_by_reason": dict(self.exits),
                "quarantined": sorted(c.position_id for c in self.children.values()
                                      if c.quarantined),
                "unprotected": sorted(self.unprotected), "day_net": self.day_net,
                "restarts_paused_until": self.paused_until.isoformat()
                if self.paused_until else None,
                "at": self.ctx.clock().isoformat()}

    # Operator commands (SPEC §12) -------------------------------------------------------------
    def _trading_state(self) -> str:
        return "HALTED" if self.halted or self.operator_halt is not None else "RUNNING"

    def _operator(self, message: Halt | Resume | ResetKillSwitch) -> OperatorOutcome:
        who = message.operator
        if isinstance(message, Halt):
            self.operator_halt = self.operator_halt or who
            done, detail = True, "trading halted"
        elif isinstance(message, Resume):
            done = not self.halted
            detail = "the kill switch is latched: reset it to resume" if self.halted \
                else "trading resumed"
            if done:
                self.operator_halt = None
        else:
            was = self.ctx.store.reset_kill_switch()
            if self.halted:  # what the next timer would find: resumed, re-armed, trackers told
                now = self.ctx.clock()
                self._check_latch(now, TimerFired(name="operator reset", sent_at=now,
                                                  correlation_id=message.correlation_id))
            self.operator_halt = None
            done = not self.halted
            detail = ("kill switch reset" if was else "kill switch was not latched") if done \
                else "the kill switch is still latched (see the log)"
        logger.warning("operator {} ({}): {}: {}", who.name, who.address,
                       type(message).__name__, detail)
        _lifecycle("supervisor", "operator", command=type(message).__name__,
                   operator=who.name, address=who.address, detail=detail,
                   message_id=message.message_id, correlation_id=message.correlation_id)
        return OperatorOutcome(done=done, trading_state=self._trading_state(), detail=detail)


def _lifecycle(actor: str, event: str, **fields: Any) -> None:
    active = tracer()
    if active is not None:
        active.lifecycle(actor, event, **fields)


def _let_gateway_run() -> None:
    """Hand the interpreter to the gateway actor just told an exit: its thread, woken by the
    tell, otherwise waits up to CPython's switch interval (5 ms) while this one goes on with
    the supervisor's next messages. The live benchmark's decision → order hop
    (``bench/live_exits.py``)."""
    time.sleep(0)
