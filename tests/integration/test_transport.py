"""The transport's contract, in process and on the real NATS JetStream: order updates per
partition, de-duplicated by message id, delivered again until acked; prices to whoever
subscribes now. Each JetStream test has a namespace (stream and subjects) of its own."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from broker.transport.jetstream import JetStreamTransport
from broker.transport.local import LocalTransport
from broker.transport.ports import (
    Transport,
    TransportError,
    order_subject,
    price_subject,
    subject_of_account,
)
from models.partitions import partition_of

ACK_WAIT = 0.6
ACCOUNT = "1000000001"
OTHER = next(str(n) for n in range(1000000002, 1000001000)
             if partition_of(str(n)) != partition_of(ACCOUNT))
P = partition_of(ACCOUNT)

MakeTransport = Callable[..., Transport]


@pytest.fixture(params=["local", pytest.param("jetstream", marks=pytest.mark.integration)])
def make_transport(request: pytest.FixtureRequest) -> Iterator[MakeTransport]:
    made: list[Transport] = []
    namespace = f"t{uuid.uuid4().hex[:10]}"

    def make(**options: object) -> Transport:
        options.setdefault("ack_wait", ACK_WAIT)
        transport: Transport
        if request.param == "local":
            if made:  # one process: every "runner" shares the one transport
                return made[0]
            transport = LocalTransport(ack_wait=float(options["ack_wait"]))  # type: ignore[arg-type]
        else:
            url = request.getfixturevalue("nats_url")
            transport = JetStreamTransport(url, namespace=namespace, **options)  # type: ignore[arg-type]
        made.append(transport)
        return transport

    yield make
    if made and isinstance(made[0], JetStreamTransport):
        made[0].delete_stream()
    for transport in made:
        transport.close()


@pytest.fixture
def transport(make_transport: MakeTransport) -> Transport:
    return make_transport()


def test_when_published_then_pulled_on_the_accounts_partition_with_its_account(
        transport: Transport) -> None:
    assert transport.publish_order_update(ACCOUNT, "m-1", b'{"orderNo": "1"}') is True
    assert transport.pull_order_updates(partition_of(OTHER), timeout=0.2) == []
    [got] = transport.pull_order_updates(P, timeout=2)
    assert (got.partition, got.msg_id, got.account, got.data, got.redelivered) == (
        P, "m-1", ACCOUNT, b'{"orderNo": "1"}', False)
    assert got.subject.endswith(order_subject(P)) and got.subject.endswith(f"orders.p{P:03d}")
    got.ack()


def test_when_same_message_id_published_twice_then_delivered_once(transport: Transport) -> None:
    assert transport.publish_order_update(ACCOUNT, "m-dup", b"first") is True
    assert transport.publish_order_update(ACCOUNT, "m-dup", b"again") is False
    got = transport.pull_order_updates(P, timeout=1)
    assert [(d.msg_id, d.data) for d in got] == [("m-dup", b"first")]
    got[0].ack()
    assert transport.pull_order_updates(P, timeout=0.3) == []


def test_when_many_published_then_pulled_in_order_in_batches(transport: Transport) -> None:
    for n in range(5):
        transport.publish_order_update(ACCOUNT, f"m-{n}", str(n).encode())
    seen: list[bytes] = []
    for _ in range(10):
        got = transport.pull_order_updates(P, batch=2, timeout=1)
        assert len(got) <= 2
        for delivery in got:
            seen.append(delivery.data)
            delivery.ack()
        if len(seen) == 5:
            break
    assert seen == [b"0", b"1", b"2", b"3", b"4"]


def test_when_nothing_published_then_pull_returns_empty_after_its_timeout(
        transport: Transport) -> None:
    started = time.monotonic()
    assert transport.pull_order_updates(P, timeout=0.3) == []
    assert 0.2 <= time.monotonic() - started < 3


def test_the_updates_waiting_are_counted_until_acked(transport: Transport) -> None:
    """What a partition just started asks before it waits for a pull (``Runner._drain``)."""
    assert transport.waiting_order_updates(P) == 0
    transport.publish_order_update(ACCOUNT, "m-1", b"x")
    transport.publish_order_update(ACCOUNT, "m-2", b"y")
    transport.publish_order_update(OTHER, "m-3", b"z")  # another partition's
    assert transport.waiting_order_updates(P) == 2
    first, second = transport.pull_order_updates(P, timeout=2)
    first.ack()
    assert transport.waiting_order_updates(P) >= 1  # delivered, not acknowledged: still held
    second.ack()
    deadline = time.monotonic() + 3  # an acknowledgement reaches the server in its time
    while transport.waiting_order_updates(P) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert transport.waiting_order_updates(P) == 0
    assert transport.waiting_order_updates(partition_of(OTHER)) == 1


def test_when_acked_then_never_delivered_again(transport: Transport) -> None:
    transport.publish_order_update(ACCOUNT, "m-ack", b"x")
    [got] = transport.pull_order_updates(P, timeout=2)
    got.ack()
    time.sleep(ACK_WAIT + 0.3)
    assert transport.pull_order_updates(P, timeout=0.3) == []


def test_when_not_acked_then_delivered_again_after_ack_wait(transport: Transport) -> None:
    transport.publish_order_update(ACCOUNT, "m-lost", b"fill")
    [first] = transport.pull_order_updates(P, timeout=2)
    assert transport.pull_order_updates(P, timeout=0.1) == []  # in flight: not yet
    again = transport.pull_order_updates(P, timeout=ACK_WAIT + 3)
    assert [(d.msg_id, d.data, d.redelivered) for d in again] == [("m-lost", b"fill", True)]
    again[0].ack()
    assert not first.redelivered


def test_when_nak_then_delivered_again_at_once(make_transport: MakeTransport) -> None:
    transport = make_transport(ack_wait=30.0)  # far longer than a loaded machine's delays
    transport.publish_order_update(ACCOUNT, "m-nak", b"y")
    [got] = transport.pull_order_updates(P, timeout=2)
    got.nak()
    started = time.monotonic()
    [again] = transport.pull_order_updates(P, timeout=10)
    assert again.msg_id == "m-nak" and again.redelivered
    assert time.monotonic() - started < 10  # not the 30 s ack_wait
    again.ack()


def test_when_runner_dies_unacked_then_next_owner_gets_the_update(
        make_transport: MakeTransport) -> None:
    first = make_transport()
    first.publish_order_update(ACCOUNT, "m-owner", b"z")
    [taken] = first.pull_order_updates(P, timeout=2)
    assert not taken.redelivered  # pulled, never acked: the runner "dies" here
    successor = make_transport()
    got = successor.pull_order_updates(P, timeout=ACK_WAIT + 3)
    assert [(d.msg_id, d.redelivered) for d in got] == [("m-owner", True)]
    got[0].ack()


def test_when_subscribed_then_prices_of_that_instrument_only(transport: Transport) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    other: queue.Queue[bytes] = queue.Queue()
    transport.subscribe_prices("NSE_EQ", "1333", got.put)
    transport.subscribe_prices("NSE_EQ", "11536", other.put)
    transport.publish_price("NSE_EQ", "1333", b"1612.35")
    assert got.get(timeout=2) == b"1612.35"
    transport.publish_price("NSE_EQ", "11536", b"4100.00")
    assert other.get(timeout=2) == b"4100.00"
    assert got.empty()


def test_when_unsubscribed_then_no_more_prices(transport: Transport) -> None:
    gone: queue.Queue[bytes] = queue.Queue()
    stays: queue.Queue[bytes] = queue.Queue()
    subscription = transport.subscribe_prices("MCX_COMM", "426262", gone.put)
    transport.subscribe_prices("MCX_COMM", "426262", stays.put)
    transport.publish_price("MCX_COMM", "426262", b"1")
    assert gone.get(timeout=2) == b"1" and stays.get(timeout=2) == b"1"
    subscription.unsubscribe()
    transport.publish_price("MCX_COMM", "426262", b"2")
    assert stays.get(timeout=2) == b"2"  # the same connection: the other would be here by now
    assert gone.empty()


def test_when_subject_names_built_then_partitioned_and_validated() -> None:
    assert order_subject(7) == "orders.p007"
    assert order_subject(7, "ns1") == "ns1.orders.p007"
    assert subject_of_account(ACCOUNT) == order_subject(P)
    assert price_subject("NSE_FNO", "52175") == "prices.NSE_FNO.52175"
    for bad in ("NSE.EQ", "NSE EQ", "*", ">", ""):
        with pytest.raises(ValueError):
            price_subject(bad, "1")


@pytest.mark.integration
def test_when_jetstream_stream_made_then_it_deduplicates_on_the_server(nats_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    one = JetStreamTransport(nats_url, namespace=namespace)
    two = JetStreamTransport(nats_url, namespace=namespace)  # another connector, same stream
    try:
        assert one.stream == two.stream == f"{namespace.upper()}_ORDERS"
        assert one.publish_order_update(ACCOUNT, "m-x", b"a") is True
        assert two.publish_order_update(ACCOUNT, "m-x", b"a") is False  # the server knew it
    finally:
        one.delete_stream()
        one.close()
        two.close()


@pytest.mark.integration
def test_when_nats_unreachable_then_transport_error() -> None:
    started = time.monotonic()
    with pytest.raises(TransportError):
        JetStreamTransport("nats://127.0.0.1:1", timeout=1.0)
    assert time.monotonic() - started < 5
