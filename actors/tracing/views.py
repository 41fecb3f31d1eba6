"""Views over a trace file (SPEC §8): causal trees, a position's story, per-actor timelines,
errors and dead letters, and the Chrome trace-event format (opens in Perfetto)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    records: list[Record]
    by_id: dict[str, Record] = field(default_factory=dict)
    children: dict[str | None, list[Record]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for record in self.records:
            if record.get("kind") != "message":
                continue
            self.by_id[record["message_id"]] = record
        for record in self.records:
            if record.get("kind") == "message":
                parent = record.get("causation_id")
                self.children[parent if parent in self.by_id else None].append(record)

    def root_of(self, record: Record) -> Record:
        seen = set()
        while (parent := record.get("causation_id")) in self.by_id and parent not in seen:
            seen.add(parent)
            record = self.by_id[parent]
        return record


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


def _line(record: Record) -> str:
    keys = " ".join(f"{k}={record[k]}" for k in ("position_id", "order_no", "instrument")
                    if record.get(k))
    outcome = "" if record.get("outcome", "ok") == "ok" else f"  !! {record['outcome']}"
    return (f"{record['type']} {record.get('sender', '?')} → {record['receiver']} "
            f"[{record.get('sent_at') or ''}] {keys}{outcome}")


def tree(trace: Trace, filters: Filters) -> list[str]:
    """Causal trees of the outside events that touched what the filters select."""
    roots: dict[str, Record] = {}
    for record in trace.records:
        if record.get("kind") == "message" and matches(record, filters):
            root = trace.root_of(record)
            roots.setdefault(root["message_id"], root)
    lines: list[str] = []
    for root in roots.values():
        _walk(trace, root, 0, lines, set())
    return lines


def _walk(trace: Trace, record: Record, depth: int, lines: list[str], seen: set[str]) -> None:
    if record["message_id"] in seen:
        return
    seen.add(record["message_id"])
    lines.append("  " * depth + ("└─ " if depth else "") + _line(record))
    for child in trace.children.get(record["message_id"], []):
        _walk(trace, child, depth + 1, lines, seen)


def story(trace: Trace, filters: Filters) -> list[str]:
    """One position's life in order: updates, prices that mattered, the rule, the exit."""
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
    payload = str(record.get("payload", ""))
    if record["type"] == "ExitRequested" and "detail='" in payload:
        reason = payload.split("ExitReason.", 1)[-1].split(":", 1)[0]
        detail = payload.split("detail='", 1)[1].split("'", 1)[0]
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
    if view == "chrome":
        return json.dumps(chrome(r for r in records if matches(r, filters)))
    trace = Trace(records)
    if view == "timeline":
        lines = timeline(trace, filters)
    elif filters.position or filters.order:
        if filters.order and not filters.position:
            owner = next((r.get("position_id") for r in records
                          if r.get("order_no") == filters.order and r.get("position_id")), None)
            filters = Filters(position=owner, order=None if owner else filters.order,
                              security=filters.security, actor=filters.actor,
                              errors=filters.errors)
        lines = [*story(trace, filters), "", "causal trees:", *tree(trace, filters)]
    else:
        lines = tree(trace, filters)
    return "\n".join(lines) if lines else "no matching records"
