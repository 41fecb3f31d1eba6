"""A small pool of PostgreSQL connections, so actors on different threads do not queue behind
one connection (the order-update actor and the tracker workers each hold one for a single
short transaction, then give it back).

Connections are opened on demand, up to ``size``, and reused last-in first-out, so a store used
from one thread keeps one connection. A connection given back broken (the server dropped it) is
closed, and so are the idle ones: they were opened to the same server and are most likely dead
too, so a database restart costs the calls made while it was down, not one failure per pooled
connection afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from store.ports import StoreError

Connection = psycopg.Connection[tuple[Any, ...]]


class ConnectionPool:
    def __init__(self, connect: Callable[[], Connection], *, size: int, wait: float,
                 name: str) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self._connect, self._size, self._wait, self._name = connect, size, wait, name
        self._idle: list[Connection] = []
        self._opened = 0
        self._closed = False
        self._free = threading.Condition()

    @property
    def opened(self) -> int:
        """Connections open now, idle or in use."""
        return self._opened

    def open_one(self) -> None:
        """Open a connection now, so a bad URL or an unreachable server fails at start-up."""
        with self.connection():
            pass

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    def close(self) -> None:
        """Close the idle connections now and the others as they are given back."""
        with self._free:
            self._closed = True
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            self._free.notify_all()
        _close_all(idle)

    def _take(self) -> Connection:
        with self._free:
            if not self._free.wait_for(self._can_take, timeout=self._wait):
                raise StoreError(f"{self._name}: all {self._size} connections busy for "
                                 f"{self._wait:g} s")
            if self._closed:
                raise StoreError(f"{self._name}: the store is closed")
            if self._idle:
                return self._idle.pop()
            self._opened += 1  # reserved before connecting, outside the lock
        try:
            return self._connect()
        except BaseException:
            with self._free:
                self._opened -= 1
                self._free.notify()
            raise

    def _can_take(self) -> bool:
        return self._closed or bool(self._idle) or self._opened < self._size

    def _give(self, conn: Connection) -> None:
        status = conn.info.transaction_status
        reusable = not conn.closed and status is TransactionStatus.IDLE
        dropped: list[Connection] = []
        with self._free:
            if reusable and not self._closed:
                self._idle.append(conn)
            else:
                self._opened -= 1
                dropped.append(conn)
                if conn.closed or status is TransactionStatus.UNKNOWN:
                    dropped += self._idle
                    self._opened -= len(self._idle)
                    self._idle = []
            self._free.notify()
        _close_all(dropped)


def _close_all(connections: list[Connection]) -> None:
    for conn in connections:
        conn.close()
