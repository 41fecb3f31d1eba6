"""The shared pool of worker threads that pooled actors run on (SPEC §2, execution model).

A ``Dispatcher`` runs scheduled mailboxes (``actors/dispatch.py``) on a fixed number of threads,
first come first served, except that urgent mailboxes go first.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable

_STOP = object()


class Dispatcher:
    """A fixed pool of worker threads running scheduled mailboxes, first come first served,
    except that an urgent mailbox (one woken by a message marked ``urgent``, such as a price
    that crossed a position's band) goes ahead of every ordinary one."""

    def __init__(self, workers: int = 4, *, throughput: int = 16, name: str = "dispatch") -> None:
        if workers < 1 or throughput < 1:
            raise ValueError("workers and throughput must be at least 1")
        self.throughput = throughput
        self.name = name
        # Tasks wait in two deques; the C SimpleQueue carries one token per task to wake a
        # worker, which then takes an urgent task if there is one.
        self._urgent: deque[Callable[[], None] | object] = deque()
        self._ordinary: deque[Callable[[], None] | object] = deque()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._workers = workers
        self._closed = False
        self._counted = threading.Lock()
        self.conflated = 0
        """Messages replaced in a mailbox by a newer one before they were handled."""

    def start(self) -> Dispatcher:
        with self._lock:
            if self._threads:
                return self
            counter = itertools.count()
            for _ in range(self._workers):
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{next(counter)}")
                thread.start()
                self._threads.append(thread)
        return self

    def submit(self, task: Callable[[], None], *, urgent: bool = False) -> None:
        if self._closed:
            raise RuntimeError(f"dispatcher {self.name} is shut down")
        if not self._threads:
            self.start()
        (self._urgent if urgent else self._ordinary).append(task)
        self._tokens.put(None)

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
        for _ in threads:
            self._ordinary.append(_STOP)
            self._tokens.put(None)
        for thread in threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            self._tokens.get()
            try:
                task = self._urgent.popleft()
            except IndexError:
                task = self._ordinary.popleft()
            if task is _STOP:
                return
            assert callable(task)
            task()


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    """The process-wide pool used by actors that do not name one."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Dispatcher(name="dispatch").start()
        return _default
