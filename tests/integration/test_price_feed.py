"""The price feed for runners (``app/feed.py``) against the loopback fake DhanHQ, the real
PostgreSQL and the real NATS: it subscribes, at DhanHQ, the instruments of the accounts' open
positions as the store holds them and publishes their prices on ``prices.<segment>.<security>``;
an instrument whose last position closed is unsubscribed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from app.feed import PriceFeed
from broker.dhan import TokenSource
from broker.dhan.feed_codec import SUBSCRIBE_TICKER, UNSUBSCRIBE_TICKER
from broker.fake_dhan.venue import CLIENT, TOKEN, Venue, wait_until
from broker.transport.jetstream import JetStreamTransport
from models.common import Instrument, Segment
from models.orders import OrderStatus
from store.postgres import PostgresStore
from tests.unit.builders import SECURITY_ID, active, apply_exit, exit_update, exiting, t

pytestmark = pytest.mark.integration

ACCOUNT = "desk-9"
HELD = Instrument(segment=Segment.NSE_FNO, security_id=SECURITY_ID)
IDLE = Instrument(segment=Segment.NSE_FNO, security_id="49999")


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url, account=ACCOUNT)
    opened.migrate()
    yield opened
    opened.close()


def test_the_open_positions_instruments_are_priced_on_nats_and_dropped_once_closed(
        store: PostgresStore, nats_url: str) -> None:
    store.save_position(active())  # long 100 of HELD
    namespace = f"f{uuid.uuid4().hex[:10]}"
    transport = JetStreamTransport(nats_url, namespace=namespace)
    listener = JetStreamTransport(nats_url, namespace=namespace)
    heard: list[bytes] = []
    idle: list[bytes] = []
    listener.subscribe_prices(HELD.segment.value, HELD.security_id, heard.append)
    listener.subscribe_prices(IDLE.segment.value, IDLE.security_id, idle.append)
    listener.flush()
    stop = threading.Event()
    with Venue({HELD: Decimal("101.5"), IDLE: Decimal("55")}) as venue:
        feed = PriceFeed(transport, TokenSource(token=TOKEN), lambda: {
            Instrument(segment=Segment(segment), security_id=security)
            for segment, security in store.open_instruments()},
            feed_ws_url=venue.fake.feed_ws_url, client_id=CLIENT, follow_every=0.1,
            backoff=(0.1,))
        runner = threading.Thread(target=feed.run, args=(stop,), daemon=True)
        runner.start()
        try:
            wait_until(lambda: len(heard) >= 3, what="the held instrument's prices on NATS")
            assert set(heard) == {b"101.5"} and idle == []
            assert venue.fake.feed_requests[0] == (SUBSCRIBE_TICKER, 1)
            closed = apply_exit(exiting(), exit_update(OrderStatus.TRADED, 100, "99",
                                                       at=t(11, 1)))
            store.save_position(closed)
            wait_until(lambda: feed.feed.subscribed == [], what="the unsubscription")
            assert venue.fake.feed_requests[-1] == (UNSUBSCRIBE_TICKER, 1)
            assert feed.status().published >= 3 and feed.status().subscribed == 0
        finally:
            stop.set()
            runner.join(10)
            listener.delete_stream()  # the namespace's order stream, made by the transports
            listener.close()
            transport.close()
    assert not runner.is_alive()
