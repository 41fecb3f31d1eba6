"""The clock as messages (STYLE §4): a ticker thread tells actors when time passes.

Live and paper runs use ``Ticker`` on the wall clock; replay drives the same messages from its
simulated clock, so actors never read time on their own initiative.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.protocol import Flush
from models.messages import TimerFired, new_id


@dataclass(frozen=True)
class Schedule:
    """Who hears of time, and how often."""

    flush_every: timedelta = timedelta(milliseconds=50)
    timer_every: timedelta = timedelta(seconds=1)


def fire(now: datetime, *, flush_to: list[ActorRef[Any]], timer_to: list[ActorRef[Any]],
         timer: bool) -> None:
    """One step of time: a flush for the batching actors and, when due, a timer."""
    for ref in flush_to:
        ref.tell(Flush(at=now))
    if timer:
        message = TimerFired(name="tick", correlation_id=new_id(), sent_at=now)
        for ref in timer_to:
            ref.tell(message)


class Ticker:
    def __init__(self, clock: Callable[[], datetime], schedule: Schedule, *,
                 flush_to: list[ActorRef[Any]], timer_to: list[ActorRef[Any]],
                 on_step: Callable[[datetime], None] | None = None) -> None:
        self.clock, self.schedule = clock, schedule
        self.flush_to, self.timer_to, self.on_step = flush_to, timer_to, on_step
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Ticker:
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        last_timer = self.clock()
        interval = self.schedule.flush_every.total_seconds()
        while not self._halt.wait(interval):
            now = self.clock()
            try:
                if self.on_step is not None:
                    self.on_step(now)
                due = now - last_timer >= self.schedule.timer_every
                if due:
                    last_timer = now
                fire(now, flush_to=self.flush_to, timer_to=self.timer_to, timer=due)
            except ActorDeadError:
                return  # the system is stopping
            except Exception as error:  # a driver bug must not stop time
                logger.opt(exception=error).error("ticker step failed")
