"""Positions on the paper broker, end to end through the actor system, on a simulated clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pykka
import pytest

from actors.system import Parts, System
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import IST, Instrument, Segment, TxnType
from models.policy import ExitPolicy, RiskConfig
from models.position import ExitReason, PositionStatus
from store.pnl_cache import InMemoryPnLCache
from tests.fakes import FakeStore

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)


class Rig:
    def __init__(self, config: RiskConfig) -> None:
        self.clock = ManualClock(T0)
        self.market = TapeMarket([])
        self.exchange = PaperExchange(self.market, latency=timedelta(0), start=T0)
        self.store = FakeStore()
        self.system = System(Parts(store=self.store, cache=InMemoryPnLCache(),
                                   gateway=self.exchange, quotes=None, config=config,
                                   clock=self.clock)).start(ticker=False)

    def set_prices(self, prices: dict[Instrument, Decimal]) -> None:
        now = self.clock()
        for instrument, ltp in prices.items():
            self.market.set_price(instrument, ltp, now)
            self.system.tick(instrument, ltp, now)
        self.system.step(now, timer=False)
        self.settle()

    def settle(self) -> None:
        self.system.settle()
        self.exchange.advance(self.clock())
        self.system.settle()

    def later(self, seconds: float) -> None:
        self.clock.set(self.clock() + timedelta(seconds=seconds))
        self.system.step(self.clock(), timer=True)
        self.settle()


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig(RiskConfig(policy=ExitPolicy(max_hold_minutes=30)))
    yield built
    built.system.stop()
    pykka.ActorRegistry.stop_all()


def test_a_started_system_keeps_what_it_loaded_out_of_full_collections() -> None:
    # Start-up freezes what is alive: a full collection does not walk it (no long pauses).
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    built = Rig(RiskConfig())
    try:
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # off only while starting
    finally:
        built.system.stop()
        pykka.ActorRegistry.stop_all()


def test_a_system_with_quiet_collections_runs_the_full_passes_itself_until_it_stops() -> None:
    """``Parts.quiet_collections`` (the live session's): the collector's automatic full
    passes are off while the system runs (``QuietCollector``) and back once it stopped."""
    from actors.runtime.collector import NEVER

    before = gc.get_threshold()
    clock = ManualClock(T0)
    exchange = PaperExchange(TapeMarket([]), latency=timedelta(0), start=T0)
    system = System(Parts(store=FakeStore(), cache=InMemoryPnLCache(), gateway=exchange,
                          quotes=None, config=RiskConfig(), clock=clock,
                          quiet_collections=60.0)).start(ticker=False)
    try:
        assert system.collector is not None
        assert gc.get_threshold() == (before[0], before[1], NEVER)
    finally:
        system.stop()
        pykka.ActorRegistry.stop_all()
    assert gc.get_threshold() == before


def test_when_order_fills_then_pending_active_exiting_exited_with_real_fill_prices(
        rig: Rig) -> None:
    instrument = Instrument(segment=Segment.NSE_FNO, security_id="40001")
    rig.set_prices({instrument: Decimal("200")})
    rig.exchange.place_order(client_id="S-1", instrument=instrument, txn_type=TxnType.BUY,
                             quantity=50, product="I")
    rig.settle()
    (position,) = rig.store.positions.values()
    assert (position.status, position.entry_price) == (PositionStatus.ACTIVE, Decimal("200"))
    rig.set_prices({instrument: Decimal("300.05")})
    final = rig.store.positions[position.position_id]
    assert final.status is PositionStatus.EXITED
    assert final.exit_reason is ExitReason.TAKE_PROFIT
    assert final.exit_price == Decimal("300.05")
    assert len(rig.exchange.orders()) == 2


def test_when_100_positions_on_20_instruments_then_each_exits_for_its_own_reason(
        rig: Rig) -> None:
    instruments = [Instrument(segment=Segment.NSE_FNO, security_id=str(41000 + i))
                   for i in range(20)]
    rig.set_prices({i: Decimal("100") for i in instruments})
    for n in range(100):
        side = TxnType.BUY if n % 2 == 0 else TxnType.SELL
        rig.exchange.place_order(client_id=f"S-{n}", instrument=instruments[n % 20],
                                 txn_type=side, quantity=10 + n, product="I")
    rig.settle()
    assert sum(p.status is PositionStatus.ACTIVE for p in rig.store.positions.values()) == 100

    # Instruments 0-4 fall 55 %, 5-9 rise 55 %, 10-14 rise 5 % then give back 3 %, 15-19 rest.
    rig.set_prices({**{i: Decimal("45") for i in instruments[:5]},
                    **{i: Decimal("155") for i in instruments[5:10]},
                    **{i: Decimal("105") for i in instruments[10:15]}})
    rig.later(1)
    rig.set_prices({i: Decimal("101.85") for i in instruments[10:15]})
    rig.later(31 * 60)  # every position still open passes max_hold_minutes

    expected_long = ([ExitReason.STOP_LOSS] * 5 + [ExitReason.TAKE_PROFIT] * 5
                     + [ExitReason.TRAILING_STOP] * 5 + [ExitReason.TIME_STOP] * 5)
    expected_short = ([ExitReason.TAKE_PROFIT] * 5 + [ExitReason.STOP_LOSS] * 5
                      + [ExitReason.TIME_STOP] * 5 + [ExitReason.TIME_STOP] * 5)
    for position in rig.store.positions.values():
        index = instruments.index(Instrument(segment=position.segment,
                                             security_id=position.security_id))
        want = (expected_long if position.side.value == "LONG" else expected_short)[index]
        assert position.status is PositionStatus.EXITED, position.position_id
        assert position.exit_reason is want, (position.position_id, position.side, index)
    assert len(rig.exchange.orders()) == 200  # one exit order per position, no more
