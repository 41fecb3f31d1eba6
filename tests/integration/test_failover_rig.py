"""The failover rig's short form (``bench/failover.py``, SPEC §13): ``run.py venue`` and two
``run.py runner --accounts`` processes on the real PostgreSQL and NATS, 2 s leases; the runner
serving the accounts is killed (-9), paused past its lease (SIGSTOP, SIGCONT) and stopped
(SIGTERM), one fault a cycle, while the venue places entries and the runners exit them. Every
fault is recovered (another runner serves every partition the faulty one held), no exit is
placed twice, and every account's book at the venue agrees with its open positions in
PostgreSQL. The rig's checks flag what they should: an exit placed twice, a book gone short, a
fill at the venue that PostgreSQL does not have."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.failover import FAULTS, books_check, double_exits, run, venue_books
from models.common import IST, Segment, Side
from models.orders import OrderProgress, OrderStatus
from models.position import OrderRole, Position, PositionStatus, TrackedOrder
from store.factory import open_store

pytestmark = pytest.mark.integration

LEASE = 2.0
HTTP_TIMEOUT = 0.5


@pytest.mark.timeout(150)
def test_when_runners_fail_in_turn_then_each_fault_recovers_without_double_exits_or_lost_fills(
        pg_url: str, nats_url: str, tmp_path: Path) -> None:
    began = time.monotonic()
    row = run(pg_url, nats_url, tmp_path, cycles=3, runners=2, lease=LEASE,
              http_timeout=HTTP_TIMEOUT)
    took = time.monotonic() - began
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(tmp_path.glob("*.log")))

    cycles = row["cycles"]
    assert [c["fault"] for c in cycles] == list(FAULTS)
    assert all(c["recovered"] for c in cycles), f"{cycles}\n{logs}"
    for c in cycles:
        assert c["partitions"], "the faulty runner held partitions"
        assert c["runner"] not in c["new_owners"]
        # not before the old lease lapsed, unless it was released
        assert c["failover_s"] >= (0 if c["fault"] == "term" else LEASE / 3)
        assert c["failover_s"] < 3 * LEASE + HTTP_TIMEOUT + 5
    paused = cycles[1]
    assert paused["paused_s"] > LEASE and paused["stale_owner_dropped"]
    stopped = cycles[2]
    assert stopped["exit_code"] == 0 and stopped["released"] and stopped["handover_s"] < 5

    assert row["exits_placed"] > 0 and row["entries"] > 0  # it traded through the faults
    assert row["repeated_exit_placements"] == [] and row["short_books"] == []
    assert row["double_exits"] == 0
    assert row["books_agree"], f"{row['book_differences']}\n{logs}"
    assert row["lost_fills"] == 0
    assert row["venue_exit_code"] == 0
    assert set(row["runner_exit_codes"].values()) == {0}
    met = {f["figure"].split(" (")[0]: f["met"] for f in row["figures"]}
    assert met["double exits"] and met["lost fills"] and met["faults recovered"]
    assert took <= 90, f"the short form took {took:.0f} s"


def test_when_an_exit_is_placed_twice_or_overfills_then_the_rig_counts_a_double_exit() -> None:
    record: dict[str, Any] = {
        "entries": 2, "placements": ["X-P1-1", "X-P2-1", "X-P1-1", "E-x-1", "E-x-1"],
        "books": {"desk-1": [["NSE_FNO", "49081", "I", -50], ["NSE_FNO", "49082", "I", 50]],
                  "desk-2": [["NSE_FNO", "49081", "I", 0]]}}
    repeated, short = double_exits(record)
    assert repeated == ["X-P1-1"]  # an entry's repeat is not an exit's
    assert short == ["desk-1:NSE_FNO:49081/I"]


def test_when_a_fill_at_the_venue_is_missing_from_postgres_then_the_books_differ(
        pg_url: str) -> None:
    open_store(pg_url).close()
    books = venue_books({"books": {"desk-1": [["NSE_FNO", "49081", "I", 50]], "desk-2": []}})
    assert set(books_check(pg_url, books)) == {"desk-1"}  # bought at the venue, unknown here
    store = open_store(pg_url, account="desk-1")
    try:
        store.save_position(Position(
            position_id="P1", entry_order_no="1", segment=Segment.NSE_FNO,
            security_id="49081", product="I", side=Side.LONG, status=PositionStatus.ACTIVE,
            created_at=datetime(2026, 12, 3, 10, 0, tzinfo=IST),
            orders=(TrackedOrder(role=OrderRole.ENTRY, progress=OrderProgress(
                order_no="1", status=OrderStatus.TRADED, traded_qty=50,
                traded_value=Decimal(5000))),)))
    finally:
        store.close()
    assert books_check(pg_url, books) == {}  # its open position: the venue's 50
