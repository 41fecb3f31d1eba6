"""An over-fill told again after a restart (SPEC §11.1, §11.2, §11.8): an exit order that
filled past what was open keeps its excess as a position of its own, the remainder. At a
restart the frames stored since the exchange day began are routed again and the broker may
send the over-filling frame again: the remainder must not be opened a second time, no second
exit may be placed, and the books must agree. An entry order reported again with a larger
traded quantity after the over-fill shrinks the excess: the remainder gives that much back.
A kill between the over-filled position's write and its remainder's leaves the remainder to
the next start-up. On the fake store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pykka
import pytest

from actors.orders.actor import OrderUpdateActor
from models.common import TxnType, exit_client_id
from models.messages import Overfilled
from models.orders import OrderStatus, OrderUpdate
from models.position import OrderRole, Position
from models.wire import to_dhan_frame
from store.factory import open_store
from store.ports import Store
from tests.actors.test_frame_recovery import (
    INSTRUMENT,
    STORES,
    Run,
    _books_agree,
    fake_or_postgres,
)
from tests.actors.test_tracker_flow import T0


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    yield from fake_or_postgres(request, open_store)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def _frame(order_no: str, traded: int, *, txn: TxnType = TxnType.BUY, seconds: int,
           avg: str = "200", correlation: str | None = None) -> str:
    return to_dhan_frame(OrderUpdate(
        order_no=order_no, status=OrderStatus.TRADED, segment=INSTRUMENT.segment,
        security_id=INSTRUMENT.security_id, txn_type=txn, product="I", quantity=traded,
        traded_qty=traded, avg_traded_price=Decimal(avg), correlation_id=correlation,
        updated_at=T0 + timedelta(seconds=seconds)))


def _send(run: Run, *frames: str) -> None:
    for raw in frames:
        run.system.order_frame(raw)
        run.system.settle()


OVER = "X-PE1-1 filled 130 of PE1's 100"


def _over_filled(store: Store) -> tuple[Run, str]:
    """PE1 LONG 100; its stop-loss exit rests, then the broker fills it 130 (a manual order
    raced ours into one fill), a frame it sends twice: PX1 SHORT 30 opens."""
    first = Run(store, "X", T0)
    _send(first, _frame("E1", 100, seconds=0))
    first.exchange.resting = True
    first.at(T0 + timedelta(seconds=1), "170")
    (order,) = [o for o in first.exchange.orders() if o.client_id == exit_client_id("PE1", 1)]
    over = _frame(order.order_no, 130, txn=TxnType.SELL, seconds=2, avg="170",
                  correlation=exit_client_id("PE1", 1))
    _send(first, over, over)
    first.exchange.resting = False
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("ACTIVE", 30)}
    return first, over


def _positions(store: Store) -> dict[str, tuple[str, int]]:
    return {p.position_id: (p.status.value, p.quantity) for p in store.list_positions()}


def _position(store: Store, position_id: str) -> Position:
    found = store.load_position(position_id)
    assert found is not None
    return found


def _restart(store: Store, first: Run, ltp: str, seconds: int = 10) -> Run:
    first.kill()
    return Run(store, "Y", T0 + timedelta(seconds=seconds), ltp=ltp)


def _agree(run: Run) -> None:
    report = run.system.books()
    assert report.agree, report.line()
    assert _books_agree(run.store)


def _quiet(run: Run) -> None:
    """Nothing broke: no tracker failed (a position written twice fails its stale write), and
    no dead letter but the anomalies' own rows."""
    assert run.system.parts.metrics.get("actor_restarts") == 0
    letters = [d.error for d in run.store.dead_letters() if not d.error.startswith("anomaly")]
    assert letters == []


def test_an_over_fill_told_again_after_a_restart_opens_no_second_remainder(
        store: Store) -> None:
    first, over = _over_filled(store)
    first.at(T0 + timedelta(seconds=3), "200")  # PX1's stop loss: it exits once
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("EXITED", 0)}
    assert sorted(first.placed()) == [exit_client_id("PE1", 1), exit_client_id("PX1", 1)]
    _agree(first)
    closed, fills = _position(store, "PX1"), store.fills("PX1")
    second = _restart(store, first, "200")
    _send(second, over, over)  # the broker sends it again (a reconnect, a reconcile)
    second.at(T0 + timedelta(seconds=20), "210")
    second.at(T0 + timedelta(seconds=40), "210")
    assert _position(store, "PX1") == closed and store.fills("PX1") == fills
    assert second.system.open_positions() == []
    assert second.placed() == []
    _agree(second)
    _quiet(second)


