"""Urgent prices (``actors/prices/edges.py``): the index publishes each instrument's exit edges,
a tick beyond one flushes its batch at once (not at the next 50 ms flush), and a batch of
possible exits alone is never held back by the dispatcher's gate."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pykka
import pytest

from actors.prices.batcher import LTPBatcherActor, Ticked, _TickMailbox, tick_feed
from actors.prices.edges import PriceEdges
from actors.prices.index import IndexActor, OpenPositions
from actors.protocol import BandChanged, Flush, Route, Snapshot
from actors.runtime.metrics import Metrics
from actors.runtime.pykka_compat import contents, envelope
from models.bands import Band
from models.common import Instrument, Segment
from models.messages import PriceBatch
from models.rules import PriceMark
from tests.actors.test_price_filter import Recorder
from tests.actors.test_tracker_flow import T0, Clock, Sink

A = Instrument(segment=Segment.NSE_FNO, security_id="1")
B = Instrument(segment=Segment.NSE_FNO, security_id="2")


def mark(ltp: str) -> PriceMark:
    return PriceMark(ltp=Decimal(ltp), at=T0)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def test_an_edge_fires_once_until_published_again() -> None:
    edges = PriceEdges()
    edges.publish(A, Decimal(95), Decimal(150))
    assert not edges.crossed(A, Decimal(96))
    assert not edges.crossed(B, Decimal(1))  # no edges: never urgent
    assert edges.crossed(A, Decimal(94))
    assert not edges.crossed(A, Decimal(93))  # taken: the price staying there is not urgent
    edges.publish(A, Decimal(95), None)
    assert edges.crossed(A, Decimal(93))
    edges.publish(A, None, Decimal(150))
    edges.withdraw(A)
    assert not edges.crossed(A, Decimal(151))
    assert edges.fired == 2


def batches(sink: Any) -> list[Any]:
    got: list[Any] = sink.ask(Snapshot(), block=True, timeout=5)
    return [m for m in got if isinstance(m, PriceBatch | Flush)]


def test_a_tick_beyond_an_edge_flushes_at_once_with_the_urgent_ticks_alone() -> None:
    edges, sink = PriceEdges(), Sink.start()
    batcher = LTPBatcherActor.start(sink, None, Clock(), Metrics(), edges=edges)
    feed = tick_feed(batcher)
    edges.publish(A, Decimal(95), None)
    feed(B, mark("50"))  # an ordinary tick: kept for the clock's flush
    feed(A, mark("100"))
    batcher.ask(Snapshot(), timeout=5)
    assert batches(sink) == []  # nothing urgent: no flush before the clock's
    feed(A, mark("94"))  # beyond the edge: its batch goes now, no Flush told
    batcher.ask(Snapshot(), timeout=5)
    got = batches(sink)
    assert [type(m) for m in got] == [PriceBatch]  # the flush itself does not go on
    assert got[0].prices == ((A, mark("94")),)
    feed(A, mark("93"))  # the edge fired: the next tick waits for the clock
    batcher.ask(Flush(at=T0), timeout=5)
    got = batches(sink)
    assert dict(got[1].prices) == {A: mark("93"), B: mark("50")}
    assert type(got[2]) is Flush


def test_without_edges_a_crossing_tick_waits_for_the_clock() -> None:
    sink = Sink.start()
    batcher = LTPBatcherActor.start(sink, None, Clock(), Metrics())
    tick_feed(batcher)(A, mark("1"))
    batcher.ask(Snapshot(), timeout=5)
    assert batches(sink) == []


def test_the_index_publishes_the_nearest_edges_and_withdraws_them_with_the_reach() -> None:
    edges, recorder = PriceEdges(), Recorder.start()
    index = IndexActor.start(None, edges=edges)
    for pid, low, high in (("P1", 90, 150), ("P2", 95, 130)):
        index.tell(Route(pid, A, recorder))
        index.tell(BandChanged(pid, Band(low=Decimal(low), high=Decimal(high), until=None,
                                         rule_low=Decimal(low), rule_high=Decimal(high))))
    index.ask(OpenPositions(), timeout=5)
    assert edges.get(A) == (Decimal(95), Decimal(130))  # the highest stop, the lowest target
    index.tell(Route("P3", A, recorder))  # a position without a band: no edge to trust
    index.ask(OpenPositions(), timeout=5)
    assert edges.get(A) is None
    index.tell(PriceBatch(prices=((A, mark("100")),), correlation_id="b", sent_at=T0))
    index.ask(OpenPositions(), timeout=5)
    assert edges.get(A) is None  # still open: P3 hears every price


def test_a_batch_of_possible_exits_alone_is_not_held_back() -> None:
    held: list[int] = []
    recorder = Recorder.start()
    index = IndexActor.start(None, gate=lambda: held.append(1))
    index.tell(Route("P1", A, recorder))
    index.tell(BandChanged("P1", Band(low=Decimal(90), high=Decimal(110), until=None,
                                      rule_low=Decimal(90), rule_high=Decimal(150))))
    index.tell(Route("P2", B, recorder))
    index.tell(BandChanged("P2", Band(low=Decimal(90), high=Decimal(110), until=None,
                                      rule_low=Decimal(90), rule_high=Decimal(150))))
    index.tell(PriceBatch(prices=((A, mark("80")),), correlation_id="b1", sent_at=T0))
    index.ask(OpenPositions(), timeout=5)
    assert held == []  # an exit alone: nothing ordinary to hold back
    index.tell(PriceBatch(prices=((A, mark("79")), (B, mark("100"))), correlation_id="b2",
                          sent_at=T0))
    index.ask(OpenPositions(), timeout=5)
    assert held == [1]  # B's first refresh is ordinary: it waits for the exit


def test_crossing_ticks_told_before_the_batcher_takes_its_flush_go_in_one_batch() -> None:
    edges, inbox = PriceEdges(), _TickMailbox([])
    inbox.edges = edges
    edges.publish(A, Decimal(95), None)
    edges.publish(B, Decimal(45), None)
    inbox.put_tick(A, mark("94"))
    inbox.put_tick(B, mark("44"))  # a burst: the batcher's thread has not run in between
    assert inbox.qsize() == 1  # one urgent flush for both
    taken = contents(inbox.get())[0]
    assert isinstance(taken, Ticked) and taken.flush.urgent
    assert taken.ticks == {A: mark("94"), B: mark("44")}
    assert inbox.qsize() == 0


def test_a_later_tick_does_not_hide_a_crossing_one_still_waiting() -> None:
    edges, inbox = PriceEdges(), _TickMailbox([])
    inbox.edges = edges
    edges.publish(A, Decimal(95), None)
    inbox.put_tick(A, mark("94"))  # crosses
    inbox.put_tick(A, mark("96"))  # back inside before the batcher ran: not urgent
    inbox.put(envelope(Flush(at=T0), None))  # the clock's flush, behind the urgent one
    urgent = contents(inbox.get())[0]
    assert isinstance(urgent, Ticked) and urgent.ticks == {A: mark("94")}
    regular = contents(inbox.get())[0]
    assert isinstance(regular, Ticked) and not regular.flush.urgent
    assert regular.ticks == {A: mark("96")}


def test_a_burst_handed_over_at_once_is_one_urgent_batch() -> None:
    """``TickFeed.many``: the crossing ticks of a feed's burst reach the index in one batch,
    however quick the batcher's thread is to take the urgent flush; the ordinary tick among
    them waits for the clock's flush."""
    c = Instrument(segment=Segment.NSE_FNO, security_id="3")
    edges, sink = PriceEdges(), Sink.start()
    batcher = LTPBatcherActor.start(sink, None, Clock(), Metrics(), edges=edges)
    feed = tick_feed(batcher)
    edges.publish(A, Decimal(95), None)
    edges.publish(B, Decimal(45), None)
    for burst in range(1, 21):  # the batcher's thread idle and waiting each time
        feed.many([(A, mark("94")), (c, mark("50")), (B, mark("44"))])
        batcher.ask(Snapshot(), timeout=5)
        got = batches(sink)
        assert len(got) == burst  # one batch a burst
        assert dict(got[-1].prices) == {A: mark("94"), B: mark("44")}
        edges.publish(A, Decimal(95), None)  # as the index does once the positions moved
        edges.publish(B, Decimal(45), None)
    batcher.stop()
    with pytest.raises(pykka.ActorDeadError):
        feed.many([(A, mark("94"))])


