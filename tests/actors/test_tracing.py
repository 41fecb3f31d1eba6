"""Tracing records every message with ids, sender and receiver; a crash dumps the recorder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from loguru import logger

from actors.tracing import recorder as tracing
from actors.tracing.recorder import Tracer, iter_records, redact
from actors.tracing.views import Filters, render
from actors.tracker import keeper
from actors.tracker.keeper import PositionKeeper
from models.messages import PriceUpdate
from tests.actors.test_tracker_flow import System, entry, open_position, price
from tests.fakes import FakeGateway, FakeStore


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[System, Tracer, Path]]:
    path = tmp_path / "trace.jsonl"
    tracer = Tracer(path)
    tracing.install(tracer)
    built = System(FakeStore(), FakeGateway())
    yield built, tracer, path
    pykka.ActorRegistry.stop_all()
    tracing.install(None)
    tracer.close()


def test_when_stop_hit_then_trace_links_price_to_exit_request(
        traced: tuple[System, Tracer, Path]) -> None:
    system, tracer, path = traced
    pid = open_position(system, entry())
    price(system, "176")
    tracer.close()
    records = [r for r in iter_records(path) if r["kind"] == "message"]
    by_id = {r["message_id"]: r for r in records}
    exit_request = next(r for r in records if r["type"] == "ExitRequested")
    cause = by_id[exit_request["causation_id"]]
    assert cause["type"] == "PriceUpdate"
    assert cause["receiver"] == f"tracker:{pid}#0"
    assert exit_request["sender"] == f"tracker:{pid}#0"
    assert exit_request["receiver"] == "supervisor"
    assert exit_request["position_id"] == pid
    assert by_id[cause["causation_id"]]["type"] == "PriceBatch"
    assert all(r["outcome"] == "ok" for r in records)


def test_when_tracker_crashes_then_flight_recorder_is_logged(
        traced: tuple[System, Tracer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    system, _, _ = traced
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR")
    pid = open_position(system, entry())

    def broken(self: PositionKeeper, message: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setitem(keeper._HANDLERS, PriceUpdate, broken)
    price(system, "199")
    logger.remove(sink)
    dump = next(line for line in lines if "flight recorder" in line)
    assert f"tracker:{pid}#0" in dump
    assert "ApplyOrderUpdate" in dump  # the messages it handled before the crash


def test_redaction_hides_tokens_and_url_passwords() -> None:
    text = redact("postgresql://app:s3cret@db/x access_token=abc.def password: 'hunter2'")
    assert "s3cret" not in text and "abc.def" not in text and "hunter2" not in text
    assert json.dumps(text)


def test_when_trace_viewed_then_story_tree_and_chrome_export_hold(
        traced: tuple[System, Tracer, Path]) -> None:
    system, tracer, path = traced
    pid = open_position(system, entry())
    price(system, "176")
    tracer.close()
    records = list(iter_records(path))

    story = render(records, "tree", Filters(position=pid)).splitlines()
    kinds = [line.split(" ", 1)[0] for line in story if not line.startswith(("  ", "└", " "))]
    assert kinds.index("ApplyOrderUpdate") < kinds.index("ExitRequested")
    assert any("rule: STOP_LOSS: pnl -12.0000% <= -12.00%" in line for line in story)
    by_order = render(records, "tree", Filters(order="E1"))
    assert by_order.splitlines()[0] == story[0]

    exported = json.loads(render(records, "chrome", Filters()))
    events = exported["traceEvents"]
    assert events and all({"ph", "pid", "tid", "name"} <= set(e) for e in events)
    assert all("ts" in e for e in events if e["ph"] != "M")
    assert {e["ph"] for e in events} <= {"X", "i", "M"}


def test_when_sink_falls_behind_then_records_are_dropped_and_counted(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)  # the writer blocks opening it until a reader comes: a sink that lags
    tracer = Tracer(fifo, max_backlog=10)
    for n in range(25):
        tracer.record("index", {"kind": "message", "n": n})
    assert tracer.dropped >= 15
    assert len(tracer.dump("index")) == 25  # the flight recorder keeps everything recent
    with fifo.open("rb") as reader:  # unblock the writer so close() returns
        tracer.close()
        assert reader.read()


def test_when_a_singleton_breaks_on_a_told_message_then_its_flight_recorder_is_logged(
        traced: tuple[System, Tracer, Path]) -> None:
    from tests.actors.test_dispatch import Singleton

    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR")
    ref = Singleton.start()
    try:
        for message in ("first-note", "boom", "after"):
            ref.tell(message)
        assert ref.ask("asked", timeout=5) == ["first-note", "after", "asked"]
    finally:
        ref.stop()
        logger.remove(sink)
    dump = next(line for line in lines if "flight recorder of actor" in line)
    assert "first-note" in dump  # what it handled before
    assert "ValueError: a bug on one message" in dump  # and the message that broke it
    crash = [r for r in traced[1].dump("actor") if r.get("event") == "crash"]
    assert crash and "a bug on one message" in crash[0]["error"]
