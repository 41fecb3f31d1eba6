"""The logic of one position's owner, without the actor around it.

``PositionKeeper`` is what a ``TrackerActor`` runs, and what the ``RiskSupervisor`` runs for a
quarantined position, so a position is never unprotected while its actor is broken. It calls the
pure core, persists every change *before* returning the messages that announce it, and returns
those messages as ``(Target, message)`` pairs for the shell to send. Order updates that queue up
for the position (a burst of partial fills) are applied one by one and stored together, in one
write and one commit, after the last of them (``_Unsaved``). Prices and time go through the same
keeper: marks, the quiet guard and band, freshness, then the rules. A trailing stop that a price
tightens is stored through the stop writer, batched with the other positions' (``_fold``,
``actors/tracker/stops.py``), before a later price may move it again (SPEC §11.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.anomalies import report_anomaly
from actors.protocol import (
    DUE,
    Checkpoint,
    ClearKillSwitch,
    ExitAudit,
    IntentStored,
    ProtectionChanged,
    ResumeExit,
    StopStored,
    StoreIntent,
    StoreStop,
)
from actors.runtime.metrics import Metrics
from models import lifecycle
from models.bands import Band, Quiet, band, quiet
from models.common import Instrument, exit_client_id
from models.marks import Basis, basis_of, fits, net_at, pct_at
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    CancelExitOrder,
    Cause,
    ExitOrderFailed,
    ExitOrderLookedUp,
    ExitOrderPlaced,
    ExitOrderUnknown,
    ExitRequested,
    LookUpExitOrder,
    Message,
    Overfilled,
    PnLMarked,
    PositionChanged,
    PositionClosed,
    PositionOpened,
    PriceUpdate,
    QuoteRequested,
    RequestExit,
    TimerFired,
    new_id,
)
from models.orders import OrderProgress, OrderStatus
from models.policy import RiskConfig
from models.position import (
    CLOSED,
    Applied,
    Event,
    ExitReason,
    Fill,
    OrderRole,
    Position,
    PositionStatus,
)
from models.rules import (
    ExitDecision,
    PriceMark,
    evaluate,
    freshness_limit,
    is_fresh,
    is_unprotected,
    pnl,
    update_marks,
)
from store.ports import StaleWriteError, Store, StoreError
from store.records import DeadLetter, ExitAttempt

STICKY = frozenset({ExitReason.KILL_SWITCH, ExitReason.MANUAL, ExitReason.SESSION_END})
"""Reasons that keep retrying after a failed exit whatever the price does."""


class Target(Enum):
    SUPERVISOR = "supervisor"
    INDEX = "index"
    PNL = "pnl"
    BATCHER = "batcher"
    ORDERS = "orders"
    STOPS = "stops"
    INTENTS = "intents"


Out = list[tuple[Target, object]]
ANNOUNCE = (Target.INDEX, Target.SUPERVISOR, Target.PNL, Target.ORDERS)


@dataclass(frozen=True)
class KeeperContext:
    store: Store
    config: RiskConfig
    clock: Callable[[], datetime]
    metrics: Metrics
    checkpoint_every: timedelta = timedelta(seconds=5)


def retry_delay(attempt: int) -> timedelta:
    """Back-off between exit attempts: 0.5 s, 1 s, 2 s, … capped at 30 s."""
    return timedelta(seconds=min(30.0, 0.5 * 2 ** max(0, attempt - 1)))


class PositionKeeper:
    def __init__(self, position: Position, context: KeeperContext, *, halted: bool = False,
                 mark: PriceMark | None = None, unstored: bool = False) -> None:
        """``unstored``: ``position`` is newer than what the store holds (a failed keeper's
        in-memory state during a store outage): it is written at the first chance."""
        self.position = position
        self.ctx = context
        self.mark = mark
        self.sticky: ExitReason | None = ExitReason.KILL_SWITCH if halted else None
        self.retry_at: datetime | None = None
        self.unprotected = False
        self._checkpointed = context.clock()
        self._saved_marks = _marks(position)
        self._stored_version = -1 if unstored else position.version
        """The newest version this keeper knows the store holds."""
        self.owner: ActorRef[Any] | None = None
        """The actor running this keeper, when a stop writer serves it (``_store_stop``)."""
        self._stop_sent: Position | None = None
        """The position whose tightened stop is with the stop writer, not yet answered."""
        self._stop_sent_at = context.clock()
        self.intent_owner: ActorRef[Any] | None = None
        """The actor running this keeper, when an intent writer serves it (``_exit``)."""
        self.intent_gateway: ActorRef[Any] | None = None
        """The position's gateway actor, which the intent writer tells its exit orders."""
        self._intent: _Intent | None = None
        """An exit whose intent is with the intent writer, not yet answered."""
        self._ahead: Position | None = None
        """Marks of the prices that would have moved the stop again while it was with the
        writer (only their peak counts), with the last of those prices."""
        self._ahead_cause: PriceUpdate | None = None
        self._quote_asked: datetime | None = None
        self._stale_after = freshness_limit(context.config.policy)
        self._basis: Basis | None = None
        self._quiet: Quiet | None = None
        self._band: tuple[Position, Quiet | None, Band | None] | None = None
        self.log = logger.bind(position_id=position.position_id)
        self._unsaved: _Unsaved | None = None
        self._more = False
        self._announced = position
        """The state the last announcement told (or the one this keeper started from)."""
        self._excess_told: dict[str, int] = {}
        """Per exit order, the excess the order-update actor was told of (``Overfilled``); a
        new keeper tells it again (the last one may have died before it could)."""
        self._excess_alarmed = {p.order_no: p.traded_qty for p in position.excess_fills()} \
            if position.excess_qty else {}
        """Per exit order, the excess alarmed already (by an earlier keeper: the stored one)."""
        self.exit_deadline: datetime | None = None
        """When the current exit attempt is looked up at the broker if it has not ended."""
        self._not_found = 0
        self._resuming = False
        """An exit attempt of an earlier run, looked up before it is placed again."""
        self._exit_timeout = timedelta(milliseconds=context.config.policy.exit_timeout_ms)
        self.outage: _Outage | None = None
        """Set while writes fail: the state lives in memory, protected, until it is stored."""
        self._held_audits: list[tuple[str, dict[str, str]]] = []
        """Exit attempts' audit columns that wait for the outage's end (``_audit_exit``)."""
        self._handed_audits: set[str] = set()
        """Attempts whose audit columns the supervisor writes (one failed)."""
        self._late_audits: Out = []
        """Held audit columns the store did not take at the outage's end, to hand over."""
        self._tell_when_stored = unstored
        """Started from a state the store never took: nobody may have heard of it either, so
        it is announced once stored."""
        if unstored:
            now = context.clock()
            self.outage = _Outage(since=now, next_try=now, cause=None)

    # Dispatch ---------------------------------------------------------------------------------
    def handle(self, message: object, *, more: bool = False) -> Out:
        """Handle ``message``; ``more`` says that an order update of this position is next in
        line (the tracker's mailbox knows): the write of an order update may then wait for
        it, so a burst of fills costs one commit (see ``_Unsaved``)."""
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self.log.warning("tracker ignores {}", type(message).__name__)
            return self.store_unsaved()
        out = [] if type(message) in DEFERRABLE else self.store_unsaved()
        self._more = more
        try:
            out += handler(self, message)
        finally:
            self._more = False
        if not more:
            out += self.store_unsaved()
        if self._late_audits:  # held through an outage, then not taken: the supervisor's
            out += self._late_audits
            self._late_audits = []
        return out

    @property
    def stored(self) -> Position:
        """The state the position's next owner starts from after a failure of this one (the
        order updates applied since, held for one write, are handed on): what the store holds,
        or, while writes fail (``unstored``), a state only memory holds."""
        return self.position if self._unsaved is None else self._unsaved.before

    @property
    def unstored(self) -> bool:
        """Writes are failing: the position's state is only in memory."""
        return self.outage is not None

    @property
    def durable(self) -> bool:
        """Everything applied so far is stored (no write held back, none failing)."""
        return self.outage is None and self._unsaved is None

    def take_unsaved(self) -> list[Cause]:
        """The order updates applied but not stored, oldest first, forgotten: when the keeper
        fails, they go to the position's next owner, which starts from ``stored``."""
        unsaved, self._unsaved = self._unsaved, None
        return [] if unsaved is None else unsaved.messages

    # Order updates ----------------------------------------------------------------------------
    def on_update(self, message: ApplyOrderUpdate) -> Out:
        update = message.update
        if update.status is OrderStatus.TRADED and update.traded_qty == 0:
            self.log.warning("TRADED update of {} without a traded quantity: taken as traded in "
                             "full{}", update.order_no, "" if update.fill_price else
                             ", priced at the last known price until the broker's book says")
        applied = lifecycle.apply_update(self.position, message.update, message.role,
                                         attempt=message.attempt, at=self.ctx.clock(),
                                         last_price=self.mark.ltp if self.mark else None)
        return self._commit(applied, message)

    def on_progress(self, message: ApplyProgress) -> Out:
        if message.excess:
            applied = lifecycle.fit_remainder(self.position, message.progress,
                                              at=self.ctx.clock())
        else:
            applied = lifecycle.apply_progress(self.position, message.progress, message.role,
                                               at=self.ctx.clock())
        return self._commit(applied, message)

    def _commit(self, applied: Applied, cause: Cause) -> Out:
        if applied.rejection:
            self._reject(applied.rejection, cause)
            return []
        if applied.position is self.position:
            return []
        unsaved = self._unsaved
        if self._more and applied.event is not Event.EXIT_FAILED and type(cause) in DEFERRABLE \
                and (unsaved is None or len(unsaved.messages) < DEFER_LIMIT):
            if unsaved is None:
                unsaved = self._unsaved = _Unsaved(before=self.position)
            unsaved.add(cause, applied.fills)
            self.position = applied.position
            return []
        before = self.stored
        fills = applied.fills if unsaved is None else (*unsaved.fills, *applied.fills)
        saved = self._save(applied.position, fills, cause)
        self._unsaved = None
        out = self._announce(cause) if saved else []
        out += self._cancel_live_exits(before, cause)
        if applied.event is Event.EXIT_FAILED:
            self.retry_at = self.ctx.clock() + retry_delay(self.position.exit_attempt)
            self.log.warning("exit attempt {} failed; retry at {}", before.exit_attempt,
                             self.retry_at)
            out += self._evaluate(cause)
        return out

    def store_unsaved(self) -> Out:
        """Store what order updates changed without storing it yet (see ``_Unsaved``), and
        return its announcement."""
        unsaved = self._unsaved
        if unsaved is None:
            return []
        cause = unsaved.messages[-1]
        saved = self._save(self.position, unsaved.fills, cause)
        self._unsaved = None
        out = self._announce(cause) if saved else []
        return out + self._cancel_live_exits(unsaved.before, cause)

    def _reject(self, reason: str, cause: Cause) -> None:
        self.log.warning("rejected {}: {}", type(cause).__name__, reason)
        self.ctx.metrics.incr("rejected_updates")
        self._dead_letter(cause, f"rejected: {reason}")  # logged above; at worst its row is lost

    def _announce(self, cause: Cause) -> Out:
        """The change since the last announcement (the store holds it by now)."""
        now, position = self.ctx.clock(), self.position
        before, self._announced = self._announced, position
        self._tell_when_stored = False
        ids = cause.caused()
        event: Message
        if position.status in CLOSED:
            event = PositionClosed(position=position, sent_at=now, **ids)
        elif before.status not in (PositionStatus.ACTIVE, PositionStatus.EXITING) and \
                position.status is PositionStatus.ACTIVE:
            event = PositionOpened(position=position, sent_at=now, **ids)
        else:
            event = PositionChanged(position=position, sent_at=now, **ids)
        return [(target, event) for target in ANNOUNCE] + self._hand_on_excess(
            cause, closed=before.status in CLOSED)

    def _hand_on_excess(self, cause: Cause, *, closed: bool = False) -> Out:
        """Exit fills past what was open (SPEC §11.1): the order-update actor opens each exit
        order's opposite remainder as a position of its own and fits it to that order's excess
        as it stands (``lifecycle.fit_remainder``: an entry that grew since gives some back);
        told again until it is (cumulative, so idempotent), and alarmed as an anomaly when it
        grows past what this position had when its keeper started."""
        position = self.position
        if position.excess_qty == sum(self._excess_told.values()):
            return []
        out: Out = []
        for progress in position.excess_fills(every=True):
            number, excess = progress.order_no, progress.traded_qty
            told = self._excess_told.get(number, 0)
            if excess == told:
                continue
            self._excess_told[number] = excess
            if excess > self._excess_alarmed.get(number, 0):
                self._excess_alarmed[number] = excess
                past = "a position already closed" if closed else "the open quantity"
                report_anomaly(self.ctx.metrics, self.ctx.clock(),
                               f"exit fills of order {number} went {excess} past {past}; the "
                               "opposite remainder is tracked as a position of its own",
                               position_id=position.position_id, order_no=number)
                self._store_anomaly(cause, f"over-fill of {excess} by order {number}")
            elif excess < told:
                self.log.warning("exit order {} now goes {} past the open quantity, not {} (the "
                                 "entry grew): its remainder gives the difference back", number,
                                 excess, told)
            out.append((Target.ORDERS, Overfilled(
                position_id=position.position_id, position=position, progress=progress,
                sent_at=self.ctx.clock(), **cause.caused())))
        return out

    def _store_anomaly(self, cause: Cause, reason: str) -> None:
        self._dead_letter(cause, f"anomaly: {reason}")  # alarmed above; at worst its row is lost

    def _dead_letter(self, cause: Cause, error: str) -> None:
        """Store ``cause`` as a dead letter of this position; a store that refuses it costs the
        row only (the caller has logged or alarmed it already)."""
        try:
            self.ctx.store.record_dead_letter(DeadLetter(
                recorded_at=self.ctx.clock(), actor=f"tracker:{self.position.position_id}",
                message_type=type(cause).__name__, message_id=cause.message_id,
                correlation_id=cause.correlation_id, causation_id=cause.causation_id,
                position_id=self.position.position_id, error=error, payload=summary(cause)))
        except StoreError as failure:
            self.log.error("could not store the dead letter ({}): {} {}", failure, error,
                           summary(cause))

    def on_checkpoint(self, message: Checkpoint) -> Out:
        self._checkpoint(force=True)
        return []

    def _checkpoint(self, *, force: bool = False) -> None:
        """Peak, high-water mark and trailing stop are saved every few seconds, not per tick."""
        now = self.ctx.clock()
        if not force and now - self._checkpointed < self.ctx.checkpoint_every:
            return
        self._checkpointed = now
        if self.position.status not in (PositionStatus.ACTIVE, PositionStatus.EXITING):
            return
        if _marks(self.position) != self._saved_marks:
            self._save(self.position.model_copy(update={"version": self.position.version + 1}))

    def _save(self, position: Position, fills: tuple[Fill, ...] = (),
              cause: Cause | None = None, intent: ExitAttempt | None = None) -> bool:
        """Store ``position`` with its new ``fills`` (and an exit ``intent``, in the same
        write); False when the store failed. Then the state is kept in memory, the position
        stays protected (prices and rules go on), and the write is tried again with back-off
        (``_retry_store``), or with the next write once that is over; announcements wait for
        it (nobody hears of a state the store does not hold), exit requests do not."""
        outage = self.outage
        now = self.ctx.clock()
        if outage is not None:
            outage.fills += fills
            outage.exits += [intent] if intent is not None else []
            outage.cause = cause or outage.cause
            self.position = position
            if now < outage.next_try:
                return False
            return self._write_held(now)
        try:
            if intent is not None:
                self.ctx.store.record_exit(intent, position)
            else:
                self.ctx.store.save_position(position, fills)
        except StaleWriteError:
            raise  # a newer incarnation wrote: this one must stop (the supervisor restarts it)
        except StoreError as error:
            self.outage = _Outage(since=now, next_try=now + _OUTAGE_BACKOFF[0], cause=cause,
                                  fills=list(fills),
                                  exits=[intent] if intent is not None else [])
            self.position = position
            self.ctx.metrics.incr("store_write_failures")
            self.log.error("store write failed ({}); the position is kept in memory and stays "
                           "protected; retrying", error)
            return False
        self._stored(position)
        return True

    def store_now(self) -> Out:
        """At a stop: store what waits, whatever the back-off; what the store still refuses is
        logged in full (a restart rebuilds it from the broker's book)."""
        out = self.store_unsaved()
        out += self._retry_store(self.ctx.clock(), force=True)
        if self.outage is not None:
            self.log.error("stopping with state the store never took: {!r}; fills {!r}; exit "
                           "intents {!r}", self.position, self.outage.fills, self.outage.exits)
        return out

    def _retry_store(self, now: datetime, *, force: bool = False,
                     cause: Cause | None = None) -> Out:
        """Write what an outage left in memory, if its back-off is over; its announcement."""
        outage = self.outage
        if outage is None or (now < outage.next_try and not force):
            return []
        cause = outage.cause or cause
        # One version past the one in memory: marks may have moved without a version.
        self.position = self.position.model_copy(update={"version": self.position.version + 1})
        if not self._write_held(now) or cause is None or (
                self.position == self._announced and not self._tell_when_stored):
            return []
        return self._announce(cause)

    def _write_held(self, now: datetime) -> bool:
        """One try at what an outage holds: exit intents, the latest state, every fill."""
        outage = self.outage
        assert outage is not None
        try:
            for attempt in outage.exits:
                self.ctx.store.record_exit_attempt(attempt)
            self.ctx.store.save_position(self.position, tuple(outage.fills))
        except StaleWriteError:
            raise
        except StoreError as error:
            outage.tries += 1
            outage.next_try = now + _OUTAGE_BACKOFF[min(outage.tries, len(_OUTAGE_BACKOFF) - 1)]
            if outage.tries in (1, 10) or outage.tries % 60 == 0:
                self.log.error("store still failing after {} ({} tries): {}", now - outage.since,
                               outage.tries, error)
            return False
        self.outage = None
        self._stored(self.position)
        self.log.warning("store back: the position's state held in memory for {} is stored "
                         "({} fills, {} exit intents)", now - outage.since, len(outage.fills),
                         len(outage.exits))
        self._late_audits += self._write_held_audits()
        return True

    def _stored(self, position: Position) -> None:
        """``position`` is what the store holds now: it becomes the keeper's."""
        self.position = position
        self._saved_marks = _marks(position)
        self._stored_version = max(self._stored_version, position.version)

    @property
    def instrument(self) -> Instrument:
        return Instrument(segment=self.position.segment, security_id=self.position.security_id)

    # Prices and time --------------------------------------------------------------------------
    def on_price(self, message: PriceUpdate) -> Out:
        self.mark = mark = message.mark
        now = self.ctx.clock()
        self.ctx.metrics.incr("prices_handled")
        return self._fold(mark.ltp, message, now) + self._evaluate(message, now)

    # A stop never loosens across a restart (SPEC §11.5) -----------------------------------------
    def _fold(self, ltp: Decimal, cause: PriceUpdate, now: datetime) -> Out:
        """Fold a price into the marks. A stop it tightens goes to the stop writer, one version
        on, and is durable before any later price may move it again: such a price waits in
        ``_ahead`` meanwhile (its marks only; the rules see every price at once, so an exit
        never waits, and an exit's write carries the marks)."""
        basis = self._current_basis()
        before = self.position
        moved = update_marks(before, ltp, self.ctx.config.policy, basis)
        if moved is before:
            return []
        out: Out = []
        if moved.trail_stop != before.trail_stop:
            if self._stop_sent is not None or self._intent is not None:
                # A write with a writer: the stop waits for its answer (two writers at once
                # could each find the other's newer version stored and take it for stale).
                self._ahead = update_marks(self._ahead or before, ltp, self.ctx.config.policy)
                self._ahead_cause = cause
                return []
            self.position = moved.model_copy(update={"version": moved.version + 1})
            out = self._store_stop(cause, now)
        else:
            self.position = moved
        # The PnL writer values every position from the price batches itself; it needs to
        # hear from the tracker only when a mark (peak, high-water mark) moved.
        return [(Target.PNL, self._valuation(cause, basis, now)), *out]

    def _store_stop(self, cause: Cause, now: datetime) -> Out:
        position = self.position
        if self.owner is None or self.outage is not None:
            # No stop writer (a position the supervisor keeps), or the store is failing: stored
            # here and now (a failing store keeps it in memory and retries, SPEC §11.4).
            self._save(position)
            return []
        self._stop_sent, self._stop_sent_at = position, now
        return [(Target.STOPS, StoreStop(position=position, owner=self.owner,
                                         correlation_id=cause.correlation_id,
                                         causation_id=cause.message_id,
                                         message_id=new_id(), sent_at=now))]

    def on_stop_stored(self, message: StopStored) -> Out:
        sent = self._stop_sent
        if sent is None or message.version != sent.version:
            return []  # an answer this keeper no longer waits for (see ``_stop_overdue``)
        self._stop_sent = None
        if message.error is not None:
            if self._stored_version < sent.version:  # not overtaken by a write of its own
                self._save(self.position.model_copy(
                    update={"version": self.position.version + 1}))
        elif message.written:
            self._stored_version = max(self._stored_version, sent.version)
            self._saved_marks = _marks(sent)
        elif self._stored_version < sent.version and not self._intent_above(sent.version):
            # Neither written nor overtaken by a write of this keeper (an exit's intent, one
            # version on, may be with the intent writer: its answer tells): another owner of
            # the position stored a newer state, so this one must stop, as at any stale write.
            raise StaleWriteError(f"position {sent.position_id}: the stop of version "
                                  f"{sent.version} was refused, the store holds a newer one")
        return self._fold_ahead()

    def _intent_above(self, version: int) -> bool:
        """An exit's intent of a later version of the position is with the intent writer."""
        return self._intent is not None and self._intent.request.position.version > version

    def _fold_ahead(self) -> Out:
        """The prices that waited for the stop to be stored: their peak, folded now."""
        ahead, cause = self._ahead, self._ahead_cause
        self._ahead = self._ahead_cause = None
        if ahead is None or ahead.peak_price is None or cause is None or self.mark is None:
            return []
        now = self.ctx.clock()
        return self._fold(ahead.peak_price, cause, now) + self._evaluate(cause, now)

    def _stop_overdue(self, now: datetime) -> Out:
        """The stop writer has not answered for long (it should within a batch or two): the
        keeper stores the stop itself rather than leave its marks frozen."""
        sent = self._stop_sent
        if sent is None or now - self._stop_sent_at < _STOP_PATIENCE:
            return []
        self.log.warning("the stop writer has not answered for {}: storing the stop here",
                         now - self._stop_sent_at)
        self._stop_sent = None
        if self._stored_version < self.position.version:
            self._save(self.position.model_copy(update={"version": self.position.version + 1}))
        return self._fold_ahead()

    def band(self) -> Band | None:
        """The prices that can change this position now (see ``models.marks.Band``)."""
        if self.sticky is not None or self.retry_at is not None:
            return None  # a standing or retried exit: every price
        position = self.position
        guard = self._quiet if position.status is PositionStatus.ACTIVE else None
        known = self._band  # a band depends only on the position and its guard: derive it once
        if known is not None and known[0] is position and known[1] is guard:
            return known[2]
        result = band(position, self._current_basis(), guard, self.ctx.config.policy)
        self._band = (position, guard, result)
        return result

    def next_deadline(self) -> datetime | None:
        """The next instant at which a timer can change what this position does (``DUE``: at
        the next timer; None: no timer can). Before it a timer only re-checks what cannot have
        changed (the quiet guard holds), so a replay may skip the time in between."""
        position = self.position
        if self.outage is not None:
            return self.outage.next_try  # a write to retry
        if self._stop_sent is not None or self._ahead is not None or self._intent is not None:
            return DUE  # a stop or an exit's intent with a writer, prices waiting for it
        if self._unsaved is not None or position.excess_qty != sum(self._excess_told.values()):
            return DUE  # a write held for the next update; an over-fill to hand on
        if position.status is PositionStatus.EXITING:
            return self.exit_deadline or DUE  # an exit in flight: looked up at its time-out
        if position.status is not PositionStatus.ACTIVE:
            return None
        if self.sticky is not None:
            return DUE
        if self.retry_at is not None:
            return self.retry_at
        guard = self._quiet
        if guard is None or guard.orders is not position.orders or \
                guard.trail_stop != position.trail_stop:
            return DUE  # not evaluated since it changed
        return guard.until

    def on_timer(self, message: TimerFired) -> Out:
        now = self.ctx.clock()
        out = self._retry_store(now, cause=message)
        if self.outage is None:
            out += self._hand_on_excess(message)
        out += self._watch_exit(now, message)
        out += self._stop_overdue(now)
        self._checkpoint()
        return out + self._evaluate(message)

    def _current_basis(self) -> Basis | None:
        """The position's basis, derived again only when its orders changed."""
        if not fits(self._basis, self.position):
            self._basis = basis_of(self.position, self.ctx.config.policy)
        return self._basis

    def _valuation(self, cause: Cause, basis: Basis | None, now: datetime) -> PnLMarked:
        assert self.mark is not None
        ltp, position = self.mark.ltp, self.position
        if basis is None:  # no entry fill yet: rules.pnl knows what that is worth
            value = pnl(position, ltp, self.ctx.config.policy)
            net, pct, realized = value.net, value.pct, value.realized
        else:
            net, pct, realized = net_at(basis, ltp), pct_at(basis, ltp), basis.realized
        return PnLMarked(position_id=position.position_id, ltp=ltp, pnl=net, pnl_pct=pct,
                         hwm_pnl=position.hwm_pnl, peak_price=position.peak_price,
                         realized=realized, sent_at=now, correlation_id=cause.correlation_id,
                         causation_id=cause.message_id, trail_stop=position.trail_stop)

    def _evaluate(self, cause: Cause, now: datetime | None = None) -> Out:
        if self.position.status is not PositionStatus.ACTIVE:
            return []
        now = self.ctx.clock() if now is None else now
        if self.retry_at is not None:
            if now < self.retry_at:
                return []
            self.retry_at = None  # the back-off is over: the rules decide again
        self.ctx.metrics.incr("evaluations")
        guard = self._quiet
        in_session = guard.in_session if guard is not None and now < guard.until else \
            self.ctx.config.calendar.in_session(self.position.segment, now)
        out = self._watch_freshness(now, in_session, cause)
        decision: ExitDecision | None
        if self.sticky is not None:
            decision = ExitDecision(reason=self.sticky, detail="retrying a standing exit")
        else:
            decision = self._decide(now, in_session)
        if decision is not None:
            out += self._exit(decision, cause)
        return out

    def _decide(self, now: datetime, in_session: bool) -> ExitDecision | None:
        """The rules' decision; skipped while the quiet guard proves it would be ``None``."""
        mark, guard = self.mark, self._quiet
        fresh = mark is not None and is_fresh(mark.at, now, self._stale_after, in_session)
        if guard is not None and guard.holds(self.position, mark.ltp if mark else None, fresh,
                                             now):
            return None
        decision = evaluate(self.position, self.mark, now, self.ctx.config)
        basis = self._current_basis()
        self._quiet = None if decision is not None or basis is None else \
            quiet(self.position, basis, now, self.ctx.config)
        return decision

    def _watch_freshness(self, now: datetime, in_session: bool, cause: Cause) -> Out:
        policy, calendar = self.ctx.config.policy, self.ctx.config.calendar
        out: Out = []
        stale_after = self._stale_after
        stale = self.mark is None or not is_fresh(self.mark.at, now, stale_after, in_session)
        asked_recently = self._quote_asked is not None and now - self._quote_asked < stale_after
        if stale and not asked_recently:
            self._quote_asked = now
            out.append((Target.BATCHER, QuoteRequested(instrument=self.instrument, sent_at=now,
                                                       **cause.caused())))
        unprotected = is_unprotected(self.position, self.mark, now, policy, calendar,
                                     in_session=in_session)
        if unprotected != self.unprotected:
            self.unprotected = unprotected
            out.append((Target.SUPERVISOR,
                        ProtectionChanged(self.position.position_id, unprotected)))
            if unprotected:
                self.log.warning("UNPROTECTED: no fresh price for {}s",
                                 policy.unprotected_after_seconds)
            else:
                self.log.info("protected again: fresh price")
        return out

    # Exits ------------------------------------------------------------------------------------
    def on_request_exit(self, message: RequestExit) -> Out:
        if message.reason in STICKY:
            self.sticky = message.reason
            self.retry_at = None
        if self.position.status is not PositionStatus.ACTIVE:
            return []
        decision = ExitDecision(reason=message.reason, detail=message.detail)
        return self._exit(decision, message)

    def _exit(self, decision: ExitDecision, cause: Cause) -> Out:
        now = self.ctx.clock()
        applied = lifecycle.request_exit(self.position, decision.reason, now)
        if applied.rejection:
            self.log.info("exit not requested: {}", applied.rejection)
            return []
        if isinstance(cause, PriceUpdate):  # the console's price→decision histogram
            self.ctx.metrics.observe("price_to_decision_seconds",
                                     (now - cause.mark.at).total_seconds())
        self.exit_deadline, self._not_found = now + self._exit_timeout, 0
        position = applied.position
        attempt = position.exit_attempt
        client_id = exit_client_id(position.position_id, attempt)
        # The intent is durable before anyone hears of it: a restart re-places the same attempt.
        # One write for the attempt and the EXITING position (one commit on the way to the
        # broker).
        intent = ExitAttempt(position_id=position.position_id, attempt=attempt,
                             client_id=client_id, reason=decision.reason,
                             quantity=position.quantity, requested_at=now)
        request = ExitRequested(position=position, decision=decision, attempt=attempt,
                                client_id=client_id, sent_at=now, **cause.caused())
        if self.intent_owner is not None and self.outage is None:
            # One write for the intents of every exit decided at once (``intents.py``): the
            # writer places the order once it is stored and tells this keeper (``IntentStored``).
            self.position = position
            self._intent = _Intent(request=request, attempt=intent, cause=cause)
            return [(Target.INTENTS, StoreIntent(attempt=intent, request=request,
                                                 owner=self.intent_owner,
                                                 gateway=self.intent_gateway))]
        if not self._save(position, cause=cause, intent=intent):
            # The store is failing: the exit goes on all the same (a position is never left
            # without its exit for the store); its intent is stored with the rest once the
            # store is back. The client id is the same after a restart from the older state,
            # so the gateway finds an order already placed for it instead of placing another.
            return [(Target.SUPERVISOR, request)]
        self.log.info("exit requested: {} {} (attempt {})", decision.reason, decision.detail,
                      attempt)
        # The supervisor hears first: it places the order, and each tell wakes a thread that
        # competes for the interpreter; the announcements can wait that long.
        out: Out = [(Target.SUPERVISOR, request)]
        return out + self._announce(cause)

    def on_intent_stored(self, message: IntentStored) -> Out:
        """The intent writer's answer (``_exit``): stored and placed, or not written, or the
        write failed."""
        pending = self._intent
        if pending is None or message.client_id != pending.request.client_id:
            return []  # an answer this keeper no longer waits for
        self._intent = None
        sent, request = pending.request.position, pending.request
        if message.error is not None:
            return self._exit_stored_here(pending)
        if message.written:
            if self._stored_version < sent.version:
                self._saved_marks = _marks(sent)
            self._stored_version = max(self._stored_version, sent.version)
        elif self._stored_version < sent.version:
            # Neither written nor overtaken by a write of this keeper: another owner of the
            # position stored a newer state, so this one must stop, as at any stale write.
            raise StaleWriteError(f"position {sent.position_id}: the exit intent of version "
                                  f"{sent.version} was refused, the store holds a newer one")
        out: Out = []
        if not message.placed:  # a later write of this keeper holds it, or no gateway took it
            if not self._exiting_with(pending):
                return self._not_placed(pending)
            out.append((Target.SUPERVISOR, request))
        self.log.info("exit requested: {} {} (attempt {})", request.decision.reason,
                      request.decision.detail, request.attempt)
        if self.position != self._announced:  # a later write may have announced it already
            out += self._announce(pending.cause)
        return out + self._fold_ahead_of_intent()

    def _fold_ahead_of_intent(self) -> Out:
        """The prices whose stop waited for the intent's write (``_fold``), unless a stop is
        with the stop writer still: its answer folds them."""
        return self._fold_ahead() if self._stop_sent is None else []

    def _exit_stored_here(self, pending: _Intent) -> Out:
        """The writer's write failed: the intent is stored here, as it was before the writer
        (a failing store keeps it in memory and the exit goes on all the same, SPEC §11.4)."""
        position = self.position
        if self._stored_version >= position.version:  # marks may have moved without a version
            position = position.model_copy(update={"version": position.version + 1})
        saved = self._save(position, cause=pending.cause, intent=pending.attempt)
        if not self._exiting_with(pending):
            return (self._announce(pending.cause) if saved else []) + self._not_placed(pending)
        request = pending.request
        if not saved:
            return [(Target.SUPERVISOR, request), *self._fold_ahead_of_intent()]
        self.log.info("exit requested: {} {} (attempt {})", request.decision.reason,
                      request.decision.detail, request.attempt)
        return [(Target.SUPERVISOR, request), *self._announce(pending.cause),
                *self._fold_ahead_of_intent()]

    def _exiting_with(self, pending: _Intent) -> bool:
        """Is the exit whose intent was with the writer still the position's? An order
        update handled meanwhile may have ended it (a manual close): then it is not placed."""
        position = self.position
        return position.status is PositionStatus.EXITING and \
            position.exit_attempt == pending.request.attempt

    def _not_placed(self, pending: _Intent) -> Out:
        status = self.position.status
        self.log.warning("exit {} not placed: the position is {} by now",
                         pending.request.client_id, status)
        return self._audit_exit(pending.request.client_id, outcome=f"NOT PLACED: {status}")

    def on_resume(self, message: ResumeExit) -> Out:
        """An exit in flight when the last run stopped (or the partition's last owner lost
        it, SPEC §13): looked up at the broker by its client id first; placed again, with the
        same client id, only if the broker does not know it (``on_exit_looked_up``)."""
        position = self.position
        if position.status is not PositionStatus.EXITING or position.exit_reason is None:
            return []
        now = self.ctx.clock()
        self.exit_deadline, self._not_found = now + self._exit_timeout, 0
        self._resuming = True
        client_id = exit_client_id(position.position_id, position.exit_attempt)
        self.log.info("resuming exit attempt {} ({}) after a restart: looking {} up",
                      position.exit_attempt, position.exit_reason, client_id)
        return [(Target.SUPERVISOR, LookUpExitOrder(
            position_id=position.position_id, attempt=position.exit_attempt,
            client_id=client_id, correlation_id=new_id(), sent_at=now))]

    def _place_resumed(self, message: ExitOrderLookedUp) -> Out:
        """Not at the broker: the earlier run never sent it (its sends are over by now:
        ``claim_wait``), so it goes out now under the same client id."""
        position = self.position
        assert position.exit_reason is not None
        self.log.info("exit {} not at the broker: placing it", message.client_id)
        decision = ExitDecision(reason=position.exit_reason, detail="resumed after restart")
        return [(Target.SUPERVISOR, ExitRequested(
            position=position, decision=decision, attempt=position.exit_attempt,
            client_id=message.client_id, correlation_id=new_id(),
            sent_at=self.ctx.clock()))]

    # Exits that do not end (SPEC §11.6) ---------------------------------------------------------
    def _watch_exit(self, now: datetime, cause: Cause) -> Out:
        """Past the attempt's time-out without a terminal update: ask the broker's book."""
        position = self.position
        if position.status is not PositionStatus.EXITING:
            self.exit_deadline = None
            return []
        if self.exit_deadline is None:
            self.exit_deadline = now + self._exit_timeout
        if now < self.exit_deadline:
            return []
        self.exit_deadline = now + self._exit_timeout  # asked again then, if nothing ends it
        self.log.warning("exit attempt {} has not ended after {}: looking it up",
                         position.exit_attempt, self._exit_timeout)
        return [(Target.SUPERVISOR, LookUpExitOrder(
            position_id=position.position_id, attempt=position.exit_attempt,
            client_id=exit_client_id(position.position_id, position.exit_attempt),
            sent_at=now, **cause.caused()))]

    def on_exit_unknown(self, message: ExitOrderUnknown) -> Out:
        """No answer proves the placement either way: look it up soon, place nothing."""
        out = self._audit_exit(message.client_id, outcome=f"UNKNOWN: {message.reason}")
        if message.attempt == self.position.exit_attempt:
            self.exit_deadline = self.ctx.clock() + _SETTLE
        return out

    def on_exit_looked_up(self, message: ExitOrderLookedUp) -> Out:
        position = self.position
        if message.attempt != position.exit_attempt or \
                position.status is not PositionStatus.EXITING or message.error is not None:
            return []  # an earlier attempt, or nothing to resolve; a failed look-up: again later
        now = self.ctx.clock()
        resuming, self._resuming = self._resuming, False
        if not message.found and resuming:
            return self._place_resumed(message)
        audit = self._audit_resumed(message) if resuming and message.found else []
        if not message.found:
            self._not_found += 1
            if self._not_found < 2:  # a placement may still be on its way: look once more
                self.exit_deadline = now + _SETTLE
                return []
            self.log.warning("exit {} not found at the broker twice: a new attempt",
                             message.client_id)
            return self._commit(lifecycle.exit_failed(position, message.attempt), message)
        assert message.order_no is not None and message.status is not None
        value = (message.avg_price or Decimal(0)) * message.traded_qty
        progress = OrderProgress(order_no=message.order_no, status=message.status,
                                 traded_qty=message.traded_qty if message.avg_price else 0,
                                 traded_value=value if message.avg_price else Decimal(0),
                                 quantity=message.quantity or None)
        out = audit + self._commit(lifecycle.apply_progress(position, progress, OrderRole.EXIT,
                                                            attempt=message.attempt, at=now),
                                   message)
        if self.position.status is PositionStatus.EXITING and not message.status.terminal:
            # It rests at the broker: cancel it; its CANCELLED update fails the attempt, and
            # the next one is placed with back-off (standing reasons at once).
            self.log.warning("exit order {} rests unfilled ({} of {}): cancelling it to place "
                             "anew", message.order_no, message.traded_qty, message.quantity)
            out.append((Target.SUPERVISOR, CancelExitOrder(
                position_id=position.position_id, order_no=message.order_no, sent_at=now,
                **message.caused())))
        return out

    def _audit_resumed(self, message: ExitOrderLookedUp) -> Out:
        """An attempt resumed after a restart, found at the broker: the audit columns it lacks
        (the last run may have died holding them for the store, SPEC §11.4) come from the
        look-up, its order number and PLACED; columns stored are kept."""
        try:
            stored = [a for a in self.ctx.store.exit_attempts(self.position.position_id)
                      if a.client_id == message.client_id]
        except StoreError as error:  # a record only: the exit goes on
            self.log.warning("could not read exit {}'s audit columns: {}", message.client_id,
                             error)
            return []
        changes = missing_audit(stored[0] if stored else None, message.order_no)
        return self._audit_exit(message.client_id, **changes) if changes else []

    def _cancel_live_exits(self, before: Position, cause: Cause) -> Out:
        """Flat at the broker (a manual close filled first): no exit of ours may stay live
        (SPEC §11.2). Whatever closed the position (from ACTIVE too: an attempt given up as
        failed may still rest at the broker), and whichever write stored it (one update's, or
        one for a run of them)."""
        if before.status in CLOSED or self.position.status not in CLOSED:
            return []
        live = [o.progress.order_no for o in self.position.orders
                if o.role is OrderRole.EXIT and not o.progress.status.terminal]
        for order_no in live:
            self.log.warning("position closed by another order: cancelling our exit order {}",
                             order_no)
        return [(Target.SUPERVISOR, CancelExitOrder(
            position_id=self.position.position_id, order_no=order_no, sent_at=self.ctx.clock(),
            **cause.caused())) for order_no in live]

    def _audit_exit(self, client_id: str, **changes: str) -> Out:
        """Write an attempt's audit columns. Held while this keeper's writes fail (the attempt
        itself may not be stored yet: ``_write_held`` writes them after it); one the store
        does not take goes to the supervisor, and every later one of that attempt after it,
        to be written once the store is back (SPEC §11.4)."""
        if self.outage is not None:
            self._held_audits.append((client_id, changes))
            return []
        if client_id not in self._handed_audits:
            try:
                self.ctx.store.update_exit_attempt(client_id, **changes)
                return []
            except StoreError as error:  # an audit column only: the position's state is kept
                self.log.warning("could not record exit {} {}: {}; kept to write later",
                                 client_id, changes, error)
                self._handed_audits.add(client_id)
                return [(Target.SUPERVISOR, ExitAudit(client_id, **changes, error=str(error)))]
        return [(Target.SUPERVISOR, ExitAudit(client_id, **changes))]

    def _write_held_audits(self) -> Out:
        held, self._held_audits = self._held_audits, []
        return [out for client_id, changes in held
                for out in self._audit_exit(client_id, **changes)]

    def on_clear_kill_switch(self, message: ClearKillSwitch) -> Out:
        if self.sticky is ExitReason.KILL_SWITCH:
            self.sticky = None
            self.retry_at = None
        return []

    def on_exit_placed(self, message: ExitOrderPlaced) -> Out:
        return self._audit_exit(message.client_id, order_no=message.order_no, outcome="PLACED")

    def on_exit_failed(self, message: ExitOrderFailed) -> Out:
        out = self._audit_exit(message.client_id, outcome=f"FAILED: {message.reason}")
        applied = lifecycle.exit_failed(self.position, message.attempt)
        return out + self._commit(applied, message)


