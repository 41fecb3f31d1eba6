"""The index's per-instrument reach is only a shortcut: it tells every position exactly what that
position's own band says of each price (an exit urgently, a mark move or a due refresh in the
ordinary queue, nothing otherwise), and every possible exit of a batch before anything else.

The index is driven directly (no threads): its owners are recording refs, and the expected
deliveries come from each position's ``BandWatch`` verdict taken one by one, as the index did before
it had a reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.prices.index import IndexActor
from actors.protocol import BandChanged, Flush, Route, Unroute
from models.bands import CROSSING, MARKS, QUIET, REFRESH, Band, BandWatch
from models.common import Instrument, Segment
from models.messages import PriceBatch, PriceUpdate
from models.rules import PriceMark
from tests.actors.test_tracker_flow import T0

INSTRUMENTS = [Instrument(segment=Segment.NSE_FNO, security_id=str(60000 + n)) for n in range(3)]
REFRESH_EVERY = timedelta(seconds=8)  # long, so a skipped instrument is often not due
Told = tuple[str, str, Decimal, bool]
"""A delivery: position id, instrument, price, urgent."""


@dataclass(eq=False)
class Owner:
    """A tracker's ref as the index uses it: ``tell``."""

    name: str
    log: list[tuple[str, str, Decimal, bool]] = field(default_factory=list)

    def tell(self, message: object) -> None:
        assert isinstance(message, PriceUpdate)
        self.log.append((self.name, str(message.instrument), message.mark.ltp, message.urgent))


class Pnl:
    def __init__(self) -> None:
        self.got: list[object] = []

    def tell(self, message: object) -> None:
        self.got.append(message)


prices = st.integers(min_value=80, max_value=120).map(Decimal)


@st.composite
def bands(draw: st.DrawFn) -> Band | None:
    if draw(st.integers(0, 5)) == 0:
        return None
    rule_low = draw(st.one_of(st.none(), st.integers(80, 100).map(Decimal)))
    rule_high = draw(st.one_of(st.none(), st.integers(100, 120).map(Decimal)))
    low = draw(st.integers(80, 100).map(Decimal))
    high = draw(st.integers(100, 120).map(Decimal))
    if rule_low is not None:
        low = max(low, rule_low)
    if rule_high is not None:
        high = min(high, rule_high)
    until = draw(st.one_of(st.none(), st.integers(0, 12).map(lambda s: T0 + timedelta(seconds=s))))
    return Band(low=low, high=high, until=until, rule_low=rule_low, rule_high=rule_high)


# A step: a batch (instrument → price, seconds later), a band change, a new or a gone position.
steps = st.one_of(
    st.tuples(st.just("batch"), st.lists(st.tuples(st.integers(0, 2), prices), min_size=1,
                                         max_size=3), st.integers(0, 3)),
    st.tuples(st.just("band"), st.integers(0, 7), bands()),
    st.tuples(st.just("route"), st.integers(0, 7), st.integers(0, 2)),
    st.tuples(st.just("unroute"), st.integers(0, 7)),
)


class Reference:
    """Each position's verdict, one by one (no reach), in the order the index must tell them."""

    def __init__(self) -> None:
        self.watches: dict[str, BandWatch] = {}
        self.where: dict[str, Instrument] = {}

    def route(self, pid: str, instrument: Instrument) -> None:
        self.watches.pop(pid, None)  # a new route goes last, as in the index's owners
        self.watches[pid] = BandWatch(pid, instrument, REFRESH_EVERY)
        self.where[pid] = instrument

    def batch(self, prices_: list[tuple[Instrument, PriceMark]]) -> list[Told]:
        urgent: list[Told] = []
        later: list[Told] = []
        refresh: list[Told] = []
        for instrument, mark in prices_:
            for pid, watch in self.watches.items():
                if self.where[pid] != instrument:
                    continue
                verdict = watch.verdict(mark.ltp, mark.at)
                if verdict == QUIET:
                    continue
                watch.told_at = mark.at
                told = (pid, str(instrument), mark.ltp, verdict == CROSSING)
                {CROSSING: urgent, MARKS: later, REFRESH: refresh}[verdict].append(told)
        return urgent + later + refresh


