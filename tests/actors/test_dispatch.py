"""The pooled dispatcher keeps pykka's semantics: one message at a time, asks, proxies, failures."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

from actors.runtime.dispatch import Dispatcher, PooledActor, SingletonActor, StampedQueue, _Mailbox
from actors.runtime.pykka_compat import envelope, inbox_of


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


class Reading:
    """A conflated message type in these tests (a tracker conflates ``PriceUpdate``)."""

    def __init__(self, value: int) -> None:
        self.value = value


class Gauge(PooledActor):
    """Blocks on a gate in its first message, so the next ones wait in its mailbox."""

    conflate = frozenset({Reading})

    def __init__(self, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__()
        self.gate, self.entered = gate, entered
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.entered.set()
            self.gate.wait(5)
        self.seen.append(message.value if isinstance(message, Reading) else message)
        return list(self.seen)


def test_when_readings_wait_in_a_mailbox_then_only_the_latest_is_handled_in_first_place(
        pool: Dispatcher) -> None:
    gate, entered = threading.Event(), threading.Event()
    ref = Gauge.start_on(pool, gate, entered)
    ref.tell("hold")
    assert entered.wait(5)
    ref.tell(Reading(1))
    ref.tell("order update")
    for value in range(2, 6):
        ref.tell(Reading(value))
    inbox = inbox_of(ref)
    assert isinstance(inbox, _Mailbox)
    assert inbox.qsize() == 2
    gate.set()
    assert ref.ask("done", timeout=5) == ["hold", 5, "order update", "done"]
    assert inbox.conflated == 4
    ref.tell(Reading(6))  # after the handled one, a new reading queues anew
    assert ref.ask("again", block=True, timeout=5)[-2:] == [6, "again"]


def test_asked_messages_are_never_conflated(pool: Dispatcher) -> None:
    gate, entered = threading.Event(), threading.Event()
    ref = Gauge.start_on(pool, gate, entered)
    ref.tell("hold")
    assert entered.wait(5)
    futures = [ref.ask(Reading(value), block=False) for value in (1, 2)]
    gate.set()
    assert [future.get(timeout=5)[-1] for future in futures] == [1, 2]


class Gated(PooledActor):
    """Breaks on "boom" once ``gate`` opens, so messages can queue up behind it first."""

    def __init__(self, gate: threading.Event, left: list[Any], done: threading.Event,
                 taken: list[Any]) -> None:
        super().__init__()
        self.gate, self.left, self.done, self.taken = gate, left, done, taken

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            self.gate.wait(5)
            raise ValueError("boom")
        return message

    def on_failure(self, *exc_info: Any) -> None:
        self.taken.extend(self.take_told())

    def on_undelivered(self, told: list[Any]) -> None:
        self.left.extend(told)
        self.done.set()


def test_when_tell_handler_raises_then_messages_queued_behind_it_are_handed_on_not_dropped(
        pool: Dispatcher) -> None:
    gate, done = threading.Event(), threading.Event()
    left: list[Any] = []
    taken: list[Any] = []
    ref = Gated.start_on(pool, gate, left, done, taken)
    ref.tell("boom")
    ref.tell("fill 1")
    ref.tell("fill 2")
    asked = ref.ask("question", block=False)
    gate.set()
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)  # an ask is still answered, as by ThreadingActor
    assert taken == ["fill 1", "fill 2"]  # on_failure took them, in order
    assert not ref.is_alive()
    assert left == [] and not done.is_set()  # nothing else was left to hand on


def test_when_on_failure_takes_nothing_then_queued_messages_reach_on_undelivered(
        pool: Dispatcher) -> None:
    gate, done = threading.Event(), threading.Event()
    left: list[Any] = []
    taken: list[Any] = []

    class Untaking(Gated):
        def on_failure(self, *exc_info: Any) -> None:
            pass

    ref = Untaking.start_on(pool, gate, left, done, taken)
    for message in ("boom", "fill 1", "fill 2"):
        ref.tell(message)
    gate.set()
    assert done.wait(5)
    assert left == ["fill 1", "fill 2"] and taken == []


def test_a_message_put_after_the_actor_stopped_is_answered_or_handed_on_not_left_waiting(
        pool: Dispatcher) -> None:
    """``tell`` checks that the actor is alive, then puts: the actor may stop in between.
    What arrives after its last turn emptied the mailbox must not wait there for ever: an
    ask gets ActorDeadError, a told message reaches on_undelivered."""
    gate, done = threading.Event(), threading.Event()
    left: list[Any] = []
    taken: list[Any] = []
    ref = Gated.start_on(pool, gate, left, done, taken)
    gate.set()
    ref.tell("boom")
    inbox = ref.actor_inbox
    deadline = time.monotonic() + 5
    while ref.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not ref.is_alive()
    time.sleep(0.05)  # its last turn has cleaned up by now (with or without this, no loss)
    asked: pykka.Future[Any] = pykka.ThreadingFuture()
    inbox.put(envelope("question", asked))  # what ``ask`` does after its check
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=2)
    inbox.put(envelope("fill 3"))
    assert done.wait(2)
    assert left == ["fill 3"] and taken == []


class Singleton(SingletonActor):
    def __init__(self) -> None:
        super().__init__()
        self.handled: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("a bug on one message")
        self.handled.append(message)
        return list(self.handled)


def test_when_a_singleton_raises_on_a_told_message_then_it_goes_on_with_the_next() -> None:
    ref = Singleton.start()
    try:
        for message in ("before", "boom", "after"):
            ref.tell(message)
        assert ref.ask("asked", timeout=5) == ["before", "after", "asked"]
        assert ref.is_alive()
        assert ref.proxy().told_failures.get(timeout=5) == 1
        with pytest.raises(ValueError, match="a bug"):
            ref.ask("boom", timeout=5)  # an ask still gets its exception back
        assert ref.is_alive()
    finally:
        ref.stop()


def test_when_a_singleton_breaks_on_every_message_then_its_log_does_not_flood() -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    ref = Singleton.start()
    try:
        for _ in range(1_500):
            ref.tell("boom")
        assert ref.ask("after", timeout=10) == ["after"]
        assert ref.proxy().told_failures.get(timeout=5) == 1_500
    finally:
        ref.stop()
        logger.remove(sink)
    failed = [line for line in lines if "failed on a told message" in line]
    assert len(failed) == 11  # the first ten, then the thousandth
    assert "(1000 so far)" in failed[-1]


def test_an_ask_put_after_a_singleton_stopped_is_answered_not_left_waiting() -> None:
    """pykka's ``ask`` checks that the actor is alive, then puts: the actor may stop and empty
    its inbox for the last time in between (a second ``stop`` of the same actor waited out
    its 30 s timeout that way). Such an ask is answered, a told message logged."""
    ref = Singleton.start()
    inbox = ref.actor_inbox
    assert isinstance(inbox, StampedQueue)
    ref.stop(block=True, timeout=5)
    deadline = time.monotonic() + 5
    while not inbox.closed and time.monotonic() < deadline:
        time.sleep(0.001)  # the thread's last act follows the stop's answer
    assert inbox.closed
    asked: pykka.Future[Any] = pykka.ThreadingFuture()
    inbox.put(envelope("question", asked))  # what ``ask`` does after its check
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=2)
    inbox.put(envelope("fill 3"))
    assert inbox.qsize() == 0


def test_asks_racing_a_singleton_stop_are_all_answered() -> None:
    """Puts while the actor stops and tears down, from several threads at once, many times:
    every ask is answered once (handled, or ActorDeadError), none is left waiting."""
    for _ in range(30):
        ref = Singleton.start()
        inbox = ref.actor_inbox
        go = threading.Barrier(4)

        def putter(into: list[pykka.Future[Any]], inbox: Any = inbox,
                   go: threading.Barrier = go) -> None:
            go.wait()
            for _ in range(150):
                asked: pykka.Future[Any] = pykka.ThreadingFuture()
                into.append(asked)
                inbox.put(envelope("question", asked))  # alive when checked

        batches: list[list[pykka.Future[Any]]] = [[], [], []]
        threads = [threading.Thread(target=putter, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        go.wait()
        ref.stop(block=False)
        for thread in threads:
            thread.join(5)
        for asked in (f for b in batches for f in b):
            try:
                asked.get(timeout=2)
            except pykka.ActorDeadError:
                continue
            except pykka.Timeout:
                pytest.fail("an ask put as the actor stopped was never answered")