DEFERRABLE: frozenset[type[Message]] = frozenset((ApplyOrderUpdate, ApplyProgress))
"""Messages whose write may wait for the next one of them (``PositionKeeper.handle``)."""
DEFER_LIMIT = 64
"""Order updates applied at most before their write (one commit for all of them)."""


@dataclass(frozen=True)
class _Intent:
    """An exit whose intent is with the intent writer (``PositionKeeper._exit``)."""

    request: ExitRequested
    attempt: ExitAttempt
    cause: Cause


@dataclass
class _Unsaved:
    """Order updates applied while more of them were next in line, not stored yet.

    Their state is stored in one write (position and every fill, one commit) after the last of
    the run, before anyone hears of it: an announcement never shows a state the store does not
    hold, and a restart starts from the store. They wait only while the mailbox holds more
    order updates for the position, which come first; any other message stores them before it
    is handled. If the keeper fails before they are stored, ``take_unsaved`` hands them to the
    next owner, which applies them again on top of the stored state (an update applied twice
    is a no-op)."""

    before: Position
    """The state stored before the first of them, from which their change is announced."""
    messages: list[Cause] = field(default_factory=list)
    fills: tuple[Fill, ...] = ()

    def add(self, message: Cause, fills: tuple[Fill, ...]) -> None:
        self.messages.append(message)
        self.fills = (*self.fills, *fills)


