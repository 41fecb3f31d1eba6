"""The NATS transport when the server answers late, through a proxy that holds what it is sent
and lets it through later (a paused process or a stalled network looks so to the peer).

A flush that timed out leaves its PING's future in nats-py's queue of PONG waiters, and the
late PONG then ends nats-py's read loop for good (nats-py 2.16: an ``InvalidStateError`` in
``_process_pong``; the client still says it is connected, and every later call times out). The
transport must never leave such a waiter, and must notice a read loop that died anyway."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from urllib.parse import urlsplit

import pytest

from broker.transport.jetstream import JetStreamTransport
from broker.transport.ports import TransportError
from models.partitions import partition_of
from tests.faults.services import Proxy

pytestmark = pytest.mark.integration

ACCOUNT = "1000000001"
P = partition_of(ACCOUNT)


@pytest.fixture
def proxy(nats_url: str) -> Iterator[Proxy]:
    where = urlsplit(nats_url)
    server = Proxy((where.hostname or "127.0.0.1", where.port or 4222)).start()
    yield server
    server.close()


@pytest.fixture
def transports() -> Iterator[list[JetStreamTransport]]:
    made: list[JetStreamTransport] = []
    yield made
    if made:
        with suppress(TransportError):
            made[0].delete_stream()
    for transport in made:
        transport.close()


def _publish_and_pull(transport: JetStreamTransport, msg_id: str, within: float) -> float:
    """Publish one update and pull it back, trying again until ``within`` seconds have passed;
    the seconds it took."""
    began = time.monotonic()
    while True:
        try:
            transport.publish_order_update(ACCOUNT, msg_id, b"{}")
            got = transport.pull_order_updates(P, timeout=0.5)
            if [d.msg_id for d in got] == [msg_id]:
                got[0].ack()
                return time.monotonic() - began
        except TransportError:
            pass
        if time.monotonic() - began > within:
            raise AssertionError(f"no round trip within {within} s: the transport is dead")


def test_when_a_flush_times_out_and_its_pong_comes_late_then_the_transport_still_works(
        proxy: Proxy, transports: list[JetStreamTransport]) -> None:
    transport = JetStreamTransport(f"nats://127.0.0.1:{proxy.port}",
                                   namespace=f"t{uuid.uuid4().hex[:10]}", timeout=1.0)
    transports.append(transport)
    _publish_and_pull(transport, "before", within=5)

    proxy.cut("hold")  # the PING goes out, nothing comes back
    with pytest.raises(TransportError, match="timed out"):
        transport.flush()
    proxy.mend()  # the late PONG arrives

    _publish_and_pull(transport, "after", within=5)


def test_when_the_clients_read_loop_dies_anyway_then_the_watch_reconnects_it(
        proxy: Proxy, transports: list[JetStreamTransport]) -> None:
    """The fault itself, made on purpose: a ``nc.flush`` that times out (nats-py's own reconnect
    still makes one), then its late PONG. The client goes deaf; the watch notices."""
    transport = JetStreamTransport(f"nats://127.0.0.1:{proxy.port}",
                                   namespace=f"t{uuid.uuid4().hex[:10]}", timeout=1.0,
                                   probe_every=0.2)
    transports.append(transport)
    _publish_and_pull(transport, "before", within=5)

    proxy.cut("hold")
    with pytest.raises(TransportError, match="timed out"):
        transport._loop.run(transport._nc.flush(timeout=1), 3)  # the fault: no public way in
    proxy.mend()
    assert transport._nc.is_connected  # it says so, yet reads nothing until the watch acts

    took = _publish_and_pull(transport, "after", within=10)
    assert transport.reconnects_forced == 1
    assert took < 6, f"the deaf client was noticed only after {took:.1f} s"


def test_when_nothing_is_wrong_then_the_watch_never_reconnects(
        transports: list[JetStreamTransport], nats_url: str) -> None:
    transport = JetStreamTransport(nats_url, namespace=f"t{uuid.uuid4().hex[:10]}",
                                   timeout=1.0, probe_every=0.05)
    transports.append(transport)
    for n in range(20):
        _publish_and_pull(transport, f"m-{n}", within=5)
        transport.flush()
    assert transport.reconnects_forced == 0


def test_when_probe_every_is_not_positive_then_a_clear_error(nats_url: str) -> None:
    with pytest.raises(ValueError, match="probe_every must be positive"):
        JetStreamTransport(nats_url, probe_every=0)


def test_when_the_stream_cannot_be_made_then_nothing_is_left_running(nats_url: str) -> None:
    def loops() -> int:
        return sum(thread.name == "nats" and thread.is_alive()
                   for thread in threading.enumerate())

    before = loops()
    with pytest.raises(TransportError):  # the server refuses a stream with this window
        JetStreamTransport(nats_url, namespace=f"t{uuid.uuid4().hex[:10]}",
                           duplicate_window=-5)
    assert loops() == before
