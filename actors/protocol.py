"""Messages private to the actor shell: they carry actor refs or supervision facts.

Frozen dataclasses (not pydantic) because they hold ``ActorRef``s, which are not data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pykka import ActorRef

from models.bands import Band
from models.common import Instrument
from models.messages import ExitRequested
from models.position import Position
from store.records import ExitAttempt


@dataclass(frozen=True, slots=True)
class Route:
    """Index: send ``position_id``'s prices to ``ref`` (a tracker, or the supervisor)."""

    position_id: str
    instrument: Instrument
    ref: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Unroute:
    position_id: str
    instrument: Instrument


@dataclass(frozen=True, slots=True)
class TrackerFailed:
    """A tracker's ``on_failure``: the supervisor restarts it; the message that broke it is
    dead-lettered, except an order update's first failure (``retry``)."""

    position_id: str
    incarnation: int
    error: str
    message_type: str
    message_id: str | None
    correlation_id: str | None
    causation_id: str | None
    payload: str
    at: datetime
    position: Position | None = None
    """The tracker's last state: a fallback when the store cannot be read."""
    unstored: bool = False
    """``position`` is newer than the store's (writes were failing): the next owner starts from
    it, not from the store, and stores it."""
    undelivered: tuple[Any, ...] = ()
    """Told messages queued behind the one that broke it, oldest first: the supervisor hands
    them to the next incarnation (a fill among them must not be lost with the tracker)."""
    lease_lost: bool = False
    """It broke on a write its partition's lease no longer allowed (``LeaseLost``): nothing
    was written, and the runner drops the partition for its next owner; logged as a warning,
    not as a fault of the tracker."""
    retry: Any = None
    """The order update (``ApplyOrderUpdate``, ``ApplyProgress``) that broke it: a fill must
    not be lost to a crash while it was being handled (a bug elsewhere, a store driver's
    failure), so the supervisor hands it to the next owner once, after the ``applied`` first
    messages of ``undelivered`` (applied before it, not stored yet), and dead-letters it as
    poison if it breaks that owner too."""
    applied: int = 0


@dataclass(frozen=True, slots=True)
class Undelivered:
    """Supervisor: messages that reached a tracker as it stopped, for its next incarnation."""

    position_id: str
    incarnation: int
    messages: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Watch:
    """Batcher: keep prices of these instruments fresh (poll the quote API when stale)."""

    instruments: tuple[Instrument, ...]
    watching: bool = True


@dataclass(frozen=True, slots=True)
class Flush:
    at: datetime
    complete: bool = False
    """Write everything now, whatever the cadence (settling, stopping)."""
    exits: bool = False
    """The index told possible exits from this flush's batch: the PnL writer values and
    checks the kill switch as ever, but leaves its cache write to the next flush, so it does
    not hold the interpreter while those exits are decided and placed."""
    urgent: bool = False
    """Made by a tick beyond an exit edge (``actors/prices/edges.py``), not by the clock: the
    batcher sends its batch at once and goes no further (no quote call, no flush down the
    pipeline: the PnL writer keeps the clock's cadence)."""


