"""The session report (SPEC §7): its JSON shape is a public contract."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from models.accounts import DEFAULT_ACCOUNT
from models.common import IST, money
from models.policy import ExitPolicy
from models.position import Position, PositionStatus
from models.rules import pnl


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text(value: Decimal | None) -> str | None:
    return str(money(value)) if value is not None else None


def position_row(position: Position, policy: ExitPolicy) -> dict[str, Any]:
    """One position as the report (and ``positions --json``) shows it."""
    exited = position.status is PositionStatus.EXITED
    value = pnl(position, None, policy)
    return {
        "position_id": position.position_id,
        "entry_order_no": position.entry_order_no,
        "segment": str(position.segment),
        "security_id": position.security_id,
        "side": str(position.side),
        "status": str(position.status),
        "quantity": position.closed_qty if exited else position.quantity,
        "entry_price": _text(position.entry_price),
        "exit_price": _text(position.exit_price),
        "exit_reason": str(position.exit_reason) if position.exit_reason and exited else None,
        "realized_pnl": _text(value.realized),
        "opened_at": _iso(position.opened_at),
        "exited_at": _iso(position.exited_at),
    }


def build_report(mode: str, started_at: datetime, ended_at: datetime,
                 positions: Iterable[Position], policy: ExitPolicy,
                 metrics: Mapping[str, int], *, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """The session report of ``account`` (SPEC §7): ``positions`` are that account's."""
    ordered = sorted(positions, key=lambda p: (p.created_at, p.position_id))
    statuses = Counter(p.status for p in ordered)
    reasons = Counter(str(p.exit_reason) for p in ordered
                      if p.status is PositionStatus.EXITED and p.exit_reason is not None)
    net = sum((pnl(p, None, policy).net for p in ordered
               if p.status is not PositionStatus.CANCELLED), Decimal(0))
    return {
        "mode": mode,
        "account": account,
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),
        "positions": [position_row(p, policy) for p in ordered],
        "summary": {
            "opened": sum(1 for p in ordered if p.opened_at is not None),
            "active": statuses[PositionStatus.ACTIVE] + statuses[PositionStatus.EXITING],
            "exited": statuses[PositionStatus.EXITED],
            "cancelled": statuses[PositionStatus.CANCELLED],
            "net_pnl": str(money(net)),
            "exits_by_reason": dict(sorted(reasons.items())),
        },
        "metrics": dict(metrics),
    }


class ExitPoint(NamedTuple):
    """One exit on the cumulative PnL curve (the report's chart and the dashboard's)."""

    at: datetime
    position_id: str
    reason: str
    pnl: Decimal
    cumulative: Decimal


def aware(text: str) -> datetime:
    """An ISO-8601 time as an aware datetime; a naive one is exchange (IST) time."""
    moment = datetime.fromisoformat(text)
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=IST)


def exit_curve(rows: Iterable[Mapping[str, Any]]) -> list[ExitPoint]:
    """Cumulative realised PnL over report rows (SPEC §7 shape), one point per exit in time
    order (ties by position id); an exit without a realised PnL adds zero."""
    found = sorted(((aware(row["exited_at"]), str(row.get("position_id", "")),
                     row.get("exit_reason") or "UNKNOWN", Decimal(row.get("realized_pnl") or 0))
                    for row in rows if row.get("exited_at")), key=lambda item: item[:2])
    points, total = [], Decimal(0)
    for at, position_id, reason, realized in found:
        total += realized
        points.append(ExitPoint(at, position_id, reason, realized, total))
    return points
