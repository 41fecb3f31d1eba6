"""An exit attempt's audit columns (its order number, its outcome) that the store did not take
are kept by the supervisor only while the process lives (SPEC §11.4). A kill during that
outage loses them, and nothing else: the columns are a record, no decision reads them. The
exit in flight is looked up by its client id at the restart and resolved from the broker's
book, never placed twice, the books agree; and that look-up gives the attempt the columns it
lacks. On the fake store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from models.common import exit_client_id
from models.orders import OrderStatus
from models.position import PositionStatus
from store.ports import Store, StoreError
from store.postgres import PostgresStore
from tests.actors.test_frame_recovery import STORES, Run, _books_agree, fake_or_postgres
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore
from tests.faults.frames import order_lives, overlapping_exits, placed_twice


class AuditsDown(PostgresStore):
    """PostgreSQL whose exit attempts' audit columns cannot be written while ``down``."""

    down = False

    def update_exit_attempt(self, client_id: str, *, order_no: str | None = None,
                            outcome: str | None = None) -> None:
        if self.down:
            raise StoreError("the exit attempts' audit columns cannot be written")
        super().update_exit_attempt(client_id, order_no=order_no, outcome=outcome)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    yield from fake_or_postgres(request, AuditsDown)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def _audits_down(store: Store, down: bool) -> None:
    if isinstance(store, FakeStore):
        store.fail_exits = down
    else:
        assert isinstance(store, AuditsDown)
        store.down = down


def _audit(store: Store) -> list[tuple[str, str | None, str | None]]:
    return sorted((a.client_id, a.order_no, a.outcome) for a in store.exit_attempts("PE1"))


@pytest.mark.parametrize("fills", [False, True], ids=["resting", "filled"])
def test_a_kill_that_loses_held_audit_columns_changes_no_exit_and_the_look_up_restores_them(
        store: Store, fills: bool) -> None:
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.exchange.resting = True
    _audits_down(store, True)
    first.at(T0 + timedelta(seconds=1), "170")  # stop loss: placed, it rests; PLACED not stored
    first.at(T0 + timedelta(seconds=3), "170")  # the supervisor's tries fail too
    (order,) = [o for o in first.exchange.orders() if o.client_id == exit_client_id("PE1", 1)]
    exiting = store.load_position("PE1")
    assert exiting is not None and exiting.status is PositionStatus.EXITING
    assert _audit(store) == [(exit_client_id("PE1", 1), None, None)]
    first.wire.sink.clear()  # the process dies: it hears nothing more
    if fills:  # filled at the broker meanwhile
        first.exchange.modify_order(order.order_no, price=Decimal("170"),
                                    now=T0 + timedelta(seconds=4))
    first.exchange.resting = False
    first.kill()  # still down: the columns the supervisor held are lost
    assert _audit(store) == [(exit_client_id("PE1", 1), None, None)]
    _audits_down(store, False)

    second = Run(store, "Y", T0 + timedelta(seconds=10), ltp="170", exchange=first.exchange)
    second.at(T0 + timedelta(seconds=11), "170")
    second.at(T0 + timedelta(seconds=13), "170")  # a cancelled attempt's successor, after back-off

    assert second.wire.look_ups[:1] == [exit_client_id("PE1", 1)]
    assert exit_client_id("PE1", 1) not in second.wire.placements  # looked up, not sent again
    assert second.wire.placements == ([] if fills else [exit_client_id("PE1", 2)])
    position = store.load_position("PE1")
    assert position is not None and position.status is PositionStatus.EXITED
    lives = order_lives(store)
    assert placed_twice(lives) == {} and overlapping_exits(lives) == []
    assert second.system.books().agree
    if fills:  # its frames went to the dead process: the look-up applied the broker's book
        assert first.exchange.order(order.order_no).filled_qty == position.closed_qty == 100
    else:
        assert _books_agree(store)
    first_attempt = (exit_client_id("PE1", 1), order.order_no, "PLACED")
    assert _audit(store)[0] == first_attempt  # from the look-up at the restart


def test_the_look_up_at_a_restart_keeps_the_audit_columns_that_were_stored(
        store: Store) -> None:
    first = Run(store, "X", T0)
    first.frame("E1", OrderStatus.TRADED, 100)
    first.exchange.resting = True
    first.at(T0 + timedelta(seconds=1), "170")
    store.update_exit_attempt(exit_client_id("PE1", 1), outcome="UNKNOWN: timed out")
    first.kill()
    second = Run(store, "Y", T0 + timedelta(seconds=10), ltp="170", exchange=first.exchange)
    second.system.settle()
    assert second.wire.look_ups[:1] == [exit_client_id("PE1", 1)]
    (attempt,) = [a for a in store.exit_attempts("PE1") if a.attempt == 1]
    assert attempt.outcome == "UNKNOWN: timed out" and attempt.order_no is not None
