"""``Launcher`` (``broker/dhan/launch.py``): a batch of requests handed to a child process in
one write, against loopback HTTP servers: answers, a batch's requests side by side, what counts
as sent, a child that dies, closing, and no token in any error."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.dhan.gateway import DhanGateway, PlacementUnknown
from broker.dhan.launch import Launcher, Request
from broker.dhan.limits import Bucket, RateLimits
from broker.dhan.rest import DhanRest
from broker.dhan.token import TokenSource
from broker.dhan.wire import WireError
from models.common import Instrument, Segment, TxnType
from models.messages import PlaceExitOrder

TOKEN = "the-secret-token-value"
HEADERS = {"access-token": TOKEN, "client-id": "1000000001",
           "Content-Type": "application/json"}


class Broker:
    """A threading HTTP server whose answers the test sets: ``mode`` is ``answer`` (echo the
    body, 200), ``silent`` (never answer) or ``together`` (answer once ``together`` requests
    are in at the same time)."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.seen: list[dict[str, Any]] = []
        self.together: threading.Barrier | None = None
        self.release = threading.Event()
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                broker.seen.append({"path": self.path, "body": body,
                                    "token": self.headers.get("access-token")})
                if broker.mode == "silent":
                    broker.release.wait(10)
                    return
                if broker.mode == "together":
                    assert broker.together is not None
                    broker.together.wait()
                answer = json.dumps({"orderId": "1125", "echo": body.decode()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # a batch's ten connections come at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    made = Broker()
    yield made
    made.close()


@pytest.fixture
def launcher(broker: Broker) -> Iterator[Launcher]:
    made = Launcher(broker.url, connect=1.0, read=0.5, verify=False)
    yield made
    made.close()


def order(n: int) -> Request:
    return Request("POST", "/orders", f'{{"n": {n}}}'.encode(), HEADERS)


def test_a_batch_goes_out_from_the_child_with_each_request_s_headers_and_body(
        broker: Broker, launcher: Launcher) -> None:
    tickets = launcher.launch([order(1), Request("POST", "/orders", None, HEADERS)])
    first, second = (ticket.result() for ticket in tickets)
    assert first[0] == 200 and json.loads(first[1]) == {"orderId": "1125", "echo": '{"n": 1}'}
    assert second[0] == 200 and json.loads(second[1])["echo"] == ""
    assert sorted((s["path"], s["body"], s["token"]) for s in broker.seen) == [
        ("/v2/orders", b"", TOKEN), ("/v2/orders", b'{"n": 1}', TOKEN)]
    assert launcher.starts == 1 and launcher.launch([]) == []


def test_a_batch_s_requests_leave_side_by_side(broker: Broker) -> None:
    """Ten at once, as a wave's exits: the broker answers only once all ten are in, so a
    child that made them one after another would time each of them out."""
    broker.mode, broker.together = "together", threading.Barrier(10, timeout=5)
    patient = Launcher(broker.url, connect=2.0, read=5.0, verify=False)
    try:
        tickets = patient.launch([order(n) for n in range(10)])
        answers = [ticket.result()[0] for ticket in tickets]
    finally:
        patient.close()
    assert answers == [200] * 10
    assert sorted(json.loads(s["body"])["n"] for s in broker.seen) == list(range(10))


def test_no_answer_is_an_unknown_outcome_and_a_refused_connection_is_not_sent(
        broker: Broker, launcher: Launcher) -> None:
    broker.mode = "silent"
    with pytest.raises(WireError) as silent:
        launcher.launch([order(1)])[0].result()
    assert silent.value.sent and "timeout" in str(silent.value).lower()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = Launcher(f"http://127.0.0.1:{port}/v2", connect=1.0, read=0.5, verify=False)
    try:
        with pytest.raises(WireError) as refused:
            nowhere.launch([order(1)])[0].result()
        assert not refused.value.sent
    finally:
        nowhere.close()
    assert TOKEN not in str(silent.value) + str(refused.value)


def test_a_ticket_not_answered_in_time_is_unknown(broker: Broker, launcher: Launcher) -> None:
    broker.mode = "silent"
    ticket = launcher.launch([order(1)])[0]
    began = time.monotonic()
    with pytest.raises(WireError) as waited:
        ticket.result(timeout=0.1)
    assert waited.value.sent and time.monotonic() - began < 0.5


def test_a_child_that_dies_with_a_batch_in_flight_leaves_it_unknown_and_is_started_again(
        broker: Broker, launcher: Launcher) -> None:
    broker.mode = "silent"
    tickets = launcher.launch([order(1), order(2)])
    deadline = time.monotonic() + 5
    while len(broker.seen) < 2 and time.monotonic() < deadline:  # both may be acted on
        time.sleep(0.01)
    assert launcher.pid is not None
    os.kill(launcher.pid, signal.SIGKILL)
    for ticket in tickets:
        with pytest.raises(WireError) as gone:
            ticket.result(timeout=5)
        assert gone.value.sent and "ended" in str(gone.value) and TOKEN not in str(gone.value)
    broker.mode = "answer"
    assert launcher.launch([order(3)])[0].result()[0] == 200 and launcher.starts == 2


def test_closing_ends_the_child_and_a_later_batch_is_not_sent(broker: Broker) -> None:
    launcher = Launcher(broker.url, connect=1.0, read=0.5, verify=False)
    pid = launcher.pid
    assert pid is not None
    launcher.close()
    assert launcher.pid is None
    with pytest.raises(ProcessLookupError):  # ended, and reaped
        os.kill(pid, 0)
    with pytest.raises(WireError) as closed:
        launcher.launch([order(1)])[0].result()
    assert not closed.value.sent and broker.seen == []


# The REST client and the gateway on the launcher -------------------------------------------------
FUT = Instrument(segment=Segment.NSE_FNO, security_id="49081")


def exit_to_place(client_id: str, instrument: Instrument = FUT) -> PlaceExitOrder:
    return PlaceExitOrder(client_id=client_id, position_id=f"P-{client_id}", attempt=1,
                          instrument=instrument, txn_type=TxnType.SELL, quantity=75,
                          product="I", correlation_id="c-1", sent_at=datetime.now(UTC))


def client(broker: Broker, *, limits: str = "10/second") -> tuple[DhanRest, RateLimits]:
    limiter = RateLimits({Bucket.ORDERS: limits})
    rest = DhanRest(broker.url, "1000000001", TokenSource(token=TOKEN), limiter=limiter,
                    launcher=Launcher(broker.url, connect=1.0, read=0.5, verify=False))
    return rest, limiter


def test_the_gateway_launches_a_wave_and_each_placement_takes_its_answer_without_resending(
        broker: Broker) -> None:
    rest, _ = client(broker)
    gateway = DhanGateway(rest)
    try:
        gateway.note_price(FUT, Decimal("94.10"))
        orders = [exit_to_place("X-P1-1"), exit_to_place("X-P2-1"),
                  exit_to_place("X-P3-1", Instrument(segment=Segment.NSE_FNO,
                                                     security_id="49082"))]  # no price yet
        assert gateway.launch_exits(orders) == 2
        deadline = time.monotonic() + 5
        while len(broker.seen) < 2 and time.monotonic() < deadline:  # sent before asked for
            time.sleep(0.01)
        assert sorted(json.loads(s["body"])["correlationId"] for s in broker.seen) == \
            ["X-P1-1", "X-P2-1"]
        assert json.loads(broker.seen[0]["body"])["price"] == 93.15  # protective: 1 % below
        for order in orders[:2]:
            assert gateway.place_order(client_id=order.client_id, instrument=order.instrument,
                                       txn_type=order.txn_type, quantity=order.quantity,
                                       product=order.product) == "1125"
        assert len(broker.seen) == 2  # each placement took its launched answer
        assert gateway.status()["launched"] == 2 and gateway.status()["placements"] == 2
    finally:
        rest.close()


def test_a_launched_placement_with_no_answer_is_unknown_and_never_sent_again(
        broker: Broker) -> None:
    rest, _ = client(broker)
    gateway = DhanGateway(rest)
    broker.mode = "silent"
    try:
        gateway.note_price(FUT, Decimal("94.10"))
        assert gateway.launch_exits([exit_to_place("X-P1-1")]) == 1
        with pytest.raises(PlacementUnknown):
            gateway.place_order(client_id="X-P1-1", instrument=FUT, txn_type=TxnType.SELL,
                                quantity=75, product="I")
        assert len(broker.seen) == 1 and gateway.status()["unknown"] == 1
    finally:
        rest.close()


def test_what_cannot_go_now_is_not_launched_and_slots_come_back_with_the_answers(
        broker: Broker) -> None:
    rest, limiter = client(broker, limits="2/second")
    try:
        calls = [{"correlation_id": f"X-P{n}-1", "instrument": FUT, "txn_type": TxnType.SELL,
                  "quantity": 75, "price": Decimal("93.15"), "product": "I"} for n in range(3)]
        launched = rest.launch_orders(calls)
        assert [handle is not None for handle in launched] == [True, True, False]  # 2/s
        assert all(h is not None and h.answer().ok for h in launched[:2])
        assert limiter.try_acquire(Bucket.ORDERS) > 0  # both answered: counted for the second
        bad = rest.launch_orders([{**calls[0], "correlation_id": "X" * 31}])
        assert bad == [None]  # place_order refuses it, and says why
        rest.may_send = lambda: "the lease ends in 0.1 s"
        assert rest.launch_orders(calls) == [None] * 3
    finally:
        rest.close()
    no_launcher = DhanRest(broker.url, "1000000001", TokenSource(token=TOKEN))
    try:
        assert no_launcher.launch_orders(calls) == [None] * 3
    finally:
        no_launcher.close()


def test_a_placement_the_launcher_could_not_take_is_sent_by_its_gateway_actor_at_once(
        broker: Broker) -> None:
    rest, _ = client(broker)
    gateway = DhanGateway(rest)
    try:
        gateway.note_price(FUT, Decimal("94.10"))
        assert rest._launcher is not None
        rest._launcher.close()  # it takes nothing more: the launched placement never left
        assert gateway.launch_exits([exit_to_place("X-P1-1")]) == 1
        assert broker.seen == []
        assert gateway.place_order(client_id="X-P1-1", instrument=FUT, txn_type=TxnType.SELL,
                                   quantity=75, product="I") == "1125"
        assert [json.loads(s["body"])["correlationId"] for s in broker.seen] == ["X-P1-1"]
    finally:
        rest.close()
