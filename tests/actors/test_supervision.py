"""A broken tracker is restarted, then quarantined, and its position is still protected."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.protocol import Snapshot
from actors.tracker import TrackerActor
from models.common import exit_client_id
from models.messages import PriceUpdate
from models.position import ExitReason, PositionStatus
from tests.actors.test_tracker_flow import INSTRUMENT, System, entry, open_position, price
from tests.fakes import FakeGateway, FakeStore

BROKEN = "PBAD"


@pytest.fixture
def system(monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    original = TrackerActor.on_receive

    def on_receive(self: TrackerActor, message: Any) -> Any:
        if isinstance(message, PriceUpdate) and self.keeper.position.position_id == BROKEN:
            self._current = message
            raise RuntimeError("tracker bug on every price")
        return original(self, message)

    monkeypatch.setattr(TrackerActor, "on_receive", on_receive)
    built = System(FakeStore(), FakeGateway())
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_tracker_raises_then_restarted_then_quarantined_and_still_exits(
        system: System) -> None:
    bad = open_position(system, entry(order_no="BAD"))
    good = open_position(system, entry(order_no="GOOD"))
    assert bad == BROKEN
    for ltp in ("199", "198", "197"):
        price(system, ltp)
    snapshot = system.supervisor.ask(Snapshot(), timeout=5)
    assert snapshot["quarantined"] == [BROKEN]
    assert system.ctx.metrics.get("actor_restarts") == 2
    letters = system.store.dead_letters()
    assert len(letters) == 3
    assert all(letter.message_type == "PriceUpdate" and letter.correlation_id == "p"
               for letter in letters)

    started = time.perf_counter()
    price(system, "176")  # -12 %: both positions must exit, the quarantined one too
    elapsed = time.perf_counter() - started
    assert exit_client_id(good, 1) in system.gateway.placed
    assert exit_client_id(bad, 1) in system.gateway.placed
    assert system.store.positions[bad].status is PositionStatus.EXITING
    assert system.store.positions[bad].exit_reason is ExitReason.STOP_LOSS
    assert elapsed < 1.0  # the broken position's trouble does not hold up the others


def test_when_position_restarted_then_state_comes_from_store(system: System) -> None:
    bad = open_position(system, entry(order_no="BAD", price="100"))
    price(system, "101")
    assert system.ctx.metrics.get("actor_restarts") == 1
    restored = system.store.positions[bad]
    assert restored.entry_price == Decimal("100")
    assert INSTRUMENT.security_id == restored.security_id
