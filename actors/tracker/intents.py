"""IntentWriterActor: exits' durable intents, stored many at a time (SPEC §11, issue 17).

A tracker that decides an exit makes its position EXITING with a new attempt and, instead of
committing the intent itself, tells this actor a ``StoreIntent`` (``PositionKeeper._exit``).
The writer takes every ``StoreIntent`` waiting in its mailbox and stores them with one
``Store.record_exits`` (one statement on PostgreSQL: one commit for a wave of exits, where each
tracker's own commit made a wave's exits leave one after the other). Only then, for each exit
whose position it wrote, it tells the position's gateway actor the order (``exit_order``) and
the supervisor the request, then the tracker ``IntentStored``: an order never leaves before
its intent is durable, and a restart looks it up by its client id.

With a ``launch`` (the live session's ``DhanGateway.launch_exits``), the wave's orders are
first handed to a process of their own together, from this thread, which holds the interpreter
already: ten gateway threads would each wait for it behind the feed and the trackers before
their request left (``bench/handoff.py``). Each gateway actor then takes its order's answer
from there; an order not launched (no slot free now, no price in hand) it places as before.

The orders go first (the trackers' announcements then compete for the interpreter), so a
tracker may hear of its order's outcome, even of its fills, before ``IntentStored``: those
handlers work on the EXITING position in memory, and ``IntentStored`` then records what the
store holds (an outcome that ended the exit meanwhile is not announced twice). A tracker that
failed meanwhile places nothing: its next owner starts from the store. A position the writer
did not write (the store holds that version or a newer one) is the tracker's to tell apart:
its own later write (it places the order itself) or another owner's (stale: it stops). A
failed write answers every sender with the error: each tracker then stores its intent itself
and the exit goes on, as a failing store's exits always did (SPEC §11.4). A fenced store
under a lost lease refuses the whole write.

While its intent is with this writer, a tracker sends the stop writer no stop (the price that
would move it waits, as behind a stop being stored): two writes of one position with two
writers could each find the other's newer version stored and take it for stale.

Like the stop writer, it writes when its mailbox is empty or before any other message (a
settle's question, a stop), so mailbox order holds. With ``gather`` (the trackers'
dispatcher's ``wait_for_urgent``), an empty mailbox while trackers still decide on urgent
prices is not yet the end of the wave: the writer waits for those decisions, ``GATHER``
seconds at most from the first intent it kept, so that they join its write. Without it the
first intent of a wave was often written alone and the rest waited for that write: two writes
in series (BENCHMARKS, the live row). Ticks of the wave still in the feed or the batcher are not
waited for; measured, the gather left the live row's latency within its noise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.gateway.actor import exit_order
from actors.protocol import IntentStored, StoreIntent
from actors.runtime.group import GroupWriter
from actors.runtime.metrics import Metrics
from models.messages import PlaceExitOrder, new_id
from store.ports import LeaseLost, Store

GATHER = 0.004
"""Seconds at most that the first intent of a wave waits for the rest of the wave's decisions."""


class IntentWriterActor(GroupWriter[StoreIntent]):
    trace_kind = "intents"
    kind = StoreIntent
    label = "intent writer"

    def __init__(self, store: Store, metrics: Metrics, clock: Callable[[], datetime],
                 supervisor: ActorRef[Any], *,
                 launch: Callable[[list[PlaceExitOrder]], object] | None = None,
                 gather: Callable[[float], bool] | None = None) -> None:
        super().__init__()
        self.store, self.metrics, self.clock = store, metrics, clock
        self.supervisor = supervisor
        self.launch = launch
        """Hands a wave's orders to the broker together, ahead of their gateway actors (see
        the module's docstring); None: each gateway actor sends its own."""
        self.gather = gather
        """Waits, seconds at most, until no tracker decides on an urgent price; True when none
        does (see the module's docstring); None: every write goes at once."""
        self._kept_since: float | None = None

    def more_coming(self) -> bool:
        if self.gather is None:
            return False
        now = time.monotonic()
        if self._kept_since is None:
            self._kept_since = now
        left = self._kept_since + GATHER - now
        if left > 0:
            self.gather(left)
        return not self.actor_inbox.empty()  # kept with the rest, then written when it is empty

    def write(self, due: list[StoreIntent]) -> None:
        """Store what is due in one write, then answer every sender and place the orders."""
        self._kept_since = None
        newest: dict[str, StoreIntent] = {}
        for message in due:  # one per position in practice: a second is never placed too
            kept = newest.get(message.request.position.position_id)
            if kept is None or kept.request.position.version <= message.request.position.version:
                newest[message.request.position.position_id] = message
        error: str | None = None
        written: set[str] = set()
        try:
            written = self.store.record_exits([(m.attempt, m.request.position) for m in due])
        except Exception as failure:  # every sender must hear back, whatever broke the write
            error = f"{type(failure).__name__}: {failure}"
            self.metrics.incr("intent_write_failures")
            logger.log("WARNING" if isinstance(failure, LeaseLost) else "ERROR",
                       "storing {} exit intents failed ({}); each tracker stores its own",
                       len(due), error)
        else:
            self.metrics.incr("intent_writes")
            self.metrics.incr("intents_stored", len(due))
        now = self.clock()
        going = [m for m in due if m.request.position.position_id in written
                 and newest[m.request.position.position_id] is m
                 and m.owner.is_alive()]  # a tracker that failed meanwhile places nothing
        orders = {id(m): exit_order(m.request, now) for m in going if m.gateway is not None}
        if self.launch is not None and orders:
            try:
                self.launch(list(orders.values()))
            except Exception as unlaunched:  # each gateway actor then sends its own
                logger.warning("exit orders not launched together ({}: {}); each is placed by "
                               "its gateway actor", type(unlaunched).__name__, unlaunched)
        placed = {id(m) for m in going if self._place(m, orders.get(id(m)))}
        if placed:
            # The gateway actors place the orders: let them take the interpreter now, before
            # the trackers' announcements, rather than after the 5 ms switch interval.
            time.sleep(0)
        for message in due:
            request = message.request
            position = request.position
            ok = position.position_id in written and newest[position.position_id] is message
            with contextlib.suppress(ActorDeadError):  # its next owner starts from the store
                message.owner.tell(IntentStored(
                    position_id=position.position_id, client_id=request.client_id,
                    version=position.version, correlation_id=request.correlation_id,
                    causation_id=request.message_id, message_id=new_id(), sent_at=now,
                    written=ok, placed=id(message) in placed, error=error))

    def _place(self, message: StoreIntent, order: PlaceExitOrder | None) -> bool:
        """The order to the position's gateway actor, the request to the supervisor (which
        places it itself for a tracker without a gateway actor)."""
        request = message.request
        try:
            if message.gateway is None or order is None:
                self.supervisor.tell(request)
                return True
            message.gateway.tell(order)
            self.supervisor.tell(request.model_copy(update={"placed": True}))
        except ActorDeadError:  # the system is stopping: a restart resumes the stored intent
            logger.bind(position_id=request.position.position_id).warning(
                "exit {} stored but not placed: its gateway or the supervisor has stopped",
                request.client_id)
            return False
        return True
