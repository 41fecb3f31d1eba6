"""PnLWriterActor: the PnL cache writer and the portfolio's running valuation.

It values every open position itself. The index tells it each ``PriceBatch``; the position
events tell it each position's basis (entry price, open quantity, realised PnL, fees) and marks;
the trackers' ``PnLMarked`` (sent when a mark moves) keep peak and high-water mark current.

Per instrument it keeps a ``_Book``: since every position's net PnL is linear in the price,
``net = constant + slope * ltp`` summed over the book, a price costs O(1) per instrument for the
day's total, whatever the number of positions on it. The supervisor hears that total
(``PortfolioValued``) on every ``Flush``, for the kill switch. Once per ``cache_every`` the
positions whose price or marks changed are due a cache write; their entries are made and written
a chunk per flush (one pipelined round trip each), so no flush holds the interpreter for long.
The round trip itself is the ``CacheWriterActor``'s (``actors/cache_writer.py``, started and
stopped with this actor): the writer hands it a chunk and goes on, with at most one write in
flight (a flush that finds one still out leaves what is due to a later flush).
A flush behind a batch that told possible exits (``Flush.exits``) leaves its cache write to the
next flush (never two in a row), so the writer is out of the way while those exits are decided
and placed; and every message waits while urgent work runs on the trackers' dispatcher
(``gate``: ``Dispatcher.yield_to_urgent``, bounded). A ``Flush(complete=True)`` writes
everything at once and waits until it is written. A cache outage costs only the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pykka
from loguru import logger
from pykka import ActorRef

from actors.pnl.cache_writer import CacheWriterActor, WriteCache
from actors.protocol import Flush, PortfolioValued
from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from models.closed import PlainClosed, plain_net
from models.common import IST, Instrument
from models.marks import Basis, basis_of, net_at, net_line, pct_at
from models.messages import PnLMarked, PositionChanged, PositionClosed, PositionOpened, PriceBatch
from models.policy import ExitPolicy
from models.position import CLOSED, PRICED, Position
from models.rules import closed_net
from store.ports import PnLCache
from store.records import PnLEntry

_ZERO = Decimal(0)
CHUNK = 100
"""Cache entries written per flush at least; a cadence's writes take at most ten flushes."""
SETTLE_SECONDS = 10.0
"""How long a complete flush (or a stop) waits for the cache write in flight: far more than
the cache's own socket timeout, after which a write gives up by itself."""


class _Held:
    """The writer's copy of what it needs to value one open position."""

    __slots__ = ("basis", "hwm", "peak")

    def __init__(self, position: Position, policy: ExitPolicy) -> None:
        self.basis: Basis | None = basis_of(position, policy) if position.status in PRICED \
            else None
        self.hwm, self.peak = position.hwm_pnl, position.peak_price


class _Book:
    """One instrument: its open positions, their summed valuation line, its last price."""

    __slots__ = ("at", "constant", "held", "ltp", "slope")

    def __init__(self) -> None:
        self.held: dict[str, _Held] = {}
        self.constant, self.slope = _ZERO, 0
        self.ltp: Decimal | None = None
        self.at: datetime | None = None

    def refit(self) -> None:
        """Sum the positions' valuation lines (``marks.net_line``) over the book."""
        constant, slope = _ZERO, 0
        for held in self.held.values():
            basis = held.basis
            if basis is not None:
                line_constant, line_slope = net_line(basis)
                constant += line_constant
                slope += line_slope
        self.constant, self.slope = constant, slope

    def value(self) -> Decimal:
        return _ZERO if self.ltp is None else self.constant + self.slope * self.ltp