_STOP_PATIENCE = timedelta(seconds=2)
"""How long a keeper waits for the stop writer's answer before storing its stop itself."""

_SETTLE = timedelta(seconds=1)
"""Wait before looking an exit up after an unknown outcome, and before a second look."""

_OUTAGE_BACKOFF = (timedelta(seconds=1), timedelta(seconds=2), timedelta(seconds=5),
                   timedelta(seconds=10), timedelta(seconds=30))
"""Waits between tries to store what a store outage left in memory."""


@dataclass
class _Outage:
    """What a keeper holds while its writes fail (SPEC §11.4)."""

    since: datetime
    next_try: datetime
    cause: Cause | None
    """The latest message whose change waits to be stored (and then announced)."""
    fills: list[Fill] = field(default_factory=list)
    exits: list[ExitAttempt] = field(default_factory=list)
    tries: int = 0


def missing_audit(stored: ExitAttempt | None, order_no: str | None) -> dict[str, str]:
    """The audit columns a stored attempt lacks, for one the broker knows as ``order_no``
    (none for an attempt the store does not hold: its intent comes with its own)."""
    if stored is None or order_no is None:
        return {}
    changes = {"order_no": order_no} if stored.order_no is None else {}
    return changes | ({"outcome": "PLACED"} if stored.outcome is None else {})


