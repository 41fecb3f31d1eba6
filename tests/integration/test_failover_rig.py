"""The failover rig's short form (``bench/failover.py``, SPEC §13): ``run.py venue`` and two
``run.py runner --accounts`` processes on the real PostgreSQL and a nats-server of the rig's own,
2 s leases; one fault a cycle, while the venue places entries and the runners exit them: the
runner serving the accounts is killed (-9), paused past its lease (SIGSTOP, SIGCONT) and stopped
(SIGTERM), a runner is added (it becomes a spare: runners do not rebalance), the nats-server is
restarted and the runners' PostgreSQL sessions are ended. Every fault is recovered (another
runner serves every partition the faulty one held; updates are stored again after a restart),
no partition is served by two runners, no exit is placed twice, and every account's book at
the venue agrees with its open positions in PostgreSQL. Each cycle is a line of the results
file as it ends, and the file's summary is the run's row. The rig's checks flag what they
should: an exit placed twice, a book gone short, a fill at the venue that PostgreSQL does not
have, a partition two runners' logs both serve."""

from __future__ import annotations

import json
import math
import shutil
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from bench.failover import (
    ACCOUNTS,
    DB_CONNECTIONS,
    FAULTS,
    Proc,
    Rig,
    books_check,
    double_exits,
    read_lines,
    run,
    serving_now,
    summarise,
    venue_books,
)
from models.common import IST, Segment, Side
from models.orders import OrderProgress, OrderStatus
from models.position import OrderRole, Position, PositionStatus, TrackedOrder
from store.factory import open_store

pytestmark = pytest.mark.integration

LEASE = 2.0
HTTP_TIMEOUT = 0.5


@pytest.mark.timeout(180)
@pytest.mark.parametrize("connectors", [False, True], ids=["venue-publishes", "connectors"])
def test_when_every_fault_comes_in_turn_then_each_recovers_without_double_exits_or_lost_fills(
        pg_url: str, tmp_path: Path, connectors: bool) -> None:
    """``connectors``: the order updates and prices reach NATS through ``run.py connector``
    and ``run.py feed``, from the venue's order sockets, order books and feed, as from the
    real broker (the NATS restart hits them too)."""
    if shutil.which("nats-server") is None:
        pytest.skip("the NATS restart needs nats-server on PATH")
    out = tmp_path / "cycles.jsonl"
    began = time.monotonic()
    row = run(pg_url, None, tmp_path, cycles=len(FAULTS), runners=2, lease=LEASE,
              http_timeout=HTTP_TIMEOUT, nats_down=1.0, out=out, connectors=connectors)
    took = time.monotonic() - began
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(tmp_path.glob("*.log")))

    cycles = {c["fault"]: c for c in row["cycles"]}
    assert [c["fault"] for c in row["cycles"]] == list(FAULTS)
    assert all(c["recovered"] for c in row["cycles"]), f"{row['cycles']}\n{logs}"
    assert all(c["served_twice"] == [] for c in row["cycles"]), row["cycles"]
    for fault in ("kill", "pause", "term"):
        c = cycles[fault]
        assert c["partitions"], "the faulty runner held partitions"
        assert c["runner"] not in c["new_owners"]
        # not before the old lease lapsed, unless it was released
        assert c["failover_s"] >= (0 if fault == "term" else LEASE / 3)
        assert c["failover_s"] < 3 * LEASE + HTTP_TIMEOUT + 5
    paused = cycles["pause"]
    assert paused["paused_s"] > LEASE and paused["stale_owner_dropped"]
    stopped = cycles["term"]
    assert stopped["exit_code"] == 0 and stopped["released"] and stopped["handover_s"] < 5
    added = cycles["add"]
    # at most its fair share (runners over theirs hand partitions over), none served twice
    assert added["within_share"], added
    assert added["exit_code"] == 0
    restarted = cycles["nats"]
    assert restarted["down_s"] >= 1.0
    assert 0 < restarted["flow_s"] < 15 and restarted["reconnect_s"] < 15
    ended = cycles["pg"]
    # the runners' own, by their application_name: the serving runner's stores (at most
    # DB_CONNECTIONS each: run.py runner --db-connections) and every runner's leases (4 each)
    assert 0 < ended["sessions_ended"] <= len(ACCOUNTS) * DB_CONNECTIONS + 2 * 4
    assert 0 < ended["recovery_s"] < 15 and ended["renewed_s"] <= ended["recovery_s"]

    assert row["exits_placed"] > 0 and row["entries"] > 0  # it traded through the faults
    assert row["repeated_exit_placements"] == [] and row["short_books"] == []
    assert row["double_exits"] == 0
    assert row["books_agree"], f"{row['book_differences']}\n{logs}"
    assert row["lost_fills"] == 0
    assert row["venue_exit_code"] == 0
    assert set(row["runner_exit_codes"].values()) == {0}
    met = {f["figure"].split(" (")[0].split(":")[0]: f["met"] for f in row["figures"]}
    assert met["double exits"] and met["lost fills"] and met["faults recovered"]
    assert met["partitions served twice"] and met["runner added"]
    assert row["stale_writes_witnessed"] and row["stale_writes"] == 0  # PostgreSQL's own check
    assert row["unfenced_writes"] == 0, row
    assert met["writes under a stale epoch"] and met["writes without a fence"]
    assert set(row["by_kind"]) == set(FAULTS)

    # the results file: a start line, a line per cycle, the end line; its summary is the row
    lines = read_lines(out)
    assert [line["kind"] for line in lines] == ["start", *["cycle"] * len(FAULTS), "end"]
    assert json.dumps(summarise(lines)) == json.dumps(row)
    assert took <= 90, f"the short form took {took:.0f} s"
    if connectors:  # the venue published nothing: every update the runners stored (it
        # traded, the books agree) came through the connector; the feed followed the positions
        feed = (tmp_path / "feed.log").read_text(errors="replace")
        assert "instruments subscribed" in feed, feed[-1500:]


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


