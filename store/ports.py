"""The ports actors depend on. Concrete adapters live beside this module; only ``run.py``'s
``build_system`` pairs them with the actors.

Error tree of the store::

    StoreError                 any failure of the storage backend (connection, SQL, disk)
    ├── StaleWriteError        a position write carried a version older than the stored one
    └── StoreRefused           the backend is up but cannot hold a value of this call (text it
                               cannot encode, a broken constraint): the same call fails again

    LeaseLost                  not a StoreError (retrying cannot help): the partition's lease
                               is another owner's now, or expired; stop the partition at once
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from models.closed import PlainClosed
from models.position import Fill, Position, PositionStatus
from store.records import (
    DeadLetter,
    ExitAttempt,
    KillSwitch,
    ParkedUpdate,
    PnLEntry,
    ReceivedFrame,
    StoredOrderUpdate,
)


class StoreError(Exception):
    """The storage backend failed; the caller decides whether to retry."""


class StaleWriteError(StoreError):
    """A position write was older than what is stored: a restarted actor raced its past self."""


class StoreRefused(StoreError):
    """The data, not the store: retrying the same call will not help, another value may."""


class Store(Protocol):
    """Durable state of one account. Every method is one short transaction; re-applied writes
    are no-ops. Every row it writes carries ``account`` and every read sees only that
    account's rows (a position id is unique per account)."""

    @property
    def account(self) -> str:
        """The account whose state this store holds (fixed when it is made)."""

    @property
    def queries(self) -> int:
        """Statements executed so far (for the metrics of SPEC §7 and §9)."""

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call at every start."""

    def schema_version(self) -> int: ...

    def prepare(self, concurrency: int) -> None:
        """Get ready for ``concurrency`` callers at once (open the connections they will need
        now, not in the middle of a burst of exits); a store without connections does
        nothing."""

    def close(self) -> None: ...

    # Positions and fills ---------------------------------------------------------------------
    def save_position(self, position: Position, fills: Sequence[Fill] = ()) -> None:
        """Upsert the position (only if its version is newer) and insert its new fills, in one
        transaction. A fill already stored (same order and cumulative quantity) is ignored.
        Raises ``StaleWriteError`` when the stored version is newer than ``position.version``."""

    def save_positions(self, positions: Sequence[Position]) -> None:
        """Upsert many positions in one transaction (marks checkpoints, bulk loads)."""

    def save_marks(self, positions: Sequence[Position]) -> set[str]:
        """Write positions whose trailing stop tightened, many at once (SPEC §11.5): each
        replaces the stored row only where it is newer (a higher version), in one statement or
        one transaction, durable when this returns. A position stored at the same or a newer
        version is left as stored (its owner wrote since, or it is the same write again), and
        one never stored is not created. Returns the ids of the positions written."""

    def load_position(self, position_id: str) -> Position | None: ...

    def load_open_positions(self) -> list[Position]:
        """Every PENDING, ACTIVE or EXITING position, in one query, oldest first."""

    def list_positions(self, status: PositionStatus | None = None, *,
                       exited_since: datetime | None = None) -> list[Position]:
        """All positions (or those in ``status``; exited at ``exited_since`` or later), oldest
        first."""

    def closed_between(self, since: datetime, until: datetime
                       ) -> tuple[list[Position], list[PlainClosed]]:
        """Positions exited at ``since`` or later and before ``until`` (a start's closed
        positions of the day), oldest first: those stored plain as their digests
        (``models.closed.digest``), every other one whole."""

    def fills(self, position_id: str) -> list[Fill]: ...

    # Raw order updates and parking -----------------------------------------------------------
    def record_order_update(self, raw: str, received_at: datetime, *, order_no: str | None,
                            accepted: bool, reason: str | None = None) -> int:
        """Store a raw frame as received and return its sequence number. Any text is kept
        exactly, a NUL too; ``StoreRefused`` when the backend cannot hold a value even so."""

    def order_updates(self, since: datetime | None = None, *,
                      after: int = 0) -> list[StoredOrderUpdate]:
        """The frames stored (received at ``since`` or later, sequence number above
        ``after``), in the order they were stored."""

    def frames_mark(self) -> int:
        """The sequence number through which every stored frame is applied to the stored state
        (``mark_frames``); 0 when none is marked."""

    def mark_frames(self, through: int) -> None:
        """Every frame stored with a sequence number up to ``through`` is applied, and what it
        changed is stored: a start-up need not route them again. A mark never moves back."""

    def park_update(self, order_no: str, raw: str, parked_at: datetime) -> None: ...

    def take_parked(self, order_no: str, *,
                    refile_at: datetime | None = None) -> list[ParkedUpdate]:
        """Remove and return the updates parked for ``order_no``, oldest first. With
        ``refile_at``, in the same transaction, each is stored again as a frame received then
        (reason ``unparked``): a frame parked before the applied mark (``mark_frames``) must not
        lose its last durable copy before what it changes is stored."""

    def parked_updates(self) -> list[ParkedUpdate]: ...

    # Exits -----------------------------------------------------------------------------------
    def record_exit_attempt(self, attempt: ExitAttempt) -> bool:
        """Insert the attempt; False when (position_id, attempt) is already stored."""

    def record_exit(self, attempt: ExitAttempt, position: Position) -> bool:
        """``record_exit_attempt`` and ``save_position`` (no fills) as one write: the exit's
        intent and the position that requests it are stored together, in one round trip where
        the backend can. Returns what ``record_exit_attempt`` would; raises as
        ``save_position`` does (the attempt stays stored: it is the intent, and a restart
        resumes it)."""

    def record_exits(self, exits: Sequence[tuple[ExitAttempt, Position]]) -> set[str]:
        """Many exits' ``record_exit`` in one write (one commit): every attempt, and each
        position where the store holds an older version or none. Returns the ids of the
        positions written; one not written is left to its caller to tell apart (its own later
        write, or another owner's: stale), as with ``save_marks``. A failure writes nothing
        and raises, for all of them."""

    def update_exit_attempt(self, client_id: str, *, order_no: str | None = None,
                            outcome: str | None = None) -> None: ...

    def exit_attempts(self, position_id: str | None = None) -> list[ExitAttempt]: ...

    # Supervision and portfolio ---------------------------------------------------------------
    def record_dead_letter(self, letter: DeadLetter) -> None: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def latch_kill_switch(self, state: KillSwitch) -> None:
        """Latch the kill switch; a second latch keeps the first one's time and reason."""

    def kill_switch(self) -> KillSwitch | None: ...

    def reset_kill_switch(self) -> bool:
        """Clear the latch; False when it was not latched."""

    def counts(self) -> Mapping[str, int]:
        """This account's rows per table, for status views and tests."""


@runtime_checkable
class FrameBatches(Protocol):
    """A store that can record several raw frames at once (the SQL stores can); the order-update
    actor uses it when frames queue up, and ``record_order_update`` one by one otherwise."""

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        """Store the frames in one transaction, in order; their sequence numbers, ascending.
        Every frame is durable when this returns, or none is stored."""


class PnLCache(Protocol):
    """The latest valuation of every open position (Redis, or in process); see
    ``store/pnl_cache.py``."""

    def write(self, entries: Sequence[PnLEntry], deletes: Sequence[str] = ()) -> bool:
        """Write entries and delete positions' keys in ONE round trip; False if it failed (never
        raises). Within one call a delete wins over an entry of the same position; among entries
        of one position the last wins."""

    def read(self, position_id: str) -> PnLEntry | None: ...

    def read_all(self) -> dict[str, PnLEntry]: ...

    @property
    def roundtrips(self) -> int: ...

    @property
    def failures(self) -> int: ...

    def close(self) -> None: ...


# Partition leases (SPEC §13) -----------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """Ownership of one partition until ``expires_at`` (the database server's clock).

    ``epoch`` grows with every new owner: a write fenced by an older epoch changes nothing.
    ``deadline`` is the same expiry on this process's ``time.monotonic()``, measured from
    before the claim or renewal was sent, so it never falls after the server's expiry (barring
    clock-rate drift): the check before an exit order is sent reads it, not a wall clock.
    ``previous_expiry`` is the expiry of the owner this claim took over from (its lease
    lapsed, it did not release it); ``None`` for a partition that was free or released."""

    partition: int
    owner: str
    epoch: int
    expires_at: datetime
    claimed_at: datetime
    deadline: float
    previous_expiry: datetime | None = None


@dataclass(frozen=True)
class Survey:
    """One look at the leases (``Leases.survey``): the partitions a claim would take now
    (never claimed, released or expired), and how many runners are live (their heartbeats,
    ``Leases.beat``; at least 1)."""

    free: tuple[int, ...]
    runners: int


class LeaseLost(Exception):
    """The lease is not ours any more (another epoch, or expired): nothing was written."""

    def __init__(self, partition: int, epoch: int, what: str = "write") -> None:
        super().__init__(f"partition {partition}: lease epoch {epoch} lost ({what} refused)")
        self.partition = partition
        self.epoch = epoch


class Leases(Protocol):
    """Partition leases with fencing (``store/leases.py``, on PostgreSQL)."""

    @property
    def lease_seconds(self) -> float: ...

    def claim(self, partition: int, owner: str) -> Lease | None:
        """The partition's lease for ``owner``, or ``None`` while another owner's is live. A
        claim of a free, released or expired lease takes a new epoch; ``owner``'s own live
        lease is extended with its epoch."""

    def renew(self, lease: Lease) -> Lease:
        """Extend a live lease; ``LeaseLost`` when it expired or another epoch holds it."""

    def release(self, lease: Lease) -> bool:
        """Give the lease up now (graceful hand-over: the next owner need not wait); False when
        it was not ours any more."""

    def free(self, partitions: Sequence[int]) -> list[int]:
        """Which of ``partitions`` a claim would take now (never claimed, released or expired):
        one read and no lock, so a runner may look often and claim only when there is
        something to take."""

    def survey(self, partitions: Sequence[int]) -> Survey:
        """``free`` and the count of live runners: one read, no lock."""

    def beat(self, owner: str) -> None:
        """``owner`` is live for one lease more (a runner counts itself in the fair share)."""

    def leave(self, owner: str) -> None:
        """``owner`` is gone (a graceful stop, before it releases its leases): the others'
        share grows at once."""

    def claim_wait(self, lease: Lease) -> float:
        """Seconds a new owner waits after ``claim`` before it acts: out the old owner's lease
        and its HTTP timeout, so an order the old owner was sending has reached the broker (or
        failed) before the new owner looks it up by client id. 0 after a release."""

    def fenced(self, lease: Lease) -> AbstractContextManager[Any]:
        """A transaction in which writes happen only under ``lease``: yields a cursor, raises
        ``LeaseLost`` (nothing written) when the lease is not live at its start, and holds a
        takeover of the partition until it commits."""
