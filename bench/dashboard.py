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


@contextmanager
def dashboard_open(system: System, rows: int) -> Iterator[dict[str, Any]]:
    """Yields, once the table has filled and two more pushes came, a dict the caller reads
    after the block: pushes the page received meanwhile, rows shown at the end."""
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
            page.evaluate("""() => { window.__pushes = 0; new EventSource('/api/stream')
                .addEventListener('snapshot', () => { window.__pushes += 1; }); }""")
            began = time.monotonic()
            page.wait_for_function(f"document.querySelectorAll('#positions tbody tr').length"
                                   f" >= {rows}", timeout=60_000)
            seen["table_filled_s"] = time.monotonic() - began
            # Measure the page open, not its loading: two more pushes first.
            page.wait_for_function("window.__pushes >= 3", timeout=30_000)
            pushed = page.evaluate("window.__pushes")
            yield seen
            seen["pushes_during"] = page.evaluate("window.__pushes") - pushed
            seen["rows_shown"] = page.evaluate(
                "document.querySelectorAll('#positions tbody tr').length")
            if os.environ.get("BENCH_DASHBOARD_SHOT"):
                page.screenshot(path=str(Path(os.environ["BENCH_DASHBOARD_SHOT"])))
            browser.close()
    finally:
        server.stop()
