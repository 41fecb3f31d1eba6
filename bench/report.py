"""Figures, the printed table and BENCHMARKS.md.

Every benchmark returns rows: ``{"benchmark": name, "figures": [figure, …], …raw numbers}``. A
figure is one measured value with its baseline and ratio side by side (as text, measured in the
same run) and, when SPEC §9 sets one, its target and whether it was met.

BENCHMARKS.md is one page: what, how to reproduce, the machine, target / result / commit, and a
summary of the latest full run (rewritten between markers). Every run's raw figures go to
``bench/results/<time>-{quick,full}.json``, never into the Markdown.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUMMARY_START = "<!-- summary:start -->"
SUMMARY_END = "<!-- summary:end -->"
HEADER = "# Benchmarks (SPEC §9)\n\nWritten by `python -m bench`; see `bench/`.\n\n"


def figure(name: str, value: float | str, unit: str = "", *, baseline: str = "", ratio: str = "",
           target: str = "", met: bool | None = None, miss: str = "") -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met, "miss": miss}


def below(name: str, value: float, limit: float, unit: str, *, why: str = "",
          **kw: Any) -> dict[str, Any]:
    """A figure whose target is ``value < limit``; ``miss`` says by how much when it is not
    (or ``why``, when there is more to say)."""
    met = value < limit
    miss = "" if met else why or f"{value / limit:.1f}x the limit (+{value - limit:,.4g} {unit})"
    return figure(name, value, unit, target=f"< {limit:,g} {unit}", met=met, miss=miss, **kw)


def at_least(name: str, value: float, limit: float, unit: str, **kw: Any) -> dict[str, Any]:
    met = value >= limit
    miss = "" if met else f"{value / limit:.0%} of the target ({limit - value:,.4g} {unit} short)"
    return figure(name, value, unit, target=f">= {limit:,g} {unit}", met=met, miss=miss, **kw)


def num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "never"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def verdict(fig: dict[str, Any]) -> str:
    if fig["met"] is None:
        return ""
    return "met" if fig["met"] else "MISSED"


COLUMNS = (("figure", 42), ("value", 14), ("baseline (same run)", 34), ("ratio", 34),
           ("target", 12), ("", 6))


def _cells(fig: dict[str, Any]) -> list[str]:
    value = f"{num(fig['value'])} {fig['unit']}".strip()
    return [fig["figure"], value, fig["baseline"], fig["ratio"], fig["target"], verdict(fig)]


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table: each benchmark's name, then one line per figure."""
    rule = "  ".join("-" * width for _, width in COLUMNS)
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS).rstrip(), rule]
    for row in rows:
        lines.append(f"{row['benchmark']}:")
        for fig in row.get("figures", []):
            cells = _cells(fig)
            lines.append("  ".join(cell.ljust(width) for cell, (_, width)
                                   in zip(cells, COLUMNS, strict=True)).rstrip())
        if row.get("note"):
            lines.append(f"  note: {row['note']}")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown."""
    lines = ["| benchmark | figure | value | baseline (same run) | ratio | target | |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for k, fig in enumerate(row.get("figures", [])):
            cells = [c.replace("|", "\\|") for c in [row["benchmark"] if k == 0 else "",
                                                       *_cells(fig)]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], heading: str) -> str:
    """Every figure with a target: the target, the measured value, met or by how much not."""
    lines = [f"## Every target, latest full run (generated) — {heading}", "",
             "| SPEC §9 target | benchmark | measured | met | missed by |", "|---|---|---|---|---|"]
    for row in rows:
        for fig in row.get("figures", []):
            if fig["met"] is None:
                continue
            measured = f"{num(fig['value'])} {fig['unit']}".strip()
            lines.append(f"| {fig['figure']} {fig['target']} | {row['benchmark']} | {measured} "
                         f"| {'yes' if fig['met'] else '**no**'} | {fig['miss']} |")
    return "\n".join(lines)


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def gauge_ms(loops: int = 2_000_000) -> float:
    """Milliseconds this interpreter takes for a fixed loop (best of three), so runs on machines
    of different speed (or one machine at different times) can be told apart: every figure
    here is CPU-bound on one interpreter."""
    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i * i
        best = min(best, time.perf_counter() - began)
    return best * 1000


def write(rows: list[dict[str, Any]], out: Path, *, command: str, services: str,
          seconds: float, full: bool, results: Path = Path("bench/results")) -> str:
    """Print-ready table. The run goes to ``results`` as JSON (raw runs are kept there, not in
    the report); ``out`` stays one page: its summary is rewritten by a full run (or filled in
    when empty)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, {platform.system()} {platform.release()}, "
               f"interpreter gauge {gauge_ms():.0f} ms")
    text = out.read_text(encoding="utf-8") if out.exists() else HEADER
    if SUMMARY_START not in text:
        text = text.rstrip("\n") + f"\n\n{SUMMARY_START}\n{SUMMARY_END}\n"
    if full or SUMMARY_START + "\n" + SUMMARY_END in text:
        head, _, rest = text.partition(SUMMARY_START)
        _, _, tail = rest.partition(SUMMARY_END)
        block = summary(rows, f"`{command}`, {stamp}, {machine}; {services}")
        text = f"{head}{SUMMARY_START}\n{block}\n{SUMMARY_END}{tail}"
    out.write_text(text, encoding="utf-8")
    results.mkdir(parents=True, exist_ok=True)
    run = {"at": stamp, "command": command, "seconds": round(seconds), "machine": machine,
           "services": services, "rows": rounded(rows)}
    name = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-full" if full else "-quick")
    (results / f"{name}.json").write_text(json.dumps(run, indent=1, default=str) + "\n",
                                          encoding="utf-8")
    return table(rows)
