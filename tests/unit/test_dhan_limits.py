"""DhanHQ rate limits: every window of a bucket counts, a refusal counts against none, and a
slot is held until the answer, then counted a window and a margin longer."""

from __future__ import annotations

import pytest

from broker.dhan.limits import DHAN_LIMITS, MARGIN, Bucket, RateLimits, parse_windows


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limits_on(clock: Clock, spec: dict[Bucket, str] | None = None) -> RateLimits:
    return RateLimits(spec or DHAN_LIMITS, clock=clock, sleep=clock.sleep)


def test_orders_bucket_allows_ten_per_second_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limits = limits_on(clock)
    for _ in range(10):
        assert limits.try_acquire(Bucket.ORDERS) == 0.0
        clock.now += 0.01
        limits.release(Bucket.ORDERS)
    wait = limits.try_acquire(Bucket.ORDERS)
    # the first slot was answered 0.09 s ago: it leaves the window 1 s + the margin after that
    assert wait == pytest.approx(0.91 + MARGIN)


def test_a_slot_is_held_until_its_answer_then_for_a_window_and_the_margin() -> None:
    clock = Clock()
    limits = limits_on(clock, {Bucket.QUOTE: "1/second"})
    assert limits.try_acquire(Bucket.QUOTE) == 0.0
    clock.now += 5.0  # a slow answer: the request may have arrived at the very end
    assert limits.try_acquire(Bucket.QUOTE) > 0
    limits.release(Bucket.QUOTE)
    clock.now += 1.0
    assert limits.try_acquire(Bucket.QUOTE) > 0  # a second after the answer: the margin left
    clock.now += MARGIN
    assert limits.try_acquire(Bucket.QUOTE) == 0.0


def test_requests_arrive_ten_in_any_second_whatever_their_transit() -> None:
    """Each request arrives at the broker some transit after it left, at most when its answer
    comes back: counted at arrival, no second holds more than 10 (a limiter counting at the
    send lets the 11th leave at the window's edge, 1 s after the slow one left, and arrive
    less than 1 s after it: 11 in that second)."""
    clock = Clock()
    limits = limits_on(clock)
    arrivals: list[float] = []
    for k in range(40):
        assert limits.acquire(Bucket.ORDERS, timeout=3.0)
        transit = 0.02 if k % 20 == 0 else 0.001  # now and then one is slow on the wire
        arrivals.append(clock.now + transit)
        clock.now += transit + 0.001
        limits.release(Bucket.ORDERS)
    arrivals.sort()
    assert max(sum(1 for t in arrivals if at - 1.0 < t <= at) for at in arrivals) == 10


def test_every_window_of_a_bucket_is_enforced() -> None:
    clock = Clock()
    limits = limits_on(clock, {Bucket.ORDERS: "100/second;3/minute"})
    for _ in range(3):
        assert limits.try_acquire(Bucket.ORDERS) == 0.0
        limits.release(Bucket.ORDERS)
    assert limits.try_acquire(Bucket.ORDERS) > 50  # the minute window is full


def test_a_refused_request_uses_up_no_window() -> None:
    clock = Clock()
    limits = limits_on(clock, {Bucket.ORDERS: "2/minute;1/second"})
    assert limits.try_acquire(Bucket.ORDERS) == 0.0
    limits.release(Bucket.ORDERS)
    assert limits.try_acquire(Bucket.ORDERS) > 0  # refused by 1/second …
    clock.now += 1.05
    assert limits.try_acquire(Bucket.ORDERS) == 0.0  # … so the minute still had room
    limits.release(Bucket.ORDERS)
    clock.now += 1.05
    assert limits.try_acquire(Bucket.ORDERS) > 50  # now the minute is full (2 counted)


def test_buckets_are_independent() -> None:
    limits = RateLimits()
    assert limits.try_acquire(Bucket.QUOTE) == 0.0
    assert limits.try_acquire(Bucket.QUOTE) > 0
    assert limits.try_acquire(Bucket.READS) == 0.0
    assert limits.try_acquire(Bucket.ORDERS) == 0.0


def test_acquire_waits_for_the_next_slot() -> None:
    clock = Clock()
    limits = limits_on(clock, {Bucket.QUOTE: "1/second"})
    with limits.slot(Bucket.QUOTE, timeout=0) as taken:
        assert taken
    with limits.slot(Bucket.QUOTE, timeout=0.2) as taken:
        assert not taken
    with limits.slot(Bucket.QUOTE, timeout=1.5) as taken:
        assert taken
    assert clock.now - 1000.0 == pytest.approx(1.0 + MARGIN, abs=0.06)


def test_dhan_limits_are_the_specified_ones() -> None:
    assert DHAN_LIMITS[Bucket.ORDERS] == "10/second;250/minute;1000/hour;7000/day"
    assert DHAN_LIMITS[Bucket.QUOTE] == "1/second"
    assert DHAN_LIMITS[Bucket.READS] == "20/second"
    assert parse_windows(DHAN_LIMITS[Bucket.ORDERS]) == [
        (10, 1.0), (250, 60.0), (1000, 3600.0), (7000, 86400.0)]
    with pytest.raises(ValueError):
        parse_windows("10 per second")
