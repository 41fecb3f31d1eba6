"""Prices reach a tracker only when they can matter to it, and the PnL writer values everyone.

The index keeps each tracker's band (``BandChanged``): a price inside it is not told (except as
a refresh now and then), a price outside it is told at once, ahead of the rest of the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.pnl.writer import PnLWriterActor
from actors.prices.index import IndexActor, OpenPositions
from actors.protocol import BandChanged, Flush, PortfolioValued, Route, Snapshot
from actors.runtime.metrics import Metrics
from models.bands import Band
from models.common import Instrument, Segment
from models.messages import PriceBatch, PriceUpdate
from models.policy import ExitPolicy
from models.position import Position
from models.rules import PriceMark
from store.pnl_cache import InMemoryPnLCache
from store.records import PnLEntry
from tests.actors.test_tracker_flow import (
    INSTRUMENT,
    T0,
    Sink,
    System,
    entry,
    open_position,
    price,
)
from tests.fakes import FakeGateway, FakeStore
from tests.unit.builders import active

OTHER = Instrument(segment=Segment.NSE_EQ, security_id="11536")


@pytest.fixture
def system() -> Iterator[System]:
    built = System(FakeStore(), FakeGateway())
    yield built
    pykka.ActorRegistry.stop_all()


def handled(system: System) -> int:
    return system.ctx.metrics.get("prices_handled")


def test_when_a_price_stays_inside_the_band_then_the_tracker_is_not_told(
        system: System) -> None:
    open_position(system, entry())
    price(system, "201")  # no band known yet: told, and the tracker answers with its band
    before = handled(system)
    for ltp in ("200.50", "199", "200.99"):
        price(system, ltp)
    assert handled(system) == before
    assert system.gateway.placed == {}


def test_when_a_price_crosses_the_stop_then_it_is_told_and_the_exit_placed(
        system: System) -> None:
    pid = open_position(system, entry())
    price(system, "201")
    price(system, "200")
    price(system, "176")  # -12 %: outside the band
    assert f"X-{pid}-1" in system.gateway.placed


def test_when_a_new_peak_comes_then_the_tracker_is_told_and_its_trail_follows(
        system: System) -> None:
    pid = open_position(system, entry())
    price(system, "201")
    before = handled(system)
    price(system, "210")  # +5 %: a new peak arms the trailing stop
    assert handled(system) == before + 1
    price(system, "204")  # 210 * (1 - 2.5 %) = 204.75: the trailing stop fires
    assert system.gateway.placed[f"X-{pid}-1"]


def test_when_the_refresh_is_due_then_a_quiet_price_is_told(system: System) -> None:
    open_position(system, entry())
    price(system, "201")
    before = handled(system)
    system.clock.now += timedelta(seconds=4.1)  # past the refresh interval (4 s at most)
    price(system, "200.50")
    assert handled(system) == before + 1


class Recorder(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[Instrument, bool]] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PriceUpdate):
            self.got.append((message.instrument, message.urgent))
        return list(self.got)


def test_exits_are_told_first_and_urgent_then_mark_moves_then_refreshes() -> None:
    index = IndexActor.start(None)
    recorder = Recorder.start()
    third = Instrument(segment=Segment.BSE_EQ, security_id="500325")
    try:
        for pid, instrument in (("P-quiet", OTHER), ("P-peak", third), ("P-stop", INSTRUMENT)):
            index.tell(Route(pid, instrument, recorder))
            index.tell(BandChanged(pid, Band(low=Decimal(90), high=Decimal(110), until=None,
                                             rule_low=Decimal(90), rule_high=Decimal(150))))
        batch = PriceBatch(prices=((OTHER, PriceMark(ltp=Decimal(100), at=T0)),
                                   (third, PriceMark(ltp=Decimal(120), at=T0)),
                                   (INSTRUMENT, PriceMark(ltp=Decimal(80), at=T0))),
                           correlation_id="b", sent_at=T0)
        index.tell(batch)
        index.ask(OpenPositions(), timeout=5)
        # The stop comes first although its instrument is last in the batch, then the new
        # peak, then the quiet position's first refresh.
        assert recorder.ask("?", timeout=5) == [(INSTRUMENT, True), (third, False),
                                                (OTHER, False)]
    finally:
        pykka.ActorRegistry.stop_all()


def test_a_new_route_starts_without_a_band() -> None:
    index = IndexActor.start(None)
    recorder = Recorder.start()
    try:
        index.tell(Route("P1", OTHER, recorder))
        index.tell(BandChanged("P1", Band(low=Decimal(90), high=Decimal(110), until=None)))
        batch = PriceBatch(prices=((OTHER, PriceMark(ltp=Decimal(100), at=T0)),),
                           correlation_id="b", sent_at=T0)
        index.tell(batch)  # the first refresh
        index.tell(batch)  # quiet: not told
        index.tell(Route("P1", OTHER, recorder))  # a restart: no band until it says
        index.tell(batch)
        index.ask(OpenPositions(), timeout=5)
        assert recorder.ask("?", timeout=5) == [(OTHER, False), (OTHER, True)]
    finally:
        pykka.ActorRegistry.stop_all()


def test_the_pnl_writer_values_every_open_position_from_the_batch() -> None:
    cache = InMemoryPnLCache()
    writer = PnLWriterActor.start(cache, ExitPolicy(), Metrics(), lambda: T0)
    sink = Sink.start()
    try:
        long_one = active(qty=100, price="200").model_copy(update={"security_id": "47012"})
        writer.proxy().seed([long_one], []).get(timeout=5)
        mark = PriceMark(ltp=Decimal("210"), at=T0)
        writer.tell(PriceBatch(prices=((INSTRUMENT, mark),), correlation_id="b", sent_at=T0))
        flushed(writer)
        entry_ = cache.read(long_one.position_id)
        assert entry_ is not None
        assert (entry_.ltp, entry_.pnl, entry_.pnl_pct) == (
            Decimal(210), Decimal(980), Decimal("0.05"))  # 10 x 100 - one fee of 20
        assert writer.proxy().day_net().get(timeout=5) == Decimal(980)
        assert sink.ask(Snapshot(), timeout=5) == []
    finally:
        pykka.ActorRegistry.stop_all()


def flushed(writer: pykka.ActorRef[Any], **flush: Any) -> None:
    """An ordinary flush, then until its cache write (handed to the cache writer) is done."""
    writer.ask(Flush(at=T0, **flush), timeout=5)
    writer.proxy().settle_cache().get(timeout=5)


class HeldCache(InMemoryPnLCache):
    """Each write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, entries: Sequence[PnLEntry], deletes: Sequence[str] = ()) -> bool:
        self.entered.set()
        assert self.release.wait(5)
        return super().write(entries, deletes)


