"""A replay's settle waits on the count of messages in flight (``actors.runtime.inflight``): every
inbox made while a counter is set counts a message from its put until its handler returns or it
is dropped. A count that never comes down would hang every replay for ``SETTLE`` seconds; one
that comes down early would let a replay move on before the system is done."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.runtime.dispatch import Dispatcher, PooledActor, SingletonActor
from actors.runtime.inflight import InFlight, count_into, counting


@pytest.fixture
def inflight() -> Iterator[InFlight]:
    counter = InFlight()
    count_into(counter)
    yield counter
    count_into(None)


@pytest.fixture
def pool() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(workers=2, throughput=4, name="inflight-test").start()
    yield dispatcher
    pykka.ActorRegistry.stop_all()  # before the pool goes: a pooled actor stops on it
    dispatcher.shutdown()


class Relay(PooledActor):
    """Hands each number on to ``sink`` after a pause (so the sink's message is put while the
    relay's own is still being handled)."""

    def __init__(self, sink: pykka.ActorRef[Any], gate: threading.Event) -> None:
        super().__init__()
        self.sink, self.gate = sink, gate

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.gate.wait(5)
        self.sink.tell(message)
        return None


class Sink(SingletonActor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        self.seen.append(message)
        return len(self.seen)


def test_counts_a_message_until_its_handler_and_what_it_told_are_done(
        inflight: InFlight, pool: Dispatcher) -> None:
    sink = Sink.start()
    gate = threading.Event()
    relay = Relay.start_on(pool, sink, gate)
    for n in range(50):
        relay.tell(n)
    # The relay is held inside its first message: nothing is idle yet.
    assert not inflight.wait_idle(0.2)
    assert inflight.count > 0
    gate.set()
    assert inflight.wait_idle(5)
    assert inflight.count == 0
    assert sink.proxy().seen.get(timeout=5) == list(range(50))
    assert inflight.wait_idle(1)  # the proxy's own question came and went
    assert inflight.total >= 100


def test_a_failing_handler_and_messages_to_a_stopped_actor_leave_nothing_counted(
        inflight: InFlight, pool: Dispatcher) -> None:
    sink = Sink.start()
    gate = threading.Event()
    gate.set()
    relay = Relay.start_on(pool, sink, gate)
    relay.tell("boom")  # a told failure stops a pooled actor (``ThreadingActor``'s semantics)
    for n in range(20):
        try:
            relay.tell(n)
        except pykka.ActorDeadError:
            break
    assert inflight.wait_idle(5), inflight.count
    assert inflight.count == 0
    sink.stop()
    assert inflight.wait_idle(5), inflight.count


def test_inboxes_made_without_a_counter_count_nothing(pool: Dispatcher) -> None:
    assert counting() is None
    sink = Sink.start()
    try:
        assert sink.ask("x", timeout=5) == 1
        inbox = sink.actor_inbox
        assert getattr(inbox, "inflight", "missing") is None
    finally:
        sink.stop()
