"""The shared pool of worker threads that pooled actors run on (SPEC §2, execution model).

A ``Dispatcher`` runs scheduled mailboxes (``actors/dispatch.py``) on a fixed number of threads,
first come first served, except that urgent work (a price that may be an exit) goes first in
three ways:

- an urgent mailbox is taken ahead of every ordinary one;
- ``reserve`` more threads run only urgent mailboxes, so a possible exit never waits for a
  worker that is busy, say blocked in another position's durable write;
- while urgent mailboxes are queued or running, ordinary work waits (``yield_to_urgent``), for
  at most ``hold`` seconds from when that urgent work began. One interpreter runs every thread
  here, and a thread back from its I/O waits for whichever holds the interpreter; ordinary work
  (refreshes, fills of earlier exits, the PnL writer's valuation, the rest of a fan-out) kept
  out of the way for those milliseconds leaves the interpreter to the exits. The bound keeps a
  long urgent burst (every position crossing at once, a store outage stalling exits) from
  starving anything: past it, ordinary work runs as usual until no urgent work is left; and a
  new hold starts at most ``2 * hold`` after the last one did, so short bursts back to back
  hold ordinary work half the time at most.

Singleton actors doing ordinary work opt in by calling ``yield_to_urgent`` themselves: the
index (before the ordinary part of a fan-out), the PnL writer and the order-update actor (before
each message). The supervisor does not: it places the exits.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

_STOP = object()


class UrgentAhead(Protocol):
    """Counts urgent work on its way to a dispatcher (``Dispatcher.urgent_ahead``)."""

    def urgent_ahead(self) -> None: ...

    def urgent_arrived(self) -> None: ...


class Dispatcher:
    """A fixed pool of worker threads running scheduled mailboxes; see the module docstring."""

    def __init__(self, workers: int = 4, *, throughput: int = 16, name: str = "dispatch",
                 reserve: int = 0, hold: float = 0.0, count_idle: bool = False) -> None:
        if workers < 1 or throughput < 1:
            raise ValueError("workers and throughput must be at least 1")
        if reserve < 0 or hold < 0:
            raise ValueError("reserve and hold must not be negative")
        self.throughput = throughput
        self.name = name
        self.hold = hold
        # Tasks wait in two deques. Every task puts a token in ``_tokens`` (the C SimpleQueue
        # that wakes the ordinary workers, which take an urgent task when no reserved worker is
        # free); an urgent task also puts one in ``_urgent_tokens`` for the reserved workers. A
        # token may find its task taken by the other kind of worker. A woken worker runs
        # tasks until it finds none it may take, and only then waits for a token again, so a
        # task queued after that finds a token put after it (see ``_drain``).
        self._urgent: deque[Callable[[], object]] = deque()
        self._ordinary: deque[Callable[[], object] | object] = deque()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._urgent_tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._reserved: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._workers, self._reserve = workers, reserve
        self._closed = False
        self._counted = threading.Lock()
        self._idle_reserved = reserve
        """Reserved workers waiting for urgent work: while one is, ordinary workers leave urgent
        tasks to it and keep to ordinary work."""
        self._urgent_now = 0
        """Urgent tasks queued or running (counted only when ``hold`` is set)."""
        self._urgent_since = -math.inf
        """When the current hold began: at most one hold starts per ``2 * hold`` seconds, so a
        stream of short urgent bursts (positions on standing exits told every price, say)
        holds ordinary work back half the time at most, never for good."""
        self._calm = threading.Condition(threading.Lock())
        self._urgent_last = -math.inf
        """When urgent work was last submitted or announced (counted only with ``hold``)."""
        self.conflated = 0
        """Messages replaced in a mailbox by a newer one before they were handled."""
        self.held = 0
        """Times ordinary work waited for urgent work."""
        self._count_idle = count_idle
        self._outstanding = 0
        """Tasks submitted and not yet finished, when ``count_idle`` (for ``wait_idle``)."""
        self._idle = threading.Condition(threading.Lock())

    def start(self) -> Dispatcher:
        with self._lock:
            if self._threads:
                return self
            counter = itertools.count()
            for _ in range(self._workers):
                self._threads.append(self._thread(self._work, f"{self.name}-{next(counter)}"))
            for _ in range(self._reserve):
                self._reserved.append(self._thread(self._work_urgent,
                                                   f"{self.name}-urgent-{next(counter)}"))
        return self

    @staticmethod
    def _thread(target: Callable[[], object], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True, name=name)
        thread.start()
        return thread

    def submit(self, task: Callable[[], object], *, urgent: bool = False) -> None:
        if self._closed:
            raise RuntimeError(f"dispatcher {self.name} is shut down")
        if not self._threads:
            self.start()
        if self._count_idle:
            task = self._tracked(task)
        if urgent:
            if self.hold:
                with self._calm:
                    self._count_urgent()
                    self._urgent.append(task)
                    self._calm.notify_all()  # a worker holding back runs it
            else:
                self._urgent.append(task)
            if self._reserve:
                self._urgent_tokens.put(None)
        else:
            self._ordinary.append(task)
        self._tokens.put(None)

    def _tracked(self, task: Callable[[], object]) -> Callable[[], object]:
        with self._idle:
            self._outstanding += 1

        def run() -> None:
            try:
                task()
            finally:
                with self._idle:
                    self._outstanding -= 1
                    if not self._outstanding:
                        self._idle.notify_all()
        return run

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every task submitted has finished (a task that submits another, a
        mailbox with more to do, keeps it busy); False if ``timeout`` seconds passed first.
        Only for a dispatcher made with ``count_idle`` (a replay's: it costs a lock per task,
        which the live price path does not pay)."""
        if not self._count_idle:
            raise RuntimeError(f"dispatcher {self.name} does not count its tasks")
        with self._idle:
            return self._idle.wait_for(lambda: not self._outstanding, timeout)

    def yield_to_urgent(self) -> None:
        """Ordinary work calls this before it starts: while urgent tasks are queued or running,
        wait until there are none, or until ``hold`` seconds after that urgent work began."""
        if self._urgent_now and time.monotonic() < self._urgent_since + self.hold:
            self._hold_back(worker=False)

    def urgent_ahead(self) -> None:
        """Urgent work is on its way to this dispatcher's mailboxes (an urgent price batch
        between the batcher and the index's fan-out): counted as an urgent task until
        ``urgent_arrived``, so ``wait_for_urgent`` waits for it too. Without it, the first exit
        intent of a wave whose crossing ticks came in two batches found the trackers idle
        while the second batch was still at the index, and was written alone: the rest of the
        wave then waited for that write (BENCHMARKS, the live row). Not counted without
        ``hold``."""
        if self.hold:
            with self._calm:
                self._count_urgent()

    def urgent_arrived(self) -> None:
        """The work announced by ``urgent_ahead`` is told (or will never come)."""
        if self.hold:
            self._urgent_done()

    def _count_urgent(self) -> None:
        """One more urgent task queued or on its way (``_calm`` held); a hold may begin."""
        now = time.monotonic()
        if not self._urgent_now and now - self._urgent_since >= 2 * self.hold:
            self._urgent_since = now
        self._urgent_now += 1
        self._urgent_last = now

    def _urgent_done(self) -> None:
        """One urgent task fewer (never below none); the waiters learn when none is left."""
        with self._calm:
            self._urgent_now = max(0, self._urgent_now - 1)
            if not self._urgent_now:
                self._calm.notify_all()

    def calm_for(self, seconds: float) -> bool:
        """No urgent task is queued or running, and none was submitted or announced in the
        last ``seconds``: a moment for work that stops every thread (``QuietCollector``).
        Without ``hold`` urgent tasks are not counted: always True."""
        return not self._urgent_now and time.monotonic() - self._urgent_last >= seconds

    def wait_for_urgent(self, timeout: float) -> bool:
        """Wait until no urgent task is queued or running, ``timeout`` seconds at most; True
        when none is. A dispatcher without ``hold`` does not count its urgent tasks: True."""
        if not self._urgent_now:
            return True
        deadline = time.monotonic() + timeout
        with self._calm:
            while self._urgent_now:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._calm.wait(left)
        return True

    def _hold_back(self, *, worker: bool) -> None:
        """The wait of ``yield_to_urgent``; a worker stops waiting as soon as an urgent task
        is queued, to run it."""
        waited = False
        with self._calm:
            while self._urgent_now and not (worker and self._urgent and
                                            not self._idle_reserved):
                left = self._urgent_since + self.hold - time.monotonic()
                if left <= 0:
                    break
                waited = True
                self._calm.wait(left)
        if waited:
            with self._counted:
                self.held += 1

    def count_conflated(self) -> None:
        with self._counted:
            self.conflated += 1

    def pending(self) -> int:
        """Mailboxes waiting for a worker: a measure of how far behind the pool is."""
        return len(self._urgent) + len(self._ordinary)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the workers after the tasks already queued; actors should be stopped first."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
            reserved, self._reserved = self._reserved, []
        with self._counted:
            self._idle_reserved = 0  # the reserved workers stop: urgent tasks left go to the rest
        for _ in reserved:
            self._urgent_tokens.put(None)
        for _ in threads:
            self._ordinary.append(_STOP)
            self._tokens.put(None)
        for thread in threads + reserved:
            thread.join(timeout)

    def _take_urgent(self) -> Callable[[], object] | None:
        """An urgent task for an ordinary worker: only when no reserved worker is free."""
        if not self._urgent or self._idle_reserved:
            return None
        try:
            return self._urgent.popleft()
        except IndexError:
            return None

    def _work(self) -> None:
        while True:
            self._tokens.get()
            if not self._drain():
                return

    def _drain(self) -> bool:
        """Run tasks until none is left that this ordinary worker may take (False: stop).

        Tokens only wake workers; a worker goes back to waiting only after it found nothing
        to take. Counting on one token per task is not enough: a token spent while a
        reserved worker was free to take the urgent task in line, and that task then taken
        by an ordinary worker on another task's token, would leave that other task queued
        with no token left to wake anyone for it."""
        while True:
            task = self._take_urgent()
            if task is None and self._urgent_now and \
                    time.monotonic() < self._urgent_since + self.hold:
                self._hold_back(worker=True)
                task = self._take_urgent()  # urgent work that came while this one waited
            if task is not None:
                self._run_urgent(task)
                continue
            try:
                ordinary = self._ordinary.popleft()
            except IndexError:
                return True  # nothing left but urgent work a free reserved worker takes
            if ordinary is _STOP:
                return False
            assert callable(ordinary)
            ordinary()

    def _work_urgent(self) -> None:
        while True:
            self._urgent_tokens.get()
            if self._closed:
                return
            while True:  # as in ``_drain``: back to waiting only when no urgent task is left
                try:
                    task = self._urgent.popleft()
                except IndexError:
                    break  # an ordinary worker took it first
                with self._counted:
                    self._idle_reserved -= 1
                try:
                    self._run_urgent(task)
                finally:
                    with self._counted:
                        if not self._closed:
                            self._idle_reserved += 1
                if self._closed:
                    return

    def _run_urgent(self, task: Callable[[], object]) -> None:
        try:
            task()
        finally:
            if self.hold:
                self._urgent_done()


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    """The process-wide pool used by actors that do not name one."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Dispatcher(name="dispatch").start()
        return _default