def _lines(run: str, *cycles: tuple[str, float, bool], end: bool = True,
           commit: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{"kind": "start", "run": run, "runners": 3, "lease_s": 6.0,
                                    "http_timeout_s": 3.0, "accounts": 4}]
    if commit is not None:
        found[0]["commit"] = commit
    measure = {"kill": "failover_s", "term": "handover_s", "nats": "flow_s"}
    for number, (fault, seconds, recovered) in enumerate(cycles, 1):
        found.append({"kind": "cycle", "run": run, "cycle": number, "fault": fault,
                      "recovered": recovered, measure[fault]: seconds, "served_twice": []})
    if end:
        found.append({"kind": "end", "run": run, "exits_placed": 10, "entries": 12,
                      "repeated_exit_placements": [], "short_books": [], "books_agree": True,
                      "book_differences": {}, "venue_exit_code": 0,
                      "runner_exit_codes": {"r1.1": 0}, "wall_s": 60.0})
    return found


def test_when_a_file_holds_several_sittings_then_its_summary_counts_every_cycle(
        tmp_path: Path) -> None:
    first = _lines("a", ("kill", 9.0, True), ("term", 0.5, True), commit="0123abcd")
    second = _lines("b", ("kill", 9.5, True), ("nats", 2.5, True), end=False,  # stopped hard
                    commit="0123abcd")
    out = tmp_path / "cycles.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in first + second)
                   + '{"kind": "cycle", "run": "b", "cyc')  # its last line cut short
    alone = summarise(first)
    both = summarise(read_lines(out))
    assert both["crash_failover_s"] == [9.0, 9.5]
    assert both["runs"] == 2 and both["runs_checked"] == 1 and both["cycles_unchecked"] == 2
    assert both["by_kind"]["nats"]["p99"] == 2.5 and both["by_kind"]["kill"]["cycles"] == 2
    assert both["exits_placed"] == 10 and both["runner_exit_codes"] == {"a/r1.1": 0}
    assert both["commits"] == ["0123abcd"]  # both sittings ran the same code
    assert summarise([*first, *_lines("c", ("kill", 9.1, True))])["commits"] == [
        "0123abcd", "unrecorded"]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(line) + "\n" for line in first))
    assert json.dumps(summarise(read_lines(tmp_path / "one.jsonl"))) == json.dumps(alone)
    assert alone["runner_exit_codes"] == {"r1.1": 0} and alone["books_agree"]


