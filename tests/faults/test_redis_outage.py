"""Redis unreachable for 10 s (through a proxy: 5 s of connections that go silent, 5 s of
connections refused) during a paper session: exits are decided and placed all through the
outage, the cache catches up once Redis is back, and the books agree."""

from __future__ import annotations

import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from models.policy import ExitPolicy, RiskConfig
from models.position import PRICED
from store.factory import open_store
from store.pnl_cache import RedisPnLCache
from tests.faults.paper import (
    PaperRun,
    assert_nothing_lost_or_doubled,
    paper_session,
    settled_books,
)
from tests.faults.services import Proxy

pytestmark = pytest.mark.integration

CONFIG = RiskConfig(policy=ExitPolicy(stop_loss_pct=Decimal("0.01"),
                                      take_profit_pct=Decimal("0.01")))
CATCH_UP = 12.0
"""Seconds after the outage within which the cache must hold the book again: its retry comes
at most ``retry_after_seconds`` (5 s) after the last failed write, then a flush a second."""


def _through(proxy: Proxy, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))


def test_when_redis_unreachable_for_10s_then_exits_go_on_and_cache_catches_up(
        tmp_path: Path, redis_url: str) -> None:
    parts = urlsplit(redis_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 6379)).start()
    cache = RedisPnLCache(_through(proxy, redis_url))
    url = f"sqlite:///{tmp_path / 'faults.sqlite3'}"
    try:
        with closing(open_store(url)) as store, \
                paper_session(store, cache, positions=40, seed=23, config=CONFIG,
                              interval_ms=150) as run:
            time.sleep(3)
            cut, evaluated = run.clock(), run.system.parts.metrics.get("evaluations")
            proxy.cut("stall")
            time.sleep(5)
            proxy.cut("refuse")
            time.sleep(5)
            proxy.mend()
            mended = run.clock()
            evaluated = run.system.parts.metrics.get("evaluations") - evaluated
            failed = cache.failures
            caught_up = _wait_for_cache(run, redis_url, CATCH_UP)
            books = settled_books(run)
        with closing(open_store(url)) as check:
            assert_nothing_lost_or_doubled(run, books, check)
            during = [a for a in check.exit_attempts() if cut <= a.requested_at <= mended]
    finally:
        cache.close()
        proxy.close()
    assert failed > 0, "the outage did not reach the cache"
    assert evaluated > 0
    assert during, "no exit was decided while Redis was unreachable"
    placed = {order.client_id for order in run.broker.exchange.orders()}
    assert {a.client_id for a in during} <= placed
    assert caught_up == (set(), set()), "cache keys (missing, extra) against the open book"


def _wait_for_cache(run: PaperRun, redis_url: str,
                    seconds: float) -> tuple[set[str], set[str]]:
    """Until the cache (read from Redis directly) holds exactly the priced open positions:
    those missing and those extra when ``seconds`` ran out (both empty: caught up)."""
    raw = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + seconds
    try:
        while True:
            priced = {p.position_id for p in run.system.open_positions() if p.status in PRICED}
            cached = {key.decode().removeprefix("pnl:tracker:")
                      for key in raw.scan_iter("pnl:tracker:*")}
            gap = (priced - cached, cached - priced)
            if gap == (set(), set()) or time.monotonic() > deadline:
                return gap
            time.sleep(0.5)
    finally:
        raw.close()
