"""Quote calls for stale instruments (SPEC §4.3, §9): ⌈stale / 1,000⌉ calls, never one per
segment or per position, and none in steady state.

The real ``LTPBatcherActor`` polls the paper quote API (``PaperQuoteApi`` with DhanHQ's limits:
1,000 instruments a call, one call a second) on a simulated clock that both share; a collector
actor stands in for the index. The batcher is told to watch N instruments that have no price,
then flushed every 50 ms (the ticker's cadence) for as long as any is stale, a quote call is out
or a quoted price waits for its flush. The calls run on the batcher's ``QuoteActor``, beside this
loop: the simulated clock moves on while a call is out, as it would live, so an answer handled
late must not lead to a call the API throttles (the count must not depend on the threads). Then
prices are pushed for all of them and it is flushed again: steady state, where no call should be
made.

Baseline in the same run: the old design (``cycle.OldDesign``) calls once per segment every
cycle, whatever is fresh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pykka

from actors.prices.batcher import LTPBatcherActor
from actors.protocol import Flush, Watch
from actors.runtime.metrics import Metrics
from app.clocks import ManualClock
from bench.report import figure
from bench.workload import T0, instruments
from broker.paper.market import TapeMarket
from broker.paper.quotes import PaperQuoteApi
from broker.ports import QuoteThrottled
from models.common import Instrument, Segment
from models.messages import PriceBatch, PriceTick, new_id
from models.rules import PriceMark

FLUSH = timedelta(milliseconds=50)


class _Counted(PaperQuoteApi):
    """The paper quote API, counting the requests it answered 429."""

    throttled = 0

    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        try:
            return super().ltp(request)
        except QuoteThrottled:
            self.throttled += 1
            raise


class _Collector(pykka.ThreadingActor):
    """Stands in for the index: remembers the size of every price batch."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PriceBatch):
            self.sizes.append(len(message.prices))
        return None


def measure(stale: int) -> dict[str, Any]:
    on = instruments(stale)
    clock = ManualClock(T0)
    market = TapeMarket([])
    for instrument in on:
        market.set_price(instrument, Decimal(100), T0)
    quotes = _Counted(market, clock=lambda: (clock() - T0).total_seconds())
    metrics = Metrics()
    sink = _Collector.start()
    batcher = LTPBatcherActor.start(sink, quotes, clock, metrics)
    batcher.tell(Watch(instruments=tuple(on), watching=True))
    per_flush: list[int] = []
    flushes = 0
    counted = 0
    while not batcher.proxy().settled(clock()).get(timeout=30) and flushes < 10_000:
        batcher.ask(Flush(at=clock()), timeout=30)
        # Calls made since the previous flush's count: the quote actor may make a call after
        # the flush that asked for it was answered, so each is counted in the step it fell in.
        per_flush.append(quotes.calls - counted)
        counted = quotes.calls
        flushes += 1
        clock.set(clock() + FLUSH)
    cold_calls, cold_seconds = quotes.calls, (clock() - T0).total_seconds()
    for _ in range(20):  # steady state: every price pushed, then a flush
        for instrument in on:
            batcher.tell(PriceTick(instrument=instrument,
                                   mark=PriceMark(ltp=Decimal("100.05"), at=clock()),
                                   correlation_id=new_id(), sent_at=clock()))
        batcher.ask(Flush(at=clock()), timeout=30)
        clock.set(clock() + FLUSH)
    sizes = sink.proxy().sizes.get(timeout=30)
    batcher.stop()
    sink.stop()
    segments = len({i.segment for i in on})
    return {"stale": stale, "calls_to_refresh": cold_calls, "expected": math.ceil(stale / 1000),
            "max_calls_per_flush": max(per_flush, default=0), "flushes": flushes,
            "seconds_to_refresh": cold_seconds, "priced_in_batches": sum(sizes[:cold_calls]),
            "steady_calls": quotes.calls - cold_calls, "steady_flushes": 20,
            "old_design_calls_per_cycle": segments, "rejected_429": quotes.throttled}


def run(sizes: tuple[int, ...] = (500, 1_000, 2_500)) -> dict[str, Any]:
    results = [measure(n) for n in sizes]
    figures = []
    for r in results:
        met = (r["calls_to_refresh"] == r["expected"] and r["max_calls_per_flush"] <= 1
               and r["priced_in_batches"] == r["stale"] and r["rejected_429"] == 0)
        figures.append(figure(
            f"quote calls to refresh {r['stale']:,} stale", r["calls_to_refresh"], "calls",
            baseline=f"old: {r['old_design_calls_per_cycle']} per cycle, every cycle",
            ratio=f"<= {r['max_calls_per_flush']} per flush; all priced in "
                  f"{r['seconds_to_refresh']:.2f} s", target=f"= {r['expected']} (ceil n/1000)",
            met=met, miss="" if met else f"{r['calls_to_refresh']} calls, "
                                         f"{r['priced_in_batches']:,} priced, "
                                         f"{r['rejected_429']} throttled"))
    steady = sum(r["steady_calls"] for r in results)
    figures.append(figure("quote calls per flush, steady state", steady, "calls",
                          baseline="old: one per segment per cycle",
                          ratio=f"over {sum(r['steady_flushes'] for r in results)} flushes",
                          target="= 0", met=steady == 0, miss=f"{steady} calls" if steady else ""))
    return {"benchmark": "quote API calls from the batcher (paper quote API)",
            "results": results, "figures": figures}
