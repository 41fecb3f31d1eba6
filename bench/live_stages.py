"""Where a live exit's time goes: ``python -m bench.live_exits --trace F`` aligns the session's
message trace with the fake's stamps (both on CLOCK_MONOTONIC: the trace's ``*_ns`` are
``time.perf_counter_ns()``, the fake's ``time.monotonic()``), exit by exit, from the crossing
tick written on the feed's socket:

- ``index fan-out``: the index tells the position's tracker the crossing price;
- ``tracker takes``: the tracker starts on it;
- ``decided``: the tracker tells the intent writer its exit intent;
- ``committed``: the intent writer, its write committed, tells a gateway actor to place it;
- ``gateway takes``: a gateway actor starts on the placement;
- ``request arrived``: the kernel received the packet holding the request's last byte;
- ``request read``: the fake's event loop read that byte;
- ``handler starts``: the fake's handler for it began (once its headers were in: before
  ``request read`` when the body came in a later read).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from bench.common import percentile

STAGES = ("index fan-out", "tracker takes", "decided", "committed", "gateway takes",
          "request arrived", "request read", "handler starts")


def stages(records: Iterable[dict[str, Any]], price: str, wired: Mapping[str, float],
           requests: Mapping[str, tuple[float | None, float, float | None]], only: set[str],
           slowest: int = 5) -> dict[str, Any]:
    """``price``: the crossing price as the trace prints it (``Decimal('94')``'s ``94``);
    ``wired``: security id → when its crossing tick was written; ``requests``: security id →
    (arrival by the kernel's stamp or None, read, handler start) of its exit placement;
    ``only``: the security ids to report."""
    seen: dict[str, dict[str, float]] = {}
    owner: dict[str, str] = {}  # position id → security id
    decided: dict[str, float] = {}  # position id → its first intent told to the writer
    crossing = f"ltp=Decimal('{price}"
    for record in records:
        kind = record.get("type")
        if kind == "PriceUpdate" and crossing in str(record.get("payload", "")):
            sid = str(record.get("instrument", "")).rpartition(":")[2]
            mine = seen.setdefault(sid, {})
            mine.setdefault("index fan-out", record["enqueued_ns"] / 1e9)
            mine.setdefault("tracker takes", record["start_ns"] / 1e9)
        elif kind == "StoreIntent":
            position = str(record.get("sender", "")).partition(":")[2].partition("#")[0]
            decided.setdefault(position, record["enqueued_ns"] / 1e9)
        elif kind == "PlaceExitOrder" and record.get("start_ns") is not None:
            sid = str(record.get("instrument", "")).rpartition(":")[2]
            owner[str(record.get("position_id"))] = sid
            mine = seen.setdefault(sid, {})
            mine.setdefault("committed", record["enqueued_ns"] / 1e9)
            mine.setdefault("gateway takes", record["start_ns"] / 1e9)
    for position, at in decided.items():
        if position in owner:
            seen.setdefault(owner[position], {}).setdefault("decided", at)
    exits: dict[str, list[float]] = {}
    for sid in only:
        if sid not in wired or sid not in requests:
            continue
        tick = wired[sid]
        arrived, read, handled = requests[sid]
        times = {**seen.get(sid, {}), "request read": read,
                 "request arrived": arrived if arrived is not None else math.nan,
                 "handler starts": handled if handled is not None else math.nan}
        exits[sid] = [round((times.get(stage, math.nan) - tick) * 1000, 2) for stage in STAGES]
    table = {stage: {"p50": percentile(column, 50), "p90": percentile(column, 90),
                     "max": max(column, default=math.nan)}
             for stage, column in zip(STAGES, _columns(exits.values()), strict=True)}
    last = STAGES.index("request arrived")
    worst = sorted(exits.items(), key=lambda item: -(
        item[1][last] if not math.isnan(item[1][last]) else item[1][last + 1]))
    return {"stages_ms": STAGES, "after_tick_ms": table,
            "slowest": [{"security_id": sid, "after_tick_ms": row}
                        for sid, row in worst[:slowest]]}


def _columns(rows: Iterable[list[float]]) -> list[list[float]]:
    columns: list[list[float]] = [[] for _ in STAGES]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            if not math.isnan(value):
                column.append(value)
    return columns
