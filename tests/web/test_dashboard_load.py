"""Issue 18's load check: with the dashboard open in a browser on 1,000 positions whose prices
change 10 times a second, the price path keeps its pace. The latency benchmark's workload
(``bench.latency``) runs twice in processes of their own, without and with the page open, and
the exits decided in each are compared."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.web.test_dashboard_browser import CHROMIUM, _missing

pytestmark = pytest.mark.browser


def latency(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.latency", "--seconds", "8", *args],
                          check=True, stdout=subprocess.PIPE, text=True, timeout=300)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def test_an_open_dashboard_on_1000_positions_does_not_slow_the_price_path() -> None:
    try:
        import playwright  # noqa: F401  (only its presence is checked here)
    except ImportError as error:
        _missing(f"playwright is not installed: {error}")
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        _missing(f"no chromium at {CHROMIUM}")
    plain = latency()
    watched = latency("--dashboard")
    page = watched["dashboard"]
    # The table filled with all 1,000 (the benchmark waits for it); at the end a few stopped
    # out positions may be waiting for their replacements.
    assert page["table_filled_s"] < 30 and page["rows_shown"] >= 950 and page["pushes_during"] >= 6
    for row in (plain, watched):  # every planned exit decided, ordered and closed
        assert row["exits_decided"] == row["exits_expected"] > 0
        assert row["positions_closed"] == row["exits_expected"]
        assert row["unexpected_exits"] == 0
    # The typical price-to-decision time is the page's cost on the price path (the tail is
    # this shared machine's noise as much as anything): within 2 ms of the run without it.
    assert watched["decision_ms"]["p50"] <= plain["decision_ms"]["p50"] + 2.0, (plain, watched)
    # No backlog builds while the page is open: the last quarter carries no more than the run
    # without the page.
    assert watched["carried_mean_q4"] <= plain["carried_mean_q4"] + 50, (plain, watched)
