"""Two accounts served side by side in one process on one PostgreSQL database (SPEC §13): each
its own System with its own paper exchange, gateway actors, limits and kill switch.

Both paper exchanges number their orders alike, so the two accounts hold positions with the
same ids; the kill switch of one trips (a daily loss limit of one rupee, breached by the fees
of its first fill) and exits every position of that account, while the other goes on trading,
untouched, even after the first system has stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import SessionClock, paper_session_start
from broker.paper import PaperBroker, PaperConfig
from models.common import IST
from models.policy import PortfolioLimits, RiskConfig
from models.position import ExitReason, PositionStatus
from models.report import build_report
from store.factory import open_store
from store.pnl_cache import InMemoryPnLCache
from store.ports import Store

pytestmark = pytest.mark.integration

POSITIONS = 4
T = TypeVar("T")


@dataclass
class Account:
    system: System
    store: Store
    broker: PaperBroker


def _account(pg_url: str, account: str, loss_limit: str, positions: int = POSITIONS) -> Account:
    config = RiskConfig(portfolio=PortfolioLimits(daily_loss_limit=Decimal(loss_limit)))
    clock = SessionClock(paper_session_start(datetime.now(IST), config.calendar))
    store = open_store(pg_url, account=account)
    # The same seed and order numbers in both accounts: the same position ids.
    broker = PaperBroker(PaperConfig(positions=positions, instruments=2, seed=3, latency_ms=5,
                                     interval_ms=20, volatility=0.00001), start=clock(),
                         order_prefix="PB-")
    system = System(Parts(store=store, cache=InMemoryPnLCache(), gateway=broker.exchange,
                          quotes=broker.quotes, config=config, clock=clock, account=account))

    def step(now: datetime) -> None:
        for instrument, ltp, at in broker.advance(now):
            system.tick(instrument, ltp, at)

    system.start(on_step=step)
    return Account(system, store, broker)


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)  # polling the real processes' state, not synchronising actors
    raise AssertionError(f"not within {timeout:g} s: {what}")


@pytest.fixture
def accounts(pg_url: str) -> Iterator[tuple[Account, Account]]:
    made: list[Account] = []
    try:
        made.append(_account(pg_url, "desk-a", "1"))
        made.append(_account(pg_url, "desk-b", "0"))  # 0: no kill switch
        yield made[0], made[1]
    finally:
        for account in made:
            account.system.stop()
            account.store.close()
        pykka.ActorRegistry.stop_all()


def _by_status(store: Store) -> dict[str, PositionStatus]:
    return {p.position_id: p.status for p in store.list_positions()}


def test_a_kill_switch_tripped_on_one_account_leaves_the_other_trading(
        accounts: tuple[Account, Account]) -> None:
    a, b = accounts
    status_a = _wait("account A's kill switch trips", lambda: (
        s if (s := a.system.status())["kill_switch"] else None))
    assert status_a["account"] == "desk-a" and status_a["trading_state"] == "HALTED"
    # B opens all its positions, and keeps them, with A halted beside it.
    _wait("account B opens every position", lambda: sum(
        1 for s in _by_status(b.store).values() if s is PositionStatus.ACTIVE) == POSITIONS)
    _wait("account A exits every position it opened", lambda: (
        a.broker.strategy.done and all(
            s in (PositionStatus.EXITED, PositionStatus.CANCELLED)
            for s in _by_status(a.store).values())))
    status_b = b.system.status()
    assert status_b["account"] == "desk-b"
    assert status_b["trading_state"] == "RUNNING" and not status_b["kill_switch"]
    assert status_b["exits_by_reason"] == {}

    # The latch is A's alone, in the one database.
    latch = a.store.kill_switch()
    assert latch is not None and latch.reason == "daily loss limit breached"
    assert b.store.kill_switch() is None
    # The same position ids in both accounts, each account's own state.
    ids_a, ids_b = _by_status(a.store), _by_status(b.store)
    shared = set(ids_a) & set(ids_b)
    assert shared, (ids_a, ids_b)
    assert all(ids_b[pid] is PositionStatus.ACTIVE for pid in shared)
    exits_a = {p.exit_reason for p in a.store.list_positions(PositionStatus.EXITED)}
    assert exits_a == {ExitReason.KILL_SWITCH}
    assert b.store.list_positions(PositionStatus.EXITED) == []
    assert b.store.exit_attempts() == []
    assert {x.position_id for x in a.store.exit_attempts()} <= set(ids_a)

    # Each account's report holds its own positions only.
    reports = {acct.system.account: _report(acct) for acct in (a, b)}
    assert reports["desk-a"]["account"] == "desk-a"
    assert {r["status"] for r in reports["desk-a"]["positions"]} <= {"EXITED", "CANCELLED"}
    assert reports["desk-b"]["account"] == "desk-b"
    assert [r["status"] for r in reports["desk-b"]["positions"]] == ["ACTIVE"] * POSITIONS
    assert reports["desk-b"]["summary"]["exits_by_reason"] == {}

    # Stopping A stops A's actors only: B goes on valuing prices and answering.
    a.system.stop()
    batches = b.system.status()["metrics"]["price_batches"]
    _wait("account B goes on after A stopped",
          lambda: b.system.status()["metrics"]["price_batches"] > batches)
    assert b.system.status()["trading_state"] == "RUNNING"
    assert [p.position_id for p in b.system.open_positions()] == sorted(ids_b)


def test_after_a_restart_each_account_loads_only_its_own_state(
        pg_url: str, accounts: tuple[Account, Account]) -> None:
    a, b = accounts
    _wait("account A's kill switch trips", lambda: a.system.status()["kill_switch"])
    _wait("account B opens every position", lambda: sum(
        1 for s in _by_status(b.store).values() if s is PositionStatus.ACTIVE) == POSITIONS)
    _wait("account A exits every position it opened", lambda: not a.store.load_open_positions())
    open_b = sorted(p.position_id for p in b.store.load_open_positions())
    a.system.stop()
    b.system.stop()
    # Each account again, as a new process would start it (no new entries): from the one
    # database, each with its own latch and its own open positions.
    again = [_account(pg_url, "desk-a", "1", 0), _account(pg_url, "desk-b", "0", 0)]
    try:
        status_a, status_b = (account.system.status() for account in again)
        assert status_a["trading_state"] == "HALTED"  # A's stored latch holds A only
        assert status_b["trading_state"] == "RUNNING"
        assert again[0].system.open_positions() == []
        assert len(open_b) == POSITIONS
        assert sorted(p.position_id for p in again[1].system.open_positions()) == open_b
    finally:
        for account in again:
            account.system.stop()
            account.store.close()


def _report(account: Account) -> dict[str, Any]:
    system = account.system
    now = system.parts.clock()
    return build_report("paper", system.started_at or now, now, account.store.list_positions(),
                        system.parts.config.policy, system.parts.metrics.snapshot(),
                        account=system.account)
