"""PostgreSQL failing under a paper session: its connections terminated every few seconds (a
database of the test's own on the shared server), and the server itself restarted every few
seconds (a throw-away cluster). Each session ends with the books agreeing and no exit doubled."""

from __future__ import annotations

import time
from contextlib import closing
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from models.policy import ExitPolicy, RiskConfig
from store.factory import open_store
from store.pnl_cache import InMemoryPnLCache
from tests.faults.paper import assert_nothing_lost_or_doubled, paper_session, settled_books
from tests.faults.services import Cluster, Periodic, terminate_connections

pytestmark = pytest.mark.integration

CONFIG = RiskConfig(policy=ExitPolicy(stop_loss_pct=Decimal("0.01"),
                                      take_profit_pct=Decimal("0.01")))
"""Tight thresholds: positions exit all through the session, while the faults happen."""
FAULTY = 18.0
"""Seconds of the session under the fault; entries are placed during its first half."""
CALM = 4.0
"""Seconds of the session after the fault, for retries to land."""


def _session_under(url: str, fault: Periodic, seed: int) -> None:
    with closing(open_store(url)) as store, \
            paper_session(store, InMemoryPnLCache(), positions=60, seed=seed, config=CONFIG,
                          interval_ms=150) as run:
        with fault:
            time.sleep(FAULTY)
        time.sleep(CALM)
        books = settled_books(run)
    # read afresh: the session's own pool may still hold a connection the fault killed
    with closing(open_store(url)) as check:
        assert_nothing_lost_or_doubled(run, books, check)


def test_when_connections_terminated_every_few_seconds_then_books_agree(
        own_db: str, pg_server_url: str) -> None:
    database = urlsplit(own_db).path.lstrip("/")
    fault = Periodic(lambda: terminate_connections(pg_server_url, database), every=2.0)
    _session_under(own_db, fault, seed=21)
    assert fault.errors == []
    assert len(fault.results) > 5 and sum(n for n in fault.results if isinstance(n, int)) > 5


def test_when_server_restarted_every_few_seconds_then_books_agree(cluster: Cluster) -> None:
    fault = Periodic(lambda: cluster.restart(down=1.0), every=2.5)
    _session_under(cluster.url, fault, seed=22)
    assert fault.errors == []
    assert cluster.restarts >= 3
