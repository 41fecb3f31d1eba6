"""The pooled dispatcher keeps pykka's semantics: one message at a time, asks, proxies, failures."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from actors.dispatch import Dispatcher, PooledActor


@pytest.fixture
def pool() -> Any:
    dispatcher = Dispatcher(workers=4, throughput=4, name="test").start()
    yield dispatcher
    pykka.ActorRegistry.stop_all()
    dispatcher.shutdown()


class Counter(PooledActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.inside = 0
        self.overlaps = 0

    def on_receive(self, message: Any) -> Any:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        if message == "boom":
            self.inside -= 1
            raise ValueError("boom")
        self.count += 1
        self.inside -= 1
        return self.count

    def total(self) -> int:
        return self.count


class Failing(PooledActor):
    def __init__(self, failed: threading.Event) -> None:
        super().__init__()
        self.failed = failed

    def on_receive(self, message: Any) -> Any:
        raise RuntimeError("always")

    def on_failure(self, *exc_info: Any) -> None:
        self.failed.set()


def test_when_many_messages_told_then_handled_one_at_a_time_in_order(pool: Dispatcher) -> None:
    ref = Counter.start_on(pool)
    for _ in range(5_000):
        ref.tell("x")
    assert ref.ask("x", timeout=5) == 5_001
    assert ref.proxy().overlaps.get(timeout=5) == 0


def test_when_proxy_method_called_then_it_runs_on_the_actor(pool: Dispatcher) -> None:
    ref = Counter.start_on(pool)
    ref.tell("x")
    assert ref.proxy().total().get(timeout=5) == 1


def test_when_ask_handler_raises_then_caller_gets_exception_and_actor_lives(
        pool: Dispatcher) -> None:
    ref = Counter.start_on(pool)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=5)
    assert ref.is_alive()
    assert ref.ask("x", timeout=5) == 1


def test_when_tell_handler_raises_then_on_failure_runs_and_actor_stops(pool: Dispatcher) -> None:
    failed = threading.Event()
    ref = Failing.start_on(pool, failed)
    ref.tell("x")
    assert failed.wait(5)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("again")


def test_when_stopped_then_waiting_asks_are_answered_with_actor_dead(pool: Dispatcher) -> None:
    ref = Counter.start_on(pool)
    ref.stop(block=True, timeout=5)
    assert not ref.is_alive()


def test_when_ten_thousand_actors_started_then_fan_out_reaches_all_and_all_stop(
        pool: Dispatcher) -> None:
    refs = [Counter.start_on(pool) for _ in range(10_000)]
    for ref in refs:
        ref.tell("a")
        ref.tell("b")
    answers = [ref.ask("c", timeout=10) for ref in refs]
    assert answers == [3] * 10_000
    for ref in refs:
        ref.stop(block=False)
    for ref in refs[-10:]:
        ref.stop(block=True, timeout=5)
    assert not any(ref.is_alive() for ref in refs[-10:])


def test_when_one_actor_is_busy_then_others_still_progress(pool: Dispatcher) -> None:
    release = threading.Event()

    class Slow(PooledActor):
        def on_receive(self, message: Any) -> Any:
            release.wait(5)
            return "slow"

    slow = Slow.start_on(pool)
    slow.tell("block")
    fast = Counter.start_on(pool)
    assert fast.ask("x", timeout=5) == 1
    release.set()
    assert slow.ask("x", timeout=5) == "slow"
