"""LTPBatcherActor: the only source of prices (SPEC §2, §4.3).

Pushed ticks are conflated per instrument (latest wins) and flushed as one ``PriceBatch`` per
``Flush``; the ``Flush`` itself follows the batch down the pipeline (the index hands it on to the
PnL writer). The conflation starts in the batcher's mailbox (``_TickMailbox``): a told tick is
kept there per instrument, not queued, and the next ``Flush`` takes them along, so the feed's
tick wakes no thread and the batcher handles one message per flush instead of one per tick.

Instruments whose price is stale, or that a tracker asked about, are polled from the quote API
in as few calls as its limits allow (⌈n / max_instruments⌉ over all segments), one call out at a
time, the next no sooner than ``min_interval_seconds`` after the previous one was answered. The
call itself is the ``QuoteActor``'s (``actors/prices/quotes.py``), whose answer joins the next
flush: the batcher never waits on the network. When a batch call fails, the next calls go one
instrument at a time; throttling or repeated failures open a circuit breaker with back-off.

Counting the interval from the answer, not from the request, is what keeps the calls to
⌈n / max_instruments⌉ whatever the threads do (SPEC §9, ``bench/quote_calls.py``): the call
reached the API before its answer came back, so the next one reaches it a full interval later
even when the answer was handled late, and never meets a 429.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.prices.edges import PriceEdges
from actors.prices.quotes import QuoteActor
from actors.protocol import Flush, Snapshot, Watch
from actors.runtime.dispatch import SingletonActor, StampedQueue
from actors.runtime.metrics import Metrics
from actors.runtime.pool import UrgentAhead
from actors.runtime.pykka_compat import contents, envelope, inbox_of, stopped_of
from broker.ports import QuoteApi
from models.common import Instrument, Segment
from models.messages import (
    FetchQuotes,
    PriceBatch,
    PriceTick,
    QuoteRequested,
    QuotesFetched,
    new_id,
)
from models.rules import PriceMark, is_fresh


class Breaker:
    """Closed → open for ``cooldown`` after a throttle or ``threshold`` failures in a row."""

    def __init__(self, threshold: int = 3, base: timedelta = timedelta(seconds=2),
                 cap: timedelta = timedelta(seconds=60)) -> None:
        self.threshold, self.base, self.cap = threshold, base, cap
        self.failures = 0
        self.opens = 0
        self.open_until: datetime | None = None

    def allows(self, now: datetime) -> bool:
        return self.open_until is None or now >= self.open_until

    def success(self) -> None:
        self.failures, self.opens, self.open_until = 0, 0, None

    def failure(self, now: datetime, *, throttled: bool = False) -> None:
        self.failures += 1
        if throttled or self.failures >= self.threshold:
            self.opens += 1
            self.open_until = now + min(self.cap, self.base * 2 ** (self.opens - 1))
            logger.warning("quote API breaker open until {} ({} failures)", self.open_until,
                           self.failures)


@dataclass(frozen=True, slots=True)
class Ticked:
    """A ``Flush`` and the ticks told before it, as the batcher's mailbox hands them over."""

    flush: Flush
    ticks: dict[Instrument, PriceMark]