def _marks(position: Position) -> tuple[object, ...]:
    return (position.peak_price, position.hwm_pnl, position.trail_stop)


def summary(message: object, limit: int = 500) -> str:
    """A short, redacted description of a message for dead letters and traces."""
    text = repr(message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_HANDLERS: dict[type, Callable[[PositionKeeper, object], Out]] = {
    ApplyOrderUpdate: PositionKeeper.on_update,  # type: ignore[dict-item]
    ApplyProgress: PositionKeeper.on_progress,  # type: ignore[dict-item]
    PriceUpdate: PositionKeeper.on_price,  # type: ignore[dict-item]
    TimerFired: PositionKeeper.on_timer,  # type: ignore[dict-item]
    RequestExit: PositionKeeper.on_request_exit,  # type: ignore[dict-item]
    ExitOrderPlaced: PositionKeeper.on_exit_placed,  # type: ignore[dict-item]
    ExitOrderFailed: PositionKeeper.on_exit_failed,  # type: ignore[dict-item]
    Checkpoint: PositionKeeper.on_checkpoint,  # type: ignore[dict-item]
    ResumeExit: PositionKeeper.on_resume,  # type: ignore[dict-item]
    ClearKillSwitch: PositionKeeper.on_clear_kill_switch,  # type: ignore[dict-item]
    ExitOrderUnknown: PositionKeeper.on_exit_unknown,  # type: ignore[dict-item]
    ExitOrderLookedUp: PositionKeeper.on_exit_looked_up,  # type: ignore[dict-item]
    StopStored: PositionKeeper.on_stop_stored,  # type: ignore[dict-item]
    IntentStored: PositionKeeper.on_intent_stored,  # type: ignore[dict-item]
}
