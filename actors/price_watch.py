"""A keeper's handling of prices and time: marks, the quiet guard and band, freshness, the rules.

``PriceWatch`` is a mixin of ``PositionKeeper`` (``actors/keeper.py``), kept apart so each file
stays small; it reads and writes the keeper's state and asks it to ``_exit`` when a rule fires.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from actors.keeping import KeeperContext, Out, Target
from actors.protocol import ProtectionChanged
from models.common import Instrument
from models.marks import Band, Basis, Quiet, band, basis_of, fits, net_at, pct_at, quiet
from models.messages import Cause, PnLMarked, PriceUpdate, QuoteRequested, TimerFired
from models.position import ExitReason, Position, PositionStatus
from models.rules import ExitDecision, PriceMark, evaluate, is_unprotected, pnl, update_marks

if TYPE_CHECKING:
    from loguru import Logger


class PriceWatch:
    position: Position
    ctx: KeeperContext
    mark: PriceMark | None
    sticky: ExitReason | None
    retry_at: datetime | None
    unprotected: bool
    log: Logger
    _basis: Basis | None
    _quiet: Quiet | None
    _band: tuple[Position, Quiet | None, Band | None] | None
    _quote_asked: datetime | None
    _stale_after: timedelta

    @property
    def instrument(self) -> Instrument:
        return Instrument(segment=self.position.segment, security_id=self.position.security_id)

    def _checkpoint(self, *, force: bool = False) -> None:
        raise NotImplementedError

    def _exit(self, decision: ExitDecision, cause: Cause) -> Out:
        raise NotImplementedError

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
                         causation_id=cause.message_id)

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