def test_when_a_run_never_reached_its_end_checks_then_its_cycles_do_not_count_as_checked(
        ) -> None:
    cut = summarise(_lines("b", ("kill", 9.5, True), ("kill", 9.2, True), end=False))
    fig = {f["figure"]: f for f in cut["figures"]}
    assert fig["double exits"]["value"] == "unchecked" and fig["double exits"]["met"] is None
    assert "1 of 1 runs ended before" in fig["double exits"]["miss"]
    counted = fig["kill / pause cycles, with 0 double exits and 0 lost fills"]
    assert counted["value"] == 0 and counted["miss"] == "2 more in runs never checked"
    both = summarise([*_lines("a", ("kill", 9.0, True)),
                      *_lines("b", ("kill", 9.5, True), ("kill", 9.2, True), end=False)])
    counted = next(f for f in both["figures"] if f["figure"].startswith("kill / pause"))
    assert counted["value"] == 1 and counted["met"] is False


def test_when_a_cycle_was_not_recovered_then_the_summary_says_so() -> None:
    row = summarise(_lines("a", ("kill", math.inf, False), ("term", 0.4, True)))
    recovered = next(f for f in row["figures"] if f["figure"] == "faults recovered")
    assert recovered["value"] == 1 and recovered["met"] is False
    crash = row["figures"][0]
    assert crash["value"] == math.inf and crash["met"] is False


def test_when_two_live_runners_log_serving_one_partition_then_it_is_served_twice(
        tmp_path: Path) -> None:
    def line(second: int, text: str) -> str:
        return f"2026-12-03 10:00:0{second}.000 | INFO     | app.runner:x:1 - {text}\n"

    first, second = tmp_path / "r1.1.log", tmp_path / "r2.2.log"
    first.write_text(line(0, "serving partition 14") + line(0, "serving partition 59")
                     + line(1, "partition 14 dropped: its lease could not be renewed")
                     + line(2, "serving partition 180") + line(3, "released partition 180"))
    second.write_text(line(1, "serving partition 14") + line(2, "serving partition 59"))
    assert serving_now(first) == {59} and serving_now(second) == {14, 59}
    rig = Rig("postgresql://unused", "nats://unused", tmp_path, 2.0, 0.5, 0.5)
    rig.runners = {"r1.1": Proc("r1.1", cast(Any, None), first),
                   "r2.2": Proc("r2.2", cast(Any, None), second)}
    assert rig.served_twice() == [59]  # 14 was dropped by r1.1 before r2.2 served it
    del rig.runners["r1.1"]  # a runner gone (killed) serves nothing
    assert rig.served_twice() == []


def test_the_summary_counts_kill_and_pause_cycles_toward_the_specs_thousand() -> None:
    row = summarise(_lines("a", ("kill", 9.0, True), ("term", 0.4, True), ("kill", 8.0, True)))
    count = next(f for f in row["figures"] if f["figure"].startswith("kill / pause cycles"))
    assert (count["value"], count["target"], count["met"]) == (2, ">= 1000", False)
    many = summarise(_lines("b", *[("kill", 9.0, True)] * 1000))
    count = next(f for f in many["figures"] if f["figure"].startswith("kill / pause cycles"))
    assert (count["value"], count["met"]) == (1000, True)
    doubled = summarise([*_lines("c", *[("kill", 9.0, True)] * 1000, end=False),
                         {**_lines("c")[-1], "repeated_exit_placements": ["X-P1-1"]}])
    count = next(f for f in doubled["figures"] if f["figure"].startswith("kill / pause cycles"))
    assert (count["value"], count["met"]) == (1000, False)
