"""The position state machine of SPEC §3.2, transition by transition, long and short."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models import lifecycle
from models.common import Side, exit_client_id
from models.orders import OrderStatus
from models.position import (
    Event,
    ExitReason,
    OrderRole,
    Position,
    PositionStatus,
    new_position,
    remainders_among,
)
from tests.unit.builders import (
    ENTRY_NO,
    active,
    apply_exit,
    d,
    exit_update,
    exiting,
    ok,
    pending,
    progress,
    t,
    update,
)

SIDES = pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
FAILED = pytest.mark.parametrize("failure", [OrderStatus.CANCELLED, OrderStatus.REJECTED,
                                             OrderStatus.EXPIRED])


# PENDING -> ACTIVE / CANCELLED --------------------------------------------------------------------
@SIDES
def test_when_first_entry_fill_then_pending_becomes_active(side: Side) -> None:
    fill_update = update(ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side)

    applied = lifecycle.apply_update(pending(side), fill_update, OrderRole.ENTRY)

    position = ok(applied)
    assert applied.event is Event.ENTRY_FILL
    assert position.status is PositionStatus.ACTIVE
    assert position.side is side
    assert (position.quantity, position.entry_price) == (50, d(100))
    assert position.opened_at == t(10)
    [fill] = applied.fills
    assert (fill.order_no, fill.role, fill.qty, fill.cum_qty, fill.price, fill.at) == (
        ENTRY_NO, OrderRole.ENTRY, 50, 50, d(100), t(10))


@SIDES
def test_when_entry_is_only_acknowledged_then_still_pending(side: Side) -> None:
    applied = lifecycle.apply_update(pending(side), update(ENTRY_NO, OrderStatus.PENDING,
                                                           at=t(10), side=side),
                                     OrderRole.ENTRY)

    assert ok(applied).status is PositionStatus.PENDING
    assert applied.fills == ()
    assert applied.event is None


@SIDES
@FAILED
def test_when_entry_fails_with_nothing_filled_then_cancelled(side: Side,
                                                             failure: OrderStatus) -> None:
    applied = lifecycle.apply_update(pending(side), update(ENTRY_NO, failure, at=t(10),
                                                           side=side), OrderRole.ENTRY)

    position = ok(applied)
    assert applied.event is Event.ENTRY_FAILED
    assert position.status is PositionStatus.CANCELLED
    assert (position.quantity, position.entry_price, position.opened_at) == (0, None, None)


@SIDES
def test_when_partly_filled_entry_is_cancelled_then_active_with_the_filled_part(
        side: Side) -> None:
    position = ok(lifecycle.apply_update(pending(side), update(
        ENTRY_NO, OrderStatus.PART_TRADED, 30, "100", at=t(10), side=side), OrderRole.ENTRY))

    applied = lifecycle.apply_update(position, update(
        ENTRY_NO, OrderStatus.CANCELLED, 30, "100", at=t(10, 5), side=side), OrderRole.ENTRY)

    assert ok(applied).status is PositionStatus.ACTIVE
    assert applied.position.quantity == 30
    assert applied.fills == ()


# ACTIVE -> ACTIVE: further entry fills ------------------------------------------------------------
@SIDES
def test_when_further_entry_fill_then_quantity_grows_at_volume_weighted_price(
        side: Side) -> None:
    first = ok(lifecycle.apply_update(pending(side), update(
        ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side), OrderRole.ENTRY))

    applied = lifecycle.apply_update(first, update(
        ENTRY_NO, OrderStatus.TRADED, 100, "101", at=t(10, 1), side=side), OrderRole.ENTRY)

    position = ok(applied)
    assert applied.event is Event.ENTRY_FILL
    assert position.status is PositionStatus.ACTIVE
    assert (position.quantity, position.entry_price) == (100, d(101))
    [fill] = applied.fills
    assert (fill.qty, fill.cum_qty, fill.price) == (50, 100, d(102))
    assert position.opened_at == t(10)
    assert position.version == first.version + 1


@SIDES
def test_when_entry_fills_while_exiting_then_quantity_grows_and_still_exiting(
        side: Side) -> None:
    position = ok(lifecycle.request_exit(ok(lifecycle.apply_update(pending(side), update(
        ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side), OrderRole.ENTRY)),
        ExitReason.MANUAL, t(10, 1)))

    applied = lifecycle.apply_update(position, update(
        ENTRY_NO, OrderStatus.TRADED, 100, "100", at=t(10, 2), side=side), OrderRole.ENTRY)

    assert ok(applied).status is PositionStatus.EXITING
    assert applied.position.quantity == 100


# ACTIVE -> EXITING --------------------------------------------------------------------------------
@SIDES
def test_when_exit_requested_then_exiting_with_attempt_one(side: Side) -> None:
    position = active(side)

    applied = lifecycle.request_exit(position, ExitReason.STOP_LOSS, t(11))

    after = ok(applied)
    assert applied.event is Event.EXIT_REQUESTED
    assert after.status is PositionStatus.EXITING
    assert (after.exit_attempt, after.exit_reason, after.exit_requested_at) == (
        1, ExitReason.STOP_LOSS, t(11))
    assert after.current_exit_client_id() == exit_client_id(position.position_id, 1)
    assert after.current_exit_client_id() == f"X-{position.position_id}-1"
    assert after.quantity == 100


def test_no_exit_client_id_before_any_exit_is_requested() -> None:
    assert active().current_exit_client_id() is None


# EXITING -> EXITING / EXITED ----------------------------------------------------------------------
@SIDES
def test_when_exit_partially_fills_then_quantity_shrinks_and_still_exiting(side: Side) -> None:
    applied = lifecycle.apply_update(exiting(side), exit_update(
        OrderStatus.PART_TRADED, 40, "110", at=t(11, 1), side=side), OrderRole.EXIT, attempt=1)

    position = ok(applied)
    assert applied.event is Event.EXIT_FILL
    assert position.status is PositionStatus.EXITING
    assert (position.quantity, position.exit_qty, position.exit_price) == (60, 40, d(110))
    [fill] = applied.fills
    assert (fill.role, fill.qty, fill.price) == (OrderRole.EXIT, 40, d(110))


@SIDES
def test_when_exit_fills_reach_quantity_then_exited_at_volume_weighted_exit_price(
        side: Side) -> None:
    partly = apply_exit(exiting(side), exit_update(OrderStatus.PART_TRADED, 40, "110",
                                                   at=t(11, 1), side=side))

    applied = lifecycle.apply_update(partly, exit_update(
        OrderStatus.TRADED, 100, "111.2", at=t(11, 2), side=side), OrderRole.EXIT, attempt=1)

    position = ok(applied)
    assert applied.event is Event.EXIT_FILLED
    assert position.status is PositionStatus.EXITED
    assert (position.quantity, position.exit_qty) == (0, 100)
    assert position.exit_price == d("111.2")
    [fill] = applied.fills
    assert (fill.qty, fill.price) == (60, d(112))
    assert position.exited_at == t(11, 2)
    assert position.exit_reason is ExitReason.STOP_LOSS
    assert not position.open


# EXITING -> ACTIVE, and the retry -----------------------------------------------------------------
@SIDES
@FAILED
def test_when_exit_order_fails_then_active_with_the_filled_part_kept(
        side: Side, failure: OrderStatus) -> None:
    partly = apply_exit(exiting(side), exit_update(OrderStatus.PART_TRADED, 40, "110",
                                                   at=t(11, 1), side=side))

    applied = lifecycle.apply_update(partly, exit_update(failure, 40, "110", at=t(11, 2),
                                                         side=side), OrderRole.EXIT, attempt=1)

    position = ok(applied)
    assert applied.event is Event.EXIT_FAILED
    assert position.status is PositionStatus.ACTIVE
    assert (position.quantity, position.exit_qty, position.exit_price) == (60, 40, d(110))
    assert position.exit_attempt == 1


@SIDES
def test_when_exit_order_rejected_with_nothing_filled_then_active_with_full_quantity(
        side: Side) -> None:
    applied = lifecycle.apply_update(exiting(side), exit_update(
        OrderStatus.REJECTED, at=t(11, 1), side=side), OrderRole.EXIT, attempt=1)

    assert applied.event is Event.EXIT_FAILED
    assert ok(applied).status is PositionStatus.ACTIVE
    assert applied.position.quantity == 100


@SIDES
def test_when_exit_is_requested_again_after_a_failure_then_attempt_two(side: Side) -> None:
    failed = apply_exit(exiting(side), exit_update(OrderStatus.CANCELLED, 40, "110",
                                                   at=t(11, 1), side=side))

    applied = lifecycle.request_exit(failed, ExitReason.TRAILING_STOP, t(11, 5))

    position = ok(applied)
    assert position.status is PositionStatus.EXITING
    assert position.exit_attempt == 2
    assert position.exit_reason is ExitReason.TRAILING_STOP
    assert position.current_exit_client_id() == exit_client_id(position.position_id, 2)
    assert position.quantity == 60


@SIDES
def test_when_second_attempt_fills_the_rest_then_exited_at_vwap_of_both_attempts(
        side: Side) -> None:
    failed = apply_exit(exiting(side), exit_update(OrderStatus.CANCELLED, 40, "110",
                                                   at=t(11, 1), side=side))
    retried = ok(lifecycle.request_exit(failed, ExitReason.STOP_LOSS, t(11, 5)))

    position = apply_exit(retried, exit_update(OrderStatus.TRADED, 60, "105", at=t(11, 6),
                                               side=side, order_no="X2", quantity=60),
                          attempt=2)

    assert position.status is PositionStatus.EXITED
    assert position.exit_price == d(107)  # (40*110 + 60*105) / 100
    assert position.executed_orders == 3


@SIDES
def test_when_exit_order_could_not_be_placed_then_active_again(side: Side) -> None:
    applied = lifecycle.exit_failed(exiting(side), attempt=1)

    assert applied.event is Event.EXIT_FAILED
    assert ok(applied).status is PositionStatus.ACTIVE
    assert applied.position.exit_attempt == 1


def test_exit_failed_for_a_non_current_attempt_is_rejected() -> None:
    position = exiting()

    applied = lifecycle.exit_failed(position, attempt=2)

    assert applied.rejection == "attempt 2 is not the current one"
    assert applied.position is position


def test_exit_failed_when_not_exiting_is_rejected() -> None:
    position = ok(lifecycle.exit_failed(exiting(), attempt=1))

    applied = lifecycle.exit_failed(position, attempt=1)

    assert applied.rejection is not None
    assert "EXIT_FAILED" in applied.rejection
    assert applied.position is position


def test_a_late_update_of_a_superseded_attempt_does_not_fail_the_current_one() -> None:
    failed = apply_exit(exiting(), exit_update(OrderStatus.PART_TRADED, 40, "110", at=t(11, 1)))
    failed = ok(lifecycle.exit_failed(failed, attempt=1))
    retried = ok(lifecycle.request_exit(failed, ExitReason.STOP_LOSS, t(11, 5)))

    applied = lifecycle.apply_update(retried, exit_update(OrderStatus.CANCELLED, 40, "110",
                                                          at=t(11, 6)), OrderRole.EXIT)

    assert ok(applied).status is PositionStatus.EXITING
    assert applied.position.exit_attempt == 2


# Untracked opposite orders ------------------------------------------------------------------------
@SIDES
def test_when_untracked_opposite_fill_reduces_then_still_active(side: Side) -> None:
    applied = lifecycle.apply_progress(active(side), progress(
        "U1", OrderStatus.PART_TRADED, 30, "104", t(10, 30)), OrderRole.OPPOSITE)

    position = ok(applied)
    assert applied.event is Event.OPPOSITE_FILL
    assert position.status is PositionStatus.ACTIVE
    assert (position.quantity, position.exit_price) == (70, d(104))
    assert position.exit_reason is None


@SIDES
def test_when_untracked_opposite_fill_closes_then_exited_as_broker_exit(side: Side) -> None:
    reduced = ok(lifecycle.apply_progress(active(side), progress(
        "U1", OrderStatus.PART_TRADED, 30, "100", t(10, 30)), OrderRole.OPPOSITE))

    applied = lifecycle.apply_progress(reduced, progress(
        "U1", OrderStatus.TRADED, 100, "107", t(10, 31)), OrderRole.OPPOSITE)

    position = ok(applied)
    assert applied.event is Event.OPPOSITE_FILLED
    assert position.status is PositionStatus.EXITED
    assert position.exit_reason is ExitReason.BROKER_EXIT
    assert position.exited_at == t(10, 31)
    assert position.exit_price == d(107)
    [fill] = applied.fills
    assert (fill.qty, fill.price) == (70, d(110))  # (100*107 - 30*100) / 70


def test_when_untracked_opposite_fill_closes_an_exiting_position_then_its_reason_is_kept() -> None:
    applied = lifecycle.apply_progress(exiting(reason=ExitReason.TAKE_PROFIT), progress(
        "U1", OrderStatus.TRADED, 100, "150", t(11, 1)), OrderRole.OPPOSITE)

    assert ok(applied).status is PositionStatus.EXITED
    assert applied.position.exit_reason is ExitReason.TAKE_PROFIT


# Idempotent and monotonic -------------------------------------------------------------------------
@SIDES
def test_when_an_update_is_delivered_twice_then_the_second_changes_nothing(side: Side) -> None:
    fill_update = update(ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side)
    position = ok(lifecycle.apply_update(pending(side), fill_update, OrderRole.ENTRY))

    again = lifecycle.apply_update(position, fill_update, OrderRole.ENTRY)

    assert again.position is position
    assert (again.fills, again.event, again.rejection, again.changed) == ((), None, None, False)


def test_when_an_exit_update_is_delivered_twice_then_the_second_changes_nothing() -> None:
    partial = exit_update(OrderStatus.PART_TRADED, 40, "110", at=t(11, 1))
    position = apply_exit(exiting(), partial)

    again = lifecycle.apply_update(position, partial, OrderRole.EXIT, attempt=1)

    assert again.position is position
    assert not again.changed


def test_when_an_older_update_arrives_after_traded_then_traded_is_kept() -> None:
    traded = active()  # entry TRADED 100 @ 100 at 10:00

    applied = lifecycle.apply_update(traded, update(ENTRY_NO, OrderStatus.PENDING, at=t(9, 59)),
                                     OrderRole.ENTRY)

    tracked = applied.position.order(ENTRY_NO)
    assert tracked is not None
    assert tracked.progress.status is OrderStatus.TRADED
    assert applied.position is traded


def test_when_a_smaller_cumulative_quantity_arrives_late_then_nothing_rolls_back() -> None:
    traded = active()

    applied = lifecycle.apply_update(traded, update(ENTRY_NO, OrderStatus.PART_TRADED, 50, "99",
                                                    at=t(9, 59, 30)), OrderRole.ENTRY)

    assert (applied.position.quantity, applied.position.entry_price) == (100, d(100))
    assert applied.fills == ()


@SIDES
def test_when_traded_arrives_before_the_partial_fill_then_same_position_as_in_order(
        side: Side) -> None:
    partial = update(ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10), side=side)
    traded = update(ENTRY_NO, OrderStatus.TRADED, 100, "101", at=t(10, 1), side=side)
    in_order = pending(side)
    for item in (partial, traded):
        in_order = ok(lifecycle.apply_update(in_order, item, OrderRole.ENTRY))
    reversed_ = pending(side)
    for item in (traded, partial, traded):
        reversed_ = ok(lifecycle.apply_update(reversed_, item, OrderRole.ENTRY))

    assert reversed_.model_dump(exclude={"version"}) == in_order.model_dump(exclude={"version"})


@SIDES
def test_opened_at_is_the_earliest_entry_fill_time_whatever_the_delivery_order(
        side: Side) -> None:
    acknowledged_late = update(ENTRY_NO, OrderStatus.PENDING, at=t(10, 30), side=side)
    later = update(ENTRY_NO, OrderStatus.TRADED, 100, "101", at=t(10, 5), side=side)
    earlier = update(ENTRY_NO, OrderStatus.PART_TRADED, 50, "100", at=t(10, 1), side=side)
    position = pending(side)

    for item in (acknowledged_late, later, earlier):
        position = ok(lifecycle.apply_update(position, item, OrderRole.ENTRY))

    assert position.opened_at == t(10, 1)
    assert (position.quantity, position.entry_price) == (100, d(101))


# Rejected transitions -----------------------------------------------------------------------------
def test_when_an_exit_fill_arrives_on_an_exited_position_then_kept_as_excess() -> None:
    exited = apply_exit(exiting(), exit_update(OrderStatus.TRADED, 100, "110", at=t(11, 1)))

    applied = lifecycle.apply_update(exited, exit_update(
        OrderStatus.TRADED, 20, "111", at=t(11, 2), order_no="X9", quantity=20),
        OrderRole.EXIT, attempt=1)

    # Never dropped (SPEC §11.1): the position stays EXITED, its closed quantity and realised
    # PnL unchanged, and the 20 are excess, for a position of their own.
    assert applied.rejection is None
    assert applied.position.status is PositionStatus.EXITED
    assert applied.position.closed_qty == 100 and applied.position.excess_qty == 20
    assert [f.qty for f in applied.fills] == [20]


@pytest.mark.parametrize("status", ["pending", "exiting", "exited", "cancelled"])
def test_request_exit_is_rejected_unless_active(status: str) -> None:
    position = {
        "pending": pending(),
        "exiting": exiting(),
        "exited": apply_exit(exiting(), exit_update(OrderStatus.TRADED, 100, "110",
                                                    at=t(11, 1))),
        "cancelled": ok(lifecycle.apply_update(pending(), update(
            ENTRY_NO, OrderStatus.CANCELLED, at=t(10)), OrderRole.ENTRY)),
    }[status]

    applied = lifecycle.request_exit(position, ExitReason.MANUAL, t(12))

    assert applied.rejection == (f"cannot exit a {position.status} position "
                                 f"with open quantity {position.quantity}")
    assert applied.position is position
    assert applied.event is None


def test_when_the_entry_order_is_reported_as_an_exit_then_rejected() -> None:
    position = active()

    applied = lifecycle.apply_update(position, update(ENTRY_NO, OrderStatus.TRADED, 100, "100",
                                                      at=t(10)), OrderRole.EXIT, attempt=1)

    assert applied.rejection == f"order {ENTRY_NO} is the position's ENTRY, not its EXIT"
    assert applied.position is position


def test_entry_price_is_exact_for_a_non_terminating_average() -> None:
    position = ok(lifecycle.apply_update(pending(), update(
        ENTRY_NO, OrderStatus.PART_TRADED, 1, "100", at=t(10)), OrderRole.ENTRY))
    position = ok(lifecycle.apply_update(position, update(
        ENTRY_NO, OrderStatus.TRADED, 3, "101", at=t(10, 1)), OrderRole.ENTRY))

    assert position.entry_price == d(101)
    assert position.exit_price is None
    assert isinstance(position.entry_price, Decimal)


# Over-fills and their remainders (SPEC §11.1) -----------------------------------------------------
def _over_filled(exit_qty: int = 130) -> Position:
    """LONG 100 at 100 whose exit order X1 filled ``exit_qty`` at 90."""
    return apply_exit(exiting(), exit_update(OrderStatus.TRADED, exit_qty, "90", at=t(11, 1),
                                             quantity=exit_qty))


def _remainder(taken: int) -> Position:
    """The SHORT that X1's excess of ``taken`` opened."""
    opened = new_position(update("X1", OrderStatus.TRANSIT, side=Side.SHORT),
                          position_id="PX1", side=Side.SHORT, created_at=t(11, 1))
    return ok(lifecycle.fit_remainder(opened, progress("X1", OrderStatus.TRADED, taken, "90",
                                                       t(11, 1)), at=t(11, 1)))


