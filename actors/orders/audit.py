"""The order-update actor's calls to the store, none of which raises, and what it keeps while
the store fails, to store later: the actor never stops and nothing is lost (SPEC §4.1, §6).

- **Frames.** One that could not be stored is kept in memory and the update it carries is
  still routed: the fill matters more than its audit row, and the trackers persist their own
  state. Frames that come meanwhile queue up behind it, so the table keeps the order frames
  came in, each once. Past ``limit`` the oldest is dropped, its raw text logged at error level.
- **Refusals.** A frame the store cannot hold although it is up (``StoreRefused``, or an error
  that is no ``StoreError``) would hold up those behind it for ever: it is stored with its
  texts as ``ascii()`` instead (``ast.literal_eval`` reverses it), its reason saying so.
- **Parks.** One that could not be stored is kept in memory, delivered from there when its
  order becomes known, stored when the store is back if still parked. Orders whose
  ``take_parked`` failed come back from ``recheck`` once the store works; a failed start-up
  read of the parked updates is retried, and until then every new order looks for some.

What waits is stored, oldest first, at the first chance once ``retry_every`` has passed since
the last failure: the next frames, any other message the actor handles (``FlushFrames``, asks,
position events, a ``TimerFired``), its stop; a ``RetryStore`` tries at once. So a store that
is down costs one attempt per ``retry_every``, not a timeout per frame, and fills flow on.

An outage is logged at error level when it starts, with what is kept, and at warning level
when it ends, with what was stored late: once each (``Outage``). ``unstored`` and the
metrics ``unstored_frames`` and ``unstored_parks`` (in the status and the report) count what
waits.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, islice

from loguru import logger

from actors.runtime.metrics import Metrics
from store.ports import FrameBatches, LeaseLost, Store, StoreError, StoreRefused
from store.records import ParkedUpdate, ReceivedFrame


@dataclass(frozen=True, slots=True)
class RetryStore:
    """To the order-update actor: store what waits now, whatever the wait (an operator, a
    health probe, a test)."""


def refused(error: Exception) -> bool:
    """The data, not the store: the same call would fail again while the store is up. A
    write under a lost lease (``LeaseLost``) is not: the frame waits (its partition's next
    owner has it from the stream), never rewritten in a safe form."""
    return isinstance(error, StoreRefused) or not isinstance(error, StoreError | LeaseLost)


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


class OrderAudit:
    """Owned by one actor and called from its thread only."""

    def __init__(self, store: Store, metrics: Metrics, clock: Callable[[], datetime], *,
                 limit: int = 100_000, retry_every: timedelta = timedelta(seconds=1),
                 chunk: int = 500) -> None:
        self.store, self.metrics, self.clock = store, metrics, clock
        self.batches = store if isinstance(store, FrameBatches) else None
        self.limit, self.chunk = limit, chunk
        self.frames: deque[ReceivedFrame] = deque()
        """Frames not stored yet, oldest first."""
        self.parks: deque[ParkedUpdate] = deque()
        """Parked updates not stored yet, oldest first."""
        self.unstorable: list[ParkedUpdate] = []
        """Parked updates the store refused: in memory until their order is known."""
        self.stored_for: Counter[str] = Counter()
        """Order number → updates parked for it in the store."""
        self.stored_total = 0
        self.stored_through = 0
        """The highest sequence number the store gave a frame stored here."""
        self.parked_known = True
        """Whether ``stored_for`` is known (False while the start-up read fails)."""
        self.untaken: set[str] = set()
        """Orders to look up again: their parked updates could not be taken."""
        self.outage = Outage(clock, retry_every)
        self._gauges = (0, 0)
        for gauge in ("unstored_frames", "unstored_parks"):  # shown at 0 before any outage
            metrics.incr(gauge, 0)

    @property
    def unstored(self) -> int:
        """Frames waiting to be stored."""
        return len(self.frames)

    @property
    def parked(self) -> int:
        """Updates parked, in the store and in memory."""
        return self.stored_total + len(self.parks) + len(self.unstorable)

    @property
    def waiting(self) -> bool:
        return bool(self.frames or self.parks or self.untaken) or not self.parked_known

    # Frames -----------------------------------------------------------------------------------
    def record(self, rows: Sequence[ReceivedFrame]) -> None:
        """Store the frames, in order; keep for later those the store does not take now."""
        if self.frames or self.outage.backing_off():  # behind those waiting, in order
            self._keep(rows)
            self.retry()
            return
        stored = self._write(rows)
        self._keep(rows[stored:])
        self._settle()

    def _write(self, rows: Sequence[ReceivedFrame]) -> int:
        """Store ``rows`` in order, in one transaction when there are several; how many, from
        the first, are stored: all, unless the store failed."""
        if len(rows) > 1 and self.batches is not None:
            try:
                self._stored(self.batches.record_order_updates(rows))
                return len(rows)
            except Exception as error:  # one by one: a refused frame takes no other down
                if self.outage.since is None:  # in an outage, its own log says it all
                    logger.warning("{} order-update frames not stored as a batch ({}); one by "
                                   "one", len(rows), brief(error))
        for n, row in enumerate(rows):
            if not self._write_one(row):
                return n
        return len(rows)

    def _write_one(self, row: ReceivedFrame) -> bool:
        try:
            self._record(row)
            return True
        except Exception as error:
            if not refused(error):
                self.outage.failed(error)
                return False
            safe = safe_form(row, error)
        logger.bind(order_no=row.order_no).error("order-update frame {}: {:.500}", safe.reason,
                                                 safe.raw)
        try:
            self._record(safe)
            return True
        except Exception as error:
            self.outage.failed(error)
            return False

    def _record(self, row: ReceivedFrame) -> None:
        self._stored([self.store.record_order_update(
            row.raw, row.received_at, order_no=row.order_no, accepted=row.accepted,
            reason=row.reason)])

    def _stored(self, seqs: Sequence[int]) -> None:
        self.stored_through = max((self.stored_through, *seqs))

    @property
    def durable(self) -> bool:
        """Every frame and parked update handed in is in the store (none waits in memory)."""
        return not (self.waiting or self.unstorable)

    def _keep(self, rows: Sequence[ReceivedFrame]) -> None:
        self.frames.extend(rows)
        while len(self.frames) > self.limit:
            dropped = self.frames.popleft()
            self.metrics.incr("unstored_frames_dropped")
            logger.error("order-update frame dropped: {} frames already wait for the store; its "
                         "raw text is recorded only here: {}", self.limit, dropped.raw)

    # Parked updates ---------------------------------------------------------------------------
    def load_parked(self) -> None:
        """Learn what is parked in the store (at start-up); retried until it succeeds."""
        self._load_parked()
        self._settle()

    def _load_parked(self) -> None:
        try:
            parked = self.store.parked_updates()
        except Exception as error:
            self.parked_known = False
            self.outage.failed(error)
            return
        self.stored_for = Counter(item.order_no for item in parked)
        self.stored_total = len(parked)
        if not self.parked_known:  # orders learnt meanwhile may have updates waiting
            self.parked_known = True
            self.untaken |= set(self.stored_for)

    def has_parked(self, order_no: str) -> bool:
        if not self.parked_known or order_no in self.stored_for:
            return True
        return any(item.order_no == order_no for item in chain(self.parks, self.unstorable))

    def park(self, order_no: str, raw: str) -> None:
        item = ParkedUpdate(order_no=order_no, parked_at=self.clock(), raw=raw)
        if self.parks or self.outage.backing_off() or not self._place(item):  # as frames do
            self.parks.append(item)
            if len(self.parks) > self.limit:
                dropped = self.parks.popleft()
                logger.error("parked update dropped: {} already wait for the store; its raw "
                             "text is recorded only here: {}", self.limit, dropped.raw)
        self._settle()

    def _place(self, item: ParkedUpdate) -> bool:
        """Store a parked update, or set it aside if the store refuses it; False on failure."""
        try:
            self.store.park_update(item.order_no, item.raw, item.parked_at)
        except Exception as error:
            if not refused(error):
                self.outage.failed(error)
                return False
            logger.bind(order_no=item.order_no).error(
                "parked update refused by the store ({}), kept in memory until its order is "
                "known: {:.500}", brief(error), item.raw)
            self.unstorable.append(item)
            return True
        self.stored_for[item.order_no] += 1
        self.stored_total += 1
        return True

    def take(self, order_no: str) -> list[ParkedUpdate]:
        """The updates parked for ``order_no``, from the store then from memory; if the store
        fails, those it holds are handed back by ``recheck`` once it works."""
        taken = self._take_stored(order_no)
        kept = [item for item in chain(self.parks, self.unstorable) if item.order_no == order_no]
        if kept:
            self.parks = deque(item for item in self.parks if item.order_no != order_no)
            self.unstorable = [item for item in self.unstorable if item.order_no != order_no]
        self._settle()
        return [*taken, *kept]

    def _take_stored(self, order_no: str) -> list[ParkedUpdate]:
        if self.parked_known and order_no not in self.stored_for:
            return []
        if self.outage.backing_off():
            self.untaken.add(order_no)
            return []
        try:
            # Stored again as frames in the same write: the mark of applied frames may have
            # passed their first copies, and what they change is not stored yet.
            taken = self.store.take_parked(order_no, refile_at=self.clock())
        except Exception as error:
            self.outage.failed(error)
            self.untaken.add(order_no)
            return []
        self.stored_total -= self.stored_for.pop(order_no, 0)
        return taken

    def recheck(self) -> Iterator[str]:
        """Orders to look up again for parked updates, while the store works: one that fails
        again is kept (``take``) and ends the round."""
        while self.untaken and not self.outage.failing:
            yield self.untaken.pop()

    # Retries ----------------------------------------------------------------------------------
    def retry(self, *, force: bool = False) -> None:
        """Store what waits, oldest first, once the wait since the last failure is over."""
        if self.waiting and (force or not self.outage.backing_off()):
            self.outage.next_try = None
            if not self.parked_known:
                self._load_parked()
            if not self.outage.failing and self._write_kept_frames():
                self._place_kept_parks()
        self._settle()

    def _write_kept_frames(self) -> bool:
        while self.frames:
            chunk = list(islice(self.frames, self.chunk))
            stored = self._write(chunk)
            for _ in range(stored):
                self.frames.popleft()
            self.outage.stored_late(frames=stored)
            if stored < len(chunk):
                return False
        return True

    def _place_kept_parks(self) -> None:
        while self.parks and self._place(self.parks[0]):
            self.parks.popleft()
            self.outage.stored_late(parks=1)

    def close(self) -> None:
        """At the stop: a last try, then whatever still waits is logged in full."""
        self.retry(force=True)
        for row in self.frames:
            logger.error("order-update frame not stored at the stop: {}", row.raw)
        for item in chain(self.parks, self.unstorable):
            logger.error("parked update of {} not stored at the stop: {}", item.order_no,
                         item.raw)

    # Outages ----------------------------------------------------------------------------------
    def _settle(self) -> None:
        """Log an outage's start and end, once each; publish the counts of what waits."""
        self.outage.settle(waiting=self.waiting, frames=len(self.frames), parks=len(self.parks),
                           orders=len(self.untaken), limit=self.limit)
        frames, parks = len(self.frames), len(self.parks) + len(self.unstorable)
        if (frames, parks) != self._gauges:
            self.metrics.incr("unstored_frames", frames - self._gauges[0])
            self.metrics.incr("unstored_parks", parks - self._gauges[1])
            self._gauges = (frames, parks)
