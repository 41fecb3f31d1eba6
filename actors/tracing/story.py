"""Why did it exit? The story of one position, told with numbers, from a trace (SPEC §8).

Read from the records the actors left (their payload summaries, ``actors/tracing/text.py``):

- opened: side, quantity, entry price, time, entry order and its fills;
- the marks that moved: peak, trailing stop armed and moved, with the price that moved them;
- the decision: the price (or the timer) and the rule that decided, with the rule's numbers; the
  wall time from that price entering the system to the decision and to the exit order;
- the exit orders and their fills, and how it closed: exit price, realised and net PnL.

``position_story`` gives it as data (``--format json``), ``narrate`` as lines of text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from models.marks import order_fees, realized_pnl

Record = dict[str, Any]

_FIELD = (r"(?:Decimal\('(?P<d>[^']*)'\)"  # Decimal('1.5')
          r"|'(?P<s>(?:[^'\\]|\\.)*)'"  # 'text'
          r"|<[A-Za-z]+\.(?P<e>[A-Z_]+): [^>]*>"  # <ExitReason.STOP_LOSS: 'STOP_LOSS'>
          r"|(?P<r>[^,)\s>]+))")  # 10, None, 2026-11-23T10:00:00+05:30
_POSITION = re.compile(r"<(?P<id>\S+) (?P<status>[A-Z]+) (?P<side>[A-Z]+) (?P<rest>[^>]*)>")
_MARKS_SHOWN = 40
"""Mark moves listed in full; past it the first and last ones are (a trending day moves the
peak at every new high)."""


def field_value(payload: str, name: str) -> str | None:
    """The value of ``name=...`` in a payload summary (a Decimal's digits, a string's text, an
    enum's member name), or None."""
    match = re.search(rf"\b{re.escape(name)}={_FIELD}", payload)
    if match is None:
        return None
    for group in ("d", "s", "e", "r"):
        if match.group(group) is not None:
            value = match.group(group)
            return None if value == "None" and group == "r" else value
    return None


def position_fields(payload: str) -> dict[str, str]:
    """The short form of a position in a payload: ``<P1 ACTIVE LONG qty=10 entry=100 ...>``."""
    match = _POSITION.search(payload)
    if match is None:
        return {}
    found = {"position_id": match["id"], "status": match["status"], "side": match["side"]}
    for pair in match["rest"].split():
        key, _, value = pair.partition("=")
        found[key] = value
    return found


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"


def _price(value: Decimal | None) -> str:
    if value is None:
        return "?"
    return f"{value.quantize(Decimal('0.000001')).normalize():f}"


def _clock(at: str | None) -> str:
    """``HH:MM:SS`` (with the fraction when there is one) of an ISO time, as it was sent."""
    if not at or "T" not in at:
        return "--:--:--"
    time = at.split("T", 1)[1]
    for sign in ("+", "-", "Z"):
        time = time.split(sign, 1)[0]
    return time


@dataclass
class _Order:
    order_no: str
    qty: int = 0
    value: Decimal = Decimal(0)
    fills: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, cumulative: int, avg: Decimal | None, at: str | None,
              status: str | None) -> None:
        """A fill is the growth of the cumulative traded quantity (as the tracker applies it)."""
        if cumulative <= self.qty or avg is None:
            return
        total = avg * cumulative
        delta = cumulative - self.qty
        price = (total - self.value) / delta
        self.fills.append({"at": at, "qty": delta, "price": _price(price), "status": status})
        self.qty, self.value = cumulative, total


def _progress(record: Record) -> tuple[str | None, int, Decimal | None, str | None]:
    """(order no, cumulative traded qty, average price, status) of an order update record."""
    payload = str(record.get("payload", ""))
    order_no = record.get("order_no") or field_value(payload, "order_no")
    qty = int(field_value(payload, "traded_qty") or 0)
    avg = _decimal(field_value(payload, "avg_traded_price"))
    if avg is None and qty:
        value = _decimal(field_value(payload, "traded_value"))
        avg = value / qty if value is not None else _decimal(field_value(payload,
                                                                         "traded_price"))
    return order_no, qty, avg, field_value(payload, "status")


