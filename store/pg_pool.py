"""A small pool of PostgreSQL connections, so actors on different threads do not queue behind
one connection (the order-update actor and the tracker workers each hold one for a single
short transaction, then give it back).

Connections are opened on demand, up to ``size``, and reused last-in first-out, so a store used
from one thread keeps one connection. Each comes with one cursor that every call on it reuses:
creating a psycopg cursor costs about as much CPU as sending a small statement. A connection
given back broken (the server dropped it) is closed, and so are the idle ones: they were opened
to the same server and are most likely dead too, so a database restart costs the calls made
while it was down, not one failure per pooled connection afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from store.ports import StoreError

Connection = psycopg.Connection[tuple[Any, ...]]


class Pooled:
    """A connection and its cursor; the cursor keeps its last result until its next statement."""

    __slots__ = ("conn", "cursor")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()


class ConnectionPool:
    def __init__(self, connect: Callable[[], Connection], *, size: int, wait: float,
                 name: str) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self._connect, self._size, self._wait, self._name = connect, size, wait, name
        self._idle: list[Pooled] = []
        self._opened = 0
        self._closed = False
        self._free = threading.Condition()

    @property
    def opened(self) -> int:
        """Connections open now, idle or in use."""
        return self._opened

    def open_one(self) -> None:
        """Open a connection now, so a bad URL or an unreachable server fails at start-up."""
        self.give(self.take())

    def fill(self, count: int) -> None:
        """Open connections until ``count`` (at most ``size``) are open, idle or in use."""
        with self._free:
            missing = min(count, self._size) - self._opened
            if self._closed or missing <= 0:
                return
            self._opened += missing  # reserved before connecting, outside the lock
        opened: list[Pooled] = []
        dropped: list[Pooled] = []
        try:
            for _ in range(missing):
                opened.append(Pooled(self._connect()))
        finally:
            with self._free:
                self._opened -= missing - len(opened)
                if self._closed:
                    self._opened -= len(opened)
                    dropped, opened = opened, []
                else:
                    self._idle[:0] = opened  # behind those used lately: they stay in use first
                self._free.notify_all()
            _close_all(dropped)

    def close(self) -> None:
        """Close the idle connections now and the others as they are given back."""
        with self._free:
            self._closed = True
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            self._free.notify_all()
        _close_all(idle)

    def take(self) -> Pooled:
        """An idle connection, a new one while fewer than ``size`` are open, or the first one
        given back; ``StoreError`` when closed or when none is free within ``wait``."""
        with self._free:
            if not self._idle and not self._free.wait_for(self._can_take, timeout=self._wait):
                raise StoreError(f"{self._name}: all {self._size} connections busy for "
                                 f"{self._wait:g} s")
            if self._closed:
                raise StoreError(f"{self._name}: the store is closed")
            if self._idle:
                return self._idle.pop()
            self._opened += 1  # reserved before connecting, outside the lock
        try:
            return Pooled(self._connect())
        except BaseException:
            with self._free:
                self._opened -= 1
                self._free.notify()
            raise

    def give(self, pooled: Pooled) -> None:
        conn = pooled.conn
        status = conn.pgconn.transaction_status  # conn.info would build an object per call
        reusable = not conn.closed and status == TransactionStatus.IDLE
        dropped: list[Pooled] = []
        with self._free:
            if reusable and not self._closed:
                self._idle.append(pooled)
            else:
                self._opened -= 1
                dropped.append(pooled)
                if conn.closed or status == TransactionStatus.UNKNOWN:
                    dropped += self._idle
                    self._opened -= len(self._idle)
                    self._idle = []
            self._free.notify()
        _close_all(dropped)

    def _can_take(self) -> bool:
        return self._closed or bool(self._idle) or self._opened < self._size


def _close_all(pooled: list[Pooled]) -> None:
    for item in pooled:
        item.conn.close()
