"""The dashboard in a real browser (Debian's chromium driven by Playwright): it loads, the
table fills, prices move without a reload, a position's story opens, and closing a position
works with the operator token and fails without it. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.position import PositionStatus
from tests.web.session import TOKEN, Session, paper_console, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _missing(f"playwright is not installed: {error}")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"no chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with paper_console(tmp_path, positions=6, instruments=3, push_every=0.5) as running:
        yield running


@pytest.fixture
def page(browser: Any, session: Session) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(session.url + "/")
    yield opened
    context.close()
    assert errors == [], errors


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"))


def rows(page: Any) -> Any:
    return page.locator("#positions tbody tr")


def status_of(session: Session, position_id: str) -> PositionStatus | None:
    position = session.system.parts.store.load_position(position_id)
    return None if position is None else position.status


def test_dashboard_loads_and_the_table_fills(page: Any, session: Session) -> None:
    page.wait_for_function("document.querySelectorAll('#positions tbody tr').length >= 6",
                           timeout=20_000)
    assert page.locator("#trading").inner_text() == "RUNNING"
    assert page.locator("#live").get_attribute("class") == "dot on"
    first = rows(page).first
    assert first.locator(".c-status").inner_text() == "ACTIVE"
    assert first.locator(".c-stop_price").inner_text() not in ("", "\u2013")  # an en dash: none
    shot(page, "loaded")


def test_a_price_change_shows_without_a_reload(page: Any, session: Session) -> None:
    page.wait_for_function("document.querySelectorAll('#positions tbody tr').length >= 1",
                           timeout=20_000)
    page.evaluate("window.__same_page = true")
    cell = rows(page).first.locator(".c-last_price")
    position_id = rows(page).first.get_attribute("data-id")
    before = cell.inner_text()
    page.wait_for_function(
        "([id, before]) => document.querySelector(`tr[data-id='${id}'] .c-last_price`)"
        ".textContent !== before", arg=[position_id, before], timeout=20_000)
    assert page.evaluate("window.__same_page") is True
    shot(page, "price-moved")


def test_the_story_of_a_position_opens(page: Any, session: Session) -> None:
    page.wait_for_function("document.querySelectorAll('#positions tbody tr').length >= 1",
                           timeout=20_000)
    row = rows(page).first
    position_id = row.get_attribute("data-id")
    row.locator(".c-position_id").click()
    page.wait_for_selector("#story:not([hidden]) pre.trace", timeout=10_000)
    assert page.locator("#story-id").inner_text() == position_id
    assert "ENTRY" in page.locator("#story-body").inner_text()
    assert f"tracker:{position_id}#0: spawn" in page.locator("pre.trace").inner_text()
    shot(page, "story")


def test_closing_a_position_fails_without_the_token_and_works_with_it(
        page: Any, session: Session) -> None:
    page.wait_for_function("document.querySelectorAll('#positions tbody tr').length >= 2",
                           timeout=20_000)
    page.on("dialog", lambda dialog: dialog.accept())
    position_id = rows(page).first.get_attribute("data-id")
    close = page.locator(f"tr[data-id='{position_id}'] button.close")

    close.click()
    page.wait_for_selector("#toast.bad:not([hidden])", timeout=10_000)
    assert page.locator("#toast").inner_text().startswith("401")
    shot(page, "close-refused")
    session.system.settle()
    assert status_of(session, position_id) is PositionStatus.ACTIVE

    page.fill("#op-name", "asha")
    page.fill("#op-token", TOKEN)
    close.click()
    page.wait_for_selector("#toast.good:not([hidden])", timeout=10_000)
    assert "exit requested" in page.locator("#toast").inner_text()
    wait_for(lambda: status_of(session, position_id) is PositionStatus.EXITED)
    page.wait_for_selector(f"tr[data-id='{position_id}']", state="detached", timeout=10_000)
    page.wait_for_function("document.querySelector('#reason-chart').dataset.reasons"
                           ".includes('MANUAL=1')", timeout=10_000)
    page.wait_for_function("document.querySelector('#actions').textContent"
                           ".includes('asha@127.0.0.1: close')", timeout=10_000)
    shot(page, "closed")


def test_a_big_table_keeps_only_the_rows_in_view_and_scrolls_to_every_one(
        browser: Any, tmp_path: Path) -> None:
    """At 120 positions the table counts them all, the document holds a screenful or so, and
    scrolling to the end brings the last position (in the table's order) into view."""
    with paper_console(tmp_path, positions=120, instruments=6, push_every=0.5,
                       interval_ms=0) as running:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(running.url + "/")
        page.wait_for_function("Number(document.querySelector('#positions').dataset.rows)"
                               " >= 120", timeout=30_000)
        in_document = page.evaluate(
            "document.querySelectorAll('#positions tbody tr[data-id]').length")
        assert 15 <= in_document < 120
        with running.client() as http:
            ids = sorted(row["position_id"] for row in http.get("/api/positions").json())
        assert len(ids) == 120
        page.eval_on_selector(".table-wrap", "wrap => { wrap.scrollTop = wrap.scrollHeight; }")
        page.wait_for_selector(f"tr[data-id='{ids[-1]}']", timeout=10_000)
        # The last row sits inside the scrolled view, not beyond the spacer.
        inside = page.evaluate("""(id) => {
            const wrap = document.querySelector('.table-wrap').getBoundingClientRect();
            const row = document.querySelector(`tr[data-id='${id}']`).getBoundingClientRect();
            return row.top >= wrap.top && row.bottom <= wrap.bottom + 1; }""", ids[-1])
        assert inside
        assert page.locator(f"tr[data-id='{ids[0]}']").count() == 0
        shot(page, "scrolled-to-end")
        context.close()
        assert errors == [], errors