def test_an_open_remainder_is_exited_once_after_a_restart_that_hears_its_over_fill_again(
        store: Store) -> None:
    first, over = _over_filled(store)
    second = _restart(store, first, "170")
    _send(second, over, over)
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("ACTIVE", 30)}
    second.at(T0 + timedelta(seconds=20), "200")  # PX1's stop loss
    second.at(T0 + timedelta(seconds=40), "200")
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("EXITED", 0)}
    assert second.placed() == [exit_client_id("PX1", 1)]
    _agree(second)
    _quiet(second)


def test_an_entry_reported_again_larger_gives_the_remainder_back_across_a_restart(
        store: Store) -> None:
    """The broker then says E1 traded 130 (twice): PE1 bought 130 and sold 130, flat; PX1
    never was. It stays closed (not ACTIVE with nothing open), PX1 gives its 30 back at the
    price it took them (no PnL on what never was), and no exit is placed for either."""
    first, over = _over_filled(store)
    grown = _frame("E1", 130, seconds=3)
    _send(first, grown, grown)
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("EXITED", 0)}
    given = _position(store, "PX1").order("X1~retracted")
    assert given is not None and given.role is OrderRole.RETRACTED
    assert (given.progress.traded_qty, given.progress.average()) == (30, Decimal("170"))
    first.at(T0 + timedelta(seconds=4), "100")  # far past both stops
    assert first.placed() == [exit_client_id("PE1", 1)]
    _agree(first)
    second = _restart(store, first, "100")
    _send(second, over, grown, over)
    second.at(T0 + timedelta(seconds=20), "300")
    second.at(T0 + timedelta(seconds=40), "100")
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("EXITED", 0)}
    assert second.placed() == []
    _agree(second)
    _quiet(second)


def _killed_before_the_remainder_hears(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies once the over-filled position is written, before its order-update
    actor opens or fits the remainder: the ``Overfilled`` never arrives."""
    def lost(self: OrderUpdateActor, message: Overfilled) -> None:
        return None
    monkeypatch.setattr(OrderUpdateActor, "_overfilled", lost)


def test_a_remainder_never_opened_before_a_kill_is_opened_at_restart(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _killed_before_the_remainder_hears(patch)
        first = Run(store, "X", T0)
        _send(first, _frame("E1", 100, seconds=0))
        first.exchange.resting = True
        first.at(T0 + timedelta(seconds=1), "170")
        (order,) = [o for o in first.exchange.orders()]
        _send(first, _frame(order.order_no, 130, txn=TxnType.SELL, seconds=2, avg="170",
                            correlation=exit_client_id("PE1", 1)))
        first.kill()
    assert _positions(store) == {"PE1": ("EXITED", 0)}
    second = Run(store, "Y", T0 + timedelta(seconds=10), ltp="170")
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("ACTIVE", 30)}
    assert _position(store, "PX1").entry_price == Decimal("170")
    second.at(T0 + timedelta(seconds=20), "200")  # its stop loss: one exit
    assert second.placed() == [exit_client_id("PX1", 1)]
    _agree(second)
    _quiet(second)


def test_a_give_back_never_told_before_a_kill_is_made_at_restart(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = _over_filled(store)
    with monkeypatch.context() as patch:
        _killed_before_the_remainder_hears(patch)
        _send(first, _frame("E1", 130, seconds=3))
        assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("ACTIVE", 30)}
        first.kill()
    second = Run(store, "Y", T0 + timedelta(seconds=10), ltp="170")
    assert _positions(store) == {"PE1": ("EXITED", 0), "PX1": ("EXITED", 0)}
    second.at(T0 + timedelta(seconds=20), "300")
    assert second.placed() == []
    _agree(second)
    _quiet(second)
