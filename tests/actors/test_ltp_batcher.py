"""LTPBatcherActor: conflation, stale polling in few calls (made by its QuoteActor), fallback,
breaker."""

from __future__ import annotations

import threading
import time
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
        self.latency = 0.0
        """Seconds each call takes (a live call: 100-500 ms)."""
        self.entered = threading.Event()
        self.returned = threading.Event()

    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        size = sum(len(ids) for ids in request.values())
        self.calls.append(size)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(5)
        if self.latency:
            time.sleep(self.latency)  # the network's round trip, not a synchronisation
        self.returned.set()
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


class HeldMetrics(Metrics):
    """Metrics whose ``quote_api_calls`` increment can be held: a way to keep the batcher's
    own thread busy (it counts a call as it hands it to the quote actor)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def incr(self, name: str, n: int = 1) -> None:
        super().incr(name, n)
        if name == "quote_api_calls" and self.hold is not None:
            self.entered.set()
            self.hold.wait(5)


class Rig:
    def __init__(self) -> None:
        self.clock, self.quotes, self.sink = Clock(), FakeQuotes(), Sink.start()
        self.metrics = HeldMetrics()
        self.batcher = LTPBatcherActor.start(self.sink, self.quotes, self.clock, self.metrics)
        self.quoter = self.batcher.proxy().quoter.get(timeout=5)

    def flush(self, seconds: float = 0) -> list[PriceBatch]:
        """A flush at ``seconds`` later, then the answer to a quote call it made, if any."""
        self.clock.now += timedelta(seconds=seconds)
        self.batcher.ask(Flush(at=self.clock.now), timeout=5)
        self.settle()
        got: list[Any] = self.sink.ask(Snapshot(), block=True, timeout=5)
        return [m for m in got if isinstance(m, PriceBatch)]

    def settle(self) -> None:
        self.quoter.ask(Snapshot(), timeout=5)  # the call told before, made and answered
        self.batcher.ask(Snapshot(), timeout=5)  # ... and its answer handled


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
    # The batcher's thread is kept busy (counting the quote call it hands on blocks), so
    # everything below waits in its mailbox at once: the ticks told after the first flush must
    # still go with the second one.
    release = threading.Event()
    rig.metrics.hold = release
    rig.batcher.tell(Watch(instruments=(inst(9),)))
    rig.batcher.tell(Flush(at=rig.clock.now))  # polls inst 9, and waits there
    for ltp in ("100", "101"):
        rig.batcher.tell(tick(1, ltp))
    rig.batcher.tell(Flush(at=rig.clock.now))
    rig.batcher.tell(tick(1, "102"))
    rig.batcher.tell(tick(2, "50"))
    assert rig.metrics.entered.wait(5)
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


def test_while_a_500ms_quote_call_is_out_ticks_keep_flowing_in_batches(rig: Rig) -> None:
    rig.quotes.latency = 0.5
    rig.batcher.tell(Watch(instruments=(inst(1),)))
    rig.batcher.tell(Flush(at=rig.clock.now))  # inst 1 has no price: a quote call goes out
    assert rig.quotes.entered.wait(5)
    feed = tick_feed(rig.batcher)
    in_flight = 0
    for n in range(1, 1000):
        rig.clock.now += timedelta(milliseconds=50)
        feed(inst(2), PriceMark(ltp=Decimal(n), at=rig.clock.now))
        rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)
        if rig.quotes.returned.is_set():
            break
        in_flight += 1  # this flush was handled before the call came back
    assert in_flight >= 5, f"only {in_flight} flushes while the call was out"
    rig.flush()  # the answer, once handled, ...
    batches = [dict(b.prices) for b in rig.flush()]  # ... goes out with the next flush
    assert [b[inst(2)].ltp for b in batches[:in_flight]] == [Decimal(n)
                                                             for n in range(1, in_flight + 1)]
    assert rig.quotes.calls == [1]
    quoted = [b[inst(1)] for b in batches if inst(1) in b]  # joined a flush after the answer
    assert quoted == [PriceMark(ltp=Decimal(101), at=T0)]  # stamped when it was asked
    assert all(inst(1) not in b for b in batches[:in_flight])


def test_the_next_call_waits_its_interval_from_the_answer_not_the_request(rig: Rig) -> None:
    # A call answered late (the clock moved on while it was out) must not be followed by one
    # that the API, counting from when the first arrived, could throttle.
    rig.quotes.hold = threading.Event()
    rig.batcher.tell(Watch(instruments=(inst(1), inst(2))))
    rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)
    assert rig.quotes.entered.wait(5)
    rig.clock.now += timedelta(seconds=0.6)  # answered 0.6 s after it was asked
    rig.quotes.hold.set()
    rig.settle()
    rig.quotes.hold = None
    rig.batcher.tell(Watch(instruments=(inst(3),)))
    rig.flush(0.4)  # 1 s after the request, 0.4 s after the answer: no call
    assert rig.quotes.calls == [2]
    rig.flush(0.6)
    assert rig.quotes.calls == [2, 1]


def test_one_call_out_at_a_time_whatever_the_interval(rig: Rig) -> None:
    rig.quotes.hold = threading.Event()
    rig.batcher.tell(Watch(instruments=(inst(1),)))
    rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)
    assert rig.quotes.entered.wait(5)
    for _ in range(3):  # a second later each time, the call still out: none goes beside it
        rig.clock.now += timedelta(seconds=1)
        rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)
    rig.quotes.hold.set()
    rig.settle()
    assert rig.quotes.calls == [1]
    assert rig.batcher.proxy().settled(rig.clock.now).get(timeout=5) is False  # price pending
    rig.flush()
    assert rig.batcher.proxy().settled(rig.clock.now).get(timeout=5) is True


def test_a_tick_pushed_while_the_call_was_out_wins_over_its_quote(rig: Rig) -> None:
    rig.quotes.hold = threading.Event()
    rig.batcher.tell(Watch(instruments=(inst(1), inst(2))))
    rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)
    assert rig.quotes.entered.wait(5)
    rig.clock.now += timedelta(milliseconds=50)
    pushed = PriceMark(ltp=Decimal("99.5"), at=rig.clock.now)
    tick_feed(rig.batcher)(inst(1), pushed)
    rig.batcher.ask(Flush(at=rig.clock.now), timeout=5)  # flushed before the answer
    rig.quotes.hold.set()
    rig.settle()  # the answer, handled
    batches = [dict(b.prices) for b in rig.flush()]
    assert batches == [{inst(1): pushed},
                       {inst(2): PriceMark(ltp=Decimal(102), at=T0)}]  # no older inst 1


class BrokenQuotes(FakeQuotes):
    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        super().ltp(request)
        raise RuntimeError("adapter bug")


def test_an_unexpected_quote_failure_is_a_failed_call_and_polling_goes_on() -> None:
    rig = Rig.__new__(Rig)
    rig.clock, rig.quotes, rig.sink = Clock(), BrokenQuotes(), Sink.start()
    rig.metrics = HeldMetrics()
    rig.batcher = LTPBatcherActor.start(rig.sink, rig.quotes, rig.clock, rig.metrics)
    rig.quoter = rig.batcher.proxy().quoter.get(timeout=5)
    try:
        rig.batcher.tell(Watch(instruments=(inst(1), inst(2))))
        rig.flush()
        rig.flush(1)  # the batch failed: one instrument at a time
        assert rig.quotes.calls == [2, 1]
        assert rig.quoter.is_alive() and rig.batcher.is_alive()
        assert rig.batcher.proxy().fetching.get(timeout=5) is False
    finally:
        pykka.ActorRegistry.stop_all()