@dataclass(frozen=True, slots=True)
class PortfolioValued:
    """The PnL writer's view of the day: realised plus unrealised net over every position."""

    net: Decimal
    at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Ask a tracker (or the supervisor) for its current state: tests, status, probes."""


@dataclass(frozen=True, slots=True)
class Durable:
    """Asked of the supervisor, then of each tracker (``System.mark_frames``): is everything
    handled so far stored? A tracker answers True or False; the supervisor answers with its
    live trackers to ask next, or None when something it holds is not stored (a keeper of its
    own in a store outage, messages waiting for a tracker's restart, a tracker that failed)."""


@dataclass(frozen=True, slots=True)
class KnownPosition:
    """OrderUpdateActor: a position exists (at start-up, or newly created)."""

    position: Position


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Save peak, high-water mark and trailing stop now if they changed (graceful stop)."""


@dataclass(frozen=True, slots=True)
class StoreStop:
    """Tracker → stop writer: the position, one version on, whose trailing stop tightened;
    stored with the others of its price batch in one write (SPEC §11.5), then ``owner`` hears
    ``StopStored``. Until then the tracker folds no price that would move its stop again."""

    position: Position
    owner: ActorRef[Any]
    correlation_id: str
    message_id: str
    sent_at: datetime
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class StopStored:
    """Stop writer → tracker: the write of ``version`` is over: ``written``, or not (the
    store holds that version or a newer one already), or it failed (``error``: the tracker
    stores the stop itself)."""

    position_id: str
    version: int
    correlation_id: str
    message_id: str
    sent_at: datetime
    written: bool = False
    error: str | None = None
    causation_id: str | None = None

    def caused(self) -> dict[str, str]:
        return {"correlation_id": self.correlation_id, "causation_id": self.message_id}


@dataclass(frozen=True, slots=True)
class StoreIntent:
    """Tracker → intent writer: an exit decided (``request``, its position EXITING) and its
    intent (``attempt``), stored with the others that wait in one write (SPEC §11: the intent
    durable before the order). Once stored, the writer tells ``gateway`` the order (the
    supervisor when None) and the supervisor the request, then ``owner`` ``IntentStored``."""

    attempt: ExitAttempt
    request: ExitRequested
    owner: ActorRef[Any]
    gateway: ActorRef[Any] | None = None


@dataclass(frozen=True, slots=True)
class IntentStored:
    """Intent writer → tracker: the write of an exit's intent is over: ``written`` (and the
    order ``placed``: told to the gateway actor), or not written (the store holds that
    version of the position or a newer one), or failed (``error``: the tracker stores it
    itself and the exit goes on, as a failing store's exits do)."""

    position_id: str
    client_id: str
    version: int
    correlation_id: str
    message_id: str
    sent_at: datetime
    causation_id: str | None = None
    written: bool = False
    placed: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProtectionChanged:
    """A tracker lost (or regained) fresh prices: shown in status as UNPROTECTED."""

    position_id: str
    unprotected: bool


@dataclass(frozen=True, slots=True)
class ExitAudit:
    """Tracker → supervisor: an exit attempt's audit columns the store did not take (or that
    follow ones it did not), for the supervisor to write once it does
    (``actors/supervisor/audits.py``)."""

    client_id: str
    order_no: str | None = None
    outcome: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ResumeExit:
    """Start-up: an EXITING position re-sends its current attempt (same client id: the gateway
    places nothing twice)."""


@dataclass(frozen=True, slots=True)
class BandChanged:
    """Tracker → index: the prices that matter to this position now (``None``: all of them).
    The ids are those of the message whose handling changed the band: a price the index
    tells at once for the new band belongs to that message's causal tree."""

    position_id: str
    band: Band | None
    correlation_id: str | None = None
    causation_id: str | None = None


DUE = datetime.min.replace(tzinfo=UTC)
"""A deadline that is due at the next timer (a position not evaluated since it changed)."""


@dataclass(frozen=True, slots=True)
class DeadlineChanged:
    """Tracker → supervisor, when deadlines are asked for (replay): the next instant at which a
    timer can change what this position does (``PositionKeeper.next_deadline``)."""

    position_id: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class NextDeadline:
    """Ask the supervisor: the earliest instant at which a timer can change anything, ``DUE``
    at the next timer, None when no timer can. Replay skips the time before it."""


@dataclass(frozen=True, slots=True)
class ClearKillSwitch:
    """Supervisor → trackers: the kill switch was reset (by an operator, or a new exchange day
    began): a standing KILL_SWITCH exit is no longer retried; positions already exiting go on."""


@dataclass(frozen=True, slots=True)
class Operator:
    """Who asked for an operator command, and from where (recorded and traced, SPEC §12)."""

    name: str
    address: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Halt:
    """Operator → supervisor: trading HALTED. Open positions stay protected by their rules;
    a position that opens while halted is closed at once (``MANUAL``)."""

    operator: Operator
    correlation_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Operator → supervisor: trading RUNNING again (refused while the kill switch is latched:
    that takes ``ResetKillSwitch``)."""

    operator: Operator
    correlation_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class ResetKillSwitch:
    """Operator → supervisor: clear the latched kill switch in the store and resume trading."""

    operator: Operator
    correlation_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class OperatorOutcome:
    """The supervisor's answer to an operator command."""

    done: bool
    trading_state: str
    detail: str
