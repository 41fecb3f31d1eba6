"""The Redis PnL cache against a real Redis: layout, TTL, one round trip per write, recovery."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from loguru import logger

from models.common import IST
from store.pnl_cache import RedisPnLCache, open_pnl_cache
from store.records import PnLEntry

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 1, 10, 15, 30, 123456, tzinfo=IST)
SIX_HOURS = 6 * 3600


def entry(position_id: str, pnl: str = "10.50", *, peak: str | None = "101.25") -> PnLEntry:
    return PnLEntry(position_id=position_id, pnl=Decimal(pnl), pnl_pct=Decimal("-0.0125"),
                    ltp=Decimal("100.05"), hwm_pnl=Decimal("12.00"),
                    peak_price=None if peak is None else Decimal(peak), updated_at=T0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingConnection(redis.Connection):
    """Counts writes to the socket: a pipeline is one write followed by reading the replies,
    so one more write is one more network round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class TcpProxy:
    """A TCP forwarder to Redis that a test can stop (connections cut, port refused) and start
    again on the same port: a real outage and a real recovery."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, 0
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stopped.clear()
        self._sockets = [listener]
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # a listener or a peer that went already
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            downstream.settimeout(None)
            self._sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass  # the proxy was stopped
    finally:
        dst.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cache(redis_url: str) -> Iterator[RedisPnLCache]:
    pnl_cache = RedisPnLCache(redis_url)
    yield pnl_cache
    pnl_cache.close()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logger.add(lambda message: messages.append(message.record["message"]))
    yield messages
    logger.remove(handler)


def test_write_stores_exact_fields_with_a_six_hour_ttl(cache: RedisPnLCache,
                                                       raw: redis.Redis) -> None:
    assert cache.write([entry("P1", "-1234.5600"), entry("P2", peak=None)]) is True
    assert raw.hgetall("pnl:tracker:P1") == {
        "pnl": "-1234.5600", "pnl_pct": "-0.0125", "ltp": "100.05", "hwm_pnl": "12.00",
        "peak_price": "101.25", "updated_at": "2024-07-01T10:15:30.123456+05:30"}
    assert raw.hget("pnl:tracker:P2", "peak_price") == ""
    for key in ("pnl:tracker:P1", "pnl:tracker:P2"):
        assert SIX_HOURS - 60 <= int(raw.ttl(key)) <= SIX_HOURS


def test_each_write_refreshes_the_ttl(cache: RedisPnLCache, raw: redis.Redis) -> None:
    cache.write([entry("P1")])
    raw.expire("pnl:tracker:P1", 100)
    cache.write([entry("P1", "11")])
    assert int(raw.ttl("pnl:tracker:P1")) > SIX_HOURS - 60


def test_a_write_of_500_entries_is_one_round_trip(redis_url: str, raw: redis.Redis) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection,
                                         decode_responses=True)
    cache = RedisPnLCache(redis_url, client=redis.Redis(connection_pool=pool))
    cache.write([entry("warm-up")], deletes=["warm-up"])  # connects: handshake sends counted
    sends, roundtrips = CountingConnection.sends, cache.roundtrips
    before = raw.info("commandstats")
    assert cache.write([entry(f"P{i}") for i in range(500)], deletes=["gone"]) is True
    after = raw.info("commandstats")
    assert CountingConnection.sends - sends == 1
    assert cache.roundtrips - roundtrips == 1
    for command, count in (("hset", 500), ("expire", 500), ("del", 1)):
        stat = f"cmdstat_{command}"
        assert after[stat]["calls"] - before.get(stat, {"calls": 0})["calls"] == count
    assert len(list(raw.scan_iter("pnl:tracker:*", count=1000))) == 500
    cache.close()


def test_delete_removes_the_key(cache: RedisPnLCache, raw: redis.Redis) -> None:
    cache.write([entry("P1"), entry("P2")])
    assert cache.write([], deletes=["P1"]) is True
    assert raw.exists("pnl:tracker:P1") == 0
    assert raw.exists("pnl:tracker:P2") == 1


def test_last_entry_of_a_position_wins_within_a_batch(cache: RedisPnLCache,
                                                      raw: redis.Redis) -> None:
    cache.write([entry("P1", "1"), entry("P1", "2"), entry("P1", "3")])
    assert raw.hget("pnl:tracker:P1", "pnl") == "3"


def test_read_and_read_all_give_back_decimals_exactly(cache: RedisPnLCache,
                                                      raw: redis.Redis) -> None:
    entries = [entry("P1", "0.10"), entry("P2", "-1E+2", peak=None), entry("P3", "12.3450")]
    cache.write(entries)
    raw.set("pnl:tracker:junk", "not a hash")  # another writer's mistake is skipped, not raised
    raw.hset("pnl:tracker:partial", "pnl", "1")
    assert cache.read("P2") == entries[1]
    assert str(cache.read("P3").pnl) == "12.3450"  # type: ignore[union-attr]
    assert cache.read("missing") is None
    assert cache.read_all() == {e.position_id: e for e in entries}


def test_a_command_redis_refuses_is_dropped_not_retried(cache: RedisPnLCache,
                                                        raw: redis.Redis) -> None:
    raw.set("pnl:tracker:P1", "a string, not a hash")
    assert cache.write([entry("P1"), entry("P2")]) is False
    assert raw.exists("pnl:tracker:P2") == 1
    assert cache.pending == ({}, frozenset())
    assert cache.write([entry("P3")]) is True


def test_after_an_outage_pending_writes_land_in_one_round_trip(
        redis_url: str, raw: redis.Redis, logs: list[str]) -> None:
    url = urlsplit(redis_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 6379))
    proxy.start()
    clock = FakeClock()
    cache = RedisPnLCache(f"redis://127.0.0.1:{proxy.port}{url.path}",
                          retry_after_seconds=5.0, clock=clock)
    try:
        assert cache.write([entry("P1"), entry("P2")]) is True
        proxy.stop()
        assert cache.write([entry("P1", "20")], deletes=["P2"]) is False
        clock.now += 1
        assert cache.write([entry("P3"), entry("P1", "30")]) is False
        assert (cache.roundtrips, cache.failures) == (2, 1)
        proxy.start()
        assert cache.write([entry("P4")]) is False  # still inside retry_after: no network
        assert cache.roundtrips == 2
        clock.now += 5
        assert cache.write([entry("P5")]) is True
        assert (cache.roundtrips, cache.failures) == (3, 1)
        assert raw.hget("pnl:tracker:P1", "pnl") == "30"
        assert raw.exists("pnl:tracker:P2") == 0
        assert sorted(cache.read_all()) == ["P1", "P3", "P4", "P5"]
    finally:
        cache.close()
        proxy.stop()
    assert sum("unavailable" in m for m in logs) == 1
    assert sum("PnL cache recovered" in m for m in logs) == 1


def test_two_accounts_on_one_redis_keep_their_entries_apart(redis_url: str) -> None:
    paper, desk = open_pnl_cache(redis_url), open_pnl_cache(redis_url, "desk-b")
    try:
        assert paper.write([entry("P1", "1.00")]) and desk.write([entry("P1", "2.00")])
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        # The default account keeps SPEC §6's layout; another account's keys name it.
        assert sorted(client.scan_iter("pnl:tracker:*")) == ["pnl:tracker:P1",
                                                            "pnl:tracker:desk-b:P1"]
        client.close()
        assert {k: e.pnl for k, e in paper.read_all().items()} == {"P1": Decimal("1.00")}
        assert {k: e.pnl for k, e in desk.read_all().items()} == {"P1": Decimal("2.00")}
        assert desk.write([], ["P1"])
        found = paper.read("P1")
        assert desk.read("P1") is None and found is not None and found.pnl == Decimal("1.00")
    finally:
        paper.close()
        desk.close()
