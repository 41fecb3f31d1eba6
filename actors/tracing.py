"""Message tracing (SPEC §8): one record per handled message, a flight recorder per actor, and an
optional JSON-lines sink that never blocks an actor.

Actors opt in with the ``Traced`` mixin. Their inboxes stamp each envelope with the enqueue time
and the sending actor (the actor handling a message on the sending thread, or ``outside``); the
mixin records start, end, outcome and mailbox depth around ``_handle_receive``.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loguru import logger

_local = threading.local()
_SECRET = re.compile(r"(?i)((?:password|passwd|token|secret|access[_-]?token|api[_-]?key)"
                     r"['\"]?\s*[:=]\s*['\"]?)([^'\",\s)]+)")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def redact(text: str) -> str:
    """Tokens and passwords never reach a record, a log line or a report."""
    return _URL_PASSWORD.sub(r"\1***\3", _SECRET.sub(r"\1***", text))


def current_actor() -> str:
    return getattr(_local, "actor", None) or "outside"


class Tracer:
    """Collects records: an always-on ring per actor, and a file sink when asked for."""

    def __init__(self, path: Path | None = None, *, ring: int = 256,
                 max_backlog: int = 200_000) -> None:
        self.ring_size = ring
        self.rings: dict[str, deque[dict[str, Any]]] = {}
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_backlog)
        self._path = path
        self._writer: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = threading.Thread(target=self._write, args=(path,), daemon=True,
                                            name="trace-writer")
            self._writer.start()

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def record(self, actor: str, record: dict[str, Any]) -> None:
        ring = self.rings.get(actor)
        if ring is None:
            ring = self.rings.setdefault(actor, deque(maxlen=self.ring_size))
        ring.append(record)
        if self._writer is not None:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1

    def lifecycle(self, actor: str, event: str, **fields: Any) -> None:
        self.record(actor, {"kind": "lifecycle", "event": event, "receiver": actor,
                            "start_ns": time.perf_counter_ns(), **fields})

    def dump(self, actor: str) -> list[dict[str, Any]]:
        """The flight recorder of one actor: its most recent records, oldest first."""
        return list(self.rings.get(actor, ()))

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(30)
            self._writer = None
        if self.dropped:
            logger.warning("trace sink fell behind: {} records dropped", self.dropped)

    def _write(self, path: Path) -> None:
        with path.open("a", encoding="utf-8") as out:
            while True:
                batch = [self._queue.get()]
                while len(batch) < 2048:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                done = None in batch
                lines = [json.dumps(r, default=str) for r in batch if r is not None]
                out.write("".join(line + "\n" for line in lines))
                out.flush()
                self.written += len(lines)
                if done:
                    return


_tracer: Tracer | None = None


def install(tracer: Tracer | None) -> None:
    """Set the process's tracer (the composition root does, before starting actors)."""
    global _tracer
    _tracer = tracer


def tracer() -> Tracer | None:
    return _tracer


def domain_keys(message: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    position = getattr(message, "position", None)
    keys["position_id"] = getattr(message, "position_id", None) or getattr(
        position, "position_id", None)
    update = getattr(message, "update", None)
    keys["order_no"] = getattr(update, "order_no", None) or getattr(message, "order_no", None)
    instrument = getattr(message, "instrument", None)
    if instrument is None and position is not None:
        keys["instrument"] = f"{position.segment}:{position.security_id}"
    elif instrument is not None:
        keys["instrument"] = str(instrument)
    return {k: v for k, v in keys.items() if v is not None}


_OMIT = {"message_id", "correlation_id", "causation_id", "sent_at"}


def summarize(message: Any, limit: int = 400) -> str:
    """Type and fields, with a nested position shortened to its id, status and quantity."""
    fields = getattr(type(message), "model_fields", None)
    if fields is None:
        text = repr(message)
    else:
        parts = []
        for name in fields:
            if name in _OMIT:
                continue
            value = getattr(message, name)
            if hasattr(value, "position_id") and hasattr(value, "orders"):
                value = f"<{value.position_id} {value.status} qty={value.quantity}>"
            parts.append(f"{name}={value!r}" if not isinstance(value, str) or name != "position"
                         else f"{name}={value}")
        text = f"{type(message).__name__}({', '.join(parts)})"
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stamp() -> tuple[int, str]:
    """What an inbox stores with an envelope: enqueue time and the sending actor."""
    return time.perf_counter_ns(), current_actor()


class Traced:
    """Mixin for pykka actors: records each message it handles when a tracer is installed."""

    trace_kind = "actor"
    trace_key = ""
    incarnation = 0
    _last_stamp: tuple[int, str] | None = None

    @property
    def trace_name(self) -> str:
        if not self.trace_key:
            return self.trace_kind
        return f"{self.trace_kind}:{self.trace_key}#{self.incarnation}"

    def _handle_receive(self, message: Any) -> Any:
        active = _tracer
        previous = getattr(_local, "actor", None)
        _local.actor = self.trace_name
        if active is None:
            try:
                return super()._handle_receive(message)  # type: ignore[misc]
            finally:
                _local.actor = previous
        start = time.perf_counter_ns()
        outcome = "ok"
        try:
            return super()._handle_receive(message)  # type: ignore[misc]
        except BaseException as error:
            outcome = f"{type(error).__name__}: {redact(str(error))[:200]}"
            raise
        finally:
            _local.actor = previous
            active.record(self.trace_name, self._record(message, start, outcome))

    def _record(self, message: Any, start: int, outcome: str) -> dict[str, Any]:
        enqueued, sender = self._last_stamp or (start, "outside")
        end = time.perf_counter_ns()
        inbox = getattr(self, "actor_inbox", None)
        depth = inbox.qsize() if inbox is not None and hasattr(inbox, "qsize") else None
        return {
            "kind": "message", "message_id": getattr(message, "message_id", None),
            "correlation_id": getattr(message, "correlation_id", None),
            "causation_id": getattr(message, "causation_id", None),
            "sender": sender, "receiver": self.trace_name, "type": type(message).__name__,
            "payload": summarize(message), **domain_keys(message),
            "sent_at": _iso(getattr(message, "sent_at", None)),
            "enqueued_ns": enqueued, "start_ns": start, "end_ns": end,
            "wait_us": (start - enqueued) // 1000, "handle_us": (end - start) // 1000,
            "mailbox_depth": depth, "outcome": outcome,
        }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


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
