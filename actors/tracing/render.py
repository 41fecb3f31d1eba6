"""Turning what an actor recorded into trace records (SPEC §8), off the actors' path.

An actor keeps only an ``Entry`` per handled message: the message object itself (messages are
immutable), the receiver, the inbox stamp, the ``perf_counter_ns`` times, the mailbox depth and
the outcome. This module renders entries into the record the readers know (``app/trace_views``,
``run.py trace``): as dicts when a flight recorder is dumped, and as JSON lines in the sink's
writer thread. Everything here redacts: secrets never reach a record, a log line or a report.

Once the writer has rendered an entry it puts the rendered head (a string, which the garbage
collector does not track) in place of the message, so a ring stops keeping messages alive: held
for longer, they would be promoted to the oldest generation, and every full collection would
walk them.

The writer shares the GIL with the actors, so rendering is kept cheap: the part of a record that
depends only on the message (ids, type, payload summary, domain keys) is rendered once per
message object in a batch (one ``PriceUpdate`` goes to every tracker on its instrument, one
message to a chain of actors), straight into JSON text without ``json.dumps``; the summary
itself is ``actors.tracing.text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from actors.tracing.text import Plan, field_of, is_bulky, iso, plan_of, redact, short, summary_of

Entry = list[Any]
"""[message, receiver, stamp, start_ns, end_ns, mailbox depth, outcome, head]: the stamp is
(enqueued_ns, sender), or None or (0, ...) when the message was not stamped. A list, so that
the writer can put the rendered head (a plain string) in place of the message (then None)."""


def entry(message: Any, receiver: str, stamp: tuple[int, str] | None, start: int, end: int,
          depth: int | None, outcome: str) -> Entry:
    """What an actor keeps of a handled message: the message itself (it is immutable), or for
    one that holds collections its head, rendered now, so a ring does not keep them alive."""
    if is_bulky(message):
        return [None, receiver, stamp, start, end, depth, outcome, head_json(message)]
    return [message, receiver, stamp, start, end, depth, outcome, None]


def domain_keys(message: Any) -> dict[str, Any]:
    return _domain_keys(message, plan_of(type(message)))


def _domain_keys(message: Any, plan: Plan) -> dict[str, Any]:
    position_id, order_no, instrument = _key_values(message, plan)
    keys = {"position_id": position_id, "order_no": order_no, "instrument": instrument}
    return {key: value for key, value in keys.items() if value is not None}


def _key_values(message: Any, plan: Plan) -> tuple[Any, Any, str | None]:
    """The position, order and instrument a message is about (None for each it does not name)."""
    if not plan.keyed:
        return None, None, None  # most messages name no position, order or instrument
    position, position_id, update, order_no, instrument, progress = plan.keys(message)
    if instrument is not None:
        instrument = short(instrument)
    elif position is not None:
        instrument = f"{position.segment}:{position.security_id}"
    return (position_id or field_of(position, "position_id"),
            field_of(update, "order_no") or order_no or field_of(progress, "order_no"),
            instrument)


def _keys_json(message: Any, plan: Plan) -> str:
    position_id, order_no, instrument = _key_values(message, plan)
    return ((f'"position_id": {_js(position_id)}, ' if position_id is not None else "")
            + (f'"order_no": {_js(order_no)}, ' if order_no is not None else "")
            + (f'"instrument": {_js(instrument)}, ' if instrument is not None else ""))


def _head(message: Any, plan: Plan) -> tuple[Any, Any, Any, str, dict[str, Any], Any]:
    message_id, correlation_id, causation_id, sent_at = plan.ids(message)
    return (message_id, correlation_id, causation_id, summary_of(message, plan),
            _domain_keys(message, plan),
            iso(sent_at) if isinstance(sent_at, datetime) else sent_at)


def message_head(message: Any) -> dict[str, Any]:
    """The part of a record that depends only on the message."""
    try:
        return _message_head(message)
    except Exception as error:  # a summary must never break a dump on a crash
        return _unsummarised(message, error)


def head_json(message: Any) -> str:
    """``message_head`` as the inside of a JSON object, written without ``json.dumps``."""
    try:
        return _head_json(message)
    except Exception as error:  # a summary must never break an actor or the sink
        return json.dumps(_unsummarised(message, error), default=_safe_str)[1:-1]


def _unsummarised(message: Any, error: Exception) -> dict[str, Any]:
    """The head of a message whose summary failed (a field whose ``str`` raises, say)."""
    def read(name: str) -> Any:
        try:
            return getattr(message, name, None)
        except Exception:  # as above: whatever the message does, the record is written
            return None
    name = type(message).__name__
    return {"message_id": read("message_id"), "correlation_id": read("correlation_id"),
            "causation_id": read("causation_id"), "type": name,
            "payload": f"{name}(<not summarised: {type(error).__name__}>)", "sent_at": None}


def _message_head(message: Any) -> dict[str, Any]:
    plan = plan_of(type(message))
    message_id, correlation_id, causation_id, payload, keys, sent_at = _head(message, plan)
    return {"message_id": message_id, "correlation_id": correlation_id,
            "causation_id": causation_id, "type": type(message).__name__, "payload": payload,
            **keys, "sent_at": sent_at}


def _head_json(message: Any) -> str:
    plan = plan_of(type(message))
    if plan.constant is not None:
        return plan.constant
    message_id, correlation_id, causation_id, sent_at = plan.ids(message)
    keys = _keys_json(message, plan) if plan.keyed else ""
    text = (f'"message_id": {_js(message_id)}, "correlation_id": {_js(correlation_id)}, '
            f'"causation_id": {_js(causation_id)}, "type": {plan.type_json}, '
            f'"payload": {_quote(summary_of(message, plan))}, {keys}"sent_at": '
            f'{_js(iso(sent_at) if isinstance(sent_at, datetime) else sent_at)}')
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
        return {k: v if isinstance(v, _JSON_SCALARS) else _safe_str(v) for k, v in item.items()}
    message, receiver, stamp, start, end, depth, outcome, rendered = item
    enqueued, sender = stamp if stamp and stamp[0] else (start, "outside")
    head = message_head(message) if rendered is None else json.loads(f"{{{rendered}}}")
    return {"kind": "message", **head, "sender": sender, "receiver": receiver,
            "enqueued_ns": enqueued, "start_ns": start, "end_ns": end,
            "wait_us": (start - enqueued) // 1000, "handle_us": (end - start) // 1000,
            "mailbox_depth": depth, "outcome": outcome}


def _safe_str(value: Any) -> str:
    try:
        text = str(value)
    except Exception:  # as in head_json: a value that cannot be shown is named instead
        text = f"<{type(value).__name__}>"
    return redact(text)


_OK = _quote("ok")


class LineRenderer:
    """JSON lines for the sink, the same records as ``to_dict`` gives, rendered cheaply."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def lines(self, batch: Iterable[Entry | dict[str, Any]]) -> str:
        # Heads by id of message: every message in the batch was alive when the batch was
        # taken, so no two share an id, even once a rendered one is dropped from its entry.
        heads: dict[int, str] = {}
        out = []
        for item in batch:
            if isinstance(item, dict):
                out.append(json.dumps(to_dict(item)) + "\n")
                continue
            head = item[7]
            if head is None:
                message = item[0]
                head = heads.get(id(message))
                if head is None:
                    head = heads[id(message)] = head_json(message)
                item[7], item[0] = head, None
            out.append(self._line(item, head))
        if len(self._names) > 100_000:
            self._names.clear()  # actor names churn with restarts; keep the cache bounded
        return "".join(out)

    def _line(self, item: Entry, head: str) -> str:
        _, receiver, stamp, start, end, depth, outcome, _ = item
        enqueued, sender = stamp if stamp and stamp[0] else (start, "outside")
        names = self._names
        return (f'{{"kind": "message", {head}, '
                f'"sender": {names.get(sender) or self._name(sender)}, '
                f'"receiver": {names.get(receiver) or self._name(receiver)}, '
                f'"enqueued_ns": {enqueued}, '
                f'"start_ns": {start}, "end_ns": {end}, "wait_us": {(start - enqueued) // 1000}, '
                f'"handle_us": {(end - start) // 1000}, '
                f'"mailbox_depth": {"null" if depth is None else depth}, '
                f'"outcome": {_OK if outcome == "ok" else _quote(outcome)}}}\n')

    def _name(self, name: str) -> str:
        quoted = self._names.get(name)
        if quoted is None:
            quoted = self._names[name] = _quote(name)
        return quoted
