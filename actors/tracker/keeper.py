"""The logic of one position's owner, without the actor around it.

``PositionKeeper`` is what a ``TrackerActor`` runs, and what the ``RiskSupervisor`` runs for a
quarantined position, so a position is never unprotected while its actor is broken. It calls the
pure core, persists every change *before* returning the messages that announce it, and returns
those messages as ``(Target, message)`` pairs for the shell to send. Order updates that queue up
for the position (a burst of partial fills) are applied one by one and stored together, in one
write and one commit, after the last of them (``_Unsaved``). Prices and time go through the same
keeper: marks, the quiet guard and band, freshness, then the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from loguru import logger

from actors.protocol import DUE, Checkpoint, ProtectionChanged, ResumeExit
from actors.runtime.metrics import Metrics
from models import lifecycle
from models.common import Instrument, exit_client_id
from models.marks import Band, Basis, Quiet, band, basis_of, fits, net_at, pct_at, quiet
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    Cause,
    ExitOrderFailed,
    ExitOrderPlaced,
    ExitRequested,
    Message,
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
from models.policy import RiskConfig
from models.position import (
    CLOSED,
    Applied,
    Event,
    ExitReason,
    Fill,
    Position,
    PositionStatus,
)
from models.rules import ExitDecision, PriceMark, evaluate, is_unprotected, pnl, update_marks
from store.ports import Store
from store.records import DeadLetter, ExitAttempt

STICKY = frozenset({ExitReason.KILL_SWITCH, ExitReason.MANUAL, ExitReason.SESSION_END})
"""Reasons that keep retrying after a failed exit whatever the price does."""


class Target(Enum):
    SUPERVISOR = "supervisor"
    INDEX = "index"
    PNL = "pnl"
    BATCHER = "batcher"
    ORDERS = "orders"


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
                 mark: PriceMark | None = None) -> None:
        self.position = position
        self.ctx = context
        self.mark = mark
        self.sticky: ExitReason | None = ExitReason.KILL_SWITCH if halted else None
        self.retry_at: datetime | None = None
        self.unprotected = False
        self._checkpointed = context.clock()
        self._saved_marks = _marks(position)
        self._quote_asked: datetime | None = None
        self._stale_after = timedelta(seconds=float(context.config.policy.stale_after_seconds))
        self._basis: Basis | None = None
        self._quiet: Quiet | None = None
        self._band: tuple[Position, Quiet | None, Band | None] | None = None
        self.log = logger.bind(position_id=position.position_id)
        self._unsaved: _Unsaved | None = None
        self._more = False

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
        return out

    @property
    def stored(self) -> Position:
        """The position as the store holds it (``position`` may hold changes not stored yet)."""
        return self.position if self._unsaved is None else self._unsaved.before

    def take_unsaved(self) -> list[Cause]:
        """The order updates applied but not stored, oldest first, forgotten: when the keeper
        fails, they go to the position's next owner, which starts from ``stored``."""
        unsaved, self._unsaved = self._unsaved, None
        return [] if unsaved is None else unsaved.messages

    # Order updates ----------------------------------------------------------------------------
    def on_update(self, message: ApplyOrderUpdate) -> Out:
        applied = lifecycle.apply_update(self.position, message.update, message.role,
                                         attempt=message.attempt, at=self.ctx.clock())
        return self._commit(applied, message)

    def on_progress(self, message: ApplyProgress) -> Out:
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
        self._save(applied.position, fills)
        self._unsaved = None
        out = self._announce(before, cause)
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
        self._save(self.position, unsaved.fills)
        self._unsaved = None
        return self._announce(unsaved.before, unsaved.messages[-1])

    def _reject(self, reason: str, cause: Cause) -> None:
        self.log.warning("rejected {}: {}", type(cause).__name__, reason)
        self.ctx.metrics.incr("rejected_updates")
        self.ctx.store.record_dead_letter(DeadLetter(
            recorded_at=self.ctx.clock(), actor=f"tracker:{self.position.position_id}",
            message_type=type(cause).__name__, message_id=cause.message_id,
            correlation_id=cause.correlation_id, causation_id=cause.causation_id,
            position_id=self.position.position_id, error=f"rejected: {reason}",
            payload=summary(cause)))

    def _announce(self, before: Position, cause: Cause) -> Out:
        now, position = self.ctx.clock(), self.position
        ids = cause.caused()
        event: Message
        if position.status in CLOSED:
            event = PositionClosed(position=position, sent_at=now, **ids)
        elif before.status not in (PositionStatus.ACTIVE, PositionStatus.EXITING) and \
                position.status is PositionStatus.ACTIVE:
            event = PositionOpened(position=position, sent_at=now, **ids)
        else:
            event = PositionChanged(position=position, sent_at=now, **ids)
        return [(target, event) for target in ANNOUNCE]

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

    def _save(self, position: Position, fills: tuple[Fill, ...] = ()) -> None:
        self.ctx.store.save_position(position, fills)
        self._stored(position)

    def _stored(self, position: Position) -> None:
        """``position`` is what the store holds now: it becomes the keeper's."""
        self.position = position
        self._saved_marks = _marks(position)

    @property
    def instrument(self) -> Instrument:
        return Instrument(segment=self.position.segment, security_id=self.position.security_id)

    # Prices and time --------------------------------------------------------------------------
    def on_price(self, message: PriceUpdate) -> Out:
        self.mark = mark = message.mark
        now = self.ctx.clock()
        self.ctx.metrics.incr("prices_handled")
        basis = self._current_basis()
        before = self.position
        self.position = update_marks(before, mark.ltp, self.ctx.config.policy, basis)
        # The PnL writer values every position from the price batches itself; it needs to
        # hear from the tracker only when a mark (peak, high-water mark) moved.
        out: Out = [] if self.position is before else \
            [(Target.PNL, self._valuation(message, basis, now))]
        return out + self._evaluate(message, now)

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
        if self._unsaved is not None or position.status is PositionStatus.EXITING:
            return DUE  # a write to retry; an exit in flight
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
        self._checkpoint()
        return self._evaluate(message)

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
        fresh = mark is not None and (not in_session or now - mark.at <= self._stale_after)
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
        stale = self.mark is None or (in_session and now - self.mark.at > stale_after)
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
        position = applied.position
        attempt = position.exit_attempt
        client_id = exit_client_id(position.position_id, attempt)
        # The intent is durable before anyone hears of it: a restart re-places the same attempt.
        # One write for the attempt and the EXITING position (one commit on the way to the
        # broker).
        before = self.position
        self.ctx.store.record_exit(ExitAttempt(
            position_id=position.position_id, attempt=attempt, client_id=client_id,
            reason=decision.reason, quantity=position.quantity, requested_at=now), position)
        self._stored(position)
        self.log.info("exit requested: {} {} (attempt {})", decision.reason, decision.detail,
                      attempt)
        # The supervisor hears first: it places the order, and each tell wakes a thread that
        # competes for the interpreter; the announcements can wait that long.
        out: Out = [(Target.SUPERVISOR, ExitRequested(
            position=position, decision=decision, attempt=attempt, client_id=client_id,
            sent_at=now, **cause.caused()))]
        return out + self._announce(before, cause)

    def on_resume(self, message: ResumeExit) -> Out:
        position = self.position
        if position.status is not PositionStatus.EXITING or position.exit_reason is None:
            return []
        now = self.ctx.clock()
        client_id = exit_client_id(position.position_id, position.exit_attempt)
        self.log.info("resuming exit attempt {} ({}) after a restart", position.exit_attempt,
                      position.exit_reason)
        decision = ExitDecision(reason=position.exit_reason, detail="resumed after restart")
        return [(Target.SUPERVISOR, ExitRequested(
            position=position, decision=decision, attempt=position.exit_attempt,
            client_id=client_id, correlation_id=new_id(), sent_at=now))]

    def on_exit_placed(self, message: ExitOrderPlaced) -> Out:
        self.ctx.store.update_exit_attempt(message.client_id, order_no=message.order_no,
                                           outcome="PLACED")
        return []

    def on_exit_failed(self, message: ExitOrderFailed) -> Out:
        self.ctx.store.update_exit_attempt(message.client_id, outcome=f"FAILED: {message.reason}")
        applied = lifecycle.exit_failed(self.position, message.attempt)
        return self._commit(applied, message)


DEFERRABLE = frozenset({ApplyOrderUpdate, ApplyProgress})
"""Messages whose write may wait for the next one of them (``PositionKeeper.handle``)."""
DEFER_LIMIT = 64
"""Order updates applied at most before their write (one commit for all of them)."""


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
}
