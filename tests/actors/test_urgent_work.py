"""Urgent work first: reserved workers, ordinary work held back, an urgent message promoting a
mailbox already queued as ordinary (``actors/pool.py``, ``actors/dispatch.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from actors.runtime.dispatch import Dispatcher, PooledActor


@pytest.fixture
def pools() -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(**options: Any) -> Dispatcher:
        dispatcher = Dispatcher(name="test", **options).start()
        made.append(dispatcher)
        return dispatcher

    yield make
    pykka.ActorRegistry.stop_all()
    for dispatcher in made:
        dispatcher.shutdown()


def _occupy(pool: Dispatcher, count: int) -> tuple[threading.Event, threading.Barrier]:
    """``count`` ordinary tasks that hold their workers until the event is set."""
    release = threading.Event()
    started = threading.Barrier(count + 1, timeout=5)

    def busy() -> None:
        started.wait()
        release.wait(30)

    for _ in range(count):
        pool.submit(busy)
    started.wait()
    return release, started


def _urgent_running(pool: Dispatcher) -> threading.Event:
    """An urgent task, running once this returns, that ends when the event returned is set."""
    inside, finish = threading.Event(), threading.Event()

    def exit_work() -> None:
        inside.set()
        finish.wait(5)

    pool.submit(exit_work, urgent=True)
    assert inside.wait(5)
    return finish


def test_when_every_ordinary_worker_is_busy_then_a_reserved_one_runs_urgent_work(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=2, reserve=1)
    release, _ = _occupy(pool, 2)
    ran = threading.Event()
    pool.submit(ran.set, urgent=True)
    assert ran.wait(2)
    late = threading.Event()
    pool.submit(late.set)  # ordinary: only the busy workers take it
    assert not late.wait(0.2)
    release.set()
    assert late.wait(5)


def test_without_reserve_urgent_work_waits_for_a_worker(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=2, reserve=0)
    release, _ = _occupy(pool, 2)
    ran = threading.Event()
    pool.submit(ran.set, urgent=True)
    assert not ran.wait(0.2)
    release.set()
    assert ran.wait(5)


def test_while_urgent_work_runs_ordinary_work_waits_for_it(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=2, reserve=1, hold=5.0)
    inside, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def exit_work() -> None:
        inside.set()
        finish.wait(5)
        order.append("urgent")

    pool.submit(exit_work, urgent=True)
    assert inside.wait(5)
    done = threading.Event()

    def ordinary() -> None:
        order.append("ordinary")
        done.set()

    pool.submit(ordinary)
    assert not done.wait(0.2)  # two ordinary workers are idle, and hold back
    finish.set()
    assert done.wait(5)
    assert order == ["urgent", "ordinary"]
    assert pool.held >= 1


def test_ordinary_work_is_held_back_no_longer_than_the_hold(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1, hold=0.05)
    finish = threading.Event()
    pool.submit(lambda: finish.wait(5), urgent=True)  # an urgent task that never ends soon
    done = threading.Event()
    began = time.monotonic()
    pool.submit(done.set)
    assert done.wait(2)
    assert time.monotonic() - began >= 0.04
    later = threading.Event()
    pool.submit(later.set)  # the same urgent work, past its hold: no wait at all
    assert later.wait(0.5)
    finish.set()


def test_urgent_bursts_back_to_back_share_one_hold(pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1, hold=0.3)
    done_first = threading.Event()
    pool.submit(done_first.set, urgent=True)  # a short burst: its hold began now
    assert done_first.wait(5)
    time.sleep(0.2)
    finish = threading.Event()
    pool.submit(lambda: finish.wait(5), urgent=True)  # the next burst, within 2 * hold
    ran = threading.Event()
    began = time.monotonic()
    pool.submit(ran.set)
    try:
        assert ran.wait(2)
        # Held to the first burst's hold (~0.1 s left), not a fresh one of 0.3 s.
        assert time.monotonic() - began < 0.25
    finally:
        finish.set()


def test_a_singleton_yielding_to_urgent_work_waits_only_while_there_is_some(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1, hold=5.0)
    pool.yield_to_urgent()  # nothing urgent: returns at once
    finish = _urgent_running(pool)
    released = threading.Event()

    def singleton() -> None:
        pool.yield_to_urgent()
        released.set()

    threading.Thread(target=singleton, daemon=True).start()
    assert not released.wait(0.2)
    finish.set()
    assert released.wait(5)


def test_a_worker_holding_back_runs_urgent_work_that_arrives_meanwhile(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=0, hold=5.0)
    release = threading.Event()
    first = threading.Event()
    def first_exit() -> None:
        first.set()
        release.wait(5)

    pool.submit(first_exit, urgent=True)
    assert first.wait(5)
    # The only worker runs the first urgent task; queue an ordinary task, then another urgent
    # one: when the worker is free it must take the urgent one although urgent work remains.
    order: list[str] = []
    done = threading.Event()

    def ordinary() -> None:
        order.append("ordinary")
        done.set()

    pool.submit(ordinary)
    pool.submit(lambda: order.append("urgent"), urgent=True)
    release.set()
    assert done.wait(5)
    assert order == ["urgent", "ordinary"]


class Urgent:
    urgent = True

    def __init__(self, value: int) -> None:
        self.value = value


class Recorder(PooledActor):
    def __init__(self, urgent_seen: threading.Event | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.inside = 0
        self.overlaps = 0
        self.urgent_seen = urgent_seen

    def on_receive(self, message: Any) -> Any:
        self.inside += 1
        self.overlaps += self.inside > 1
        self.seen.append(message.value if isinstance(message, Urgent) else message)
        if isinstance(message, Urgent) and self.urgent_seen is not None:
            self.urgent_seen.set()
        self.inside -= 1
        return list(self.seen)


def test_an_urgent_message_promotes_a_mailbox_queued_as_ordinary(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1)
    urgent_seen = threading.Event()
    recorder = Recorder.start_on(pool, urgent_seen)
    assert recorder.ask("started", timeout=5) == ["started"]
    release, _ = _occupy(pool, 1)
    recorder.tell("ordinary")  # queued behind the busy worker
    recorder.tell(Urgent(1))  # promotes: the reserved worker runs the mailbox now
    assert urgent_seen.wait(2)  # while the ordinary worker is still busy
    release.set()
    assert recorder.ask("after", timeout=5) == ["started", "ordinary", 1, "after"]
    assert recorder.proxy().overlaps.get(timeout=5) == 0


def test_many_mixed_messages_are_all_handled_once_and_in_order(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=3, reserve=2, hold=0.01, throughput=2)
    actors = [Recorder.start_on(pool) for _ in range(20)]
    for n in range(200):
        for ref in actors:
            ref.tell(Urgent(n) if n % 7 == 0 else n)
    for ref in actors:
        assert ref.ask("end", timeout=10) == [*range(200), "end"]
        assert ref.proxy().overlaps.get(timeout=5) == 0


class Holding(Recorder):
    """Blocks in its message "hold" until the event is set."""

    def __init__(self, release: threading.Event, entered: threading.Event,
                 urgent_seen: threading.Event) -> None:
        super().__init__(urgent_seen)
        self.release, self.entered = release, entered

    def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.entered.set()
            self.release.wait(5)
        return super().on_receive(message)


def test_an_urgent_message_that_comes_while_its_mailbox_runs_keeps_its_urgency(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1, throughput=1)
    release, entered, urgent_seen = threading.Event(), threading.Event(), threading.Event()
    actor = Holding.start_on(pool, release, entered, urgent_seen)
    actor.tell("hold")  # runs on the only ordinary worker, one message a turn
    assert entered.wait(5)
    actor.tell(Urgent(1))  # arrives while the mailbox runs
    busy = threading.Event()
    pool.submit(lambda: busy.wait(30))  # what the ordinary worker takes next
    release.set()
    try:
        assert urgent_seen.wait(2)  # the next turn went urgent: a reserved worker ran it
    finally:
        busy.set()


def test_no_task_is_left_queued_when_an_ordinary_worker_takes_urgent_work_left_to_a_reserved_one(
        pools: Callable[..., Dispatcher]) -> None:
    """Two urgent tasks come while the reserved worker is free, so both ordinary workers
    leave them to it and spend their wake-ups; the reserved worker takes the first and stays
    busy. An ordinary task then wakes an ordinary worker, which takes the second urgent task
    first (no reserved worker is free now): the ordinary task must still run after it, not
    wait for some later task to wake a worker. (The interleaving is forced by holding the
    lock the reserved worker counts itself busy under, and watching the wake-up queue.)"""
    pool = pools(workers=2, reserve=1)
    hold_reserved, second, ordinary = threading.Event(), threading.Event(), threading.Event()
    with pool._counted:  # the reserved worker pops the first task, then waits here: "free"
        pool.submit(lambda: hold_reserved.wait(10), urgent=True)
        pool.submit(second.set, urgent=True)
        deadline = time.monotonic() + 5
        while pool._tokens.qsize() and time.monotonic() < deadline:
            time.sleep(0.001)  # both ordinary workers woke, left the urgent work, went back
        assert pool._tokens.qsize() == 0
        time.sleep(0.05)
        assert not second.is_set()
    deadline = time.monotonic() + 5
    while pool._idle_reserved and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool._idle_reserved == 0  # the reserved worker runs the first task
    try:
        pool.submit(ordinary.set)
        assert second.wait(2)
        assert ordinary.wait(2), "the ordinary task was left queued with no worker woken for it"
    finally:
        hold_reserved.set()


def test_which_message_kinds_can_be_urgent_is_read_from_the_type_once() -> None:
    from actors.protocol import Flush
    from actors.runtime.dispatch import _URGENT_KINDS, _may_be_urgent
    from models.messages import Message, PriceTick, PriceUpdate, TimerFired

    class UrgentModel(Message):
        urgent: bool = False

    assert _may_be_urgent(PriceUpdate) and _may_be_urgent(Flush)  # slots dataclasses
    assert _may_be_urgent(UrgentModel)  # a pydantic field
    assert not _may_be_urgent(PriceTick) and not _may_be_urgent(TimerFired)
    assert not _may_be_urgent(str)
    assert _URGENT_KINDS[TimerFired] is False  # remembered: no getattr on each message


def test_waiting_for_urgent_work_ends_when_it_is_done_or_at_the_timeout(
        pools: Callable[..., Dispatcher]) -> None:
    pool = pools(workers=1, reserve=1, hold=5.0)
    assert pool.wait_for_urgent(0.0)  # none: at once
    finish = _urgent_running(pool)
    began = time.monotonic()
    assert not pool.wait_for_urgent(0.05)  # still running: the timeout
    assert time.monotonic() - began >= 0.05
    threading.Timer(0.05, finish.set).start()
    assert pool.wait_for_urgent(5)  # done: ends then, not at the timeout
    assert time.monotonic() - began < 2


def test_urgent_work_on_its_way_is_waited_for_like_urgent_work_queued(
        pools: Callable[..., Dispatcher]) -> None:
    """``urgent_ahead``: an urgent price batch still at the index counts until
    ``urgent_arrived``; a dispatcher without ``hold`` counts nothing."""
    pool = pools(workers=1, reserve=1, hold=5.0)
    pool.urgent_ahead()
    began = time.monotonic()
    assert not pool.wait_for_urgent(0.05)
    assert time.monotonic() - began >= 0.05
    threading.Timer(0.05, pool.urgent_arrived).start()
    assert pool.wait_for_urgent(5)
    assert time.monotonic() - began < 2
    pool.urgent_arrived()  # one too many (never below none)
    assert pool.wait_for_urgent(0.0)
    unheld = pools(workers=1)
    unheld.urgent_ahead()
    assert unheld.wait_for_urgent(0.0)
