"""Raw order-update frames handled in batches: one commit for the frames that queued up.

Every raw frame is stored, durably, before the update it carries is routed (SPEC §4.1, §6).
Stored one by one, that is one commit (a WAL flush) per frame on the order-update actor's single
thread, the ceiling of the whole order path. So a frame that arrives while more messages are
waiting is held; the held frames are stored in one transaction (``FrameBatches``) and then
routed in order, when

- the batch is full, or a frame finds the inbox empty (nothing more to wait for);
- a ``FlushFrames`` the actor told itself when it first held a frame comes up, so a frame is
  never left waiting when the feed goes quiet;
- any other message is about to be handled (an ask, a position event, a stop): mailbox order is
  kept, so nothing told after a frame is handled before it.

A frame is thus held only while other messages, already queued, are handled: under light load
every frame is stored and routed at once, as before. When no frame is held, those same moments
give ``store_later`` its chance to store what a store outage left in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from models.messages import OrderUpdateReceived


@dataclass(frozen=True, slots=True)
class FlushFrames:
    """To the order-update actor itself: store and route the frames held for a batch."""


class BatchesFrames(pykka.ThreadingActor):
    """Mixin of the order-update actor; it must follow ``Traced`` in the class's bases' order
    (``class A(SingletonActor, BatchesFrames)``), so a flush is traced with the message that
    caused it."""

    batch_limit = 64
    """Frames stored in one transaction at most."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[OrderUpdateReceived] = []
        self._flush_told = False

    def handle_frames(self, frames: list[OrderUpdateReceived]) -> None:
        """Store, then route, these frames, in order."""
        raise NotImplementedError

    def store_later(self) -> None:
        """Store what the store did not take earlier, if it is time to try again."""

    def hold(self, frame: OrderUpdateReceived) -> None:
        self._held.append(frame)
        if len(self._held) >= self.batch_limit or self.actor_inbox.empty():
            self.flush_frames()
        elif not self._flush_told:
            self._flush_told = True
            self.actor_ref.tell(FlushFrames())

    def flush_frames(self) -> None:
        held, self._held = self._held, []
        try:
            if held:
                self.handle_frames(held)
            else:
                self.store_later()
        except Exception:
            # Not the store's failure (handle_frames keeps what it does not take) but a bug:
            # logged, and not raised, since a tell handler that raises stops the actor, and
            # every fill after it would be lost.
            logger.opt(exception=True).error("handling {} held order-update frames failed",
                                             len(held))

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, FlushFrames):
            self._flush_told = False
            self.flush_frames()
            return None
        if not isinstance(message, OrderUpdateReceived):
            self.flush_frames()
        return super()._handle_receive(message)
