"""Trace records are rendered off the actors' path, the same in the sink and in a dump, and
never show a secret."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pykka
import pytest
from loguru import logger

from actors.runtime.dispatch import SingletonActor
from actors.tracing import recorder as tracing
from actors.tracing import render as trace_render
from actors.tracing.recorder import Tracer, iter_records
from actors.tracing.text import Plan, summary_of
from models.common import IST
from tests.actors.test_tracker_flow import System, entry, open_position, price
from tests.fakes import FakeGateway, FakeStore

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=IST)
SECRETS = ("s3cret", "abc.def", "hunter2", "tok-42")


@dataclass(frozen=True)
class Note:
    message_id: str
    correlation_id: str
    text: str
    sent_at: datetime


class Boom(Exception):
    pass


class Echo(SingletonActor):
    trace_kind = "echo"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Note) and message.text.startswith("boom"):
            raise Boom(message.text)
        if message == "who are you":
            return weakref.ref(self)
        return "ok"


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[pykka.ActorRef[Any], Tracer, Path]]:
    path = tmp_path / "trace.jsonl"
    tracer = Tracer(path)
    tracing.install(tracer)
    ref = Echo.start()
    yield ref, tracer, path
    pykka.ActorRegistry.stop_all()
    tracing.install(None)
    tracer.close()


def note(n: int, text: str) -> Note:
    return Note(message_id=f"m{n}", correlation_id="c1", text=text, sent_at=T0)


def test_when_messages_and_errors_hold_secrets_then_no_record_or_dump_shows_them(
        echo: tuple[pykka.ActorRef[Any], Tracer, Path]) -> None:
    ref, tracer, path = echo
    assert ref.ask(note(1, "postgresql://app:s3cret@db/x access_token=abc.def"), timeout=5)
    with pytest.raises(Boom):
        ref.ask(note(2, "boom: password: 'hunter2'"), timeout=5)
    tracer.lifecycle("echo", "crash", error="redis://u:tok-42@cache/0 refused")
    dumped = json.dumps(tracer.dump("echo"))
    tracer.close()
    written = path.read_text()
    records = list(iter_records(path))

    assert [r.get("message_id") for r in records] == ["m1", "m2", None]
    assert records[1]["outcome"].startswith("Boom: boom: password:")
    assert records[2]["error"] == "redis://u:***@cache/0 refused"
    for secret in SECRETS:
        assert secret not in written and secret not in dumped


def test_when_a_traced_system_runs_then_sink_lines_equal_the_flight_recorders(
        tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    tracer = Tracer(path)
    tracing.install(tracer)
    try:
        system = System(FakeStore(), FakeGateway())
        pid = open_position(system, entry())
        price(system, "176")
        price(system, "199")
        pykka.ActorRegistry.stop_all()
    finally:
        tracing.install(None)
        tracer.close()
    by_receiver: dict[str, list[dict[str, Any]]] = {}
    for record in iter_records(path):
        by_receiver.setdefault(record["receiver"], []).append(record)

    assert set(by_receiver) == set(tracer.rings) == {"index", "supervisor", "gateway",
                                                     f"tracker:{pid}#0"}
    for actor, written in by_receiver.items():
        assert len(written) < tracer.ring_size  # the ring still holds every record
        assert json.loads(json.dumps(tracer.dump(actor), default=str)) == written


def test_when_only_the_ring_is_on_then_nothing_is_rendered_until_a_dump(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[object] = []

    def counting(message: object, plan: Plan) -> str:
        rendered.append(message)
        return summary_of(message, plan)

    monkeypatch.setattr(trace_render, "summary_of", counting)
    tracer = Tracer(None)
    tracing.install(tracer)
    try:
        ref = Echo.start()
        for n in range(20):
            ref.ask(note(n, f"n={n}"), timeout=5)
        assert rendered == []
        dump = tracer.dump("echo")
    finally:
        pykka.ActorRegistry.stop_all()
        tracing.install(None)
    assert [r["payload"] for r in dump] == [
        f"Note(text='n={n}')" for n in range(20)]
    assert len(rendered) == 20


@dataclass(frozen=True)
class Batch:
    message_id: str
    correlation_id: str
    items: tuple[int, ...]
    sent_at: datetime


def test_when_a_message_holds_a_collection_then_the_ring_keeps_its_summary_not_the_message(
        ) -> None:
    tracer = Tracer(None)
    tracing.install(tracer)
    try:
        ref = Echo.start()
        batch = Batch(message_id="b1", correlation_id="c1", items=tuple(range(1000)), sent_at=T0)
        ref.ask(batch, timeout=5)
        ref.ask(note(2, "the actor loop lets go of the batch"), timeout=5)
        gone = weakref.ref(batch)
        del batch
        gc.collect()
        dump = tracer.dump("echo")
    finally:
        pykka.ActorRegistry.stop_all()
        tracing.install(None)
    assert gone() is None
    assert dump[0]["message_id"] == "b1"
    assert dump[0]["payload"].startswith("Batch(items=(0, 1, 2, ")


def test_when_the_sink_has_written_an_entry_then_the_ring_no_longer_holds_its_message(
        echo: tuple[pykka.ActorRef[Any], Tracer, Path]) -> None:
    ref, tracer, path = echo
    message = note(1, "kept until written")
    ref.ask(message, timeout=5)
    ref.ask(note(2, "the actor loop lets go of the first"), timeout=5)
    gone = weakref.ref(message)
    del message
    tracer.close()  # the writer has rendered everything
    gc.collect()
    assert gone() is None
    assert tracer.dump("echo") == list(iter_records(path))


@dataclass(frozen=True)
class Introduce:
    """A message naming an actor, in a collection (so it is summarised when handled)."""

    refs: tuple[pykka.ActorRef[Any], ...]


def test_when_traced_actors_stop_then_tracing_keeps_none_of_them_alive(tmp_path: Path) -> None:
    tracer: Tracer | None = Tracer(tmp_path / "trace.jsonl")
    tracing.install(tracer)
    target = Echo.start()
    probe = Echo.start()
    probe.ask(Introduce(refs=(target,)), timeout=5)
    probe.ask(note(1, f"about {target}"), timeout=5)
    actor = cast("weakref.ref[Echo]", target.ask("who are you", timeout=5))
    target.stop()
    probe.stop()
    tracing.install(None)
    assert tracer is not None
    tracer.close()
    assert "ActorRef" not in json.dumps(tracer.dump("echo"))  # actor refs shown by name only
    del tracer, target
    gc.collect()
    assert actor() is None


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot say")


@dataclass(frozen=True)
class Odd:
    message_id: str
    value: Unprintable


def test_when_a_message_cannot_be_summarised_then_it_is_still_handled_and_recorded(
        echo: tuple[pykka.ActorRef[Any], Tracer, Path]) -> None:
    ref, tracer, path = echo
    assert ref.ask(Odd(message_id="o1", value=Unprintable()), timeout=5) == "ok"
    dumped = tracer.dump("echo")
    tracer.close()
    written = list(iter_records(path))
    assert dumped == written
    assert written[0]["message_id"] == "o1"
    assert written[0]["payload"] == "Odd(<not summarised: RuntimeError>)"


def test_when_the_sink_cannot_open_its_file_then_it_says_so_and_counts_what_it_drops(
        tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING")
    tracer = Tracer(tmp_path, max_backlog=5)  # a directory: it cannot be opened for writing
    for n in range(10):
        tracer.lifecycle("echo", "spawn", n=n, error=Unprintable())
    tracer.close()
    logger.remove(sink)
    assert tracer.dropped == 5 and tracer.written == 0
    assert any("trace sink cannot open" in line for line in lines)
    assert [r["error"] for r in tracer.dump("echo")] == ["<Unprintable>"] * 10


def test_when_a_message_was_sent_before_tracing_began_then_its_wait_counts_from_its_start(
        ) -> None:
    assert tracing.stamp() == (0, "outside")  # no tracer: inboxes stamp nothing
    unstamped = [note(1, "early"), "echo", tracing.stamp(), 7_000_000, 9_000_000, 0, "ok", None]
    record = trace_render.to_dict(list(unstamped))
    line = json.loads(trace_render.LineRenderer().lines([list(unstamped)]))
    assert record == line
    assert (line["enqueued_ns"], line["wait_us"], line["sender"]) == (7_000_000, 0, "outside")
    assert line["handle_us"] == 2_000
