"""The operator console open on a running system, for the latency benchmark's load check: the
server on a free loopback port and the dashboard in headless chromium (Debian's, through
Playwright), pushed every second, for as long as the ``with`` block lasts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.system import System
from console.app import ConsoleConfig, build_app
from console.audit import AuditLog
from console.server import Bind, ConsoleServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def dashboard_available() -> bool:
    """Whether a browser can be driven here (Playwright and the chromium it launches)."""
    try:
        import playwright  # noqa: F401  (only its presence is checked)
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


def _page_work(cdp: Any) -> dict[str, float]:
    """Seconds the page's main thread has spent so far: in all, in scripts, in layout and in
    style (Chromium's ``Performance.getMetrics``)."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {name: float(metrics[f"{metric}Duration"]) for name, metric in (
        ("all", "Task"), ("script", "Script"), ("layout", "Layout"), ("style", "RecalcStyle"))}


def _browser_cpu() -> float:
    """CPU seconds used so far by this process's children and theirs (the browser and
    Playwright's driver); 0 where ``/proc`` cannot tell."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


@contextmanager
def dashboard_open(system: System, rows: int) -> Iterator[dict[str, Any]]:
    """Yields, once the table has filled and two more pushes came, a dict the caller reads
    after the block: pushes the page received meanwhile, rows shown at the end (and how many
    of them are in the document), what the page cost the machine meanwhile."""
    from playwright.sync_api import sync_playwright

    app = build_app(system, ConsoleConfig(token=os.urandom(16).hex(), push_every=1.0,
                                          audit=AuditLog(None)))
    server = ConsoleServer(app, Bind("127.0.0.1", 0)).start()
    seen: dict[str, Any] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(server.url)
            # Pushes counted as the page shows them (it stamps each snapshot's time on the
            # body), not by a second stream: one dashboard client, one stream.
            page.evaluate("""() => { window.__pushes = 0; new MutationObserver(() => {
                window.__pushes += 1; }).observe(document.body,
                {attributes: true, attributeFilter: ['data-at']}); }""")
            began = time.monotonic()
            page.wait_for_function(f"Number(document.querySelector('#positions').dataset.rows)"
                                   f" >= {rows}", timeout=60_000)
            seen["table_filled_s"] = time.monotonic() - began
            # Measure the page open, not its loading: two more pushes first.
            page.wait_for_function("window.__pushes >= 3", timeout=30_000)
            pushed = page.evaluate("window.__pushes")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            work, cpu, began = _page_work(cdp), _browser_cpu(), time.monotonic()
            yield seen
            seconds = time.monotonic() - began
            seen["pushes_during"] = page.evaluate("window.__pushes") - pushed
            # What the page costs the machine the price path shares: the browser's CPU (its
            # processes and Playwright's driver) and the page's main-thread work, per second.
            seen["browser_cpu_s_per_s"] = round((_browser_cpu() - cpu) / seconds, 3)
            seen["page_work_ms_per_s"] = {
                key: round((value - work[key]) * 1000 / seconds, 1)
                for key, value in _page_work(cdp).items()}
            # The table holds every row; the document only those in view (``console.js``).
            seen["rows_shown"] = int(page.evaluate(
                "document.querySelector('#positions').dataset.rows"))
            seen["rows_in_document"] = page.evaluate(
                "document.querySelectorAll('#positions tbody tr[data-id]').length")
            if os.environ.get("BENCH_DASHBOARD_SHOT"):
                page.screenshot(path=str(Path(os.environ["BENCH_DASHBOARD_SHOT"])))
            browser.close()
    finally:
        server.stop()
