"""Messages in flight: put into an inbox and not yet handled, across every actor of a system.

A replay (``Parts(settle_on_idle=True)``) waits after each event until the system has nothing
left to do. It used to ask every singleton in pipeline order, and then the trackers' pool,
whether it was done (a round trip through each sleeping thread, several rounds per event:
two thirds of a busy day's replay time). With a count of the messages in flight the wait is one
condition: every inbox counts a message up when it is put and down when its handler has
returned, or when it is dropped (answered for a stopped actor, handed on as undelivered). A
handler's own tells are put before it returns, so the count reaches zero only when no message
is queued or being handled anywhere: the system is idle until something from outside (the
next event, a timer step) puts a message again.

Only a system built for replay counts (``counting`` is set while it runs); inboxes made
meanwhile keep the counter they were made with, so an actor started later by an actor (a
tracker, a gateway actor) counts too. Live and paper systems count nothing.
"""

from __future__ import annotations

import threading


class InFlight:
    __slots__ = ("_cond", "count", "total")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.count = 0
        self.total = 0
        """Messages ever put: unchanged since the system was last idle, nothing happened."""

    def add(self) -> None:
        with self._cond:
            self.count += 1
            self.total += 1

    def done(self, n: int = 1) -> None:
        with self._cond:
            self.count -= n
            if self.count <= 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight (True), or ``timeout`` seconds (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count <= 0, timeout)


_counting: InFlight | None = None


def counting() -> InFlight | None:
    """The counter inboxes made now count into (None: they count nothing)."""
    return _counting


def count_into(counter: InFlight | None) -> None:
    """Inboxes made from now on count into ``counter`` (None: into nothing)."""
    global _counting
    _counting = counter