def test_the_writer_goes_on_while_its_cache_write_is_out_and_keeps_one_in_flight() -> None:
    cache = HeldCache()
    writer = PnLWriterActor.start(cache, ExitPolicy(), Metrics(), lambda: T0)
    try:
        writer.proxy().seed(book_of(300), []).get(timeout=5)
        writer.tell(PriceBatch(prices=((INSTRUMENT, PriceMark(ltp=Decimal("201"), at=T0)),),
                               correlation_id="b", sent_at=T0))
        writer.ask(Flush(at=T0), timeout=5)  # hands over the first chunk, does not wait
        assert cache.entered.wait(5)
        for _ in range(3):  # the write is still out: these flushes hand over nothing
            writer.ask(Flush(at=T0), timeout=5)
        assert writer.proxy().day_net().get(timeout=5) == Decimal(-3000)  # still answering
        assert cache.roundtrips == 0
        cache.release.set()
        writer.proxy().settle_cache().get(timeout=5)
        assert cache.roundtrips == 1 and len(cache.read_all()) == 100
        writer.ask(Flush(at=T0, complete=True), timeout=5)  # the rest, and waits for it
        assert cache.roundtrips == 2 and len(cache.read_all()) == 300
    finally:
        cache.release.set()
        pykka.ActorRegistry.stop_all()


