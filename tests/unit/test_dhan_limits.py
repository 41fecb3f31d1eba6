"""DhanHQ rate limits: every window of a bucket counts, a refusal counts against none."""

from __future__ import annotations

import time

from broker.dhan.limits import DHAN_LIMITS, Bucket, RateLimits


def test_orders_bucket_allows_ten_per_second_then_says_how_long_to_wait() -> None:
    limits = RateLimits()
    assert [limits.try_acquire(Bucket.ORDERS) for _ in range(10)] == [0.0] * 10
    wait = limits.try_acquire(Bucket.ORDERS)
    assert 0.5 < wait <= 1.0


def test_every_window_of_a_bucket_is_enforced() -> None:
    limits = RateLimits({Bucket.ORDERS: "100/second;3/minute"})
    assert [limits.try_acquire(Bucket.ORDERS) for _ in range(3)] == [0.0] * 3
    assert limits.try_acquire(Bucket.ORDERS) > 50  # the minute window is full


def test_a_refused_request_uses_up_no_window() -> None:
    limits = RateLimits({Bucket.ORDERS: "2/minute;1/second"})
    assert limits.try_acquire(Bucket.ORDERS) == 0.0
    assert limits.try_acquire(Bucket.ORDERS) > 0  # refused by 1/second …
    time.sleep(1.05)
    assert limits.try_acquire(Bucket.ORDERS) == 0.0  # … so the minute still had room
    time.sleep(1.05)
    assert limits.try_acquire(Bucket.ORDERS) > 50  # now the minute is full (2 counted)


def test_buckets_are_independent() -> None:
    limits = RateLimits()
    assert limits.try_acquire(Bucket.QUOTE) == 0.0
    assert limits.try_acquire(Bucket.QUOTE) > 0
    assert limits.try_acquire(Bucket.READS) == 0.0
    assert limits.try_acquire(Bucket.ORDERS) == 0.0


def test_acquire_waits_for_the_next_slot() -> None:
    limits = RateLimits({Bucket.QUOTE: "1/second"})
    assert limits.acquire(Bucket.QUOTE, timeout=0)
    assert not limits.acquire(Bucket.QUOTE, timeout=0.2)
    assert limits.acquire(Bucket.QUOTE, timeout=1.5)


def test_dhan_limits_are_the_specified_ones() -> None:
    assert DHAN_LIMITS[Bucket.ORDERS] == "10/second;250/minute;1000/hour;7000/day"
    assert DHAN_LIMITS[Bucket.QUOTE] == "1/second"
    assert DHAN_LIMITS[Bucket.READS] == "20/second"
