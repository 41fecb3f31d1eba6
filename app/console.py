"""What a trader sees on the terminal: a live status line and the end-of-session summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from models.accounts import shown


def status_line(status: Mapping[str, Any], clock_text: str) -> str:
    positions = status.get("positions", {})
    exits = status.get("exits_by_reason", {})
    exits_text = ", ".join(f"{k} {v}" for k, v in sorted(exits.items())) or "none"
    net = status.get("day_net")
    quarantined = status.get("quarantined", [])
    metrics = status.get("metrics", {})
    age = status.get("max_price_age_s")
    age_text = "-" if age is None else "never" if age == float("inf") else f"{age:.1f}s"
    account = status.get("account")
    return (f"[{clock_text}] {'' if account is None else f'account {shown(account)} | '}"
            f"{status.get('trading_state', '?')} | open "
            f"{positions.get('ACTIVE', 0) + positions.get('EXITING', 0)} "
            f"(exiting {positions.get('EXITING', 0)}) | exited {positions.get('EXITED', 0)} | "
            f"day net {'-' if net is None else f'{net:.2f}'} | oldest price {age_text} | "
            f"exits: {exits_text} | "
            f"unprotected {len(status.get('unprotected', []))} | quarantined {len(quarantined)} | "
            f"restarts {metrics.get('actor_restarts', 0)} | {status.get('books', 'books: ?')}"
            + (f" | order frames not yet stored {metrics['unstored_frames']}"
               if metrics.get("unstored_frames") else "")
            + (f" | ANOMALIES {metrics['anomalies']} (last: {status['alarms'][-1]})"
               if metrics.get("anomalies") and status.get("alarms") else ""))


def print_summary(report: Mapping[str, Any], out: TextIO) -> None:
    summary = report["summary"]
    rows = report["positions"]
    account = f" of account {shown(report['account'])}" if "account" in report else ""
    out.write(f"\n{report['mode']} session{account} {report['started_at']} → "
              f"{report['ended_at']}\n")
    header = f"{'position':<14}{'instrument':<20}{'side':<6}{'status':<10}{'qty':>7}" \
             f"{'entry':>11}{'exit':>11}  {'reason':<14}{'realized':>12}"
    out.write(header + "\n" + "-" * len(header) + "\n")
    for row in rows[:50]:
        out.write(f"{row['position_id']:<14}{row['segment'] + ':' + row['security_id']:<20}"
                  f"{row['side']:<6}{row['status']:<10}{row['quantity']:>7}"
                  f"{row['entry_price'] or '-':>11}{row['exit_price'] or '-':>11}  "
                  f"{row['exit_reason'] or '-':<14}{row['realized_pnl'] or '-':>12}\n")
    if len(rows) > 50:
        out.write(f"… and {len(rows) - 50} more (see the report file)\n")
    out.write(f"opened {summary['opened']}, active {summary['active']}, exited "
              f"{summary['exited']}, cancelled {summary['cancelled']}, net PnL "
              f"{summary['net_pnl']} | exits {summary['exits_by_reason']}\n")
    out.write(f"metrics {report['metrics']}\n")
    books = report.get("books")
    if books is not None:
        differences = books.get("differences", {})
        out.write("books: agree\n" if books.get("agree") else
                  "books: DIFFER " + "; ".join(f"{key} broker {d['broker']:+d} ours {d['ours']:+d}"
                                               for key, d in differences.items()) + "\n")