def owner_of_order(records: Iterable[Record], order_no: str) -> str | None:
    """The position whose entry or exit order ``order_no`` is."""
    quoted, named = f"order_no='{order_no}'", f" order={order_no} "
    for record in records:
        position_id = record.get("position_id")
        if not position_id:
            continue
        payload = str(record.get("payload", ""))
        if record.get("order_no") == order_no or quoted in payload or named in payload \
                or payload.endswith(f" order={order_no}>"):
            return str(position_id)
    return None


def position_story(records: list[Record], position_id: str) -> dict[str, Any]:
    """The story as data: what ``narrate`` tells, for tools."""
    by_id: dict[str, Record] = {}
    for record in records:
        if record.get("kind") == "message" and record.get("message_id"):
            by_id.setdefault(record["message_id"], record)
    fee = next((_decimal(r.get("fee_per_order")) for r in records
                if r.get("kind") == "lifecycle" and r.get("event") == "start"
                and r.get("fee_per_order") is not None), None)
    mine = sorted((r for r in records if r.get("position_id") == position_id),
                  key=lambda r: r.get("start_ns") or 0)
    seen: set[str] = set()
    story: dict[str, Any] = {"position_id": position_id, "instrument": None, "side": None,
                             "entry_order_no": None, "opened": None, "marks": [],
                             "decisions": [], "exit_orders": [], "closed": None, "events": []}
    orders: dict[str, _Order] = {}
    peak: str | None = None
    stop: str | None = None
    for record in mine:
        if record.get("kind") == "lifecycle":
            if record.get("event") in ("spawn", "stop"):
                continue  # every position has them; crashes, restarts and dead letters tell
            story["events"].append({"event": record.get("event"), "actor": record.get("receiver"),
                                    "error": record.get("error")})
            continue
        kind, payload = record.get("type"), str(record.get("payload", ""))
        story["instrument"] = story["instrument"] or record.get("instrument")
        if kind in ("ApplyProgress", "ApplyOrderUpdate"):
            order_no, qty, avg, status = _progress(record)
            if order_no:
                orders.setdefault(order_no, _Order(order_no)).apply(
                    qty, avg, record.get("sent_at"), status)
            continue
        message_id = record.get("message_id")
        if message_id in seen:
            continue  # one message told to several actors
        if message_id:
            seen.add(message_id)
        if kind in ("PositionOpened", "PositionChanged", "PositionClosed", "CreatePosition"):
            shown = position_fields(payload)
            story["side"] = shown.get("side") or story["side"]
            story["entry_order_no"] = shown.get("order") or story["entry_order_no"]
            if kind == "PositionOpened" and story["opened"] is None:
                story["opened"] = {"at": record.get("sent_at"), "side": shown.get("side"),
                                   "qty": int(shown.get("qty", 0)), "price": shown.get("entry"),
                                   "order_no": shown.get("order")}
            if kind == "PositionClosed" and story["closed"] is None:
                story["closed"] = {"at": record.get("sent_at"), "status": shown.get("status"),
                                   "reason": shown.get("reason"), "price": shown.get("exit"),
                                   "qty": int(shown.get("exited", 0) or 0),
                                   "entry_price": shown.get("entry")}
        elif kind == "PnLMarked":
            now_peak = field_value(payload, "peak_price")
            now_stop = field_value(payload, "trail_stop")
            moved = []
            if now_peak is not None and now_peak != peak:
                moved.append("peak")
            if now_stop is not None and now_stop != stop:
                moved.append("stop armed" if stop is None else "stop moved")
            if moved:
                story["marks"].append({"at": record.get("sent_at"),
                                       "ltp": field_value(payload, "ltp"), "peak": now_peak,
                                       "stop": now_stop, "moved": moved})
            peak, stop = now_peak or peak, now_stop or stop
        elif kind == "ExitRequested":
            story["decisions"].append(_decision(record, payload, by_id))
        elif kind == "ExitOrderPlaced":
            story["exit_orders"].append({
                "attempt": int(field_value(payload, "attempt") or 0),
                "client_id": field_value(payload, "client_id"),
                "order_no": field_value(payload, "order_no"), "placed_at": record.get("sent_at"),
                "enqueued_ns": record.get("enqueued_ns"), "failed": None})
        elif kind == "ExitOrderFailed":
            story["exit_orders"].append({
                "attempt": int(field_value(payload, "attempt") or 0),
                "client_id": field_value(payload, "client_id"), "order_no": None,
                "placed_at": record.get("sent_at"), "enqueued_ns": record.get("enqueued_ns"),
                "failed": field_value(payload, "reason")})
        elif record.get("outcome", "ok") != "ok":
            story["events"].append({"event": "failed", "actor": record.get("receiver"),
                                    "error": record.get("outcome"), "type": kind})
    _finish(story, orders, fee)
    return story