class _TickMailbox(StampedQueue):
    """The batcher's inbox. A told ``PriceTick`` is not queued: its mark replaces the
    instrument's previous one in a dict (latest wins), and the next ``Flush`` put here leaves
    with all of them, as ``Ticked``. A flush therefore carries exactly the ticks told before it,
    in the feed's order, whatever the batcher's thread was doing meanwhile."""

    def __init__(self, owner: list[Any]) -> None:
        super().__init__(owner)
        self._ticks: dict[Instrument, PriceMark] = {}
        self._lock = threading.Lock()
        self.ticks = 0
        """Ticks told so far."""
        self.edges: PriceEdges | None = None
        """The index's exit edges: a tick beyond one flushes at once (None: never)."""
        self._urgent: dict[Instrument, PriceMark] = {}
        """The newest crossing tick of each instrument, for the next urgent flush: a later tick
        that crosses nothing waits for the clock's flush and does not hide it."""
        self._urgent_waiting = False
        """An urgent ``Flush`` is in the queue and has not been taken yet."""
        self.clock: Callable[[], datetime] | None = None
        """The clock of an urgent flush (the batcher's)."""

    def put_tick(self, instrument: Instrument, mark: PriceMark) -> None:
        """What a told ``PriceTick`` leaves here: its mark, in place of the instrument's last.
        A tick beyond its instrument's exit edge (``PriceEdges``) is urgent: a ``Flush``
        marked so follows it at once, unless one is already waiting, and takes the urgent
        ticks alone (the others wait for the clock's flush, so the index's fan-out of an urgent
        batch is its possible exits only, which nothing holds back) to the batcher.

        The urgent flush takes its ticks when the batcher takes it (``get``), not when it is
        put: every crossing tick the feed hands over until the batcher's thread runs goes in
        one batch. A feed read brings a burst (a crash crosses many stops in one publication):
        one flush per crossing tick made the index fan out each alone, one switch of the
        interpreter apiece (``bench/live_exits.py``)."""
        self.put_ticks(((instrument, mark),))

    def put_ticks(self, ticks: Iterable[tuple[Instrument, PriceMark]]) -> None:
        """``put_tick`` for each, in order, with one urgent ``Flush`` at most, after the last:
        a feed hands over what it read at once (``tick_feed``'s ``many``), so the crossing
        ticks of one burst go to the index in one batch even when the batcher's thread is
        quick to take the flush. Handed over one by one, the first crossing tick of a burst
        often left alone (the feed's thread was still reading the others): the index fanned
        out twice, and the wave's exit intents were stored in two writes in series."""
        edges = self.edges
        crossed: PriceMark | None = None
        with self._lock:
            for instrument, mark in ticks:
                self._ticks[instrument] = mark
                self.ticks += 1
                if edges is not None and edges.crossed(instrument, mark.ltp):
                    self._urgent[instrument] = crossed = mark
            if crossed is None or self._urgent_waiting:
                return
            self._urgent_waiting = True
        clock = self.clock
        self.put(envelope(Flush(at=crossed.at if clock is None else clock(), urgent=True),
                          None))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        message, reply_to = contents(item)
        kind = type(message)
        if kind is PriceTick and reply_to is None:
            self.put_tick(message.instrument, message.mark)
            return
        if kind is Flush and not message.urgent:
            with self._lock:
                if self._urgent_waiting:  # the urgent flush ahead of this one takes those
                    urgent = self._urgent
                    ticks = {i: m for i, m in self._ticks.items() if urgent.get(i) is not m}
                    self._ticks = {i: m for i, m in self._ticks.items() if urgent.get(i) is m}
                else:
                    ticks, self._ticks = self._ticks, {}
                    self._urgent.clear()
            if ticks:
                item = envelope(Ticked(flush=message, ticks=ticks), reply_to)
        super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        message, reply_to = contents(item)
        if type(message) is Flush and message.urgent:
            with self._lock:
                ticks, self._urgent = self._urgent, {}
                for instrument, mark in ticks.items():
                    if self._ticks.get(instrument) is mark:  # no newer tick since
                        del self._ticks[instrument]
                self._urgent_waiting = False
            if ticks:  # else a clock's flush took them: the batcher has nothing to do
                return envelope(Ticked(flush=message, ticks=ticks), reply_to)
        return item


