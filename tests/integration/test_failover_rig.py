"""The failover rig's short form (``bench/failover.py``, SPEC §13): ``run.py venue`` and two
``run.py runner --accounts`` processes on the real PostgreSQL and NATS, 2 s leases; the runner
serving the accounts is killed (-9), paused past its lease (SIGSTOP, SIGCONT) and stopped
(SIGTERM), one fault a cycle, while the venue places entries and the runners exit them. Every
fault is recovered (another runner serves every partition the faulty one held), no exit is
placed twice, and every account's book at the venue agrees with its open positions in
PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.failover import FAULTS, run

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
