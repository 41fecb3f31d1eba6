"""Views over a trace file (SPEC §8): causal trees, a position's story, per-actor timelines,
errors and dead letters, and the Chrome trace-event format (opens in Perfetto)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from actors.tracing.story import field_value, narrate, owner_of_order, position_story

Record = dict[str, Any]


@dataclass
class Filters:
    position: str | None = None
    order: str | None = None
    security: str | None = None
    actor: str | None = None
    errors: bool = False


@dataclass
class Trace:
    """Records as causal trees: a node is one message (told to one or more actors), its children
    the messages sent while handling it. A record without a ``message_id`` (a pykka proxy call
    from an edge, an actor's stop) has no place in a tree and is left out of it; every message
    whose cause is not in the trace (an order frame, a timer, a price batch, an operator's
    command) is the root of its own tree."""

    records: list[Record]
    deliveries: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    children: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for record in self.records:
            if record.get("kind") == "message" and record.get("message_id"):
                self.deliveries[record["message_id"]].append(record)
        for told in self.deliveries.values():
            # In the order told, not handled: a message an actor passes on (the supervisor, a
            # timer to the trackers) may be handled by them before the first receiver is done.
            told.sort(key=_enqueued)
        for message_id, told in self.deliveries.items():
            parent = told[0].get("causation_id")
            if parent in self.deliveries and parent != message_id:
                self.children[parent].append(message_id)

    @property
    def by_id(self) -> dict[str, Record]:
        return {message_id: told[0] for message_id, told in self.deliveries.items()}

    def root_of(self, record: Record) -> Record | None:
        """The outside event ``record`` descends from (None for a record outside any tree)."""
        message_id = record.get("message_id")
        if not message_id or message_id not in self.deliveries:
            return None
        seen = {message_id}
        while (parent := self.deliveries[message_id][0].get("causation_id")) \
                in self.deliveries and parent not in seen:
            seen.add(parent)
            message_id = parent
        return self.deliveries[message_id][0]

    def roots(self) -> list[Record]:
        return [told[0] for message_id, told in self.deliveries.items()
                if told[0].get("causation_id") not in self.deliveries
                or told[0].get("causation_id") == message_id]


def _enqueued(record: Record) -> int:
    return int(record.get("enqueued_ns") or record.get("start_ns") or 0)


def matches(record: Record, filters: Filters) -> bool:
    if filters.position and record.get("position_id") != filters.position:
        return False
    if filters.order and record.get("order_no") != filters.order:
        return False
    if filters.security and not str(record.get("instrument", "")).endswith(
            f":{filters.security}"):
        return False
    if filters.actor and filters.actor not in str(record.get("receiver", "")):
        return False
    return not (filters.errors and record.get("outcome", "ok") == "ok"
                and record.get("event") not in {"crash", "dead_letter", "quarantine"})


def _line(record: Record, receivers: list[str] | None = None) -> str:
    keys = " ".join(f"{k}={record[k]}" for k in ("position_id", "order_no", "instrument")
                    if record.get(k))
    outcome = "" if record.get("outcome", "ok") == "ok" else f"  !! {record['outcome']}"
    told = ", ".join(receivers) if receivers else record["receiver"]
    return (f"{record['type']} {record.get('sender', '?')} → {told} "
            f"[{record.get('sent_at') or ''}] {keys}{outcome}")


def tree(trace: Trace, filters: Filters) -> list[str]:
    """Causal trees of the outside events that touched what the filters select: one root per
    outside event, each message once with every actor it was told to."""
    roots: dict[str, Record] = {}
    everything = filters == Filters()
    for record in trace.roots() if everything else trace.records:
        if record.get("kind") != "message" or not matches(record, filters):
            continue
        root = trace.root_of(record)
        if root is not None:
            roots.setdefault(root["message_id"], root)
    lines: list[str] = []
    seen: set[str] = set()
    for root in roots.values():
        _walk(trace, root["message_id"], 0, lines, seen)
    return lines


def _walk(trace: Trace, message_id: str, depth: int, lines: list[str], seen: set[str]) -> None:
    if message_id in seen:
        return
    seen.add(message_id)
    told = trace.deliveries[message_id]
    lines.append("  " * depth + ("└─ " if depth else "") +
                 _line(told[0], [str(r.get("receiver")) for r in told]) +
                 "".join(f"  !! {r['receiver']}: {r['outcome']}" for r in told[1:]
                         if r.get("outcome", "ok") != "ok"))
    for child in trace.children.get(message_id, []):
        _walk(trace, child, depth + 1, lines, seen)


def messages(trace: Trace, filters: Filters) -> list[str]:
    """The messages of a position's life that tell it: updates, the rule, the exit."""
    lines = []
    interesting = {"ApplyOrderUpdate", "ApplyProgress", "CreatePosition", "PositionOpened",
                   "ExitRequested", "ExitOrderPlaced", "ExitOrderFailed", "PositionClosed",
                   "RequestExit", "TrackerFailed"}
    for record in timeline_records(trace, filters):
        if record.get("kind") == "lifecycle":
            lines.append(f"{record.get('receiver')}: {record.get('event')} "
                         f"{record.get('error', '')}")
        elif record["type"] in interesting or record.get("outcome", "ok") != "ok":
            lines.append(_line(record) + _why(record))
    return lines


def _why(record: Record) -> str:
    if record["type"] == "ExitRequested":
        payload = str(record.get("payload", ""))
        reason, detail = field_value(payload, "reason"), field_value(payload, "detail")
        if reason and detail:
            return f"\n    rule: {reason}: {detail}"
    return ""


def timeline_records(trace: Trace, filters: Filters) -> list[Record]:
    selected = [r for r in trace.records if matches(r, filters)]
    return sorted(selected, key=lambda r: r.get("start_ns") or 0)


def timeline(trace: Trace, filters: Filters) -> list[str]:
    lines = []
    for record in timeline_records(trace, filters):
        if record.get("kind") == "lifecycle":
            lines.append(f"{record.get('receiver')}: {record.get('event')}")
            continue
        lines.append(f"{record['start_ns'] / 1e9:14.6f} {record['receiver']:<28} "
                     f"{record['type']:<18} wait {record['wait_us']}µs handle "
                     f"{record['handle_us']}µs depth {record.get('mailbox_depth')}"
                     f" {record.get('outcome')}")
    return lines


def chrome(records: Iterable[Record]) -> dict[str, Any]:
    """Chrome trace-event JSON: one complete event (ph X) per handled message."""
    threads: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for record in records:
        actor = str(record.get("receiver", "?"))
        tid = threads.setdefault(actor, len(threads) + 1)
        if record.get("kind") == "lifecycle":
            events.append({"name": record.get("event", "lifecycle"), "ph": "i", "s": "t",
                           "ts": record.get("start_ns", 0) / 1000, "pid": 1, "tid": tid})
            continue
        events.append({"name": record["type"], "cat": record["type"], "ph": "X",
                       "ts": record["start_ns"] / 1000, "dur": max(record["handle_us"], 1),
                       "pid": 1, "tid": tid,
                       "args": {k: record.get(k) for k in ("message_id", "correlation_id",
                                                           "causation_id", "sender",
                                                           "position_id", "order_no",
                                                           "outcome", "wait_us")}})
    for actor, tid in threads.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                       "args": {"name": actor}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def render(records: list[Record], view: str, filters: Filters) -> str:
    """What ``run.py trace`` prints: ``chrome`` and ``json`` as JSON documents; a position's
    story (``--position`` or ``--order``), or causal trees."""
    if view == "chrome":
        return json.dumps(chrome(r for r in records if matches(r, filters)))
    trace = Trace(records)
    if view == "timeline":
        lines = timeline(trace, filters)
        return "\n".join(lines) if lines else "no matching records"
    owner = filters.position
    if filters.order and not owner:
        owner = owner_of_order(records, filters.order)
        if owner is None:
            return f"no position owns order {filters.order} in this trace"
    if owner is None:
        if view == "json":
            return json.dumps({"trees": [_tree_json(trace, root["message_id"])
                                         for root in trace.roots() if matches(root, filters)]})
        lines = tree(trace, filters)
        return "\n".join(lines) if lines else "no matching records"
    if not any(r.get("position_id") == owner for r in records):
        return f"no records of position {owner} in this trace"
    story = position_story(records, owner)
    if view == "json":
        return json.dumps(story, indent=2)
    selected = replace(filters, position=owner, order=None)
    return "\n".join([*narrate(story), "", "messages:", *messages(trace, selected), "",
                      "causal trees:", *tree(trace, selected)])


def _tree_json(trace: Trace, message_id: str) -> dict[str, Any]:
    told = trace.deliveries[message_id]
    first = told[0]
    return {"type": first.get("type"), "message_id": message_id, "sender": first.get("sender"),
            "receivers": [r.get("receiver") for r in told], "sent_at": first.get("sent_at"),
            **{k: first[k] for k in ("position_id", "order_no", "instrument") if first.get(k)},
            "children": [_tree_json(trace, child) for child in trace.children.get(message_id, [])]}