class Ahead:
    """A stand-in for the trackers' dispatcher's count of urgent work on its way."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def urgent_ahead(self) -> None:
        self.events.append("ahead")

    def urgent_arrived(self) -> None:
        self.events.append("arrived")


def test_an_urgent_batch_is_counted_on_its_way_until_the_index_told_its_exits() -> None:
    """The batcher counts an urgent flush's batch as urgent work ahead of the trackers; the
    index says it arrived once its possible exits are told, before it waits for urgent work
    (its own batch must not hold it); the clock's batches are not counted."""
    ahead, sink = Ahead(), Sink.start()
    edges = PriceEdges()
    batcher = LTPBatcherActor.start(sink, None, Clock(), Metrics(), edges=edges, ahead=ahead)
    feed = tick_feed(batcher)
    edges.publish(A, Decimal(95), None)
    feed.many([(A, mark("94")), (B, mark("50"))])
    batcher.ask(Snapshot(), timeout=5)
    [urgent] = batches(sink)
    assert urgent.ahead and ahead.events == ["ahead"]
    batcher.tell(Flush(at=T0))  # the clock's flush: B's price, not counted
    batcher.ask(Snapshot(), timeout=5)
    clock_batch = [m for m in batches(sink) if isinstance(m, PriceBatch)][-1]
    assert dict(clock_batch.prices) == {B: mark("50")}
    assert not clock_batch.ahead and ahead.events == ["ahead"]

    recorder = Recorder.start()
    index = IndexActor.start(None, gate=lambda: ahead.events.append("gate"), ahead=ahead)
    for pid, instrument in (("P1", A), ("P2", B)):
        index.tell(Route(pid, instrument, recorder))
        index.tell(BandChanged(pid, Band(low=Decimal(90), high=Decimal(110), until=None,
                                         rule_low=Decimal(90), rule_high=Decimal(150))))
    index.tell(PriceBatch(prices=((A, mark("80")), (B, mark("100"))), correlation_id="b",
                          sent_at=T0, ahead=True))
    index.ask(OpenPositions(), timeout=5)
    assert ahead.events == ["ahead", "arrived", "gate"]
    index.tell(PriceBatch(prices=((B, mark("101")),), correlation_id="c", sent_at=T0))
    index.ask(OpenPositions(), timeout=5)
    assert ahead.events.count("arrived") == 1  # an uncounted batch says nothing


def test_a_counted_batch_that_fails_at_the_index_still_says_it_arrived() -> None:
    ahead = Ahead()
    index = IndexActor.start(None, ahead=ahead)
    broken = PriceBatch(prices=((A, None),),  # type: ignore[arg-type]
                        correlation_id="b", sent_at=T0, ahead=True)
    index.tell(Route("P1", A, Recorder.start()))
    index.tell(broken)
    index.ask(OpenPositions(), timeout=5)  # a failed message does not stop the index
    assert ahead.events == ["arrived"]
