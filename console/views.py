"""What the dashboard and the JSON API show, derived from the system's views (pure).

Money and prices are decimal strings as in the report (SPEC §7); ages and distances are
numbers, for sorting in the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from actors.system import PositionView
from models.common import money
from models.marks import basis_of, stop_price
from models.policy import ExitPolicy
from models.position import Position
from models.report import exit_curve, position_row
from models.rules import pnl


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(money(value))


def live_row(view: PositionView, policy: ExitPolicy, now: datetime) -> dict[str, Any]:
    """A report row (SPEC §7) plus what moves: last price and its age, PnL, the stop level and
    how far the price is from it (a fraction of the price; negative: at or beyond it)."""
    position, mark = view.position, view.mark
    ltp = None if mark is None else mark.ltp
    value = pnl(position, ltp, policy)
    basis = basis_of(position, policy)
    stop = None if basis is None else stop_price(basis, position.trail_stop, policy)
    distance = None
    if stop is not None and ltp:
        distance = float(position.side.sign * (ltp - stop) / ltp)
    age = None if mark is None else max(0.0, (now - mark.at).total_seconds())
    flags = [name for name, on in (
        ("UNPROTECTED", view.unprotected), ("QUARANTINED", view.quarantined),
        ("STALE", age is not None and age > float(policy.stale_after_seconds)),
        ("TRAILING", position.trail_stop is not None)) if on]
    return {**position_row(position, policy), "last_price": _text(ltp),
            "price_age_s": None if age is None else round(age, 3),
            "pnl": _text(value.net), "pnl_pct": None if ltp is None else round(
                float(value.pct) * 100, 3),
            "stop_price": _text(stop),
            "stop_distance_pct": None if distance is None else round(distance * 100, 3),
            "trail_stop": _text(position.trail_stop), "peak_price": _text(position.peak_price),
            "flags": flags}


def status_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """The system's status made JSON-safe (Decimals as strings, infinities as None)."""
    net = status.get("day_net")
    age = status.get("max_price_age_s")
    return {**status, "day_net": _text(net),
            "max_price_age_s": None if age is None or age == float("inf") else round(age, 3)}


def pnl_curve(closed: Iterable[Position], policy: ExitPolicy) -> list[dict[str, Any]]:
    """The chart's points: ``models.report.exit_curve`` (the report chart's curve) over the
    report rows of the closed positions; each point is an exit, marked with its reason."""
    return [{"at": p.at.isoformat(), "t": p.at.timestamp(), "position_id": p.position_id,
             "reason": p.reason, "pnl": _text(p.pnl), "cumulative": _text(p.cumulative)}
            for p in exit_curve(position_row(c, policy) for c in closed)]
