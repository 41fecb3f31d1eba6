"""Model-based test (SPEC §11): a broker (the paper exchange, its book the model) and the real
system side by side, driven by random sequences of what brokers do. After every step has
settled: the books agree, at most one exit order of ours is live per position, none is live for
a position that is flat, no stored trailing stop is looser than before, and no position is left
EXITING without a live exit past its time-out.

Steps: our entries, external entries, partial fills, manual closes, exits that rest, are
rejected or are cancelled at the broker, duplicated and reordered frames, TRADED frames without
quantities, price moves, time passing, tracker crashes while storing a fill (the supervisor
restarts it), store outages and process restarts on the same store.

In the default run (CI): 100 sequences of up to 25 steps each, derandomized (the same sequences
every run, so a failure is reproducible and never a flake of the search), bounded by their own
time-out. ``MODEL_EXAMPLES=N`` changes the count; ``MODEL_SEARCH=1`` searches at random,
without a bound (``MODEL_EXAMPLES`` or 100,000 sequences, no time-out): run it before landing a
change to the order path. Each failure found is kept as a regular test (here, or in
``tests/actors/test_broker_safety.py``).
"""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from actors.system import Parts, System
from app.clocks import ManualClock
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from broker.ports import OrderView
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus
from models.policy import RiskConfig
from models.position import OPEN, PositionStatus
from store.pnl_cache import InMemoryPnLCache
from tests.actors.test_tracker_flow import T0
from tests.fakes import FakeStore

INSTRUMENT = Instrument(segment=Segment.NSE_FNO, security_id="47012")
SEARCH = os.environ.get("MODEL_SEARCH") == "1"
"""An open-ended random search rather than CI's fixed sequences."""
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "100_000" if SEARCH else "100"))
"""Sequences per run (each up to ``STEPS`` steps)."""
STEPS = 25
TIMEOUT = 300
"""Seconds the default run may take at most (it takes well under two minutes on two idle
cores); none for a search."""
pytestmark = pytest.mark.timeout(0 if SEARCH else TIMEOUT)
# Failures found and fixed so far, each now a test in tests/actors/test_broker_safety.py:
# split orders not counted after a restart; a burst of partial fills allocated past what was
# open; a closed position's frame delivered again after a restart opening a position; a TRADED
# frame without quantities of an order known only from earlier frames; a fill lost with the
# tracker that crashed storing it; a manual close's TRADED frame (no quantities) parked before
# its partial fills and never taken back; a live exit left on a position closed from ACTIVE or
# by a run of updates stored together.


class Wire:
    """The order socket between the broker and the system: delivers, duplicates, reorders,
    strips fields, as real streams do."""

    def __init__(self) -> None:
        self.system: System | None = None
        self.held: list[str] = []
        self.missed: list[str] = []
        self.last: str | None = None
        self.strip_next_traded = False
        self.reorder = False

    def __call__(self, frame: str) -> None:
        if self.strip_next_traded and '"Status": "TRADED"' in frame:
            self.strip_next_traded = False
            document = json.loads(frame)
            for key in ("TradedQty", "Quantity", "RemainingQuantity"):
                document["Data"].pop(key, None)
            frame = json.dumps(document)
        self.last = frame
        if self.reorder:
            self.held.append(frame)
        else:
            self.deliver(frame)

    def deliver(self, frame: str) -> None:
        """A frame sent while the process is down (a restart) reaches the next one, as a
        reconnect's reconcile would bring it: the broker's word is never lost on the way."""
        assert self.system is not None
        try:
            self.system.order_frame(frame)
        except pykka.ActorDeadError:
            self.missed.append(frame)

    def reconnect(self, system: System) -> None:
        self.system = system
        missed, self.missed = self.missed, []
        for frame in missed:
            self.deliver(frame)

    def release(self, rng: random.Random) -> None:
        held, self.held = self.held, []
        rng.shuffle(held)
        for frame in held:
            self.deliver(frame)


class Gateway:
    """The exchange as the system's gateway; its frames reach the system only through the
    ``Wire`` (never by a subscription of its own, which would bypass what the wire does)."""

    def __init__(self, exchange: PaperExchange) -> None:
        self.exchange = exchange

    def place_order(self, **order: Any) -> str:
        return self.exchange.place_order(**order)

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        return self.exchange.find_order(client_id)

    def subscribe(self, sink: Any) -> None:
        pass


class BrokerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(T0)
        self.now = T0
        self.price = Decimal("200")
        self.market = TapeMarket([])
        self.market.set_price(INSTRUMENT, self.price, T0)
        self.exchange = PaperExchange(self.market, latency=timedelta(0), order_prefix="B",
                                      start=T0)
        self.wire = Wire()
        self.exchange.subscribe(self.wire)
        self.store = FakeStore()
        self.orders = 0
        self.rng = random.Random(0)
        self.stops: dict[str, Decimal] = {}
        self.outage = False
        self.system = self._start()

    def _start(self) -> System:
        system = System(Parts(store=self.store, cache=InMemoryPnLCache(),
                              gateway=Gateway(self.exchange),
                              quotes=None, config=RiskConfig(), clock=self.clock))
        system.start(ticker=False)
        self.wire.reconnect(system)
        return system

    def teardown(self) -> None:
        self.system.stop()
        pykka.ActorRegistry.stop_all()

    # What the broker and the market do ----------------------------------------------------
    def _order(self, prefix: str, side: TxnType, qty: int) -> None:
        self.orders += 1
        self.exchange.place_order(client_id=f"{prefix}-{self.orders}", instrument=INSTRUMENT,
                                  txn_type=side, quantity=qty, product="I", now=self.now)

    @rule(side=st.sampled_from(TxnType), lots=st.integers(1, 4))
    def our_entry(self, side: TxnType, lots: int) -> None:
        self._order("S", side, 25 * lots)

    @rule(side=st.sampled_from(TxnType), qty=st.integers(1, 150))
    def external_order(self, side: TxnType, qty: int) -> None:
        """The trader's app, the web, or the broker's square-off: a manual close when opposite."""
        self._order("M", side, qty)

    @rule(parts=st.integers(2, 4), side=st.sampled_from(TxnType))
    def partly_filled_entry(self, parts: int, side: TxnType) -> None:
        self.exchange.partial_fills = parts
        self._order("S", side, 100)
        self.exchange.partial_fills = 1

    @rule(move=st.decimals(min_value=-30, max_value=30, places=1))
    def price_moves(self, move: Decimal) -> None:
        self.price = max(Decimal("1"), self.price + move)
        self._advance(timedelta(milliseconds=500), tick=True)

    @rule(seconds=st.integers(1, 12))
    def time_passes(self, seconds: int) -> None:
        for _ in range(seconds):
            self._advance(timedelta(seconds=1), tick=True)

    @rule()
    def next_exit_rests(self) -> None:
        self.exchange.rest_next(1)

    @rule()
    def next_exit_rejected(self) -> None:
        self.exchange.reject_next(1)

    @rule()
    def next_traded_frame_without_quantities(self) -> None:
        self.wire.strip_next_traded = True

    @rule()
    def duplicate_last_frame(self) -> None:
        if self.wire.last is not None:
            self.wire.deliver(self.wire.last)

    @rule(side=st.sampled_from(TxnType), external=st.booleans(), stripped=st.booleans())
    def frames_out_of_order(self, side: TxnType, external: bool, stripped: bool) -> None:
        """A partly filled order's frames shuffled: ours, or the trader's (a manual close
        when opposite), its TRADED frame without quantities or not."""
        self.wire.reorder = True
        self.wire.strip_next_traded = self.wire.strip_next_traded or stripped
        self.exchange.partial_fills = 3
        self._order("M" if external else "S", side, 75)
        self.exchange.partial_fills = 1
        self._advance(timedelta(milliseconds=200), tick=False)
        self.wire.reorder = False
        self.wire.release(self.rng)

    @rule(side=st.sampled_from(TxnType), qty=st.integers(1, 150))
    def tracker_crashes_storing_a_fill(self, side: TxnType, qty: int) -> None:
        """An external order whose fill's write crashes the tracker storing it (a bug, a
        driver's unexpected error): the supervisor restarts it from the store, and the fill
        must still count."""
        self.store.crash_fills = 1
        self._order("M", side, qty)
        self.system.settle()
        self.store.crash_fills = 0

    @rule()
    def trader_cancels_a_resting_exit(self) -> None:
        """The trader cancels our working exit order at the broker (the app, the web)."""
        for order in self.exchange.orders():
            if order.client_id.startswith("X-") and not order.status.terminal:
                self.exchange.cancel_order(order.order_no, now=self.now)
                self._advance(timedelta(milliseconds=200), tick=False)
                return

    @rule(writes=st.integers(1, 5))
    def store_outage(self, writes: int) -> None:
        self.store.fail_saves = writes
        self.outage = True

    @rule()
    def restart(self) -> None:
        self.system.stop()
        pykka.ActorRegistry.stop_all()
        self.system = self._start()

    def _advance(self, by: timedelta, *, tick: bool) -> None:
        self.now += by
        self.clock.set(self.now)
        self.market.set_price(INSTRUMENT, self.price, self.now)
        self.exchange.advance(self.now)
        if tick:
            self.system.tick(INSTRUMENT, self.price, self.now)
        self.system.step(self.now, timer=True)
        self.system.settle()
        self.exchange.advance(self.now)

    # Invariants, after each step settled --------------------------------------------------
    def _settled(self) -> None:
        """Settled: an outage is over once its writes were retried (1 s back-off, then 2 s)."""
        if self.outage:
            self.store.fail_saves = 0
            for _ in range(4):
                self._advance(timedelta(seconds=1), tick=False)
            self.outage = False
        self.system.settle()
        self.exchange.advance(self.now)
        self.system.settle()

    @invariant()
    def books_agree(self) -> None:
        self._settled()
        broker = sum((1 if o.txn_type is TxnType.BUY else -1) * o.filled_qty
                     for o in self.exchange.orders())
        ours = sum(p.side.sign * p.quantity for p in self.system.open_positions()
                   if p.status in OPEN)
        stored = sum(p.side.sign * p.quantity for p in self.store.positions.values()
                     if p.status in OPEN)
        assert broker == ours, f"broker net {broker}, ours {ours}"
        assert broker == stored, f"broker net {broker}, stored {stored}"
        assert self.system.books().agree, self.system.books().line()

    @invariant()
    def at_most_one_live_exit_and_none_for_a_flat_position(self) -> None:
        live: dict[str, int] = {}
        for order in self.exchange.orders():
            if order.client_id.startswith("X-") and not order.status.terminal:
                pid = order.client_id[2:].rpartition("-")[0]
                live[pid] = live.get(pid, 0) + 1
        for pid, count in live.items():
            assert count <= 1, f"{pid} has {count} live exit orders"
            position = self.store.positions.get(pid)
            if position is not None and position.status not in OPEN:
                # closed by another order: our exit is being cancelled, never left working
                self._advance(timedelta(seconds=1), tick=False)
                still = [o for o in self.exchange.orders() if o.client_id.startswith(f"X-{pid}-")
                         and not o.status.terminal]
                assert not still, f"{pid} is {position.status} with a live exit {still}"

    @invariant()
    def stops_never_loosen(self) -> None:
        for pid, position in self.store.positions.items():
            stop = position.trail_stop
            if stop is None:
                continue
            known = self.stops.get(pid)
            if known is not None:
                tighter = stop >= known if position.side.sign > 0 else stop <= known
                assert tighter, f"{pid} stop loosened from {known} to {stop}"
            self.stops[pid] = stop

    @invariant()
    def nothing_exiting_without_a_live_exit_past_its_time_out(self) -> None:
        timeout = timedelta(milliseconds=RiskConfig().policy.exit_timeout_ms)
        for position in self.store.positions.values():
            if position.status is not PositionStatus.EXITING or \
                    position.exit_requested_at is None:
                continue
            if self.now - position.exit_requested_at <= timeout * 3:
                continue
            live = [o for o in self.exchange.orders()
                    if o.client_id == position.current_exit_client_id()
                    and o.status not in (OrderStatus.TRADED, OrderStatus.CANCELLED,
                                         OrderStatus.REJECTED, OrderStatus.EXPIRED)]
            assert live, f"{position.position_id} EXITING since {position.exit_requested_at} " \
                         "with no live exit order"


BrokerModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not SEARCH,
    suppress_health_check=[HealthCheck.too_slow])
if not SEARCH:  # fixed sequences: nothing to remember between runs
    BrokerModel.TestCase.settings = settings(BrokerModel.TestCase.settings, database=None)
TestBrokerModel = BrokerModel.TestCase
