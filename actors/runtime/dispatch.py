"""A pykka actor type that runs on a shared pool of worker threads (SPEC §2, execution model).

A ``ThreadingActor`` owns an OS thread; at 10,000 positions that is 10,000 threads, slow to start
and slow to wake. A ``PooledActor`` owns only a mailbox. When a message arrives at an idle
mailbox, the mailbox is scheduled on its ``Dispatcher``; a worker thread then runs that actor for
at most ``throughput`` messages (fairness) and reschedules it if more are waiting. One message at
a time per actor is guaranteed by the mailbox's state: it is being run by at most one turn. An
urgent message (``urgent = True``, a price that may be an exit) schedules its mailbox as urgent;
if the mailbox already waits as ordinary, an urgent turn is queued beside that one, and whichever
starts first runs the mailbox while the other finds it running or empty.

pykka's ``ActorRef``, ``tell``, ``ask`` and proxies work unchanged, and failures behave as in
``ThreadingActor``: a raising ``tell`` handler is logged, stops the actor and reaches
``on_failure``; an ``ask`` gets the exception back and the actor goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from types import TracebackType
from typing import Any, ClassVar

import pykka
from loguru import logger as _log
from pykka import ActorRegistry

from actors.runtime.inflight import InFlight, counting
from actors.runtime.pool import Dispatcher, default_dispatcher
from actors.runtime.pykka_compat import (
    Envelope,
    Hooks,
    PoolHooks,
    answer_stopped,
    contents,
    handle_envelope,
    is_stop,
    run_setup,
)
from actors.tracing.recorder import Traced, dump_on_crash, stamp

__all__ = ["Dispatcher", "PooledActor", "SingletonActor", "StampedQueue", "default_dispatcher"]

logger = logging.getLogger("pykka")


_URGENT_KINDS: dict[type, bool] = {}


def _may_be_urgent(kind: type) -> bool:
    """Does a message of ``kind`` have an ``urgent`` field or attribute? Asked once per type:
    a pydantic message without the field answers ``getattr`` by raising inside, which cost
    ~2 % of a live session's interpreter on every message told (profiled)."""
    known = _URGENT_KINDS.get(kind)
    if known is None:
        fields = getattr(kind, "model_fields", None)  # a pydantic model's fields
        known = (isinstance(fields, dict) and "urgent" in fields) \
            or any("urgent" in vars(base) for base in kind.__mro__)  # slots, defaults
        _URGENT_KINDS[kind] = known
    return known


