"""The cheap per-price path (``models/marks.py``) gives exactly what the full rules give.

A basis values a position exactly as ``rules.pnl`` does; a quiet guard only ever skips an
evaluation that would have found nothing: whenever it holds, ``rules.evaluate`` returns ``None``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from models import lifecycle
from models.bands import MARGIN, band, quiet
from models.common import IST, Segment, Side
from models.marks import basis_of, net_at, pct_at, stop_price, take_profit_price
from models.orders import OrderStatus
from models.policy import ExitPolicy, RiskConfig, SessionCalendar, TrailingPolicy
from models.position import ExitReason, OrderRole, Position, PositionStatus
from models.rules import PriceMark, evaluate, pnl, update_marks
from tests.unit.builders import EXIT_NO, active, exit_update, ok, pending, t

sides = st.sampled_from([Side.LONG, Side.SHORT])
prices = st.decimals(min_value=Decimal("1.00"), max_value=Decimal("1000.00"), places=2,
                     allow_nan=False, allow_infinity=False)
pcts = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.9"), places=3)
segments = st.sampled_from([Segment.NSE_FNO, Segment.NSE_CURRENCY, Segment.MCX_COMM])


@st.composite
def positions(draw: st.DrawFn) -> Position:
    """ACTIVE or EXITING, possibly partly exited, on a few segments."""
    side, segment = draw(sides), draw(segments)
    qty = draw(st.integers(min_value=1, max_value=500))
    position = active(side, qty, str(draw(prices)), segment=segment)
    position = position.model_copy(update={"opened_at": t(9, 16)})
    if draw(st.booleans()):
        position = ok(lifecycle.request_exit(position, ExitReason.STOP_LOSS, t(11)))
        done = draw(st.integers(min_value=0, max_value=qty - 1))
        if done:
            part = exit_update(OrderStatus.PENDING, done, str(draw(prices)), at=t(11, 1),
                               side=side, order_no=EXIT_NO, quantity=qty)
            position = ok(lifecycle.apply_update(position, part, OrderRole.EXIT, attempt=1))
        if draw(st.booleans()):  # the exit failed: ACTIVE again, with the filled part kept
            position = ok(lifecycle.exit_failed(position, 1))
    return position


@st.composite
def policies(draw: st.DrawFn) -> RiskConfig:
    mode = draw(st.sampled_from(["percent", "tiers", "off"]))
    policy = ExitPolicy(
        stop_loss_pct=draw(pcts), take_profit_pct=draw(pcts),
        max_hold_minutes=draw(st.sampled_from([0, 0, 0, 90, 300])),
        exit_at=draw(st.sampled_from(["", "10:30", "15:20"])),
        fee_per_order=draw(st.sampled_from([Decimal(0), Decimal(20)])),
        trailing=TrailingPolicy(mode=mode, activation_pct=draw(pcts), trail_pct=draw(pcts)),
        square_off={Segment.NSE_FNO: draw(st.sampled_from(["", "15:15"]))})
    holidays = frozenset({date(2025, 1, 8)}) if draw(st.booleans()) else frozenset()
    return RiskConfig(policy=policy, calendar=SessionCalendar(holidays=holidays))


factors = st.decimals(min_value=Decimal("0.70"), max_value=Decimal("1.60"), places=3)
"""Prices relative to the entry price, so stops, trails and targets are crossed often."""
@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """Mostly in session hours (prices fire rules only then), sometimes a holiday or a weekend."""
    day = draw(st.sampled_from([date(2025, 1, 6), date(2025, 1, 7), date(2025, 1, 8),
                                date(2025, 1, 11)]))
    hours = st.integers(min_value=9 * 3600, max_value=15 * 3600 + 40 * 60)
    any_time = st.integers(min_value=8 * 3600 + 50 * 60, max_value=23 * 3600 + 40 * 60)
    seconds = draw(st.one_of(hours, any_time))
    return datetime(day.year, day.month, day.day, tzinfo=IST) + timedelta(seconds=seconds)


@given(positions(), st.one_of(st.none(), prices), st.sampled_from([0, 20]))
def test_basis_values_a_position_exactly_as_pnl_does(position: Position, ltp: Decimal | None,
                                                     fee: int) -> None:
    policy = ExitPolicy(fee_per_order=Decimal(fee))
    basis = basis_of(position, policy)
    assert basis is not None
    value = pnl(position, ltp or position.entry_price, policy)
    at = ltp or position.entry_price
    assert at is not None
    assert (net_at(basis, at), pct_at(basis, at), basis.realized) == (
        value.net, value.pct, value.realized)
    assert basis.quantity == position.quantity


@given(positions(), prices, st.sampled_from([0, 20]))
def test_pnl_is_the_cash_flow_of_the_fills(position: Position, ltp: Decimal, fee: int) -> None:
    """SPEC §3.3 from the fills themselves: what the exits received plus the open quantity at
    ``ltp``, less what the entries paid (a short the other way round), less a fee per executed
    order. The drawn prices and quantities keep every average exact, so equality is exact."""
    policy = ExitPolicy(fee_per_order=Decimal(fee))
    paid = sum((o.progress.traded_value for o in position.orders if o.role is OrderRole.ENTRY),
               Decimal(0))
    received = sum((o.progress.traded_value for o in position.orders
                    if o.role is not OrderRole.ENTRY), Decimal(0))
    executed = sum(1 for o in position.orders if o.progress.traded_qty > 0)
    gross = position.side.sign * (received + ltp * position.quantity - paid)
    value = pnl(position, ltp, policy)
    assert (value.gross, value.net) == (gross, gross - fee * executed)


def test_a_position_without_an_entry_fill_has_no_basis() -> None:
    assert basis_of(pending(), ExitPolicy()) is None


@given(positions(), st.lists(prices, min_size=1, max_size=8), policies())
def test_folding_prices_with_a_kept_basis_equals_folding_without(
        position: Position, path: list[Decimal], config: RiskConfig) -> None:
    basis = basis_of(position, config.policy)
    slow = fast = position
    for ltp in path:
        slow = update_marks(slow, ltp, config.policy)
        fast = update_marks(fast, ltp, config.policy, basis)
    assert fast == slow


def test_a_basis_of_another_position_is_not_used() -> None:
    policy = ExitPolicy()
    other = basis_of(active(Side.SHORT, 10, "500"), policy)
    position = active(Side.LONG, 100, "100")
    assert update_marks(position, Decimal(120), policy, other) == update_marks(
        position, Decimal(120), policy)


@settings(max_examples=1500)
@given(positions(), policies(), moments(), st.lists(factors, max_size=3),
       st.lists(st.tuples(factors, st.integers(0, 600)), min_size=1, max_size=8))
def test_while_the_guard_holds_no_rule_fires(position: Position, config: RiskConfig,
                                             start: datetime, before: list[Decimal],
                                             path: list[tuple[Decimal, int]]) -> None:
    entry = position.entry_price
    assert entry is not None
    for factor in before:  # peak and trailing stop already set when the guard is made
        position = update_marks(position, _price(entry, factor), config.policy)
    if evaluate(position, None, start, config) is not None:
        return  # the guard is made only after an evaluation that found nothing
    stale_after = timedelta(seconds=float(config.policy.stale_after_seconds))
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = quiet(position, basis, start, config)
    now = start
    for factor, seconds in path:
        ltp = _price(entry, factor)
        now += timedelta(seconds=seconds)
        position = update_marks(position, ltp, config.policy, basis)
        mark = PriceMark(ltp=ltp, at=now - timedelta(seconds=seconds % 9))
        in_session = config.calendar.in_session(position.segment, now)
        fresh = not in_session or now - mark.at <= stale_after
        if guard.holds(position, ltp, fresh, now):
            assert evaluate(position, mark, now, config) is None
            assert guard.in_session == in_session


def _price(entry: Decimal, factor: Decimal) -> Decimal:
    return max(Decimal("0.05"), (entry * factor).quantize(Decimal("0.05")))


PRICE_RULES = {ExitReason.STOP_LOSS, ExitReason.TRAILING_STOP, ExitReason.TAKE_PROFIT}


@settings(max_examples=1000)
@given(positions(), policies(), st.lists(factors, max_size=3))
def test_the_guard_gives_way_exactly_where_a_price_rule_fires(
        position: Position, config: RiskConfig, before: list[Decimal]) -> None:
    """The guard's band ends at the rules' own thresholds: a price at the stop (the tighter
    of stop loss and trailing stop) or at the take-profit price is not quiet and fires a price
    rule; a price ``2 * MARGIN`` inside both is quiet and fires nothing."""
    assume(position.status is PositionStatus.ACTIVE)  # the rules watch only ACTIVE positions
    entry = position.entry_price
    assert entry is not None
    for factor in before:
        position = update_marks(position, _price(entry, factor), config.policy)
    now = t(10, 5)  # a trading day, in session for every segment drawn
    if evaluate(position, None, now, config) is not None:
        return  # a time rule fires: no guard is made
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = quiet(position, basis, now, config)
    sign = basis.sign
    stop = stop_price(basis, position.trail_stop, config.policy)
    target = take_profit_price(basis.entry, sign, config.policy)
    for edge in (stop, target):
        assert not guard.holds(position, edge, True, now)
        decision = evaluate(position, PriceMark(ltp=edge, at=now), now, config)
        assert decision is not None and decision.reason in PRICE_RULES
    above_stop = stop * (1 + sign * 2 * MARGIN)
    short_of_target = target * (1 - sign * 2 * MARGIN)
    if sign * (short_of_target - above_stop) > 0:  # an open band: prices inside it are quiet
        for inside in (above_stop, short_of_target):
            assert guard.holds(position, inside, True, now)
            assert evaluate(position, PriceMark(ltp=inside, at=now), now, config) is None


def test_the_guard_gives_way_near_a_trigger() -> None:
    config = RiskConfig()
    position = active(Side.LONG, 100, "100")
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = quiet(position, basis, t(10), config)
    assert guard.holds(position, Decimal("88.01"), True, t(10, 1))
    assert not guard.holds(position, Decimal("88.00"), True, t(10, 1))  # stop loss at -12 %
    assert not guard.holds(position, Decimal("150"), True, t(10, 1))  # take profit at +50 %
    assert guard.holds(position, Decimal("80"), False, t(10, 1))  # a stale price fires nothing
    assert not guard.holds(position, Decimal("100"), True, t(15, 15))  # square-off time


@given(sides)
def test_the_guard_gives_way_at_an_armed_trailing_stop(side: Side) -> None:
    config = RiskConfig()
    position = update_marks(active(side, 100, "100"), Decimal(100 + side.sign * 10),
                            config.policy)
    assert position.trail_stop is not None  # armed at +3.5 %, trailing 2.5 % behind the peak
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = quiet(position, basis, t(10), config)
    inside = position.trail_stop + side.sign * Decimal("0.01")
    assert guard.holds(position, inside, True, t(10, 1))
    assert not guard.holds(position, position.trail_stop, True, t(10, 1))


def test_the_guard_lasts_until_the_next_time_rule_or_session_change() -> None:
    config = RiskConfig(policy=ExitPolicy(max_hold_minutes=30))
    position = active(Side.SHORT, 10, "100").model_copy(update={"opened_at": t(10)})
    basis = basis_of(position, config.policy)
    assert basis is not None
    assert quiet(position, basis, t(10, 5), config).until == t(10, 30)
    assert quiet(position, basis, t(8), config).until == t(9, 15)  # the session opens
    late = quiet(position, basis, t(16), config)
    assert not late.in_session and late.until == datetime(2025, 1, 7, tzinfo=IST)


def test_the_guard_does_not_outlive_a_change_of_orders_or_trailing_stop() -> None:
    config = RiskConfig()
    position = active(Side.LONG, 100, "100")
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = quiet(position, basis, t(10), config)
    trailed = position.model_copy(update={"trail_stop": Decimal(99)})
    assert not guard.holds(trailed, Decimal(100), True, t(10, 1))
    more = active(Side.LONG, 200, "100")
    assert not guard.holds(more, Decimal(100), True, t(10, 1))


@settings(max_examples=1000)
@given(positions(), policies(), moments(), st.lists(factors, min_size=1, max_size=4),
       st.lists(st.tuples(factors, st.integers(0, 600)), min_size=1, max_size=6))
def test_a_price_inside_the_band_changes_nothing(position: Position, config: RiskConfig,
                                                 start: datetime, before: list[Decimal],
                                                 path: list[tuple[Decimal, int]]) -> None:
    entry = position.entry_price
    assert entry is not None
    for factor in before:
        position = update_marks(position, _price(entry, factor), config.policy)
    basis = basis_of(position, config.policy)
    assert basis is not None
    guard = None
    if evaluate(position, None, start, config) is None:
        guard = quiet(position, basis, start, config)
    found = band(position, basis, guard, config.policy)
    if found is None:
        return
    now = start
    for factor, seconds in path:
        ltp = _price(entry, factor)
        now += timedelta(seconds=seconds)
        inside = (found.low is None or ltp >= found.low) and (
            found.high is None or ltp <= found.high)
        if not inside or (found.until is not None and now >= found.until):
            continue
        assert update_marks(position, ltp, config.policy, basis) is position
        assert evaluate(position, PriceMark(ltp=ltp, at=now), now, config) is None


def test_a_band_needs_a_peak_a_settled_trail_and_a_guard() -> None:
    config = RiskConfig()
    fresh = active(Side.LONG, 100, "100")
    basis = basis_of(fresh, config.policy)
    assert basis is not None
    assert band(fresh, basis, quiet(fresh, basis, t(10), config), config.policy) is None
    position = update_marks(fresh, Decimal(101), config.policy)
    assert band(position, basis, None, config.policy) is None  # ACTIVE without a guard
    found = band(position, basis, quiet(position, basis, t(10), config), config.policy)
    assert found is not None and found.low is not None and found.high is not None
    assert Decimal(88) < found.low < Decimal("88.01")  # the stop loss at -12 %
    assert found.high == Decimal(101)  # past the peak, the marks move
    assert found.until == t(15, 15)  # square-off
    unsettled = position.model_copy(update={"peak_price": Decimal(110)})  # armed, no stop yet
    assert band(unsettled, basis, quiet(unsettled, basis, t(10), config),
                config.policy) is None