def test_when_the_entry_grows_after_an_over_fill_then_the_position_stays_exited() -> None:
    over = _over_filled()
    assert (over.status, over.excess_qty) == (PositionStatus.EXITED, 30)

    applied = lifecycle.apply_update(over, update(ENTRY_NO, OrderStatus.TRADED, 120, "100",
                                                  at=t(11, 2), quantity=120), OrderRole.ENTRY)

    # Not re-opened with nothing open: its exits covered the late fill already.
    position = ok(applied)
    assert applied.event is None and [f.qty for f in applied.fills] == [20]
    assert (position.status, position.quantity, position.excess_qty) == (
        PositionStatus.EXITED, 0, 10)
    assert [(p.order_no, p.traded_qty) for p in position.excess_fills(every=True)] == [
        ("X1", 10)]


def test_when_the_entry_grows_past_its_exits_then_the_position_reopens() -> None:
    applied = lifecycle.apply_update(_over_filled(), update(
        ENTRY_NO, OrderStatus.TRADED, 150, "100", at=t(11, 2), quantity=150), OrderRole.ENTRY)

    assert applied.event is Event.ENTRY_FILL
    assert (ok(applied).status, ok(applied).quantity) == (PositionStatus.ACTIVE, 20)
    assert ok(applied).excess_fills() == []
    assert [(p.order_no, p.traded_qty) for p in ok(applied).excess_fills(every=True)] == [
        ("X1", 0)]