class _Mailbox:
    """The inbox of one pooled actor: a deque plus a flag saying it is scheduled or running.

    Messages of the types in ``conflate`` (told, not asked) are conflated: while one is still
    waiting, a newer one of the same type takes its place in the queue, latest wins. A tracker
    conflates prices this way, so a backlog holds at most one price per position and the price
    it evaluates is the newest, never one that went stale while it waited.
    """

    __slots__ = ("_actor", "_closed", "_conflate", "_dispatcher", "_drain_lock", "_latest",
                 "_lock", "_queue", "_running", "_scheduled", "_turns", "_urgent_later",
                 "_urgent_queued", "conflated", "inflight")

    def __init__(self, conflate: frozenset[type] = frozenset()) -> None:
        self._queue: deque[list[Any]] = deque()
        self._lock = threading.Lock()
        # Scheduled until the actor starts, so messages told early wait for on_start(); no
        # urgent turn either before then (see ``_wake``).
        self._scheduled = True
        self._turns = 1
        """Turns of this mailbox on the dispatcher's queues, not yet started."""
        self._running = False
        self._urgent_queued = True
        self._urgent_later = False
        """An urgent message came while a turn ran: the turn that follows is urgent too."""
        self._closed = False
        """The actor stopped and its last turn emptied the mailbox: whoever puts a message
        after that answers (or hands on) that message itself, as nobody else will."""
        self._drain_lock = threading.Lock()
        self._actor: PooledActor | None = None
        self._dispatcher: Dispatcher | None = None
        self._conflate = conflate
        self._latest: dict[type, list[Any]] = {}
        self.conflated = 0
        """Messages replaced by a newer one before they were handled."""
        self.inflight: InFlight | None = counting()
        """Counts each message put until it is handled or dropped (a replay's settle)."""

    # The pykka ActorInbox protocol ------------------------------------------------------------
    def put(self, envelope: Envelope[Any], /) -> None:
        message, reply_to = contents(envelope)
        kind = type(message)
        urgent = _may_be_urgent(kind) and getattr(message, "urgent", False) is True
        if kind in self._conflate and reply_to is None:
            self._put_latest(kind, envelope, urgent)
            return
        if self.inflight is not None:
            self.inflight.add()
        self._queue.append([envelope, stamp(), None])
        self._wake(urgent)

    def _put_latest(self, kind: type, envelope: Envelope[Any], urgent: bool) -> None:
        with self._lock:
            waiting = self._latest.get(kind)
            if waiting is not None:  # still queued: the newer message takes its place
                waiting[0], waiting[1] = envelope, stamp()
                self.conflated += 1
                if self._dispatcher is not None:
                    self._dispatcher.count_conflated()
            else:
                if self.inflight is not None:  # a replaced message is not one more in flight
                    self.inflight.add()
                entry = [envelope, stamp(), kind]
                self._latest[kind] = entry
                self._queue.append(entry)
        if waiting is None or urgent:
            self._wake(urgent)

    def _wake(self, urgent: bool = False) -> None:
        with self._lock:
            # On the run queue already (or running): it keeps its place, unless this message
            # is urgent and the turn waiting is an ordinary one. Then an urgent turn goes too;
            # whichever starts first runs the mailbox, the other finds it running or empty.
            # A closed mailbox stays scheduled and running for good.
            if self._scheduled and (not urgent or self._running or self._urgent_queued):
                if urgent and self._running:
                    self._urgent_later = True
                if not self._closed:
                    return
                late = True
            else:
                late = False
                self._scheduled = True
                self._turns += 1
                self._urgent_queued = self._urgent_queued or urgent
        if late:  # put after the last turn's clean-up (a tell that found the actor alive)
            self._fail_pending()
        else:
            self._submit(urgent)

    def _pop(self) -> list[Any]:
        entry = self._queue.popleft()
        if entry[2] is not None:
            with self._lock:  # from now on a newer message of its kind queues anew
                del self._latest[entry[2]]
        return entry

    def get(self) -> Envelope[Any]:
        envelope: Envelope[Any] = self._pop()[0]
        return envelope

    def empty(self) -> bool:
        return not self._queue

    def next_told(self) -> type | None:
        """The type of the message next in line if it was told (None if empty or an ask).

        Only the owner's thread takes from the queue, so what it sees here comes next."""
        queue = self._queue
        if not queue:
            return None
        message, reply_to = contents(queue[0][0])
        return None if reply_to is not None else type(message)

    def qsize(self) -> int:
        return len(self._queue)

    # Scheduling -------------------------------------------------------------------------------
    def bind(self, actor: PooledActor, dispatcher: Dispatcher) -> None:
        self._actor, self._dispatcher = actor, dispatcher
        dispatcher.submit(self._first_turn)

    def _submit(self, urgent: bool = False) -> None:
        assert self._dispatcher is not None
        try:
            self._dispatcher.submit(self._turn, urgent=urgent)
        except RuntimeError:
            self._fail_pending()

    def _first_turn(self) -> None:
        assert self._actor is not None
        run_setup(self._actor)
        self._turn()

    def _turn(self) -> None:
        actor = self._actor
        assert actor is not None and self._dispatcher is not None
        with self._lock:
            self._turns -= 1
            if self._running:
                return  # the mailbox's other turn runs now and takes its messages
            self._running = True
            self._urgent_queued = False
        stopped = actor.actor_stopped
        for _ in range(self._dispatcher.throughput):
            if stopped.is_set() or not self._queue:
                break
            envelope, actor._last_stamp, _ = self._pop()
            handle_envelope(actor, envelope)
        if stopped.is_set():
            with self._lock:
                self._closed = True
            self._fail_pending()
            return  # stays "scheduled" (and running) forever: a stopped actor never runs again
        with self._lock:
            self._running = False
            urgent, self._urgent_later = self._urgent_later, False
            if self._turns:
                return  # a turn still queued takes whatever is left
            if not self._queue:
                self._scheduled = False
                return
            self._turns += 1
            self._urgent_queued = urgent
        self._submit(urgent)

    def take_told(self) -> list[Any]:
        """Remove and return the told messages still queued, oldest first; asks stay queued.

        For a stopped actor (from its own thread, the only one that takes from the queue):
        what was told to it before it stopped is handed on instead of dropped."""
        told: list[Any] = []
        kept: deque[Any] = deque()
        with self._lock:
            while self._queue:
                entry = self._queue.popleft()
                if entry[2] is not None:
                    del self._latest[entry[2]]
                message, reply_to = contents(entry[0])
                if reply_to is None:
                    if self.inflight is not None:
                        self.inflight.done()
                    if not is_stop(message):
                        told.append(message)
                else:
                    kept.append(entry)
            self._queue.extend(kept)
        return told

    def _fail_pending(self) -> None:
        """What ``ThreadingActor``'s teardown does: answer every waiting ``ask``; told messages
        still queued (those that came after ``on_failure`` took the others) go to
        ``PooledActor.on_undelivered``. Run by the last turn, then by any thread that puts a
        message after it (one at a time)."""
        with self._drain_lock:
            self._fail_queued()

    def _fail_queued(self) -> None:
        told = self.take_told()
        if told and self._actor is not None:
            try:
                self._actor.on_undelivered(told)
            except Exception:
                logger.exception(f"{self._actor} lost {len(told)} undelivered messages")
        while self._queue:
            envelope = self._pop()[0]
            if self.inflight is not None:
                self.inflight.done()
            if contents(envelope)[1] is not None:
                answer_stopped(envelope, self._actor)


