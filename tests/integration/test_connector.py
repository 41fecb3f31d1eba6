"""An account's connector (``app/connector.py``) against the loopback fake DhanHQ and the real
NATS JetStream: the account's order updates reach its partition's subject, from the order
socket and from the order book (what was filled before the connector started, what filled while
its socket was down), and only that account's; a publish NATS refuses is kept and sent later,
in order; a refused token stops the account until a new one comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from app.connector import AccountConnector, Connectors
from broker.dhan import DhanRest, TokenSource
from broker.fake_dhan.venue import TOKEN, Venue, access_token, wait_until
from broker.transport.jetstream import JetStreamTransport
from broker.transport.ports import Delivery, TransportError
from models.common import Instrument, Segment, TxnType
from models.orders import OrderUpdate
from models.partitions import partition_of
from models.wire import parse_order_update

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
A, B = "1100000001", "1100000002"
FUT = Instrument(segment=Segment.NSE_FNO, security_id="49081")


class Flaky:
    """The real transport, refusing the first ``failures`` publishes as a NATS outage does."""

    def __init__(self, real: JetStreamTransport, failures: int) -> None:
        self.real, self.failures = real, failures

    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise TransportError("NATS: no servers available for connection")
        return self.real.publish_order_update(account_id, msg_id, data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.fixture
def venue() -> Iterator[Venue]:
    with Venue({FUT: Decimal("100")}) as built:
        exchange = built.exchange

        def account_of(order_no: str) -> str | None:  # the trader's client ids name them
            try:
                client_id = exchange.order(order_no).client_id
            except KeyError:
                return None
            return client_id.split("-")[0] if client_id.split("-")[0] in (A, B) else None

        built.fake.account_of = account_of
        yield built


@pytest.fixture
def transports(nats_url: str) -> Iterator[tuple[JetStreamTransport, JetStreamTransport]]:
    namespace = f"c{uuid.uuid4().hex[:10]}"
    publisher = JetStreamTransport(nats_url, namespace=namespace)
    consumer = JetStreamTransport(nats_url, namespace=namespace, consumer="check")
    yield publisher, consumer
    consumer.delete_stream()
    consumer.close()
    publisher.close()


class Running:
    def __init__(self, connector: AccountConnector) -> None:
        self.connector = connector
        self.stop = threading.Event()
        self.thread = threading.Thread(target=Connectors([connector], step_every=0.05).run,
                                       args=(self.stop,), daemon=True)

    def __enter__(self) -> AccountConnector:
        self.thread.start()
        return self.connector

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def connector(venue: Venue, transport: object, *, account: str = A,
              tokens: TokenSource | None = None) -> AccountConnector:
    tokens = tokens or TokenSource(token=TOKEN)
    rest = DhanRest(venue.fake.rest_url, account, tokens, timeout=2.0)
    return AccountConnector(account, rest, tokens, transport,  # type: ignore[arg-type]
                            order_ws_url=venue.fake.order_ws_url, poll_every=0.3,
                            retry_every=0.1, backoff=(0.1,))


def enter(venue: Venue, account: str, n: int) -> str:
    return venue.enter(FUT, TxnType.BUY, 50, correlation=f"{account}-{n}")


class Received:
    """What reached the account's partition on JetStream, acked as a runner acks it."""

    def __init__(self, consumer: JetStreamTransport, account: str = A) -> None:
        self.consumer, self.partition = consumer, partition_of(account)
        self.deliveries: list[Delivery] = []

    def pull(self) -> list[Delivery]:
        for delivery in self.consumer.pull_order_updates(self.partition, timeout=0.2):
            delivery.ack()
            self.deliveries.append(delivery)
        return self.deliveries

    def updates(self) -> list[OrderUpdate]:
        parsed = [parse_order_update(d.data.decode()) for d in self.pull()]
        return [u for u in parsed if isinstance(u, OrderUpdate)]

    def traded(self, order_no: str) -> bool:
        return any(u.order_no == order_no and u.traded_qty == 50 for u in self.updates())


