"""LTPBatcherActor: conflation, stale polling in few calls, fallback, breaker."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.prices.batcher import LTPBatcherActor, tick_feed
from actors.protocol import Flush, Snapshot, Watch
from actors.runtime.metrics import Metrics
from broker.ports import GatewayError, QuoteThrottled
from models.common import Instrument, Segment
from models.messages import PriceBatch, PriceTick, QuoteRequested
from models.rules import PriceMark
from tests.actors.test_tracker_flow import T0, Clock, Sink


class FakeQuotes:
    max_instruments = 1000
    min_interval_seconds = 1.0

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail_batches = 0
        self.throttle = 0
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        size = sum(len(ids) for ids in request.values())
        self.calls.append(size)
        if self.hold is not None:
            self.entered.set()
            self.hold.wait(5)
        if self.throttle:
            self.throttle -= 1
            raise QuoteThrottled("429")
        if self.fail_batches and size > 1:
            self.fail_batches -= 1
            raise GatewayError("batch failed")
        return {Instrument(segment=s, security_id=str(i)): Decimal(100) + i % 7
                for s, ids in request.items() for i in ids}


def inst(n: int, segment: Segment = Segment.NSE_FNO) -> Instrument:
    return Instrument(segment=segment, security_id=str(n))


class Rig:
    def __init__(self) -> None:
        self.clock, self.quotes, self.sink = Clock(), FakeQuotes(), Sink.start()
        self.batcher = LTPBatcherActor.start(self.sink, self.quotes, self.clock, Metrics())

    def flush(self, seconds: float = 0) -> list[PriceBatch]:
        self.clock.now += timedelta(seconds=seconds)
        self.batcher.ask(Flush(at=self.clock.now), timeout=5)
        got: list[Any] = self.sink.ask(Snapshot(), block=True, timeout=5)
        return [m for m in got if isinstance(m, PriceBatch)]


@pytest.fixture
def rig() -> Iterator[Rig]:
    built = Rig()
    yield built
    pykka.ActorRegistry.stop_all()


def test_when_ticks_arrive_between_flushes_then_latest_per_instrument_wins(rig: Rig) -> None:
    for ltp in ("100", "101", "102"):
        rig.batcher.tell(PriceTick(instrument=inst(1), mark=PriceMark(ltp=Decimal(ltp), at=T0),
                                   correlation_id="t", sent_at=T0))
    batches = rig.flush()
    assert len(batches) == 1
    assert batches[0].prices == ((inst(1), PriceMark(ltp=Decimal("102"), at=T0)),)
    assert rig.flush() == batches  # nothing new: no second batch


def test_a_flush_carries_exactly_the_ticks_told_before_it(rig: Rig) -> None:
    # The batcher is kept busy (its quote call blocks), so everything below waits in its
    # mailbox at once: the ticks told after the first flush must still go with the second one.
    release = threading.Event()
    rig.quotes.hold = release
    rig.batcher.tell(Watch(instruments=(inst(9),)))
    rig.batcher.tell(Flush(at=rig.clock.now))  # polls inst 9, and waits there
    for ltp in ("100", "101"):
        rig.batcher.tell(tick(1, ltp))
    rig.batcher.tell(Flush(at=rig.clock.now))
    rig.batcher.tell(tick(1, "102"))
    rig.batcher.tell(tick(2, "50"))
    assert rig.quotes.entered.wait(5)
    release.set()
    batches = [tuple(p for p in b.prices if p[0] != inst(9)) for b in rig.flush()]
    assert [b for b in batches if b] == [
        ((inst(1), PriceMark(ltp=Decimal("101"), at=T0)),),
        ((inst(1), PriceMark(ltp=Decimal("102"), at=T0)), (inst(2), PriceMark(ltp=Decimal("50"),
                                                                              at=T0)))]
    assert rig.batcher.actor_inbox.ticks == 4  # type: ignore[attr-defined]


def test_an_asked_tick_is_handled_as_a_message(rig: Rig) -> None:
    rig.batcher.ask(tick(3, "70"), timeout=5)
    assert [b.prices for b in rig.flush()] == [((inst(3), PriceMark(ltp=Decimal("70"),
                                                                     at=T0)),)]


def test_the_feed_puts_marks_where_told_ticks_go_and_stops_with_the_batcher(rig: Rig) -> None:
    feed = tick_feed(rig.batcher)
    rig.batcher.tell(tick(1, "100"))
    feed(inst(1), PriceMark(ltp=Decimal("101"), at=T0))  # after a told tick: latest wins
    feed(inst(2), PriceMark(ltp=Decimal("50"), at=T0))
    assert [b.prices for b in rig.flush()] == [(
        (inst(1), PriceMark(ltp=Decimal("101"), at=T0)),
        (inst(2), PriceMark(ltp=Decimal("50"), at=T0)))]
    assert rig.batcher.actor_inbox.ticks == 3  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="not a price batcher"):
        tick_feed(rig.sink)
    rig.batcher.stop()
    with pytest.raises(pykka.ActorDeadError):
        feed(inst(1), PriceMark(ltp=Decimal("102"), at=T0))


def tick(n: int, ltp: str) -> PriceTick:
    return PriceTick(instrument=inst(n), mark=PriceMark(ltp=Decimal(ltp), at=T0),
                     correlation_id="t", sent_at=T0)


def test_every_flush_goes_on_to_the_index_behind_its_batch(rig: Rig) -> None:
    rig.batcher.tell(PriceTick(instrument=inst(1), mark=PriceMark(ltp=Decimal(100), at=T0),
                               correlation_id="t", sent_at=T0))
    rig.flush()
    rig.flush(1)  # no prices: the flush goes on alone
    got = [type(m).__name__ for m in rig.sink.ask(Snapshot(), timeout=5)]
    assert got == ["PriceBatch", "Flush", "Flush"]


def test_when_2500_instruments_stale_then_three_calls_one_per_second(rig: Rig) -> None:
    watched = tuple(inst(n) for n in range(1500)) + tuple(inst(n, Segment.NSE_EQ)
                                                          for n in range(1000))
    rig.batcher.tell(Watch(instruments=watched))
    rig.flush()
    rig.flush(0.5)  # inside the rate limit: no call
    rig.flush(0.5)
    rig.flush(1.0)
    assert rig.quotes.calls == [1000, 1000, 500]
    prices = {i for b in rig.flush() for i, _ in b.prices}
    assert prices == set(watched)


def test_when_batch_call_fails_then_single_instrument_calls(rig: Rig) -> None:
    rig.quotes.fail_batches = 1
    rig.batcher.tell(Watch(instruments=(inst(1), inst(2))))
    rig.flush()
    rig.flush(1)
    rig.flush(1)
    assert rig.quotes.calls == [2, 1, 1]


def test_when_throttled_then_breaker_opens_and_no_calls_until_cooldown(rig: Rig) -> None:
    rig.quotes.throttle = 1
    rig.batcher.tell(QuoteRequested(instrument=inst(5), correlation_id="q", sent_at=T0))
    rig.flush()
    rig.flush(1)  # breaker open for 2 s
    assert rig.quotes.calls == [1]
    rig.flush(1.5)
    assert rig.quotes.calls == [1, 1]