class PooledActor(Traced, PoolHooks, pykka.Actor):
    """A pykka actor without a thread of its own; see the module docstring.

    Set ``dispatcher`` on the class (or pass ``dispatcher=`` to ``start``) to choose the pool.
    """

    dispatcher: ClassVar[Dispatcher | None] = None
    conflate: ClassVar[frozenset[type]] = frozenset()
    """Message types told to this actor that a newer one of the same type replaces."""

    def make_inbox(self) -> _Mailbox:
        return _Mailbox(self.conflate)

    def start_loop(self) -> None:
        pool = self._dispatcher_override or self.dispatcher or default_dispatcher()
        inbox = self.actor_inbox
        assert isinstance(inbox, _Mailbox)
        inbox.bind(self, pool)

    _dispatcher_override: Dispatcher | None = None

    @classmethod
    def start_on(cls, dispatcher: Dispatcher, *args: Any,
                 **kwargs: Any) -> pykka.ActorRef[Any]:
        """Start on a given pool (``start`` uses the class's or the default pool)."""
        obj = cls(*args, **kwargs)
        obj._dispatcher_override = dispatcher
        ActorRegistry.register(obj.actor_ref)
        obj.start_loop()
        return obj.actor_ref

    def next_told(self) -> type | None:
        """The type of the told message next in this actor's mailbox, if any (see
        ``_Mailbox.next_told``): for the actor's own thread, to know what follows."""
        inbox = self.actor_inbox
        assert isinstance(inbox, _Mailbox)
        return inbox.next_told()

    def take_told(self) -> list[Any]:
        """The told messages still queued, removed, oldest first (see ``_Mailbox.take_told``):
        for ``on_failure``, to hand on what the actor will never handle."""
        inbox = self.actor_inbox
        assert isinstance(inbox, _Mailbox)
        return inbox.take_told()

    def on_undelivered(self, told: list[Any]) -> None:
        """Told messages left in the mailbox when the actor stopped after a failure (or
        arrived as it stopped); override to hand them on. By default they are logged, never
        dropped silently."""
        logger.error(f"{self} stopped with {len(told)} told messages not handled: "
                     f"{', '.join(sorted({type(m).__name__ for m in told}))}")