class PnLWriterActor(SingletonActor):
    trace_kind = "pnl"

    def __init__(self, cache: PnLCache, policy: ExitPolicy, metrics: Metrics,
                 clock: Callable[[], datetime], supervisor: ActorRef[Any] | None = None, *,
                 cache_every: timedelta = timedelta(seconds=1),
                 gate: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.cache, self.policy, self.metrics, self.clock = cache, policy, metrics, clock
        self.supervisor = supervisor
        self.cache_every = cache_every
        self.books: dict[Instrument, _Book] = {}
        self.where: dict[str, Instrument] = {}
        self.closed_net: dict[str, Decimal] = {}
        """Net PnL of the positions closed today (the day is the exchange's: IST)."""
        self.day = clock().astimezone(IST).date()
        self.open_total = _ZERO
        """The sum of every book's value, kept up to date price by price."""
        self.priced: set[_Book] = set()
        """The books priced since the cadence's last write (by identity: no instrument hash)."""
        self.marked: set[str] = set()
        self.deletes: set[str] = set()
        self.marked_since: set[str] = set()
        self.deletes_since: set[str] = set()
        """Marks moved and positions closed since the last flush: an ordinary flush writes what
        it finds in ``marked`` and ``deletes`` (before the last flush), then moves these there.
        What trackers send races with the flush on its way behind the batch; with this lag the
        race mostly decides only which later flush writes an entry; how many writes there are
        still depends on thread timing (two replays of one session: 14 to 17), bounded by one
        per flush (``pnl_flushes``). A complete flush writes both."""
        self.written_at: datetime | None = None
        self.due: list[str] = []
        """Positions to write to the cache, a chunk per flush."""
        self.chunk = CHUNK
        self.deferred = False
        """The last flush left its cache write to this one (exits were in flight)."""
        self.writer: ActorRef[Any] | None = None
        self.in_flight: pykka.Future[Any] | None = None
        """The answer to the last write handed to the cache writer, until it has come."""

    def on_start(self) -> None:
        self.writer = CacheWriterActor.start(self.cache, self.metrics)

    def on_stop(self) -> None:
        self.settle_cache()
        if self.writer is not None:
            self.writer.stop()

    def on_receive(self, message: Any) -> Any:
        if self.gate is not None:
            self.gate()
        match message:
            case PriceBatch():
                self._priced(message)
            case PnLMarked():
                self._marked(message)
            case PositionOpened() | PositionChanged() | PositionClosed():
                self._position(message.position)
            case Flush():
                self._flush(message.at, complete=message.complete, exits=message.exits)
            case _:
                logger.warning("pnl writer ignores {}", type(message).__name__)
        return None

    def set_supervisor(self, supervisor: ActorRef[Any]) -> None:
        self.supervisor = supervisor

    def seed(self, open_positions: list[Position], closed_today: list[Position],
             plain: Sequence[PlainClosed] = ()) -> None:
        """Start-up: the open positions, and those closed earlier today (the day's PnL);
        ``plain``: more of those, plain ones (``models.closed.plain_net``)."""
        for position in open_positions:
            self._position(position)
        for position in closed_today:
            self.closed_net[position.position_id] = closed_net(position, self.policy)
        for one in plain:
            self.closed_net[one.position_id] = plain_net(one, self.policy)

    def peaks(self) -> tuple[dict[str, Decimal | None], dict[str, Decimal]]:
        """Each open position's peak price, and its high-water mark, as last marked (asked by
        the operator console: the index's copies move only with orders)."""
        helds = [book.held for book in self.books.values()]
        return ({pid: held.peak for held_by in helds for pid, held in held_by.items()},
                {pid: held.hwm for held_by in helds for pid, held in held_by.items()})

    def _position(self, position: Position) -> None:
        pid = position.position_id
        instrument = Instrument(segment=position.segment, security_id=position.security_id)
        book = self.books.setdefault(instrument, _Book())
        before = book.value()
        if position.status in CLOSED:
            book.held.pop(pid, None)
            self.where.pop(pid, None)
            self.marked.discard(pid)
            self.marked_since.discard(pid)
            self.deletes_since.add(pid)
            self.closed_net[pid] = closed_net(position, self.policy)
        else:
            book.held[pid] = _Held(position, self.policy)
            self.where[pid] = instrument
            self.closed_net.pop(pid, None)
            self.deletes.discard(pid)
            self.deletes_since.discard(pid)
            self.marked_since.add(pid)
        book.refit()
        self.open_total += book.value() - before

    def _priced(self, batch: PriceBatch) -> None:
        """Each book takes its price; the running total moves by ``slope * (new - old)``, the
        change of ``constant + slope * ltp`` (re-summed from the books at every cadence)."""
        books, priced, at = self.books, self.priced, batch.sent_at
        total = self.open_total
        for instrument, mark in batch.prices:
            book = books.get(instrument)
            if book is None or not book.held:
                continue
            ltp, last = mark.ltp, book.ltp
            if last is None:
                total += book.constant + book.slope * ltp
            elif book.slope and ltp != last:
                total += book.slope * (ltp - last)
            book.ltp, book.at = ltp, at
            priced.add(book)
        self.open_total = total

    def _marked(self, message: PnLMarked) -> None:
        instrument = self.where.get(message.position_id)
        if instrument is None:
            return  # a price that raced the close: the position is no longer valued
        book = self.books[instrument]
        held = book.held.get(message.position_id)
        if held is None:
            return
        held.hwm, held.peak = message.hwm_pnl, message.peak_price
        if book.ltp is None:  # the tracker was priced before the writer saw a batch
            before = book.value()
            book.ltp, book.at = message.ltp, message.sent_at
            self.open_total += book.value() - before
        self.marked_since.add(message.position_id)

    def day_net(self) -> Decimal:
        return self.open_total + sum(self.closed_net.values(), _ZERO)

    def _flush(self, at: datetime, *, complete: bool = False, exits: bool = False) -> None:
        self.metrics.incr("pnl_flushes")  # each may cost one cache round trip, never more
        day = at.astimezone(IST).date()
        if day > self.day:  # a new exchange day: what closed before it no longer counts
            logger.info("exchange day {} begins: {} positions closed on {} leave the day's PnL",
                        day, len(self.closed_net), self.day)
            self.day = day
            self.closed_net.clear()
        if self.supervisor is not None:
            self.supervisor.tell(PortfolioValued(net=self.day_net(), at=at))
        if complete:
            self._catch_up()
        try:
            if exits and not complete and not self.deferred:
                self.deferred = True  # exits are in flight: the cache waits one flush, not two
                return
            self.deferred = False
            if complete or (not self.due and (self.written_at is None
                                              or at - self.written_at >= self.cache_every)):
                self._take_due(at)
            if self.due or self.deletes:
                self._write(len(self.due) if complete else self.chunk, wait=complete)
            elif complete:
                self.settle_cache()  # nothing new, but what is in flight lands first
        finally:
            self._catch_up()

    def _catch_up(self) -> None:
        """What came since the last flush becomes what the next one writes."""
        self.marked |= self.marked_since
        self.deletes |= self.deletes_since
        self.marked_since, self.deletes_since = set(), set()

    def _take_due(self, at: datetime) -> None:
        """The cadence is up: every position whose price or marks changed is due a write."""
        due = dict.fromkeys(self.due)
        for book in self.priced:
            due.update(dict.fromkeys(book.held))
        due.update(dict.fromkeys(self.marked))
        self.due = list(due)
        self.chunk = max(CHUNK, -(-len(self.due) // 10))
        self.priced, self.marked = set(), set()
        self.written_at = at
        # Summed afresh now and then, so rounding in the running total cannot accumulate.
        self.open_total = sum((book.value() for book in self.books.values()), _ZERO)

    def settle_cache(self) -> None:
        """Wait (bounded) until the write in flight, if any, is done."""
        if not self._landed(SETTLE_SECONDS):
            logger.warning("PnL cache write still running after {}s; not waiting longer",
                           SETTLE_SECONDS)
            self.in_flight = None

    def _landed(self, timeout: float) -> bool:
        """Whether the last write handed over is done (waiting up to ``timeout`` for it);
        once it is, it is forgotten."""
        if self.in_flight is None:
            return True
        try:
            self.in_flight.get(timeout=timeout)
        except pykka.Timeout:
            return False
        except Exception as error:  # a bug in the writer: the cache only is degraded
            logger.opt(exception=error).error("PnL cache write failed")
        self.in_flight = None
        return True

    def _write(self, count: int, *, wait: bool = False) -> None:
        """Hand the cache writer ``count`` due positions (valued now) and the pending deletes:
        one round trip. A cadence's writes are spread over the next flushes, so no flush holds
        the GIL long; while the last write is still out, they wait for a later flush."""
        if wait:
            self.settle_cache()
        elif not self._landed(0):
            return
        batch, self.due = self.due[:count], self.due[count:]
        entries: list[PnLEntry] = []
        for pid in batch:
            instrument = self.where.get(pid)
            if instrument is not None:
                book = self.books[instrument]
                _entry(entries, pid, book.held[pid], book)
        deletes = sorted(self.deletes)
        self.deletes = set()
        if not entries and not deletes:
            return
        assert self.writer is not None, "started in on_start"
        self.in_flight = self.writer.ask(WriteCache(tuple(entries), tuple(deletes)),
                                         block=False)
        if wait:
            self.settle_cache()


def _entry(entries: list[PnLEntry], pid: str, held: _Held, book: _Book) -> None:
    """Append the cache entry of a position valued at its book's price (if it has both)."""
    basis, ltp, at = held.basis, book.ltp, book.at
    if basis is None or ltp is None or at is None:
        return
    net = net_at(basis, ltp)
    entries.append(PnLEntry(position_id=pid, pnl=net, pnl_pct=pct_at(basis, ltp), ltp=ltp,
                            hwm_pnl=max(held.hwm, net, _ZERO), peak_price=held.peak,
                            updated_at=at))
