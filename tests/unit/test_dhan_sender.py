"""``ProcessWire`` (``broker/dhan/sender.py``): the REST client's HTTP made by a child process,
against loopback HTTP servers: answers, requests side by side, what counts as sent, a child
that dies, and no token in any error."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.dhan.rest import DhanRest
from broker.dhan.sender import ProcessWire
from broker.dhan.token import TokenSource
from broker.dhan.wire import WireError
from models.common import Instrument, Segment, TxnType

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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
def wire(broker: Broker) -> Iterator[ProcessWire]:
    made = ProcessWire(broker.url, connect=1.0, read=0.5, verify=False)
    yield made
    made.close()


def test_a_request_goes_out_from_the_child_with_its_headers_and_body(
        broker: Broker, wire: ProcessWire) -> None:
    status, answer = wire.request("POST", "/orders", b'{"quantity": 75}', HEADERS)
    assert status == 200 and json.loads(answer) == {"orderId": "1125",
                                                    "echo": '{"quantity": 75}'}
    assert broker.seen == [{"path": "/v2/orders", "body": b'{"quantity": 75}',
                            "token": TOKEN}]
    assert wire.starts == 1


def test_requests_from_many_threads_leave_side_by_side(
        broker: Broker, wire: ProcessWire) -> None:
    """Ten threads at once, as a wave's gateway actors: the broker answers only once all ten
    are in, so a child that made them one after another would time each of them out."""
    broker.mode, broker.together = "together", threading.Barrier(10, timeout=5)
    answers: list[int] = []
    failures: list[BaseException] = []

    def place(n: int) -> None:
        try:
            status, _ = wire.request("POST", "/orders", f'{{"n": {n}}}'.encode(), HEADERS)
            answers.append(status)
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=place, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == [] and answers == [200] * 10
    assert sorted(json.loads(s["body"])["n"] for s in broker.seen) == list(range(10))


def test_no_answer_is_an_unknown_outcome_and_a_refused_connection_is_not_sent(
        broker: Broker, wire: ProcessWire) -> None:
    broker.mode = "silent"
    with pytest.raises(WireError) as silent:
        wire.request("POST", "/orders", b"{}", HEADERS)
    assert silent.value.sent and "timeout" in str(silent.value).lower()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = ProcessWire(f"http://127.0.0.1:{port}/v2", connect=1.0, read=0.5, verify=False)
    try:
        with pytest.raises(WireError) as refused:
            nowhere.request("POST", "/orders", b"{}", HEADERS)
        assert not refused.value.sent
    finally:
        nowhere.close()
    assert TOKEN not in str(silent.value) + str(refused.value)


def test_a_child_that_dies_with_a_request_in_flight_leaves_it_unknown_and_is_started_again(
        broker: Broker, wire: ProcessWire) -> None:
    broker.mode = "silent"
    outcome: list[BaseException] = []

    def place() -> None:
        try:
            wire.request("POST", "/orders", b"{}", HEADERS)
        except WireError as error:
            outcome.append(error)

    thread = threading.Thread(target=place)
    thread.start()
    while not broker.seen:  # the request reached the broker: it may be acted on
        threading.Event().wait(0.01)
    assert wire.pid is not None
    os.kill(wire.pid, signal.SIGKILL)
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], WireError) and outcome[0].sent
    assert TOKEN not in str(outcome[0])
    broker.mode = "answer"
    status, _ = wire.request("POST", "/orders", b"{}", HEADERS)
    assert status == 200 and wire.starts == 2


def test_the_rest_client_places_an_order_through_the_child(broker: Broker) -> None:
    rest = DhanRest(broker.url, "1000000001", TokenSource(token=TOKEN),
                    wire=ProcessWire(broker.url, connect=1.0, read=1.0, verify=False))
    try:
        answer = rest.place_order(correlation_id="X-P1-1",
                                  instrument=Instrument(segment=Segment.NSE_FNO,
                                                        security_id="47012"),
                                  txn_type=TxnType.SELL, quantity=75, price=Decimal(94),
                                  product="I")
    finally:
        rest.close()
    assert answer.ok and answer.value is not None and answer.value.order_id == "1125"
    sent = json.loads(broker.seen[0]["body"])
    assert sent["correlationId"] == "X-P1-1" and broker.seen[0]["token"] == TOKEN


def test_closing_ends_the_child_and_removes_its_socket(broker: Broker) -> None:
    wire = ProcessWire(broker.url, connect=1.0, read=0.5, verify=False)
    pid, folder = wire.pid, wire.folder
    assert pid is not None and folder.exists()
    wire.close()
    assert wire.pid is None and not folder.exists()
    with pytest.raises(ProcessLookupError):  # ended, and reaped
        os.kill(pid, 0)
    with pytest.raises(WireError) as closed:
        wire.request("POST", "/orders", b"{}", HEADERS)
    assert not closed.value.sent