def _decision(record: Record, payload: str, by_id: dict[str, Record]) -> dict[str, Any]:
    cause = by_id.get(str(record.get("causation_id")))
    root = cause
    hops = 0
    while root is not None and root.get("causation_id") in by_id and hops < 100:
        root = by_id[root["causation_id"]]
        hops += 1
    cause_payload = str(cause.get("payload", "")) if cause else ""
    return {
        "at": record.get("sent_at"), "reason": field_value(payload, "reason"),
        "price": field_value(payload, "price"), "detail": field_value(payload, "detail"),
        "attempt": int(field_value(payload, "attempt") or 0),
        "client_id": field_value(payload, "client_id"),
        "cause": cause.get("type") if cause else None,
        "cause_price": field_value(cause_payload, "ltp"),
        "cause_price_at": field_value(cause_payload, "at"),
        "root": root.get("type") if root else None,
        "root_enqueued_ns": root.get("enqueued_ns") if root else None,
        "enqueued_ns": record.get("enqueued_ns"),
    }


def _finish(story: dict[str, Any], orders: dict[str, _Order], fee: Decimal | None) -> None:
    entry_no = story["entry_order_no"]
    if entry_no is None and orders:
        entry_no = story["entry_order_no"] = next(iter(orders))
    entry = orders.get(entry_no) if entry_no else None
    if story["opened"] is not None and entry is not None:
        story["opened"]["fills"] = entry.fills
    for placed in story["exit_orders"]:
        order = orders.get(placed["order_no"]) if placed["order_no"] else None
        placed["fills"] = order.fills if order else []
    placed_nos = {p["order_no"] for p in story["exit_orders"]}
    story["other_orders"] = [{"order_no": o.order_no, "fills": o.fills} for o in orders.values()
                             if o.order_no != entry_no and o.order_no not in placed_nos
                             and o.fills]
    for decision in story["decisions"]:
        placed = next((p for p in story["exit_orders"]
                       if p["attempt"] == decision["attempt"] and not p["failed"]), None)
        start = decision.pop("root_enqueued_ns")
        decided = decision.pop("enqueued_ns")
        decision["ms_to_decision"] = _ms(start, decided)
        decision["ms_to_exit_order"] = _ms(start, placed["enqueued_ns"] if placed else None)
        decision["exit_order_no"] = placed["order_no"] if placed else None
    for placed in story["exit_orders"]:
        placed.pop("enqueued_ns", None)
    closed = story["closed"]
    if closed is not None:
        _value(closed, story["side"], fee, sum(1 for o in orders.values() if o.qty > 0))


def _ms(start: Any, end: Any) -> float | None:
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    return round((end - start) / 1e6, 3)


def _value(closed: dict[str, Any], side: str | None, fee: Decimal | None, executed: int) -> None:
    """Realised PnL as the report computes it: gross from the fills' averages, net after the fee
    per executed order (SPEC §3.3)."""
    entry, exit_ = _decimal(closed.get("entry_price")), _decimal(closed.get("price"))
    if entry is None or exit_ is None or not closed["qty"]:
        closed.update(realized=None, net=None, fees=None)
        return
    sign = -1 if side == "SHORT" else 1
    gross = realized_pnl(sign, entry, exit_, closed["qty"])
    fees = order_fees(executed, fee) if fee is not None else None
    closed.update(realized=_money(gross), net=_money(gross - fees) if fees is not None else None,
                  fees=_money(fees) if fees is not None else None, executed_orders=executed,
                  fee_per_order=_money(fee) if fee is not None else None)