class StampedQueue:
    """A ``ThreadingActor`` inbox that remembers when and from whom each envelope came.

    On ``queue.SimpleQueue``: the singletons' inboxes take thousands of messages a second, and
    its C ``put`` is several times cheaper than ``queue.Queue``'s lock and condition.

    A put after the actor's last clean-up is answered by the putter (``close``). pykka's
    ``ask`` checks that the actor is alive and then puts: an actor stopping in between had
    emptied its inbox for the last time, and the ask (a second ``stop``, say) waited out its
    timeout, a lost wake-up (1 in 20,000 stops asked twice, ``bench/dispatch_vs_threads.py``).
    Without a lock on the hot path: a put adds, then reads ``closed``; ``close`` sets it, then
    empties the queue. Whichever comes second finds the envelope, and either may take it.
    """

    def __init__(self, owner: list[Any]) -> None:
        self._items: queue.SimpleQueue[tuple[Any, tuple[int, str]]] = queue.SimpleQueue()
        self._owner = owner
        self.closed = False
        """The actor stopped and emptied this inbox for the last time."""
        self.inflight: InFlight | None = counting()
        """Counts each message put until it is handled or dropped (a replay's settle)."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self.inflight is not None:
            self.inflight.add()
        self._items.put((item, stamp()))
        if self.closed:
            self.close()

    def close(self) -> None:
        """From now on nobody takes from this inbox: answer every ask in it (a stop is done,
        others fail with ``ActorDeadError``); told messages are logged, never kept waiting."""
        self.closed = True
        owner = self._owner[0] if self._owner else self
        told: list[str] = []
        while True:
            try:
                envelope = self._items.get(block=False)[0]
            except queue.Empty:
                break
            if self.inflight is not None:
                self.inflight.done()
            message, reply_to = contents(envelope)
            if reply_to is not None:
                answer_stopped(envelope, owner)
            elif not is_stop(message):
                told.append(type(message).__name__)
        if told:
            logger.warning(f"{owner} stopped with {len(told)} told messages not handled: "
                           f"{', '.join(sorted(set(told)))}")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item, stamped = self._items.get(block, timeout)
        if self._owner:
            self._owner[0]._last_stamp = stamped
        return item

    def empty(self) -> bool:
        return self._items.empty()

    def qsize(self) -> int:
        return self._items.qsize()


class SingletonActor(Traced, Hooks, pykka.ThreadingActor):
    """A traced ``ThreadingActor``: the few singletons keep a thread of their own.

    Each serves every position (the index fans out every price, the batcher every tick, the PnL
    writer feeds the kill switch), so one told message that raises must not stop it, as it
    stops a ``ThreadingActor``: the failure is logged with its traceback, counted in
    ``told_failures``, and the actor goes on with the next message (past ten failures, one in a
    thousand is logged). An ask that raises still gets the exception back."""

    told_failures = 0
    """Told messages whose handler raised (each logged at error level). Named apart from
    anything a subclass counts: the supervisor's ``failures`` is its restart history."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._inbox_owner: list[Any] = []
        super().__init__(*args, **kwargs)
        self._inbox_owner.append(self)

    def handle_failure(self, exception_type: type[BaseException] | None,
                       exception_value: BaseException | None,
                       traceback: TracebackType | None) -> None:
        # pykka would log, unregister and stop the actor here. A bug that breaks every message
        # is logged in full ten times, then once per thousand failures.
        self.told_failures += 1
        if self.told_failures <= 10 or self.told_failures % 1000 == 0:
            _log.opt(exception=(exception_type, exception_value, traceback)).error(
                "{} failed on a told message ({} so far) and goes on with the next",
                self.trace_name, self.told_failures)
            dump_on_crash(self.trace_name, exception_value)

    def make_inbox(self) -> StampedQueue:
        # pykka makes it from Actor.__init__, through the instance: the inbox knows its actor.
        return StampedQueue(self._inbox_owner)

    def teardown(self) -> None:
        # Instead of pykka's: its blocking ``get`` after ``empty()`` would hang if a late
        # putter took the last envelope in between.
        inbox = self.actor_inbox
        assert isinstance(inbox, StampedQueue)
        inbox.close()