def book_of(count: int) -> list[Position]:
    """``count`` positions of 10 bought at 200 on ``INSTRUMENT``."""
    return [active(qty=10, price="200").model_copy(update={
        "security_id": INSTRUMENT.security_id, "position_id": f"P{n}",
        "entry_order_no": f"E{n}"}) for n in range(count)]


def test_the_cache_write_of_a_cadence_is_spread_over_flushes_and_complete_writes_all() -> None:
    cache = InMemoryPnLCache()
    writer = PnLWriterActor.start(cache, ExitPolicy(), Metrics(), lambda: T0)
    try:
        writer.proxy().seed(book_of(600), []).get(timeout=5)
        batch = PriceBatch(prices=((INSTRUMENT, PriceMark(ltp=Decimal("201"), at=T0)),),
                           correlation_id="b", sent_at=T0)
        writer.tell(batch)
        written = []
        for _ in range(3):
            flushed(writer)
            written.append(len(cache.read_all()))
        assert written == [100, 200, 300]  # a chunk per flush (a tenth of what is due)
        for _ in range(7):
            flushed(writer)
        assert len(cache.read_all()) == 600 and cache.roundtrips == 6  # all within ten flushes
        writer.tell(batch)
        flushed(writer)  # the cadence (1 s) is not up: nothing new is due
        assert cache.roundtrips == 6
        writer.ask(Flush(at=T0, complete=True), timeout=5)
        assert cache.roundtrips == 7 and len(cache.read_all()) == 600
    finally:
        pykka.ActorRegistry.stop_all()


def test_a_flush_behind_possible_exits_leaves_the_cache_write_to_the_next_one() -> None:
    cache = InMemoryPnLCache()
    supervisor = Sink.start()
    writer = PnLWriterActor.start(cache, ExitPolicy(), Metrics(), lambda: T0, supervisor)
    try:
        writer.proxy().seed(book_of(300), []).get(timeout=5)
        writer.tell(PriceBatch(prices=((INSTRUMENT, PriceMark(ltp=Decimal("201"), at=T0)),),
                               correlation_id="b", sent_at=T0))
        written = []
        for exits in (True, True, False, True):
            flushed(writer, exits=exits)
            written.append(len(cache.read_all()))
        # Deferred once, never twice in a row; the kill switch hears every flush regardless.
        assert written == [0, 100, 200, 200]
        valued = [m for m in supervisor.ask(Snapshot(), timeout=5)
                  if isinstance(m, PortfolioValued)]
        assert [m.net for m in valued] == [Decimal(-3000)] * 4  # 300 x (+10 - 20 of fees)
        writer.ask(Flush(at=T0, exits=True, complete=True), timeout=5)  # complete: never waits
        assert len(cache.read_all()) == 300
    finally:
        pykka.ActorRegistry.stop_all()


def test_when_a_band_tightens_past_the_last_price_then_that_price_is_told_at_once() -> None:
    index = IndexActor.start(None)
    recorder = Recorder.start()
    try:
        index.tell(Route("P1", OTHER, recorder))
        wide = Band(low=Decimal(90), high=Decimal(110), until=None, rule_low=Decimal(90),
                    rule_high=Decimal(110))
        index.tell(BandChanged("P1", wide))
        index.tell(PriceBatch(prices=((OTHER, PriceMark(ltp=Decimal(95), at=T0)),),
                              correlation_id="b", sent_at=T0))  # the first refresh
        index.tell(BandChanged("P1", wide))  # 95 still inside: nothing more
        tighter = Band(low=Decimal(96), high=Decimal(110), until=None, rule_low=Decimal(96),
                       rule_high=Decimal(110))  # e.g. a fill moved the stop above 95
        index.tell(BandChanged("P1", tighter))
        index.ask(OpenPositions(), timeout=5)
        assert recorder.ask("?", timeout=5) == [(OTHER, False), (OTHER, True)]
    finally:
        pykka.ActorRegistry.stop_all()
