"""Message tracing (SPEC §8): one record per handled message, a flight recorder per actor, and an
optional JSON-lines sink that never blocks an actor.

Actors opt in with the ``Traced`` mixin. Their inboxes stamp each envelope with the enqueue time
and the sending actor (the actor handling a message on the sending thread, or ``outside``); the
mixin records start, end, outcome and mailbox depth around ``receive``
(``actors/runtime/pykka_compat.py``).

An actor pays only for keeping what it already has (``actors.trace_render.entry``); the record
(summary, redaction, domain keys, ISO times) is rendered when it leaves the actor's path: when a
flight recorder is dumped, and in the sink's writer thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from actors.tracing.render import Entry, LineRenderer, domain_keys, entry, to_dict
from actors.tracing.text import redact, summarize

__all__ = ["Traced", "Tracer", "current_actor", "domain_keys", "dump_on_crash", "handling",
           "install", "iter_records", "redact", "stamp", "summarize", "tracer"]

_local = threading.local()
_perf_ns = time.perf_counter_ns
Item = Entry | dict[str, Any]
"""What a ring holds: an actor's compact entry, or a ready record (lifecycle events)."""


def current_actor() -> str:
    return getattr(_local, "actor", None) or "outside"


def handling() -> Any:
    """The message a traced actor is handling on this thread (None outside a handler): what
    an edge told from within a handler is a consequence of (``System.order_frame``)."""
    return getattr(_local, "message", None)


class Tracer:
    """Collects records: an always-on ring per actor, and a file sink when asked for.

    Entries are rendered into records only when they leave the actor's path: on ``dump`` and in
    the sink's writer thread, which polls a plain deque (an append is all an actor pays).
    """

    def __init__(self, path: Path | None = None, *, ring: int = 256,
                 max_backlog: int = 200_000, poll_s: float = 0.02) -> None:
        self.ring_size = ring
        self.rings: dict[str, deque[Item]] = {}
        self.dropped = 0  # records the sink had no room for
        self.failed = 0  # records it could not write
        self.written = 0
        self._pending: deque[Item] = deque()
        self._max_backlog = max_backlog
        self._poll_s = poll_s
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = threading.Thread(target=self._write, args=(path,), daemon=True,
                                            name="trace-writer")
            self._writer.start()

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    @property
    def backlog(self) -> int:
        """Records waiting for the writer (how far the sink is behind)."""
        return len(self._pending)

    def record(self, actor: str, record: Item) -> None:
        ring = self.rings.get(actor)
        if ring is None:
            ring = self.rings.setdefault(actor, deque(maxlen=self.ring_size))
        ring.append(record)
        if self._writer is not None:
            if len(self._pending) < self._max_backlog:
                self._pending.append(record)
            else:
                self.dropped += 1

    def lifecycle(self, actor: str, event: str, **fields: Any) -> None:
        self.record(actor, {"kind": "lifecycle", "event": event, "receiver": actor,
                            "start_ns": _perf_ns(), **fields})

    def dump(self, actor: str) -> list[dict[str, Any]]:
        """The flight recorder of one actor: its most recent records, oldest first, redacted."""
        return [to_dict(item) for item in list(self.rings.get(actor, ()))]

    def close(self) -> None:
        if self._writer is not None:
            self._closing.set()
            self._writer.join(30)
            self._writer = None
        if self.dropped:
            logger.warning("trace sink fell behind: {} records dropped", self.dropped)
        if self.failed:
            logger.error("trace sink failed to write {} records", self.failed)

    def _write(self, path: Path) -> None:
        try:
            out = path.open("ab")  # the lines are ASCII, so encoding them is a copy
        except OSError:
            logger.exception("trace sink cannot open {}; records will be dropped", path)
            return
        with out:
            self._drain(out)

    def _drain(self, out: BinaryIO) -> None:
        renderer = LineRenderer()
        while True:
            closing = self._closing.is_set()
            batch = self._take(4096)
            if batch:
                self._write_batch(batch, renderer, out)
            if closing and not self._pending:
                return
            if len(batch) < 4096:
                # Let entries gather: bigger batches share more rendering per message.
                self._closing.wait(self._poll_s)

    def _write_batch(self, batch: list[Item], renderer: LineRenderer, out: BinaryIO) -> None:
        try:
            out.write(renderer.lines(batch).encode())
            out.flush()
        except Exception:  # a full disk, say: count the loss and keep the writer alive
            if not self.failed:
                logger.exception("trace sink could not write {} records", len(batch))
            self.failed += len(batch)
        else:
            self.written += len(batch)

    def _take(self, most: int) -> list[Item]:
        pending = self._pending  # only this thread takes from it, so len() is a lower bound
        return [pending.popleft() for _ in range(min(most, len(pending)))]


_tracer: Tracer | None = None


def dump_on_crash(actor: str, error: BaseException | None) -> None:
    """The crash of ``actor`` as a lifecycle record, and its flight recorder (the messages it
    handled last, the breaking one included) in the log. Nothing without a tracer."""
    active = _tracer
    if active is None:
        return
    active.lifecycle(actor, "crash", error=redact(str(error))[:200])
    records = active.dump(actor)
    logger.error("flight recorder of {} (last {} messages):\n{}", actor, len(records),
                 "\n".join(json.dumps(r, default=str) for r in records))


def install(tracer: Tracer | None) -> None:
    """Set the process's tracer (the composition root does, before starting actors)."""
    global _tracer
    _tracer = tracer


def tracer() -> Tracer | None:
    return _tracer


def stamp() -> tuple[int, str]:
    """What an inbox stores with an envelope: enqueue time and the sending actor (nothing to
    measure while no tracer is installed: every message pays for this, traced or not)."""
    if _tracer is None:
        return _UNSTAMPED
    return _perf_ns(), getattr(_local, "actor", None) or "outside"


_UNSTAMPED = (0, "outside")  # records of messages stamped so take their start as enqueue time


class Traced:
    """Mixin for pykka actors: records each message it handles when a tracer is installed.

    On the actor's path only the entry is built (a list of what is already at hand); the name
    is fixed when the first message is handled (kind, key and incarnation are set by then).
    """

    trace_kind = "actor"
    trace_key = ""
    incarnation = 0
    _last_stamp: tuple[int, str] | None = None
    _trace_name: str | None = None

    @property
    def trace_name(self) -> str:
        if not self.trace_key:
            return self.trace_kind
        return f"{self.trace_kind}:{self.trace_key}#{self.incarnation}"

    def receive(self, message: Any) -> Any:
        active = _tracer
        local = _local
        previous, handled = getattr(local, "actor", None), getattr(local, "message", None)
        name = self._trace_name
        if name is None:
            name = self._trace_name = self.trace_name
        local.actor, local.message = name, message
        if active is None:
            try:
                return super().receive(message)  # type: ignore[misc]
            finally:
                local.actor, local.message = previous, handled
        start = _perf_ns()
        outcome = "ok"
        try:
            return super().receive(message)  # type: ignore[misc]
        except BaseException as error:
            outcome = f"{type(error).__name__}: {redact(str(error))[:200]}"
            raise
        finally:
            local.actor, local.message = previous, handled
            active.record(name, entry(message, name, self._last_stamp, start, _perf_ns(),
                                      self._mailbox_depth(), outcome))

    def _mailbox_depth(self) -> int | None:
        try:
            return int(self.actor_inbox.qsize())  # type: ignore[attr-defined]
        except AttributeError:
            return None


def iter_records(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON trace record ({error})") from None
