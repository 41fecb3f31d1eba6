"""TrackerActor: the sole owner of one position's state (SPEC §2).

A thin shell around ``PositionKeeper``: it runs on the shared dispatcher, sends what the keeper
returns, and reports any failure to the supervisor with the message that caused it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.gateway.actor import exit_order
from actors.protocol import (
    DUE,
    BandChanged,
    DeadlineChanged,
    Durable,
    IntentStored,
    Snapshot,
    StoreIntent,
    TrackerFailed,
    Undelivered,
)
from actors.runtime.dispatch import PooledActor
from actors.tracing.recorder import dump_on_crash, tracer
from actors.tracker.keeper import DEFERRABLE, KeeperContext, PositionKeeper, Target, summary
from models.bands import Band
from models.messages import (
    CancelExitOrder,
    ExitRequested,
    LookUpExitOrder,
    PriceUpdate,
    new_id,
)
from models.position import Position
from models.rules import PriceMark
from store.ports import LeaseLost


@dataclass(frozen=True)
class Peers:
    """Where a tracker's messages go."""

    supervisor: ActorRef[Any]
    index: ActorRef[Any]
    pnl: ActorRef[Any]
    batcher: ActorRef[Any] | None
    orders: ActorRef[Any] | None
    deadlines: bool = False
    """Tell the supervisor each change of the position's next deadline (replay skips time)."""
    stops: ActorRef[Any] | None = None
    """The stop writer (``actors/tracker/stops.py``); None: each tracker stores its own."""
    intents: ActorRef[Any] | None = None
    """The intent writer (``actors/tracker/intents.py``); None: each tracker stores its exits'
    intents itself and tells the gateway actor."""

    def ref(self, target: Target) -> ActorRef[Any] | None:
        # Identity tests, most frequent first: once per message a tracker sends, where a
        # dict built per call (and an Enum's Python-level hash) cost several times this.
        if target is Target.PNL:
            return self.pnl
        if target is Target.INDEX:
            return self.index
        if target is Target.SUPERVISOR:
            return self.supervisor
        if target is Target.BATCHER:
            return self.batcher
        if target is Target.ORDERS:
            return self.orders
        if target is Target.STOPS:
            return self.stops
        if target is Target.INTENTS:
            return self.intents
        raise ValueError(f"no peer for {target!r}")


def deliver(peers: Peers, out: list[tuple[Target, object]],
            gateway: ActorRef[Any] | None = None, clock: Callable[[], datetime] | None = None,
            intents_gone: Callable[[StoreIntent], list[tuple[Target, object]]] | None = None,
            ) -> None:
    """Tell each message to its target. With ``gateway`` (the position's gateway actor, as
    the supervisor assigned it), the gateway calls of the position go straight there: an exit
    request's order (its intent stored already: the keeper emits the request only then) and
    look-ups and cancels, in the order the keeper made them; the supervisor still hears the
    request, marked ``placed``. One hop less between a decision and the order.

    ``intents_gone``: what to deliver instead of an exit intent the intent writer can no
    longer take (it has stopped): the keeper stores the intent itself and the exit goes on,
    as when the writer's write fails. Without it, the writer's ``ActorDeadError`` is raised."""
    exiting = False
    for target, message in out:
        kind = type(message)
        writer = peers.intents if target is Target.INTENTS else None
        if writer is not None and intents_gone is not None:
            assert isinstance(message, StoreIntent)
            try:
                writer.tell(message)
            except ActorDeadError:
                deliver(peers, intents_gone(message), gateway, clock)
            continue
        if gateway is not None and target is Target.SUPERVISOR:
            if kind is ExitRequested and clock is not None:
                assert isinstance(message, ExitRequested)
                gateway.tell(exit_order(message, clock()))
                message = message.model_copy(update={"placed": True})
            elif kind is LookUpExitOrder or kind is CancelExitOrder:
                gateway.tell(message)
                continue
        ref = peers.ref(target)
        if ref is not None:
            ref.tell(message)
            exiting = exiting or kind is ExitRequested
    if exiting:
        # The gateway actor (or the supervisor) places the exit: let it take the interpreter
        # now rather than after this worker's next tasks or the 5 ms switch interval.
        time.sleep(0)


