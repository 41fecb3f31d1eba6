"""Frames with a NUL through the order-update actor into the real PostgreSQL store: stored
exactly (the store escapes NUL), rejected or routed with a clear reason, and the actor lives."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest

from models.orders import OrderStatus
from store.postgres import PostgresStore
from tests.actors.test_order_store_outage import with_nul
from tests.actors.test_order_updates import Flow, frame

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def flow(store: PostgresStore) -> Iterator[Flow]:
    built = Flow(store)  # type: ignore[arg-type]  # the real store where a fake usually is
    yield built
    pykka.ActorRegistry.stop_all()


def test_a_frame_with_a_nul_is_stored_in_postgres_and_the_actor_lives(
        flow: Flow, store: PostgresStore) -> None:
    raws = [with_nul(frame("E1", OrderStatus.TRADED, 100), "OrderNo", "E1"),
            frame("E1", OrderStatus.TRADED, 100).replace('"E1"', '"E\x001"'),
            with_nul(frame("E2", OrderStatus.TRADED, 40), "Symbol", "NIFTY"),
            frame("E1", OrderStatus.TRADED, 100, seconds=1)]
    for raw in raws:
        flow.send(raw)
    stored = store.order_updates()
    assert [u.raw for u in stored] == raws
    assert [u.accepted for u in stored] == [False, False, True, True]
    assert stored[0].order_no == "E1\x00"
    assert stored[0].reason is not None and "order_no holds a NUL" in stored[0].reason
    assert flow.orders.proxy().unstored.get(timeout=5) == 0
    assert {p.position_id: p.quantity for p in store.load_open_positions()} == {
        "PE1": 100, "PE2": 40}
