"""Replaying many days under several policies (SPEC §7): the inputs of each day, and one report
with a column per policy.

A day is an order-update file with an optional tape. ``--days FOLDER`` finds them: each
sub-folder holding ``orders.jsonl`` (and ``ticks.csv``) is a day, named after the folder; or,
with no such sub-folder, each ``NAME.jsonl`` in the folder is a day, with ``NAME.csv`` as its
tape when there is one. Days are replayed in name order (name them by date), each on a fresh
store: a policy is compared on the same data, day by day.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any


class DaysError(ValueError):
    """The days to replay cannot be found or paired; the message says why."""


@dataclass(frozen=True)
class Day:
    name: str
    orders: Path
    ticks: Path | None = None


def find_days(folder: Path) -> list[Day]:
    if not folder.is_dir():
        raise DaysError(f"{folder}: not a folder")
    nested = sorted(sub for sub in folder.iterdir()
                    if sub.is_dir() and (sub / "orders.jsonl").is_file())
    if nested:
        return [Day(sub.name, sub / "orders.jsonl",
                    sub / "ticks.csv" if (sub / "ticks.csv").is_file() else None)
                for sub in nested]
    flat = sorted(path for path in folder.glob("*.jsonl") if path.is_file())
    if not flat:
        raise DaysError(f"{folder}: no days in it (sub-folders with orders.jsonl, or NAME.jsonl "
                        "files with an optional NAME.csv tape)")
    return [Day(path.stem, path, path.with_suffix(".csv")
                if path.with_suffix(".csv").is_file() else None) for path in flat]


def pair_days(orders: Sequence[Path], ticks: Sequence[Path]) -> list[Day]:
    """``--orders`` files with their ``--ticks`` tapes, in the order given."""
    if ticks and len(ticks) != len(orders):
        raise DaysError(f"--ticks: give one tape per --orders file ({len(orders)} order files, "
                        f"{len(ticks)} tapes)")
    names = [path.stem for path in orders]
    if len(set(names)) != len(names):
        names = [str(path) for path in orders]
    return [Day(name, path, ticks[n] if ticks else None)
            for n, (name, path) in enumerate(zip(names, orders, strict=True))]


def policy_names(files: Sequence[Path | None]) -> list[str]:
    """A column title per policy file: its name, or its path when two share a name."""
    names = [path.stem if path is not None else "default" for path in files]
    if len(set(names)) != len(names):
        names = [str(path) if path is not None else "default" for path in files]
    if len(set(names)) != len(names):
        raise DaysError("--policy: the same policy file is given twice")
    return names


def combine(days: Sequence[str], policies: Sequence[str],
            reports: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    """One document for every (day, policy) replay: each day's reports and each policy's
    totals (net PnL, positions, exits by reason)."""
    totals: dict[str, Any] = {}
    for policy in policies:
        net = Decimal(0)
        opened = exited = 0
        reasons: Counter[str] = Counter()
        for day in days:
            summary = reports[day, policy]["summary"]
            net += Decimal(summary["net_pnl"])
            opened += summary["opened"]
            exited += summary["exited"]
            reasons.update(summary["exits_by_reason"])
        totals[policy] = {"days": len(days), "opened": opened, "exited": exited,
                          "net_pnl": str(net), "exits_by_reason": dict(sorted(reasons.items()))}
    return {"mode": "replay", "policies": list(policies),
            "days": [{"day": day, "reports": {p: reports[day, p] for p in policies}}
                     for day in days],
            "total": totals}


def table(combined: Mapping[str, Any]) -> list[str]:
    """Net PnL and exits per day, a column per policy, and the totals."""
    policies: list[str] = combined["policies"]
    width = max(16, *(len(p) + 2 for p in policies))
    day_width = max(12, *(len(d["day"]) + 2 for d in combined["days"]))
    head = f"{'day':<{day_width}}" + "".join(f"{p:>{width}}" for p in policies)
    lines = [head, "-" * len(head)]
    for day in combined["days"]:
        cells = []
        for policy in policies:
            summary = day["reports"][policy]["summary"]
            cells.append(f"{summary['net_pnl']} ({summary['exited']})")
        lines.append(f"{day['day']:<{day_width}}" + "".join(f"{c:>{width}}" for c in cells))
    lines.append("-" * len(head))
    total = [f"{combined['total'][p]['net_pnl']} ({combined['total'][p]['exited']})"
             for p in policies]
    lines.append(f"{'total':<{day_width}}" + "".join(f"{c:>{width}}" for c in total))
    lines.append("net PnL (positions exited) per day and policy")
    for policy in policies:
        lines.append(f"{policy}: exits {combined['total'][policy]['exits_by_reason']}")
    return lines


def policy_report(combined: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """Every day of one policy as one session report (its positions, from the first day's
    start to the last day's end, the total net PnL): what its cumulative PnL chart shows."""
    reports = [day["reports"][policy] for day in combined["days"]]
    return {"mode": "replay", "started_at": reports[0]["started_at"],
            "ended_at": reports[-1]["ended_at"],
            "positions": [row for report in reports for row in report["positions"]],
            "summary": {"net_pnl": combined["total"][policy]["net_pnl"]}}


def chart_name(report: Path, policy: str) -> Path:
    """``month.json`` and policy ``tight`` → ``month-tight.png``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in policy)
    return report.with_name(f"{report.stem}-{safe}.png")