@settings(max_examples=500, deadline=None)
@given(st.lists(bands(), min_size=8, max_size=8), st.lists(steps, min_size=1, max_size=30))
def test_the_reach_tells_each_position_what_its_own_band_says(
        first: list[Band | None], script: list[tuple[Any, ...]]) -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    pnl = Pnl()
    index.pnl = pnl  # type: ignore[assignment]
    reference = Reference()
    owners = {f"P{n}": Owner(f"P{n}") for n in range(8)}
    log: list[tuple[str, str, Decimal, bool]] = []
    for owner in owners.values():
        owner.log = log
    now = T0
    for n in range(8):  # every position starts routed, on instrument n % 3
        pid = f"P{n}"
        index.on_receive(Route(pid, INSTRUMENTS[n % 3], owners[pid]))  # type: ignore[arg-type]
        reference.route(pid, INSTRUMENTS[n % 3])
        index.on_receive(BandChanged(pid, first[n]))  # no price yet: nothing is told
        reference.watches[pid].band = first[n]
    assert log == []
    for step in script:
        kind = step[0]
        if kind == "batch":
            now += timedelta(seconds=step[2])
            marks = [(INSTRUMENTS[i], PriceMark(ltp=ltp, at=now)) for i, ltp in step[1]]
            marks = list(dict(marks).items())  # a batch holds one price per instrument
            expected = reference.batch(marks)
            del log[:]
            index.on_receive(PriceBatch(prices=tuple(marks), correlation_id="c", sent_at=now))
            urgent = [t for t in log if t[3]]
            assert log[:len(urgent)] == urgent, "every possible exit comes first"
            assert [t for t in expected if t[3]] == urgent  # in the batch's order
            assert sorted(log) == sorted(expected)
        elif kind == "band":
            pid = f"P{step[1]}"
            if pid in reference.watches:
                del log[:]
                index.on_receive(BandChanged(pid, step[2]))
                reference.watches[pid].band = step[2]
                # A changed band is checked against the last price at once (both sides).
                last = index.last_marks.get(reference.where[pid])
                if last is not None:
                    verdict = reference.watches[pid].verdict(last.ltp, last.at)
                    if verdict in (CROSSING, MARKS):
                        reference.watches[pid].told_at = last.at
                        assert log == [(pid, str(reference.where[pid]), last.ltp,
                                        verdict == CROSSING)]
                    else:
                        assert log == []
        elif kind == "route":
            pid, instrument = f"P{step[1]}", INSTRUMENTS[step[2]]
            if pid in reference.watches:
                index.on_receive(Unroute(pid, reference.where[pid]))
            index.on_receive(Route(pid, instrument, owners[pid]))  # type: ignore[arg-type]
            reference.route(pid, instrument)
        else:
            pid = f"P{step[1]}"
            if pid in reference.watches:
                index.on_receive(Unroute(pid, reference.where.pop(pid)))
                del reference.watches[pid]


def test_exits_are_told_in_the_batch_order_whichever_rule_they_cross() -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    log: list[tuple[str, str, Decimal, bool]] = []
    edges = {"below": Band(low=Decimal(95), high=Decimal(105), until=None,
                           rule_low=Decimal(90), rule_high=None),
             "above": Band(low=Decimal(95), high=Decimal(105), until=None,
                           rule_low=None, rule_high=Decimal(110)),
             "late": Band(low=Decimal(95), high=Decimal(105), until=T0,
                          rule_low=Decimal(90), rule_high=Decimal(110))}
    for (pid, band), instrument in zip(edges.items(), INSTRUMENTS, strict=True):
        index.on_receive(Route(pid, instrument, Owner(pid, log)))  # type: ignore[arg-type]
        index.on_receive(BandChanged(pid, band))
    marks = ((INSTRUMENTS[0], Decimal(89)), (INSTRUMENTS[1], Decimal(111)),
             (INSTRUMENTS[2], Decimal(100)))
    index.on_receive(PriceBatch(prices=tuple((i, PriceMark(ltp=p, at=T0)) for i, p in marks),
                                correlation_id="c", sent_at=T0))
    assert log == [("below", str(INSTRUMENTS[0]), Decimal(89), True),
                   ("above", str(INSTRUMENTS[1]), Decimal(111), True),
                   ("late", str(INSTRUMENTS[2]), Decimal(100), True)]


