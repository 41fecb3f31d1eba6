"""The report's chart (SPEC §7): cumulative realised PnL over the session, one marker per exit
coloured by its reason, as a PNG drawn by matplotlib (Agg, no display needed).

The curve is ``models.report.exit_curve``, the same one the dashboard draws.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
from matplotlib.figure import Figure  # a Figure without pyplot draws on Agg: no display

from models.common import IST
from models.report import ExitPoint, aware, exit_curve

WIDTH, HEIGHT, DPI = 900, 420, 100
"""The PNG's size in pixels."""
REASON_COLORS: dict[str, str] = {
    "STOP_LOSS": "#dc1e1e", "TAKE_PROFIT": "#14a028", "TRAILING_STOP": "#ff8c00",
    "TIME_STOP": "#1e5adc", "TIME_EXIT": "#5a3cdc", "SESSION_END": "#008c8c",
    "KILL_SWITCH": "#b4005a", "BROKER_EXIT": "#8000a0", "MANUAL": "#969696",
}
OTHER = "#646464"


def write_pnl_chart(report: Mapping[str, Any], path: Path) -> None:
    """Render ``report`` as a PNG at ``path``, atomically (via ``<path>.png.tmp``)."""
    tmp = path.with_suffix(".png.tmp")
    try:
        tmp.write_bytes(pnl_chart_png(report))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def pnl_chart_png(report: Mapping[str, Any]) -> bytes:
    """The chart as PNG bytes: a step line of cumulative realised PnL, a marker per exit."""
    points = exit_curve(report.get("positions", []))
    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    start = [aware(report[k]) for k in ("started_at",) if report.get(k)]
    end = [aware(report[k]) for k in ("ended_at",) if report.get(k)]
    times = start + [p.at for p in points] + end
    values = [0.0] + [float(p.cumulative) for p in points]
    if times:
        steps = [times[0]] + [p.at for p in points] + [times[-1]]
        axes.step(_num(steps), values + values[-1:], where="post", color="#3c3c3c",
                  linewidth=1.5)
    axes.axhline(0, color="#bebebe", linewidth=1)
    for reason in _ordered(points):
        mine = [p for p in points if p.reason == reason]
        axes.scatter(_num([p.at for p in mine]),
                     [float(p.cumulative) for p in mine], s=42,
                     color=REASON_COLORS.get(reason, OTHER), label=reason, zorder=3,
                     edgecolors="none")
    if points:
        axes.legend(loc="best", fontsize=8, frameon=False)
    axes.set_title(_title(report, points), fontsize=11, loc="left")
    axes.set_ylabel("cumulative realised PnL (₹)")
    locator = mdates.AutoDateLocator(tz=IST)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
        locator, tz=IST, show_offset=False))
    axes.grid(True, color="#eeeeee")
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _num(times: list[datetime]) -> list[float]:
    """Matplotlib's date numbers (its date functions are untyped)."""
    return [float(x) for x in mdates.date2num(times)]  # type: ignore[no-untyped-call]


def _ordered(points: list[ExitPoint]) -> list[str]:
    seen = {p.reason for p in points}
    return [r for r in REASON_COLORS if r in seen] + sorted(seen - REASON_COLORS.keys())


def _title(report: Mapping[str, Any], points: list[ExitPoint]) -> str:
    net = report.get("summary", {}).get("net_pnl")
    count = len(points)
    exits = "no exits" if count == 0 else f"{count} exit" + ("s" if count > 1 else "")
    total = net if net is not None else f"{points[-1].cumulative if points else 0:.2f}"
    return f"{report.get('mode', 'session')}: net PnL ₹{total} · {exits}"
