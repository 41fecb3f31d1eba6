"""What message tracing costs (SPEC §8, §9): the same work with tracing off, with the in-memory
flight recorder only (``Tracer(None)``), and with the JSON-lines sink (``Tracer(path)``).

The work is the price cycle at 1,000 positions (``cycle.ActorRig``: every instrument ticks, every
tracker evaluates, the PnL cache is flushed) and, in the full run, order updates end to end.
Each mode starts its own system on a fresh store, with the tracer installed before the actors
start, as ``run.py`` does; the full run measures the modes in five interleaved rounds. The
sink's writer thread runs during the measurement, so its CPU is part of the cost.
Cost = 1 - throughput(mode) / throughput(off), taken in each round (the modes of a round run back
to back) and reported as the median over the rounds.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from actors.tracing import recorder as tracing
from actors.tracing.recorder import Tracer
from bench import throughput
from bench.common import fresh_cache, fresh_store
from bench.cycle import ActorRig, timed
from bench.report import figure
from bench.workload import QUIET_PERIOD, instruments, positions, quiet_prices

MODES = ("off", "ring", "jsonl")


def _tracer(mode: str, scratch: Path) -> Tracer | None:
    if mode == "off":
        return None
    return Tracer(scratch / f"trace-{mode}.jsonl" if mode == "jsonl" else None)


def _cycle_ms(pg: str | None, rd: str | None, scratch: Path, repeats: int
              ) -> tuple[float, int]:
    """Median cycle time, and the records the sink had still to write when the cycles ended
    (a sink that lags would hide its cost from the cycles)."""
    on = instruments(200)
    store, _ = fresh_store(pg, scratch)
    rig = ActorRig(store, fresh_cache(rd), positions(1_000, on))
    step = itertools.count()
    for _ in range(QUIET_PERIOD):  # warm-up: every tracker priced, every peak set
        rig.cycle(quiet_prices(on, next(step)))
    times = timed(lambda: rig.cycle(quiet_prices(on, next(step))), repeats)
    active = tracing.tracer()
    behind = active.backlog if active is not None else 0
    rig.stop()
    store.close()
    return statistics.median(times), behind


def _updates_per_s(pg: str | None, scratch: Path, frames: int) -> float:
    store, _ = fresh_store(pg, scratch)
    rate = float(throughput.order_updates(store, frames)["updates_per_s"])
    store.close()
    return rate


def _measure(mode: str, pg: str | None, rd: str | None, scratch: Path, repeats: int,
             frames: int) -> dict[str, Any]:
    tracer = _tracer(mode, scratch)
    tracing.install(tracer)
    try:
        cycle_ms, behind = _cycle_ms(pg, rd, scratch, repeats)
        out: dict[str, Any] = {"cycle_ms": cycle_ms, "backlog_after_cycles": behind}
        if frames:
            out["updates_per_s"] = _updates_per_s(pg, scratch, frames)
    finally:
        tracing.install(None)
        if tracer is not None:
            tracer.close()
            out["records_written"], out["records_dropped"] = tracer.written, tracer.dropped
    return out


def run(pg: str | None, rd: str | None, scratch: Path, *, repeats: int,
        frames: int, rounds: int = 1) -> dict[str, Any]:
    """``rounds`` > 1: every mode is measured once per round, the order rotating from round to
    round, and each figure is the median over the rounds, so a machine whose speed drifts
    during the run does not bias one mode."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for k in range(rounds):
        for mode in MODES[k % len(MODES):] + MODES[:k % len(MODES)]:
            runs[mode].append(_measure(mode, pg, rd, scratch, repeats, frames))
    results = {mode: _median(got) for mode, got in runs.items()}
    off = results["off"]
    figures = []
    for mode in MODES[1:]:
        got = results[mode]
        # Each round measures every mode back to back: the cost is the median of the rounds'
        # own ratios, so the machine's drift from round to round cancels within each pair.
        cost = _paired_cost(runs["off"], runs[mode], "cycle_ms", lower_is_better=True)
        extra = (f"; {got['records_written']:,} records written, {got['records_dropped']:,} "
                 f"dropped, {got['backlog_after_cycles']:,} still to write when the cycles "
                 f"ended" if mode == "jsonl" else "")
        figures.append(_cost(f"tracing {mode}: price cycle at 1,000", cost, mode,
                             f"off {off['cycle_ms']:.1f} ms/cycle",
                             f"{got['cycle_ms']:.1f} ms/cycle (medians) = "
                             f"{off['cycle_ms'] / got['cycle_ms']:.2f}x throughput; cost: "
                             f"median of {rounds} rounds' own ratios{extra}"))
        if frames:
            cost = _paired_cost(runs["off"], runs[mode], "updates_per_s", lower_is_better=False)
            figures.append(_cost(f"tracing {mode}: order updates", cost, mode,
                                 f"off {off['updates_per_s']:,.0f}/s",
                                 f"{got['updates_per_s']:,.0f}/s (medians) = "
                                 f"{got['updates_per_s'] / off['updates_per_s']:.2f}x; cost: "
                                 f"median of {rounds} rounds' own ratios"))
    return {"benchmark": "tracing cost: off / ring only / JSONL sink", **results,
            "repeats": repeats, "frames": frames, "rounds": rounds,
            "cycle_ms_by_round": {mode: [r["cycle_ms"] for r in got] for mode, got in runs.items()},
            "figures": figures}


def _paired_cost(off: list[dict[str, Any]], mode: list[dict[str, Any]], key: str, *,
                 lower_is_better: bool) -> float:
    """Throughput lost to a mode: the median over the rounds of each round's own ratio."""
    costs = [1 - (o[key] / m[key] if lower_is_better else m[key] / o[key])
             for o, m in zip(off, mode, strict=True)]
    return float(statistics.median(costs))


def _median(got: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measured figure's median over the rounds (counts: the last round's)."""
    out = dict(got[-1])
    for key in ("cycle_ms", "updates_per_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in got)
    return out


def _cost(name: str, cost: float, mode: str, baseline: str, ratio: str) -> dict[str, Any]:
    pct = cost * 100
    if mode != "jsonl":
        return figure(name + ", cost", pct, "%", baseline=baseline, ratio=ratio)
    met = pct <= 25
    return figure(name + ", cost", pct, "%", baseline=baseline, ratio=ratio,
                  target="<= 25 %", met=met,
                  miss="" if met else f"{pct - 25:.0f} points over")
