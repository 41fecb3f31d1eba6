"""``QuietCollector``: the cyclic collector's full passes at quiet moments (issue 17's live
row): automatic full passes off while it runs, one every ``every`` seconds when ``quiet()``
says so (or once ``patience`` runs out), the thresholds given back when it stops."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from actors.runtime.collector import NEVER, QuietCollector
from actors.runtime.metrics import Metrics
from actors.runtime.pool import Dispatcher


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_automatic_full_passes_are_off_while_it_runs_and_back_after(
        thresholds: tuple[int, int, int]) -> None:
    collector = QuietCollector(lambda: True, every=60).start()
    try:
        assert gc.get_threshold() == (thresholds[0], thresholds[1], NEVER)
        full = gc.get_stats()[2]["collections"]
        for _ in range(30):  # enough garbage for many automatic passes of every generation
            junk = [[[n]] for n in range(20_000)]
            del junk
        assert gc.get_stats()[2]["collections"] == full  # none of the full ones
    finally:
        collector.stop()
    assert gc.get_threshold() == thresholds


def test_it_collects_at_a_quiet_moment_and_waits_for_one(
        thresholds: tuple[int, int, int]) -> None:
    calm = threading.Event()
    metrics = Metrics()
    collector = QuietCollector(calm.is_set, every=0.05, patience=30, poll=0.005,
                               metrics=metrics).start()
    try:
        time.sleep(0.3)
        assert collector.passes == 0  # never quiet: it waits (patience 30 s)
        full = gc.get_stats()[2]["collections"]
        calm.set()
        deadline = time.monotonic() + 5
        while collector.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert collector.passes >= 1 and collector.impatient == 0
        assert gc.get_stats()[2]["collections"] > full
        assert metrics.get("gc_full_passes") >= 1
    finally:
        collector.stop()


def test_without_a_quiet_moment_it_collects_once_patience_runs_out(
        thresholds: tuple[int, int, int]) -> None:
    collector = QuietCollector(lambda: False, every=0.05, patience=0.1, poll=0.005).start()
    try:
        deadline = time.monotonic() + 5
        while collector.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert collector.passes >= 1 and collector.impatient == collector.passes
    finally:
        collector.stop()


def test_the_dispatcher_is_calm_only_a_while_after_its_last_urgent_work() -> None:
    pool = Dispatcher(name="calm", workers=1, reserve=1, hold=5.0).start()
    try:
        assert pool.calm_for(10.0)  # never any urgent work
        done = threading.Event()
        pool.submit(done.set, urgent=True)
        assert done.wait(5)
        assert not pool.calm_for(10.0)  # urgent work a moment ago
        time.sleep(0.06)
        assert pool.calm_for(0.05)
        pool.urgent_ahead()  # urgent work on its way counts too
        assert not pool.calm_for(0.0)
        pool.urgent_arrived()
        time.sleep(0.06)
        assert pool.calm_for(0.05)
    finally:
        pool.shutdown()
