"""``lifecycle.holds``: a stored position already holds a frame's update (a start-up need not
route it again) only when applying it would change nothing, whatever the last price and later."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from models import lifecycle
from models.orders import OrderStatus, OrderUpdate
from models.position import OrderRole, Position
from tests.unit.builders import ENTRY_NO, active, apply_exit, exit_update, exiting, t, update


def test_an_entry_fill_the_position_was_opened_with_is_held() -> None:
    position = active(qty=100, price="100", at=t(10))
    same = update(ENTRY_NO, OrderStatus.TRADED, 100, "100", at=t(10))
    earlier = update(ENTRY_NO, OrderStatus.PENDING, 0, at=t(9, 59))
    assert lifecycle.holds(position, same, OrderRole.ENTRY, at=t(12))
    assert lifecycle.holds(position, earlier, OrderRole.ENTRY, at=t(12))


def test_an_exit_fill_stored_but_not_applied_is_not_held() -> None:
    position = apply_exit(exiting(), exit_update(OrderStatus.PENDING, at=t(11, 1)))
    filled = exit_update(OrderStatus.TRADED, 100, "95", at=t(11, 2))
    assert not lifecycle.holds(position, filled, OrderRole.EXIT, at=t(12))


def test_a_cancel_of_the_live_exit_is_not_held() -> None:
    position = apply_exit(exiting(), exit_update(OrderStatus.PENDING, at=t(11, 1)))
    cancelled = exit_update(OrderStatus.CANCELLED, at=t(11, 2))
    assert not lifecycle.holds(position, cancelled, OrderRole.EXIT, at=t(12))


def test_an_order_the_position_does_not_track_or_tracks_in_another_role_is_not_held() -> None:
    position = active()
    assert not lifecycle.holds(position, update("OTHER", OrderStatus.TRADED, 100, "100",
                                                at=t(10)), OrderRole.ENTRY, at=t(12))
    assert not lifecycle.holds(position, update(ENTRY_NO, OrderStatus.TRADED, 100, "100",
                                                at=t(10)), OrderRole.EXIT, at=t(12))


def test_traded_without_a_quantity_is_never_held_its_completion_needs_a_price() -> None:
    position = apply_exit(exiting(), exit_update(OrderStatus.PENDING, at=t(11, 1)))
    bare = exit_update(OrderStatus.TRADED, 0, at=t(11, 2))
    assert not lifecycle.holds(position, bare, OrderRole.EXIT, at=t(12))


_STEPS = st.lists(st.tuples(st.sampled_from([OrderStatus.PENDING, OrderStatus.PART_TRADED,
                                             OrderStatus.TRADED, OrderStatus.CANCELLED]),
                            st.integers(0, 100), st.sampled_from(["94", "95", "96"])),
                  min_size=1, max_size=6)


def _exit_updates(steps: list[tuple[OrderStatus, int, str]]) -> list[OrderUpdate]:
    return [exit_update(status, traded, avg if traded else None,
                        at=t(11, 1) + timedelta(seconds=n))
            for n, (status, traded, avg) in enumerate(steps)]


@given(_STEPS, st.integers(0, 6), st.sampled_from([None, "90", "101"]))
def test_a_held_update_changes_nothing_in_any_later_state_at_any_price(
        steps: list[tuple[OrderStatus, int, str]], applied_count: int,
        last_price: str | None) -> None:
    updates = _exit_updates(steps)
    position: Position = exiting()
    for item in updates[:applied_count]:
        position = lifecycle.apply_update(position, item, OrderRole.EXIT, attempt=1).position
    stored = position
    for item in updates[applied_count:]:  # what happened after the store (later states)
        position = lifecycle.apply_update(position, item, OrderRole.EXIT, attempt=1).position
    for item in updates:
        if not lifecycle.holds(stored, item, OrderRole.EXIT, at=t(12)):
            continue
        price = Decimal(last_price) if last_price is not None else None
        for state in (stored, position):
            again = lifecycle.apply_update(state, item, OrderRole.EXIT, attempt=1,
                                           at=t(12, 5), last_price=price)
            assert again.position is state and not again.fills and again.event is None
