"""A store outage as the order-update actor lives it (``order_audit.py``): when it began, when
to try again, what was stored late, and its two log lines, one when it starts and one when it
ends, never one per frame. And how a failed call is told apart: an outage, to wait out, or a
refusal of the data itself, to set aside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from loguru import logger

from store.ports import StoreError, StoreRefused
from store.records import ReceivedFrame


@dataclass(frozen=True, slots=True)
class RetryStore:
    """To the order-update actor: store what waits now, whatever the wait (an operator, a
    health probe, a test)."""


def refused(error: Exception) -> bool:
    """The data, not the store: the same call would fail again while the store is up."""
    return isinstance(error, StoreRefused) or not isinstance(error, StoreError)


def safe_form(row: ReceivedFrame, error: Exception) -> ReceivedFrame:
    """The frame with its texts as ASCII Python literals, which any store can hold."""
    refusal = brief(error).encode("ascii", "backslashreplace").decode()
    why = f"stored as ascii(), the store refused it as received: {refusal}"
    return ReceivedFrame(raw=ascii(row.raw), received_at=row.received_at,
                         order_no=None if row.order_no is None else ascii(row.order_no),
                         accepted=row.accepted,
                         reason=why if row.reason is None else f"{why}; {row.reason!a}")


def brief(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]


class Outage:
    def __init__(self, clock: Callable[[], datetime], retry_every: timedelta) -> None:
        self.clock, self.retry_every = clock, retry_every
        self.since: datetime | None = None
        """When the first call of this outage failed; None while the store works."""
        self.next_try: datetime | None = None
        """Set by a failure, cleared when a retry begins: nothing is tried before it."""
        self._error = ""
        self._announced = False
        self.late_frames = self.late_parks = 0

    @property
    def failing(self) -> bool:
        """A call failed since the last retry began."""
        return self.next_try is not None

    def backing_off(self) -> bool:
        return self.next_try is not None and self.clock() < self.next_try

    def failed(self, error: Exception) -> None:
        now = self.clock()
        self.next_try = now + self.retry_every
        if self.since is None:
            self.since, self._error, self._announced = now, brief(error), False
            self.late_frames = self.late_parks = 0

    def stored_late(self, *, frames: int = 0, parks: int = 0) -> None:
        if self.since is not None:
            self.late_frames += frames
            self.late_parks += parks

    def settle(self, *, waiting: bool, frames: int, parks: int, orders: int, limit: int) -> None:
        """Log the outage's start (with what is kept) or, once nothing waits, its end."""
        if self.since is None:
            return
        if not waiting:
            logger.warning("order-update store back after {}: {} frames and {} parked updates "
                           "stored late, in order", self.clock() - self.since, self.late_frames,
                           self.late_parks)
            self.since = None
        elif not self._announced:
            self._announced = True
            logger.error("order-update store failing ({}): {} frames and {} parked updates kept "
                         "in memory (at most {} each), {} orders to look up again; stored at "
                         "the next frames or messages, {:g} s apart at least; updates are still "
                         "routed", self._error, frames, parks, limit, orders,
                         self.retry_every.total_seconds())
