"""What the dashboard and the JSON API show, derived from the system's views (pure).

Money and prices are decimal strings as in the report (SPEC §7); ages and distances are
numbers, for sorting in the page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from actors.system import PositionView
from models.common import money
from models.marks import basis_of, net_at, pct_at, stop_price
from models.policy import ExitPolicy
from models.position import Position
from models.report import exit_curve, position_row
from models.rules import freshness_limit, is_fresh, pnl


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(money(value))


class _Fixed:
    """What a row needs that only a change of the position moves (its report fields, basis
    and stop), kept while the system hands back the same ``Position`` value. The report
    fields are kept as JSON text: a dashboard's 1,000 rows then leave few objects behind for
    the cyclic collector, whose pauses stop every thread of the price path."""

    __slots__ = ("basis", "head", "key", "sign", "source", "stop", "trailing", "unvalued")

    def __init__(self, view: PositionView, policy: ExitPolicy,
                 position: Position | None = None) -> None:
        self.source = view.position  # held: the identity compared below stays its own
        self.key = (view.peak_price, view.hwm_pnl)
        position = view.marked(policy) if position is None else position
        self.basis = basis_of(position, policy)
        self.stop = None if self.basis is None else stop_price(self.basis, position.trail_stop,
                                                               policy)
        self.sign, self.trailing = position.side.sign, position.trail_stop is not None
        # The marked copy is kept only where the PnL needs it: a cache of 1,000 copies made
        # anew as peaks move was the console's main addition to the oldest generation.
        self.unvalued = position if self.basis is None else None
        self.head = json.dumps(_fixed_fields(position, policy, self.stop))[:-1]
        """The fixed fields' JSON object without its closing brace."""


def _fixed_fields(position: Position, policy: ExitPolicy,
                  stop: Decimal | None) -> dict[str, Any]:
    return {**position_row(position, policy), "stop_price": _text(stop),
            "trail_stop": _text(position.trail_stop), "peak_price": _text(position.peak_price)}


class RowMaker:
    """``live_row`` for a stream of snapshots, as JSON text: a position's fixed part is
    derived and encoded again only when the position changed, so a push of 1,000 rows costs
    little more than their prices (see ``bench.latency --dashboard``)."""

    def __init__(self, policy: ExitPolicy) -> None:
        self.policy = policy
        self._fixed: dict[str, _Fixed] = {}

    def rows(self, views: Iterable[PositionView], now: datetime,
             pause: Callable[[], None] | None = None, every: int = 100) -> list[str]:
        """Each row as a JSON object's text; ``pause`` is called after each ``every`` rows
        (the console lets the price path run there)."""
        fixed, made = self._fixed, {}
        rows = []
        for n, view in enumerate(views, 1):
            if pause is not None and n % every == 0:
                pause()
            pid = view.position.position_id
            known = fixed.get(pid)
            if known is None or known.source is not view.position or \
                    known.key != (view.peak_price, view.hwm_pnl):
                known = _Fixed(view, self.policy)
            made[pid] = known
            rows.append(f"{known.head}, {json.dumps(_live(known, view, self.policy, now))[1:]}")
        self._fixed = made
        return rows


def live_row(view: PositionView, policy: ExitPolicy, now: datetime) -> dict[str, Any]:
    """A report row (SPEC §7) plus what moves: last price and its age, PnL, the stop level and
    how far the price is from it (a fraction of the price; negative: at or beyond it)."""
    position = view.marked(policy)
    fixed = _Fixed(view, policy, position)
    return {**_fixed_fields(position, policy, fixed.stop), **_live(fixed, view, policy, now)}


def _live(fixed: _Fixed, view: PositionView, policy: ExitPolicy,
          now: datetime) -> dict[str, Any]:
    mark, basis, stop = view.mark, fixed.basis, fixed.stop
    ltp = None if mark is None else mark.ltp
    if fixed.unvalued is not None:
        net, pct = pnl(fixed.unvalued, ltp, policy).net, None
    elif basis is None or ltp is None:
        net, pct = pnl(view.marked(policy), None, policy).net, None
    else:
        net, pct = net_at(basis, ltp), pct_at(basis, ltp)
    distance = None
    if stop is not None and ltp:
        distance = float(fixed.sign * (ltp - stop) / ltp)
    age = None if mark is None else max(0.0, (now - mark.at).total_seconds())
    flags = [name for name, on in (
        ("UNPROTECTED", view.unprotected), ("QUARANTINED", view.quarantined),
        ("STALE", mark is not None and not is_fresh(mark.at, now, freshness_limit(policy),
                                                     in_session=True)),
        ("TRAILING", fixed.trailing)) if on]
    return {"last_price": _text(ltp),
            "price_age_s": None if age is None else round(age, 3),
            "pnl": _text(net), "pnl_pct": None if pct is None else round(float(pct) * 100, 3),
            "stop_distance_pct": None if distance is None else round(distance * 100, 3),
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