QUIET_BAND = Band(low=Decimal(95), high=Decimal(105), until=None, rule_low=Decimal(90),
                  rule_high=Decimal(110))


def batch_at(ltp: int, seconds: float = 0) -> PriceBatch:
    at = T0 + timedelta(seconds=seconds)
    return PriceBatch(prices=((INSTRUMENTS[0], PriceMark(ltp=Decimal(ltp), at=at)),),
                      correlation_id="c", sent_at=at)


def test_a_band_that_tightens_between_batches_is_what_the_next_price_meets() -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    log: list[tuple[str, str, Decimal, bool]] = []
    for pid in ("A", "B"):
        index.on_receive(Route(pid, INSTRUMENTS[0], Owner(pid, log)))  # type: ignore[arg-type]
        index.on_receive(BandChanged(pid, QUIET_BAND))
    index.on_receive(batch_at(100))  # first prices: refreshes
    index.on_receive(batch_at(100))  # quiet
    del log[:]
    tighter = Band(low=Decimal(98), high=Decimal(105), until=None, rule_low=Decimal(97),
                   rule_high=Decimal(110))
    index.on_receive(BandChanged("B", tighter))  # 100 is inside it: nothing to tell
    assert log == []
    index.on_receive(batch_at(96))  # below B's new stop; inside A's band
    assert log == [("B", str(INSTRUMENTS[0]), Decimal(96), True)]


def test_the_earliest_refresh_of_an_instrument_is_not_skipped() -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    log: list[tuple[str, str, Decimal, bool]] = []
    spread = {pid: BandWatch(pid, INSTRUMENTS[0], REFRESH_EVERY).refresh
              for pid in (f"P{n}" for n in range(20))}
    slow, fast = max(spread, key=spread.__getitem__), min(spread, key=spread.__getitem__)
    assert spread[fast] < spread[slow]
    for pid in (slow, fast):  # the slow one first: the earliest is not the first owner's
        index.on_receive(Route(pid, INSTRUMENTS[0], Owner(pid, log)))  # type: ignore[arg-type]
        index.on_receive(BandChanged(pid, QUIET_BAND))
    index.on_receive(batch_at(100))
    del log[:]
    between = (spread[fast] + (spread[slow] - spread[fast]) / 2).total_seconds()
    index.on_receive(batch_at(101, between))
    assert log == [(fast, str(INSTRUMENTS[0]), Decimal(101), False)]


def test_a_flush_follows_the_batch_to_the_pnl_writer() -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    pnl = Pnl()
    index.pnl = pnl  # type: ignore[assignment]
    batch = PriceBatch(prices=((INSTRUMENTS[0], PriceMark(ltp=Decimal(100), at=T0)),),
                       correlation_id="c", sent_at=T0)
    flush = Flush(at=T0)
    index.on_receive(batch)
    index.on_receive(flush)
    assert pnl.got == [batch, flush]  # no position: no possible exit


def test_a_flush_behind_possible_exits_says_so() -> None:
    index = IndexActor(None, refresh=REFRESH_EVERY)
    pnl = Pnl()
    index.pnl = pnl  # type: ignore[assignment]
    log: list[tuple[str, str, Decimal, bool]] = []
    index.on_receive(Route("A", INSTRUMENTS[0], Owner("A", log)))  # type: ignore[arg-type]
    index.on_receive(BandChanged("A", QUIET_BAND))
    for ltp in (100, 100, 80, 100):
        index.on_receive(batch_at(ltp))
        index.on_receive(Flush(at=T0))
    flushes = [m for m in pnl.got if isinstance(m, Flush)]
    assert [f.exits for f in flushes] == [False, False, True, False]
    assert [t[3] for t in log] == [False, True]  # the first refresh, then the stop