class TickFeed:
    """The feed's way in: ``feed(instrument, mark)`` does what telling the batcher a
    ``PriceTick`` does, without making the message. A told tick never reaches the actor: its
    mailbox keeps the mark alone and drops the message and its ids, so building them (two ids,
    a clock read, an envelope: three quarters of a tick's cost) bought nothing.
    ``feed.many(ticks)`` hands over several at once (a feed's burst: one urgent flush at most).
    Like ``tell``, both raise ``ActorDeadError`` once the batcher has stopped."""

    __slots__ = ("_batcher", "_inbox", "_stopped")

    def __init__(self, batcher: ActorRef[Any]) -> None:
        inbox = inbox_of(batcher)
        if not isinstance(inbox, _TickMailbox):
            raise TypeError(f"{batcher} is not a price batcher")
        self._batcher, self._inbox, self._stopped = batcher, inbox, stopped_of(batcher)

    def __call__(self, instrument: Instrument, mark: PriceMark) -> None:
        if self._stopped.is_set():
            raise ActorDeadError(f"{self._batcher} not found")
        self._inbox.put_tick(instrument, mark)

    def many(self, ticks: Iterable[tuple[Instrument, PriceMark]]) -> None:
        if self._stopped.is_set():
            raise ActorDeadError(f"{self._batcher} not found")
        self._inbox.put_ticks(ticks)


def tick_feed(batcher: ActorRef[Any]) -> TickFeed:
    """``batcher``'s ``TickFeed``."""
    return TickFeed(batcher)