def test_a_remainder_fitted_to_a_smaller_excess_gives_the_difference_back_at_its_price() -> None:
    remainder = _remainder(30)
    assert (remainder.status, remainder.quantity, remainder.entry_price) == (
        PositionStatus.ACTIVE, 30, d(90))

    applied = lifecycle.fit_remainder(remainder, progress("X1", OrderStatus.TRADED, 10, "90",
                                                          t(11, 1)), at=t(11, 2))

    position = ok(applied)
    given = position.order("X1~retracted")
    assert given is not None and given.role is OrderRole.RETRACTED
    assert (given.progress.traded_qty, given.progress.average()) == (20, d(90))
    assert (position.status, position.quantity) == (PositionStatus.ACTIVE, 10)
    # Cumulative: the same excess again changes nothing; nothing left gives back the rest.
    again = lifecycle.fit_remainder(position, progress("X1", OrderStatus.TRADED, 10, "90",
                                                       t(11, 1)), at=t(11, 3))
    assert again.position is position
    flat = ok(lifecycle.fit_remainder(position, progress("X1", OrderStatus.TRADED, 0, "90",
                                                         t(11, 1)), at=t(11, 3)))
    assert (flat.status, flat.quantity, flat.exit_reason) == (
        PositionStatus.EXITED, 0, ExitReason.BROKER_EXIT)
    assert flat.exit_price == d(90)  # no PnL on what never was