def test_the_accounts_updates_reach_its_partition_from_the_book_and_the_socket(
        venue: Venue, transports: tuple[JetStreamTransport, JetStreamTransport]) -> None:
    publisher, consumer = transports
    before = enter(venue, A, 1)  # filled before the connector runs: in the book only
    other = enter(venue, B, 1)  # another account's: never on A's subject
    wait_until(lambda: venue.exchange.order(before).filled_qty == 50, what="the first fill")
    received = Received(consumer)
    with Running(connector(venue, publisher)) as running:
        wait_until(lambda: received.traded(before), what="the fill found in the book")
        wait_until(lambda: running.socket_state == "LIVE", what="the socket up")
        live = enter(venue, A, 2)
        wait_until(lambda: received.traded(live), what="the socket's fill")
        venue.fake.drop_order_sockets()  # down: a fill meanwhile, then the reconnect
        missed = enter(venue, A, 3)
        wait_until(lambda: received.traded(missed), what="the fill while the socket was down")
        wait_until(lambda: running.book_reads >= 3, what="more order-book reads")
    numbers = {u.order_no for u in received.updates()}
    assert {before, live, missed} <= numbers and other not in numbers
    assert {d.account for d in received.deliveries} == {A}
    # An order the book shows unchanged is not published again at each read.
    from_book = [d for d in received.deliveries if b'"Source": "RECONCILE"' in d.data]
    assert len([d for d in from_book if f'"{before}"'.encode() in d.data]) == 1


def test_frames_nats_refuses_are_kept_and_published_later_in_order(
        venue: Venue, transports: tuple[JetStreamTransport, JetStreamTransport]) -> None:
    publisher, consumer = transports
    flaky = Flaky(publisher, failures=4)
    received = Received(consumer)
    with Running(connector(venue, flaky)) as running:
        wait_until(lambda: running.socket_state == "LIVE", what="the socket up")
        orders = [enter(venue, A, n) for n in range(1, 4)]
        wait_until(lambda: all(received.traded(o) for o in orders), what="every fill")
        assert flaky.failures == 0 and running.status().backlog == 0
    seen = [u.order_no for u in received.updates() if u.traded_qty == 50]
    assert [o for o in seen if o in orders][:3] == orders  # in the order they filled


def test_a_refused_token_stops_the_account_until_a_new_one_comes(
        venue: Venue, transports: tuple[JetStreamTransport, JetStreamTransport],
        tmp_path: Path) -> None:
    publisher, consumer = transports
    token_file = tmp_path / A
    token_file.write_text(TOKEN, encoding="utf-8")
    tokens = TokenSource(path=token_file)
    received = Received(consumer)
    with Running(connector(venue, publisher, tokens=tokens)) as running:
        wait_until(lambda: running.socket_state == "LIVE", what="the socket up")
        renewed = access_token(2)
        venue.fake.expire_token(renewed)  # the sockets dropped, their next login refused
        wait_until(lambda: running.status().last_error == "TOKEN_INVALID", what="the refusal")
        reads = running.book_reads
        filled = enter(venue, A, 1)
        wait_until(lambda: venue.exchange.order(filled).filled_qty == 50, what="the fill")
        assert running.book_reads == reads and not received.traded(filled)  # stopped
        token_file.write_text(renewed, encoding="utf-8")
        wait_until(lambda: received.traded(filled), timeout=20, what="the fill after renewal")
        assert running.status().last_error is None


def test_run_py_connector_publishes_an_accounts_fill_and_reports_it(
        venue: Venue, transports: tuple[JetStreamTransport, JetStreamTransport],
        nats_url: str, tmp_path: Path) -> None:
    """The command as a user runs it: credentials and endpoints from the environment."""
    publisher, consumer = transports
    filled = enter(venue, A, 1)
    wait_until(lambda: venue.exchange.order(filled).filled_qty == 50, what="the fill")
    report = tmp_path / "connector.json"
    env = {**os.environ, "DHAN_CLIENT_ID": A, "DHAN_ACCESS_TOKEN": TOKEN,
           "DHAN_API_URL": venue.fake.rest_url, "DHAN_ORDER_WS_URL": venue.fake.order_ws_url}
    env.pop("DHAN_TOKEN_DIR", None)
    namespace = publisher.stream.removesuffix("_ORDERS").lower()
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "connector", "--nats", nats_url, "--namespace",
         namespace, "--accounts", A, "--duration", "3", "--report", str(report)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert TOKEN not in done.stderr
    wait_until(lambda: Received(consumer).traded(filled), what="the fill on JetStream")
    status = json.loads(report.read_text(encoding="utf-8"))[A]
    assert status["published"] >= 1 and status["backlog"] == 0 and status["book_reads"] >= 1