class LTPBatcherActor(SingletonActor):
    trace_kind = "batcher"

    def make_inbox(self) -> _TickMailbox:
        return _TickMailbox(self._inbox_owner)

    def __init__(self, index: ActorRef[Any] | None, quotes: QuoteApi | None,
                 clock: Callable[[], datetime], metrics: Metrics, *,
                 stale_after: timedelta = timedelta(seconds=5),
                 edges: PriceEdges | None = None, ahead: UrgentAhead | None = None) -> None:
        super().__init__()
        self.ahead = ahead
        """Told of each urgent batch on its way to the index (the trackers' dispatcher); the
        index says when its possible exits are told (``PriceBatch.ahead``)."""
        inbox = self.actor_inbox
        if edges is not None and isinstance(inbox, _TickMailbox):
            inbox.edges, inbox.clock = edges, clock
        self.index, self.quotes, self.clock, self.metrics = index, quotes, clock, metrics
        self.stale_after = stale_after
        self.pending: dict[Instrument, PriceMark] = {}
        self.last: dict[Instrument, PriceMark] = {}
        self.watched: set[Instrument] = set()
        self.asked: set[Instrument] = set()
        self.breaker = Breaker()
        self.single_mode = False
        self.last_call: datetime | None = None
        """When the last quote call was made, then when its answer came."""
        self.quoter: ActorRef[Any] | None = None
        """The ``QuoteActor`` making this batcher's quote calls (started with it)."""
        self.fetching = False
        """A quote call is out: no other goes before its answer."""

    def on_start(self) -> None:
        if self.quotes is not None:
            self.quoter = QuoteActor.start(self.quotes, self.clock, self.actor_ref)

    def on_stop(self) -> None:
        if self.quoter is not None:
            self.quoter.stop(block=False)  # a call still out ends on its own; nobody waits

    def on_receive(self, message: Any) -> Any:
        match message:
            case Ticked():
                self.pending.update(message.ticks)
                self._flush(message.flush)
            case PriceTick():  # asked, not told: the mailbox did not keep it
                self.pending[message.instrument] = message.mark
            case Flush():
                self._flush(message)
            case QuoteRequested():
                self.asked.add(message.instrument)
            case QuotesFetched():
                self._fetched(message)
            case Snapshot():
                return None  # an edge waiting for what was told before it (settle)
            case Watch():
                if message.watching:
                    self.watched.update(message.instruments)
                else:
                    self.watched.difference_update(message.instruments)
            case _:
                logger.warning("batcher ignores {}", type(message).__name__)
        return None

    def set_index(self, index: ActorRef[Any]) -> None:
        self.index = index

    def price_age(self, now: datetime) -> float | None:
        """Seconds since the stalest watched instrument was priced (None: nothing watched)."""
        ages = [(now - mark.at).total_seconds() if (mark := self.last.get(i)) else float("inf")
                for i in self.watched]
        return max(ages) if ages else None

    def _flush(self, flush: Flush) -> None:
        """The batch, then the flush itself: it goes on down the pipeline (index, PnL writer)
        behind the batch, so whatever values on a flush sees this flush's prices, and does its
        work only after the index has told the trackers their possible exits."""
        now = flush.at
        if not flush.urgent:  # an urgent flush carries prices only: quote calls keep time
            self._poll(now)
        if self.index is None:
            return
        if self.pending:
            batch, self.pending = self.pending, {}
            self.last.update(batch)
            self.metrics.incr("urgent_batches" if flush.urgent else "price_batches")
            counter = self.ahead if flush.urgent else None
            if counter is not None:
                counter.urgent_ahead()
            try:
                self.index.tell(PriceBatch(prices=tuple(batch.items()), correlation_id=new_id(),
                                           sent_at=now, ahead=counter is not None))
            except BaseException:
                if counter is not None:  # never told: nothing is on its way
                    counter.urgent_arrived()
                raise
        if not flush.urgent:
            self.index.tell(flush)

    def stale(self, now: datetime) -> list[Instrument]:
        """Watched or asked-about instruments whose last price is no longer fresh
        (``rules.is_fresh`` under the policy's limit), to be polled from the quote API. The
        batcher refreshes by age alone; session hours are the trackers' concern."""
        wanted = (self.watched | self.asked) - self.pending.keys()
        return sorted((i for i in wanted
                       if i.segment is not Segment.IDX_I or i in self.asked
                       if (mark := self.last.get(i)) is None
                       or not is_fresh(mark.at, now, self.stale_after, in_session=True)),
                      key=str)

    def settled(self, now: datetime) -> bool:
        """No quote call out, no price waiting for a flush and nothing stale at ``now``."""
        return not self.fetching and not self.pending and not self.stale(now)

    def _poll(self, now: datetime) -> None:
        if self.quotes is None or self.fetching or not self.breaker.allows(now):
            return
        interval = timedelta(seconds=self.quotes.min_interval_seconds)
        if self.last_call is not None and now - self.last_call < interval:
            return
        stale = self.stale(now)
        if not stale:
            return
        chunk = stale[:1] if self.single_mode else stale[: self.quotes.max_instruments]
        self._call(chunk, now)

    def _call(self, chunk: list[Instrument], now: datetime) -> None:
        asking: list[Instrument] = []
        for instrument in chunk:
            if instrument.security_id.isdigit():  # the quote API takes integer ids only
                asking.append(instrument)
            else:
                self.asked.discard(instrument)
        if not asking or self.quoter is None:
            return
        try:
            self.quoter.tell(FetchQuotes(instruments=tuple(asking), correlation_id=new_id(),
                                         sent_at=now))
        except ActorDeadError:  # stopping: no more calls
            return
        self.fetching = True
        self.last_call = now
        self.metrics.incr("quote_api_calls")

    def _fetched(self, answer: QuotesFetched) -> None:
        """The quote actor's answer. Its prices go out with the next flush, stamped with when
        they were asked for; a tick pushed since is newer and wins."""
        self.fetching = False
        now = answer.sent_at
        if self.last_call is None or now > self.last_call:
            self.last_call = now  # the next call's interval counts from the answer
        chunk = answer.instruments
        if answer.throttled:
            self.breaker.failure(now, throttled=True)
            logger.warning("quote API throttled: {}", answer.failure)
            return
        if answer.failure is not None:
            self._failed(chunk, now, answer.failure)
            return
        self.breaker.success()
        self.single_mode = False
        prices = dict(answer.prices)
        for instrument in chunk:
            self.asked.discard(instrument)
            price = prices.get(instrument)
            if price is None or instrument in self.pending:
                continue
            known = self.last.get(instrument)
            if known is None or known.at <= answer.asked_at:
                self.pending[instrument] = PriceMark(ltp=price, at=answer.asked_at)

    def _failed(self, chunk: tuple[Instrument, ...], now: datetime, error: str) -> None:
        self.breaker.failure(now)
        if len(chunk) > 1:
            logger.warning("batch quote of {} failed ({}); falling back to single calls",
                           len(chunk), error)
            self.single_mode = True
        else:
            logger.warning("quote of {} failed: {}", chunk[0], error)
            self.asked.discard(chunk[0])
