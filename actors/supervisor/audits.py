"""Exit attempts' audit columns (``order_no``, ``outcome``) the store did not take when a
position's keeper wrote them: kept by the supervisor, which outlives the position, and written
at its timers once the store is back (SPEC §11.4: nothing is lost to an outage).

A keeper writes an attempt's columns itself; one that fails is handed over (``ExitAudit``),
and so is every later change of that attempt, so the columns end as they would have without
the outage: changes are merged in the order they were made (a later value wins).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from loguru import logger

from actors.protocol import ExitAudit
from store.ports import Store, StoreError

RETRY_EVERY = timedelta(seconds=1)


class PendingAudits:
    """Owned by the supervisor and called from its thread only."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store, self.clock = store, clock
        self.pending: dict[str, dict[str, str]] = {}
        """Client id → the columns to write, oldest attempt first."""
        self.since: datetime | None = None
        self.next_try: datetime | None = None

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, audit: ExitAudit) -> None:
        changes = self.pending.setdefault(audit.client_id, {})
        changes.update({k: v for k, v in (("order_no", audit.order_no),
                                          ("outcome", audit.outcome)) if v is not None})
        if self.since is None:
            self.since = self.clock()
            logger.bind(client_id=audit.client_id).error(
                "exit attempt {}'s audit columns not stored ({}): kept, written once the "
                "store takes them", audit.client_id, audit.error)

    def write(self) -> None:
        """Write what waits, oldest first, unless the last try failed less than a second ago."""
        now = self.clock()
        if not self.pending or (self.next_try is not None and now < self.next_try):
            return
        for client_id, changes in list(self.pending.items()):
            try:
                self.store.update_exit_attempt(client_id, **changes)
            except StoreError:
                self.next_try = now + RETRY_EVERY
                return
            del self.pending[client_id]
        logger.warning("exit attempts' audit columns stored late, after {}",
                       now - (self.since or now))
        self.since = self.next_try = None

    def close(self) -> None:
        """At the stop: a last try; what still waits is logged in full."""
        self.next_try = None
        self.write()
        for client_id, changes in self.pending.items():
            logger.error("exit attempt {}'s audit columns not stored at the stop: {}", client_id,
                         changes)
