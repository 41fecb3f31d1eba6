"""A 500-position, 60-second paper session on PostgreSQL and Redis: store, index and cache agree."""

from __future__ import annotations

import time
from datetime import datetime

import pykka
import pytest
import redis

from actors.system import Parts, System
from app.clocks import SessionClock, paper_session_start
from broker.paper import PaperBroker, PaperConfig
from models.common import IST
from models.policy import RiskConfig
from models.position import PRICED
from store.factory import open_store
from store.pnl_cache import RedisPnLCache

pytestmark = pytest.mark.integration


def test_when_500_position_session_ends_then_store_index_and_cache_agree(
        pg_url: str, redis_url: str) -> None:
    config = RiskConfig()
    clock = SessionClock(paper_session_start(datetime.now(IST), config.calendar))
    store = open_store(pg_url)
    cache = RedisPnLCache(redis_url)
    broker = PaperBroker(PaperConfig(positions=500, instruments=100, seed=11, interval_ms=80,
                                     volatility=0.01), start=clock())
    system = System(Parts(store=store, cache=cache, gateway=broker.exchange,
                          quotes=broker.quotes, config=config, clock=clock))

    def step(now: datetime) -> None:
        for instrument, ltp, at in broker.advance(now):
            system.tick(instrument, ltp, at)

    system.start(on_step=step)
    try:
        time.sleep(60)  # a session of wall-clock length, by definition of this test
        system.quiesce()
        stored = {p.position_id: p for p in store.load_open_positions()}
        indexed = {p.position_id for p in system.open_positions()}
        raw = redis.Redis.from_url(redis_url)
        cached = {key.decode().removeprefix("pnl:tracker:")
                  for key in raw.scan_iter("pnl:tracker:*")}
        status = system.status()
        books = system.books()
    finally:
        system.stop()
        pykka.ActorRegistry.stop_all()
    assert broker.strategy.done
    assert len(store.list_positions()) == \
        500 - len(broker.strategy.failures) - _merged(store) + _remainders(store)
    assert indexed == set(stored)
    priced = {pid for pid, p in stored.items() if p.status in PRICED}
    assert cached == priced
    assert status["metrics"]["dead_letters"] == 0
    assert status["quarantined"] == []
    assert books.agree, books.line()  # every fill the paper broker reported is tracked


def _merged(store: object) -> int:
    """Strategy orders that reduced an opposite position instead of opening one."""
    from models.position import OrderRole

    positions = store.list_positions()  # type: ignore[attr-defined]
    opened = {p.entry_order_no for p in positions}
    reducing = {o.progress.order_no for p in positions for o in p.orders
                if o.role is OrderRole.OPPOSITE}
    return len(reducing - opened)


def _remainders(store: object) -> int:
    """Positions opened for an over-fill: an exit of ours that filled past what was open
    because a strategy order on the other side had reduced the position meanwhile."""
    from models.position import OrderRole

    positions = store.list_positions()  # type: ignore[attr-defined]
    exits = {o.progress.order_no for p in positions for o in p.orders
             if o.role is OrderRole.EXIT}
    return sum(1 for p in positions if p.entry_order_no in exits)