def narrate(story: dict[str, Any]) -> list[str]:
    """The story as a trader reads it."""
    lines = [f"position {story['position_id']}  {story['instrument'] or '?'}  "
             f"{story['side'] or '?'}  entry order {story['entry_order_no'] or '?'}"]
    opened = story["opened"]
    if opened is not None:
        lines.append(f"{_clock(opened['at'])}  opened {opened['side']} {opened['qty']} @ "
                     f"{opened['price']} by order {opened['order_no']}")
        lines += _fills(opened.get("fills", []), opened["order_no"])
    lines += _marks(story["marks"])
    for decision in story["decisions"]:
        lines += _told_decision(decision)
    for placed in story["exit_orders"]:
        if placed["failed"]:
            lines.append(f"{_clock(placed['placed_at'])}  exit attempt {placed['attempt']} "
                         f"({placed['client_id']}) failed: {placed['failed']}")
            continue
        lines.append(f"{_clock(placed['placed_at'])}  exit order {placed['order_no']} "
                     f"({placed['client_id']}, attempt {placed['attempt']}) placed")
        lines += _fills(placed["fills"], placed["order_no"])
    for other in story.get("other_orders", []):
        lines.append(f"          order {other['order_no']} (not ours) traded against it")
        lines += _fills(other["fills"], other["order_no"])
    for event in story["events"]:
        lines.append(f"          {event['actor']}: {event['event']} {event.get('error') or ''}"
                     .rstrip())
    closed = story["closed"]
    if closed is not None:
        money = ""
        if closed.get("realized") is not None:
            money = f"; realised {closed['realized']}"
            if closed.get("net") is not None:
                money += (f", net {closed['net']} (fees {closed['executed_orders']} orders x "
                          f"{closed['fee_per_order']})")
        lines.append(f"{_clock(closed['at'])}  {closed['status']} {closed['reason'] or ''}: "
                     f"{closed['qty']} @ {closed['price']}{money}")
    elif opened is not None:
        lines.append("          still open at the end of the trace")
    return lines


def _fills(fills: list[dict[str, Any]], order_no: str | None) -> list[str]:
    return [f"{_clock(fill['at'])}    fill {fill['qty']} @ {fill['price']} ({order_no}, "
            f"{fill['status']})" for fill in fills]


def _marks(marks: list[dict[str, Any]]) -> list[str]:
    shown = marks if len(marks) <= _MARKS_SHOWN else \
        [*marks[: _MARKS_SHOWN // 2], None, *marks[-_MARKS_SHOWN // 2:]]
    lines = []
    for mark in shown:
        if mark is None:
            lines.append(f"          ... {len(marks) - _MARKS_SHOWN} more mark moves ...")
            continue
        said = []
        if "peak" in mark["moved"]:
            said.append(f"peak {mark['peak']}")
        if "stop armed" in mark["moved"]:
            said.append(f"trailing stop armed at {_price(_decimal(mark['stop']))}")
        if "stop moved" in mark["moved"]:
            said.append(f"trailing stop moved to {_price(_decimal(mark['stop']))}")
        lines.append(f"{_clock(mark['at'])}  price {mark['ltp']}: {', '.join(said)}")
    return lines


def _told_decision(decision: dict[str, Any]) -> list[str]:
    if decision["cause"] == "PriceUpdate" and decision["cause_price"] is not None:
        trigger = (f"price {decision['cause_price']} (at {_clock(decision['cause_price_at'])})"
                   f" decided")
    elif decision["cause"] == "TimerFired":
        trigger = "the clock decided"
    else:
        trigger = f"{decision['cause'] or 'an operator'} decided"
    lines = [f"{_clock(decision['at'])}  {trigger}: {decision['reason']}: "
             f"{decision['detail'] or ''}".rstrip()]
    timing = []
    if decision["ms_to_decision"] is not None:
        timing.append(f"decision {decision['ms_to_decision']} ms after the "
                      f"{decision['root'] or 'outside event'} came in")
    if decision["ms_to_exit_order"] is not None:
        timing.append(f"exit order {decision['exit_order_no']} placed after "
                      f"{decision['ms_to_exit_order']} ms")
    if timing:
        lines.append("          " + "; ".join(timing))
    return lines
