"""StopWriterActor: the trailing stops that tightened, stored many positions at a time (SPEC §11.5).

A tracker whose stop tightens on a price tells this actor the position (one version on) in a
``StoreStop``, and folds no price that would move its stop again until it hears ``StopStored``
(``PositionKeeper``): a stop is durable before the position's next price batch moves it, so a
restart or a kill -9 resumes with a stop at least as tight as the one in force one batch
earlier. Exits do not wait for it: a price that decides an exit is evaluated at once, and the
exit's own write carries the marks.

The writer takes every ``StoreStop`` waiting in its mailbox, keeps the newest version of each
position and stores them with one ``Store.save_marks`` (one statement or one transaction, one
commit) when its mailbox is empty or before any other message (a settle's question, a stop), so
mailbox order holds. A batch whose stops tighten costs one write, a few when some trackers
finish after the write has begun; a batch that tightens none costs none. Every sender hears
back, also when the write fails: then each tracker stores its own stop, and its outage handling
(SPEC §11.4) takes over from there.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from loguru import logger
from pykka import ActorDeadError

from actors.protocol import StopStored, StoreStop
from actors.runtime.group import GroupWriter
from actors.runtime.metrics import Metrics
from models.messages import new_id
from store.ports import Store


class StopWriterActor(GroupWriter[StoreStop]):
    trace_kind = "stops"
    kind = StoreStop
    label = "stop writer"

    def __init__(self, store: Store, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.store, self.metrics, self.clock = store, metrics, clock

    def write(self, due: list[StoreStop]) -> None:
        """Store what is due in one write, then answer every sender."""
        newest: dict[str, StoreStop] = {}
        for message in due:
            kept = newest.get(message.position.position_id)
            if kept is None or kept.position.version <= message.position.version:
                newest[message.position.position_id] = message
        error: str | None = None
        written: set[str] = set()
        try:
            written = self.store.save_marks([m.position for m in newest.values()])
        except Exception as failure:  # every sender must hear back, whatever broke the write
            error = f"{type(failure).__name__}: {failure}"
            self.metrics.incr("stop_write_failures")
            logger.error("storing {} tightened stops failed ({}); each tracker stores its own",
                         len(newest), error)
        else:
            self.metrics.incr("stop_writes")
            self.metrics.incr("stops_stored", len(newest))
        now = self.clock()
        for message in due:
            position = message.position
            try:
                message.owner.tell(StopStored(
                    position_id=position.position_id, version=position.version,
                    correlation_id=message.correlation_id, causation_id=message.message_id,
                    message_id=new_id(), sent_at=now, error=error,
                    written=position.position_id in written
                    and newest[position.position_id] is message))
            except ActorDeadError:
                continue  # a tracker that failed meanwhile: its next owner starts from memory