def test_a_remainder_given_back_and_over_filled_again_holds_the_new_excess() -> None:
    remainder = ok(lifecycle.fit_remainder(_remainder(30), progress(
        "X1", OrderStatus.TRADED, 0, "90", t(11, 1)), at=t(11, 2)))
    assert remainder.status is PositionStatus.EXITED

    applied = lifecycle.fit_remainder(remainder, progress("X1", OrderStatus.TRADED, 25, "90",
                                                          t(11, 3)), at=t(11, 3))

    assert (ok(applied).status, ok(applied).quantity) == (PositionStatus.ACTIVE, 25)


def test_a_remainder_closed_by_its_own_exit_and_given_back_hands_its_exit_on_as_excess() -> None:
    remainder = apply_exit(ok(lifecycle.request_exit(_remainder(30), ExitReason.STOP_LOSS,
                                                     t(11, 2))),
                           exit_update(OrderStatus.TRADED, 30, "95", at=t(11, 3),
                                       side=Side.SHORT, order_no="Y1", quantity=30))
    assert remainder.status is PositionStatus.EXITED

    applied = lifecycle.fit_remainder(remainder, progress("X1", OrderStatus.TRADED, 0, "90",
                                                          t(11, 1)), at=t(11, 4))

    # Its own exit bought 30 that nothing short holds any more: that is its excess now.
    position = ok(applied)
    assert position.status is PositionStatus.EXITED
    assert [(p.order_no, p.traded_qty) for p in position.excess_fills()] == [("Y1", 30)]


def test_remainders_among_positions_are_those_opened_by_another_ones_exit_order() -> None:
    assert remainders_among([_over_filled(), _remainder(30), active()]) == {"PX1"}
    assert remainders_among([_remainder(30)]) == set()
