"""The in-process PnL cache, and the Redis cache's outage behaviour against a closed port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from loguru import logger

from models.common import IST
from store.pnl_cache import (
    InMemoryPnLCache,
    RedisPnLCache,
    decode_entry,
    encode_entry,
    open_pnl_cache,
)
from store.records import PnLEntry
from store.urls import redact_url

if TYPE_CHECKING:
    from loguru import Record

CLOSED = "redis://:s3cret@127.0.0.1:1/0"
T0 = datetime(2024, 7, 1, 10, 15, tzinfo=IST)


def entry(position_id: str, pnl: str = "10.50", *, peak: str | None = "101.25",
          at: datetime = T0) -> PnLEntry:
    return PnLEntry(position_id=position_id, pnl=Decimal(pnl), pnl_pct=Decimal("0.0125"),
                    ltp=Decimal("100.05"), hwm_pnl=Decimal("12.00"),
                    peak_price=None if peak is None else Decimal(peak), updated_at=at)


def as_fields(value: PnLEntry) -> dict[str, str]:
    return {str(key): str(field) for key, field in encode_entry(value).items()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs() -> Iterator[list[Record]]:
    records: list[Record] = []
    handler = logger.add(lambda message: records.append(message.record), level="DEBUG")
    yield records
    logger.remove(handler)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def down(clock: FakeClock) -> Iterator[RedisPnLCache]:
    cache = RedisPnLCache(CLOSED, retry_after_seconds=5.0, clock=clock)
    yield cache
    cache.close()


# In-process cache ---------------------------------------------------------------------------------

def test_in_memory_cache_reads_back_what_was_written() -> None:
    cache = InMemoryPnLCache()
    assert cache.write([entry("P1"), entry("P2", peak=None)]) is True
    assert cache.read("P1") == entry("P1")
    assert cache.read_all() == {"P1": entry("P1"), "P2": entry("P2", peak=None)}
    assert cache.read("P3") is None


def test_in_memory_cache_last_entry_of_a_position_wins_within_a_batch() -> None:
    cache = InMemoryPnLCache()
    cache.write([entry("P1", "1"), entry("P1", "2"), entry("P1", "3")])
    assert cache.read("P1") == entry("P1", "3")


def test_in_memory_cache_delete_removes_and_wins_over_an_entry_in_the_same_call() -> None:
    cache = InMemoryPnLCache()
    cache.write([entry("P1"), entry("P2")])
    cache.write([entry("P2", "5")], deletes=["P1", "P2", "unknown"])
    assert cache.read_all() == {}


def test_in_memory_cache_counts_each_non_empty_write_as_one_roundtrip() -> None:
    cache = InMemoryPnLCache()
    cache.write([entry(f"P{i}") for i in range(500)])
    cache.write([], deletes=["P1"])
    assert cache.write([]) is True
    assert (cache.roundtrips, cache.failures) == (2, 0)
    cache.close()


def test_open_pnl_cache_chooses_by_url_and_connects_to_nothing() -> None:
    assert isinstance(open_pnl_cache(None), InMemoryPnLCache)
    cache = open_pnl_cache(CLOSED)
    assert isinstance(cache, RedisPnLCache)
    assert (cache.roundtrips, cache.failures) == (0, 0)
    cache.close()


# Encoding ----------------------------------------------------------------------------------------

def test_entry_is_encoded_as_exact_decimal_strings_and_an_aware_iso_time() -> None:
    assert encode_entry(entry("P1", "-1234.5600", peak=None)) == {
        "pnl": "-1234.5600", "pnl_pct": "0.0125", "ltp": "100.05", "hwm_pnl": "12.00",
        "peak_price": "", "updated_at": "2024-07-01T10:15:00+05:30"}


@pytest.mark.parametrize("peak", [None, "101.25", "1E+2"])
def test_decoding_an_encoded_entry_gives_it_back_exactly(peak: str | None) -> None:
    original = entry("P1", "0.10", peak=peak, at=T0.astimezone(UTC))
    assert decode_entry("P1", as_fields(original)) == original


def test_a_hash_that_is_not_ours_decodes_to_none() -> None:
    assert decode_entry("P1", {"pnl": "x"}) is None
    assert decode_entry("P1", {**as_fields(entry("P1")), "ltp": "abc"}) is None


@pytest.mark.parametrize(("url", "safe"), [
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:pw@host", "rediss://:***@host"),
    ("redis://host:6379/0?password=pw&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redact_url_hides_passwords(url: str, safe: str) -> None:
    assert redact_url(url) == safe


# Redis outage ------------------------------------------------------------------------------------

def test_when_redis_is_down_then_write_returns_false_and_counts_a_failure(
        down: RedisPnLCache, logs: list[Record]) -> None:
    assert down.write([entry("P1")]) is False
    assert (down.roundtrips, down.failures) == (1, 1)
    warnings = [r for r in logs if r["level"].name == "WARNING"]
    assert len(warnings) == 1
    assert "s3cret" not in warnings[0]["message"]
    assert "redis://:***@127.0.0.1:1/0" in warnings[0]["message"]


def test_while_down_no_network_retry_before_retry_after(
        down: RedisPnLCache, clock: FakeClock, logs: list[Record]) -> None:
    down.write([entry("P1")])
    for step in range(10):
        clock.now += 0.49
        assert down.write([entry("P1", str(step))]) is False
    assert (down.roundtrips, down.failures) == (1, 1)
    clock.now += 0.2  # 5.1 s after the failure
    assert down.write([entry("P2")]) is False
    assert (down.roundtrips, down.failures) == (2, 2)
    assert down.write([entry("P3")]) is False
    assert down.roundtrips == 2
    assert len([r for r in logs if r["level"].name == "WARNING"]) == 1  # once per outage


def test_while_down_pending_state_keeps_the_latest_entry_per_position(
        down: RedisPnLCache) -> None:
    for i in range(1000):
        down.write([entry("P1", str(i)), entry("P2", str(-i))])
    entries, deletes = down.pending
    assert entries == {"P1": entry("P1", "999"), "P2": entry("P2", "-999")}
    assert deletes == frozenset()


def test_while_down_a_delete_cancels_an_entry_and_a_later_entry_cancels_a_delete(
        down: RedisPnLCache) -> None:
    down.write([entry("P1"), entry("P2"), entry("P3")])
    down.write([entry("P4")], deletes=["P1", "P2"])
    down.write([entry("P2", "7")], deletes=["P5"])
    entries, deletes = down.pending
    assert entries == {"P2": entry("P2", "7"), "P3": entry("P3"), "P4": entry("P4")}
    assert deletes == {"P1", "P5"}


def test_pending_deletes_are_bounded(down: RedisPnLCache) -> None:
    down.max_pending_deletes = 100
    for i in range(250):
        down.write([], deletes=[f"P{i}"])
    _, deletes = down.pending
    assert deletes == {f"P{i}" for i in range(150, 250)}


def test_an_empty_write_makes_no_roundtrip(down: RedisPnLCache) -> None:
    assert down.write([]) is True
    assert down.roundtrips == 0
    down.write([entry("P1")])
    assert down.write([], ()) is False  # something is still owed
    assert (down.roundtrips, down.failures) == (1, 1)


def test_reads_while_down_return_nothing_and_do_not_raise(down: RedisPnLCache) -> None:
    assert down.read("P1") is None
    assert down.read_all() == {}


def test_a_timeout_counts_as_an_outage_too(clock: FakeClock) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is never routed: the connect times out, or fails at once.
    cache = RedisPnLCache("redis://192.0.2.1:6379/0", socket_timeout=0.05, clock=clock)
    started = time.monotonic()
    assert cache.write([entry("P1")]) is False
    assert time.monotonic() - started < 2
    assert cache.failures == 1
    cache.close()
