"""Clocks: the only places that read real time. Everything else is given ``now``."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from models.common import IST, Segment
from models.policy import SessionCalendar


class SessionClock:
    """Exchange time that starts at a chosen moment and runs with the wall clock.

    A paper session starts at the open of a trading day, whatever the hour on this machine, so
    its rules behave as in market hours.
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        self.start, self.speed = start, speed
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)


def paper_session_start(wall: datetime, calendar: SessionCalendar) -> datetime:
    """The NSE open (plus a minute) of today if it is a trading day, else of the next one."""
    local = wall.astimezone(IST)
    day = local.date()
    while not calendar.trading_day(day):
        day += timedelta(days=1)
    opened = calendar.next_open(Segment.NSE_FNO, datetime.combine(day, datetime.min.time(),
                                                                  tzinfo=IST))
    return opened + timedelta(minutes=1)


class SharedSession:
    """One exchange time for processes launched at different moments (a paper venue and its
    runners): give each, as its ``DHAN_SESSION_START``, ``start_now()``, the session's time
    at its launch. The session opens at ``paper_session_start`` of the first launch."""

    def __init__(self, calendar: SessionCalendar, wall: datetime | None = None) -> None:
        self.opened = paper_session_start(wall or datetime.now(IST), calendar)
        self._t0 = time.monotonic()

    def start_now(self) -> str:
        """The session's time now, as ``DHAN_SESSION_START`` text (ISO 8601, with offset)."""
        return (self.opened + timedelta(seconds=time.monotonic() - self._t0)).isoformat()


class ManualClock:
    """Simulated time for replay and tests: it moves only when told."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, now: datetime) -> None:
        with self._lock:
            if now > self._now:
                self._now = now
