"""Turning what an actor recorded into trace records (SPEC §8), off the actors' path.

An actor keeps only an ``Entry`` per handled message: the message object itself (messages are
immutable), the receiver, the inbox stamp, the ``perf_counter_ns`` times, the mailbox depth and
the outcome. This module renders entries into the record the readers know (``app/trace_views``,
``run.py trace``): as dicts when a flight recorder is dumped, and as JSON lines in the sink's
writer thread. Everything here redacts: secrets never reach a record, a log line or a report.

The writer shares the GIL with the actors, so rendering is kept cheap: the part of a record that
depends only on the message (ids, type, payload summary, domain keys) is rendered once per
message object in a batch (one ``PriceUpdate`` goes to every tracker on its instrument, one
message to a chain of actors), straight into JSON text without ``json.dumps``; the summary
itself is ``actors.trace_text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from actors.trace_text import Plan, field_of, iso, plan_of, redact, summary_of

Entry = tuple[Any, str, "tuple[int, str] | None", int, int, "int | None", str]
"""message, receiver, (enqueued_ns, sender) or None, start_ns, end_ns, mailbox depth, outcome"""


def domain_keys(message: Any) -> dict[str, Any]:
    return _domain_keys(message, plan_of(type(message)))


def _domain_keys(message: Any, plan: Plan) -> dict[str, Any]:
    if not plan.keyed:
        return {}  # most messages name no position, order or instrument
    got = dict(zip(plan.keyed, plan.keys(message), strict=True))
    position = got.get("position")
    keys: dict[str, Any] = {}
    position_id = got.get("position_id") or field_of(position, "position_id")
    if position_id is not None:
        keys["position_id"] = position_id
    order_no = field_of(got.get("update"), "order_no") or got.get("order_no")
    if order_no is not None:
        keys["order_no"] = order_no
    instrument = got.get("instrument")
    if instrument is not None:
        keys["instrument"] = str(instrument)
    elif position is not None:
        keys["instrument"] = f"{position.segment}:{position.security_id}"
    return keys


def _head(message: Any, plan: Plan) -> tuple[Any, Any, Any, str, dict[str, Any], Any]:
    message_id, correlation_id, causation_id, sent_at = plan.ids(message)
    return (message_id, correlation_id, causation_id, summary_of(message, plan),
            _domain_keys(message, plan),
            iso(sent_at) if isinstance(sent_at, datetime) else sent_at)


def message_head(message: Any) -> dict[str, Any]:
    """The part of a record that depends only on the message."""
    plan = plan_of(type(message))
    message_id, correlation_id, causation_id, payload, keys, sent_at = _head(message, plan)
    return {"message_id": message_id, "correlation_id": correlation_id,
            "causation_id": causation_id, "type": type(message).__name__, "payload": payload,
            **keys, "sent_at": sent_at}


def head_json(message: Any) -> str:
    """``message_head`` as the inside of a JSON object, written without ``json.dumps``."""
    plan = plan_of(type(message))
    if plan.constant is not None:
        return plan.constant
    message_id, correlation_id, causation_id, payload, keys, sent_at = _head(message, plan)
    text = (f'"message_id": {_js(message_id)}, "correlation_id": {_js(correlation_id)}, '
            f'"causation_id": {_js(causation_id)}, "type": {plan.type_json}, '
            f'"payload": {_quote(payload)}, '
            + "".join([f'"{key}": {_js(value)}, ' for key, value in keys.items()])
            + f'"sent_at": {_js(sent_at)}')
    if plan.fields == ():
        plan.constant = text  # nothing in it depends on the instance
    return text


def _js(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is str:
        return _quote(value)
    return json.dumps(value, default=_safe_str)


_JSON_SCALARS = (int, float, bool, type(None))


def to_dict(item: Entry | dict[str, Any]) -> dict[str, Any]:
    """One record as the readers know it (a flight-recorder dump)."""
    if isinstance(item, dict):
        return {k: v if isinstance(v, _JSON_SCALARS) else redact(str(v))
                for k, v in item.items()}
    message, receiver, stamp, start, end, depth, outcome = item
    enqueued, sender = stamp or (start, "outside")
    return {"kind": "message", **message_head(message), "sender": sender, "receiver": receiver,
            "enqueued_ns": enqueued, "start_ns": start, "end_ns": end,
            "wait_us": (start - enqueued) // 1000, "handle_us": (end - start) // 1000,
            "mailbox_depth": depth, "outcome": outcome}


def _safe_str(value: Any) -> str:
    return redact(str(value))


class LineRenderer:
    """JSON lines for the sink, the same records as ``to_dict`` gives, rendered cheaply."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def lines(self, batch: Iterable[Entry | dict[str, Any]]) -> str:
        heads: dict[int, str] = {}  # id(message) is unique while the batch holds the message
        out = []
        for item in batch:
            if isinstance(item, dict):
                out.append(json.dumps(to_dict(item)))
                continue
            head = heads.get(id(item[0]))
            if head is None:
                head = heads[id(item[0])] = head_json(item[0])
            out.append(self._line(item, head))
        if len(self._names) > 100_000:
            self._names.clear()  # actor names churn with restarts; keep the cache bounded
        return "".join(line + "\n" for line in out)

    def _line(self, item: Entry, head: str) -> str:
        _, receiver, stamp, start, end, depth, outcome = item
        enqueued, sender = stamp or (start, "outside")
        return (f'{{"kind": "message", {head}, "sender": {self._name(sender)}, '
                f'"receiver": {self._name(receiver)}, "enqueued_ns": {enqueued}, '
                f'"start_ns": {start}, "end_ns": {end}, "wait_us": {(start - enqueued) // 1000}, '
                f'"handle_us": {(end - start) // 1000}, '
                f'"mailbox_depth": {"null" if depth is None else int(depth)}, '
                f'"outcome": {self._name(outcome) if outcome == "ok" else _quote(outcome)}}}')

    def _name(self, name: str) -> str:
        quoted = self._names.get(name)
        if quoted is None:
            quoted = self._names[name] = _quote(name)
        return quoted
