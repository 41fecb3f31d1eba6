"""The order-update actor on the real PostgreSQL store: frames with a NUL are stored exactly
(the store escapes NUL) and rejected or routed with a clear reason; a dropped connection costs
no frame and no fill; the actor lives through both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pykka
import pytest

from actors.orders.audit import RetryStore
from models.orders import OrderStatus
from store.postgres import PostgresStore
from tests.actors.test_order_store_outage import with_nul
from tests.actors.test_order_updates import Flow, frame
from tests.fakes import FakeStore

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


def test_when_postgres_drops_the_connection_then_the_fill_is_routed_and_its_frame_stored_later(
        pg_url: str) -> None:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    orders_store = PostgresStore(f"{pg_url}&application_name={name}")
    orders_store.migrate()
    trackers = FakeStore()
    flow = Flow(trackers, orders_store=orders_store)
    try:
        raws = [frame("E1", OrderStatus.TRADED, 100), frame("E2", OrderStatus.TRADED, 40)]
        flow.send(raws[0])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (name,))
        flow.send(raws[1])
        assert trackers.positions["PE2"].quantity == 40  # routed while its frame waits
        assert flow.orders.proxy().unstored.get(timeout=5) == 1
        flow.orders.tell(RetryStore())
        flow.settle()
        assert [u.raw for u in orders_store.order_updates()] == raws
        assert flow.orders.proxy().unstored.get(timeout=5) == 0
    finally:
        pykka.ActorRegistry.stop_all()
        orders_store.close()