class TrackerActor(PooledActor):
    trace_kind = "tracker"
    conflate = frozenset({PriceUpdate})
    """Only the newest price of the position's instrument matters: see ``_Mailbox``."""
    quiet_failures = (LeaseLost,)
    """A write its partition's lease no longer allows: one line, not a traceback (the runner
    drops the partition; its supervisor hears of it as ``TrackerFailed.lease_lost``)."""

    def __init__(self, position: Position, context: KeeperContext, peers: Peers, *,
                 incarnation: int = 0, halted: bool = False,
                 mark: PriceMark | None = None, unstored: bool = False,
                 gateway: ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.gateway = gateway
        """The position's gateway actor: its exit orders, look-ups and cancels go there
        directly (None: through the supervisor)."""
        self.clock = context.clock
        self.keeper = PositionKeeper(position, context, halted=halted, mark=mark,
                                     unstored=unstored)
        if peers.stops is not None:
            self.keeper.owner = self.actor_ref
        if peers.intents is not None:
            self.keeper.intent_owner, self.keeper.intent_gateway = self.actor_ref, gateway
        self.peers = peers
        self.incarnation = incarnation
        self.trace_key = position.position_id
        self._current: object = None
        self._band: Band | None = None
        self._deadline: datetime | None = DUE
        self._failed = False

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Snapshot):
            return self.keeper.position
        if isinstance(message, Durable):
            return self.keeper.durable
        self._current = message
        more = type(message) in DEFERRABLE and self.next_told() in DEFERRABLE
        deliver(self.peers, self.keeper.handle(message, more=more), self.gateway, self.clock,
                self._intents_gone)
        self._current = None
        band = self.keeper.band()
        if band != self._band:  # the index filters prices with it: keep it exact
            self._band = band
            self.peers.index.tell(BandChanged(
                self.keeper.position.position_id, band,
                correlation_id=getattr(message, "correlation_id", None),
                causation_id=getattr(message, "message_id", None)))
        if self.peers.deadlines:
            deadline = self.keeper.next_deadline()
            if deadline != self._deadline:
                self._deadline = deadline
                self.peers.supervisor.tell(DeadlineChanged(self.keeper.position.position_id,
                                                           deadline))
        return None

    def _intents_gone(self, sent: StoreIntent) -> list[tuple[Target, object]]:
        """The intent writer stopped before it took ``sent``: its answer, as a failed write."""
        request = sent.request
        logger.bind(position_id=request.position.position_id).error(
            "the intent writer has stopped: exit {} stores its own intent", request.client_id)
        return self.keeper.handle(IntentStored(
            position_id=request.position.position_id, client_id=request.client_id,
            version=request.position.version, correlation_id=request.correlation_id,
            message_id=new_id(), sent_at=self.clock(), causation_id=request.message_id,
            error="the intent writer has stopped"))

    def on_stop(self) -> None:
        # Nothing is held at a stop told in turn (the order updates before it store theirs);
        # a stop that cuts in (the process stopping every actor at once) stores it here.
        with contextlib.suppress(ActorDeadError):  # peers stopped first: the store has it
            deliver(self.peers, self.keeper.store_now(), self.gateway, self.clock)
        active = tracer()
        if active is not None:
            active.lifecycle(self.trace_name, "stop",
                             position_id=self.keeper.position.position_id)

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        message = self._current
        self._failed = True
        # Order updates applied but not stored yet come first: the next owner starts from the
        # stored state and applies them again, then what is still queued.
        stored = self.keeper.stored
        applied = self.keeper.take_unsaved()
        undelivered = (*applied, *self.take_told())
        dump_on_crash(self.trace_name, exception_value)
        self.peers.supervisor.tell(TrackerFailed(
            position_id=self.keeper.position.position_id, incarnation=self.incarnation,
            error=f"{exception_type.__name__ if exception_type else 'Error'}: {exception_value}",
            message_type=type(message).__name__,
            message_id=getattr(message, "message_id", None),
            correlation_id=getattr(message, "correlation_id", None),
            causation_id=getattr(message, "causation_id", None),
            payload=summary(message), at=self.keeper.ctx.clock(),
            lease_lost=isinstance(exception_value, LeaseLost),
            position=stored, unstored=self.keeper.unstored, undelivered=undelivered,
            retry=message if type(message) in DEFERRABLE else None, applied=len(applied)))

    def on_undelivered(self, told: list[Any]) -> None:
        """Told as the tracker stopped: after a failure they follow the report to the
        supervisor, for the next incarnation; at a normal stop they are only logged."""
        pid = self.keeper.position.position_id
        if not self._failed:
            logger.bind(position_id=pid).warning(
                "tracker stopped with {} messages not handled: {}", len(told),
                ", ".join(summary(m, 200) for m in told))
            return
        try:
            self.peers.supervisor.tell(Undelivered(pid, self.incarnation, tuple(told)))
        except ActorDeadError:
            logger.bind(position_id=pid).error(
                "tracker failed; {} messages it had not handled are lost with the supervisor "
                "stopped: {}", len(told), ", ".join(summary(m, 200) for m in told))


