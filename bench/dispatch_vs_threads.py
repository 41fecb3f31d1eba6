"""The pooled dispatcher against one ``ThreadingActor`` per position: start, fan-out, stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka

from actors.runtime.dispatch import Dispatcher, PooledActor
from bench.report import figure


class _Pooled(PooledActor):
    def __init__(self, done: threading.Semaphore) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message: Any) -> Any:
        if message == "last":
            self.done.release()
        return None


class _Threaded(pykka.ThreadingActor):
    def __init__(self, done: threading.Semaphore) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message: Any) -> Any:
        if message == "last":
            self.done.release()
        return None


def _run(kind: str, count: int, messages: int) -> dict[str, float]:
    done = threading.Semaphore(0)
    pool = Dispatcher(workers=4, name="bench").start()
    started = time.perf_counter()
    if kind == "pooled":
        refs = [_Pooled.start_on(pool, done) for _ in range(count)]
    else:
        refs = [_Threaded.start(done) for _ in range(count)]
    start_s = time.perf_counter() - started
    began = time.perf_counter()
    for _ in range(messages - 1):
        for ref in refs:
            ref.tell("x")
    for ref in refs:
        ref.tell("last")
    for _ in range(count):
        done.acquire()
    fan_s = time.perf_counter() - began
    began = time.perf_counter()
    # One stop each, then wait for those: asking a stopping ThreadingActor to stop again races
    # its last clean-up in pykka (the second ask put after it is never answered: 40 in 20,000).
    stopping = [ref.stop(block=False) for ref in refs]
    for future in stopping:
        future.get(timeout=30)
    stop_s = time.perf_counter() - began
    pool.shutdown()
    return {"start_s": start_s, "deliveries_per_s": count * messages / fan_s, "stop_s": stop_s}


def run(quick: bool) -> list[dict[str, Any]]:
    rows = []
    sizes = (1_000,) if quick else (1_000, 10_000)
    for count in sizes:
        pooled = _run("pooled", count, 5)
        threaded = _run("threaded", count, 5)
        rows.append({
            "benchmark": f"dispatcher vs ThreadingActor, {count} actors x 5 messages",
            "pooled": pooled, "threading": threaded,
            "ratio_fanout": pooled["deliveries_per_s"] / threaded["deliveries_per_s"],
            "ratio_start": threaded["start_s"] / max(pooled["start_s"], 1e-9),
        })
        rows[-1]["figures"] = [
            figure("fan-out, pooled dispatcher", pooled["deliveries_per_s"], "deliveries/s",
                   baseline=f"ThreadingActor {threaded['deliveries_per_s']:,.0f}/s",
                   ratio=f"{rows[-1]['ratio_fanout']:.1f}x ThreadingActor"),
            figure("start, pooled dispatcher", pooled["start_s"], "s",
                   baseline=f"ThreadingActor {threaded['start_s']:.2f} s",
                   ratio=f"{rows[-1]['ratio_start']:.0f}x faster; stop {pooled['stop_s']:.2f}"
                         f" vs {threaded['stop_s']:.2f} s"),
        ]
    return rows
