"""The console's JSON API, actions, push stream, metrics and probes, over real HTTP against a
real paper session."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.clocks import paper_session_start
from models.common import IST
from models.policy import risk_config_from_mapping
from models.position import PositionStatus
from store.ports import Store
from store.records import KillSwitch
from tests.web.session import POLICY, TOKEN, Session, paper_console, wait_for


def open_rows(session: Session, count: int) -> list[dict[str, Any]]:
    with session.client(None) as http:
        def priced() -> list[dict[str, Any]] | None:
            rows: list[dict[str, Any]] = http.get("/api/positions").json()
            ready = [r for r in rows if r["status"] == "ACTIVE" and r["last_price"]]
            return ready if len(ready) >= count else None

        result: list[dict[str, Any]] = wait_for(priced)
        return result


def exited(session: Session, position_id: str) -> Callable[[], bool]:
    """Whether the store holds the position EXITED (for ``wait_for``)."""
    return lambda: stored_status(session, position_id) is PositionStatus.EXITED


def stored_status(session: Session, position_id: str) -> PositionStatus | None:
    position = session.system.parts.store.load_position(position_id)
    return None if position is None else position.status


def test_positions_show_last_price_age_pnl_and_stop_of_every_open_position(
        tmp_path: Path) -> None:
    with paper_console(tmp_path) as session:
        rows = open_rows(session, 4)
        with session.client(None) as http:
            status = http.get("/api/status").json()
    assert status["trading_state"] == "RUNNING"
    assert status["positions"]["ACTIVE"] >= 4
    assert status["gateway"]["state"] == "UP"
    for row in rows:
        entry, last = Decimal(row["entry_price"]), Decimal(row["last_price"])
        sign = 1 if row["side"] == "LONG" else -1
        # The policy's 90 % stop loss (trailing off): the stop is the entry moved by 90 %.
        assert Decimal(row["stop_price"]) == (entry * (1 - sign * Decimal("0.9"))).quantize(
            Decimal("0.01"))
        assert row["stop_distance_pct"] > 0
        assert 0 <= row["price_age_s"] < 5
        assert Decimal(row["pnl"]) == (sign * (last - entry) * row["quantity"] - 20).quantize(
            Decimal("0.01")) or abs(Decimal(row["pnl"]) - (sign * (last - entry)
                                                            * row["quantity"] - 20)) < 1
        assert row["flags"] == []


def test_close_without_a_valid_token_is_refused_with_401_and_changes_nothing(
        tmp_path: Path) -> None:
    with paper_console(tmp_path) as session:
        target = open_rows(session, 1)[0]["position_id"]
        for token in (None, "", "wrong-token", TOKEN + "x"):
            with session.client(token) as http:
                answer = http.post(f"/api/positions/{target}/close")
                assert answer.status_code == 401, token
                assert TOKEN not in answer.text
            with session.client(token) as http:
                assert http.post("/api/flatten").status_code == 401
                assert http.post("/api/halt").status_code == 401
        session.system.settle()
        assert stored_status(session, target) is PositionStatus.ACTIVE
        assert session.system.status()["trading_state"] == "RUNNING"
        audit = (tmp_path / "operator-actions.jsonl").read_text()
    assert TOKEN not in audit
    refused = [json.loads(line) for line in audit.splitlines()]
    assert len(refused) == 12 and not any(entry["ok"] for entry in refused)


def test_close_with_the_token_exits_the_position_manually_and_records_who(
        tmp_path: Path) -> None:
    with paper_console(tmp_path) as session:
        target = open_rows(session, 2)[0]["position_id"]
        with session.client() as http:
            answer = http.post(f"/api/positions/{target}/close",
                               headers={"X-Operator": "asha"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["ok"] is True
            wait_for(lambda: stored_status(session, target) is PositionStatus.EXITED)
            assert http.post("/api/positions/NOPE/close").status_code == 404
            story = wait_for(lambda: _story_with(http, target, "ExitRequested"))
        position = session.system.parts.store.load_position(target)
        assert position is not None and position.exit_reason == "MANUAL"
        audit = [json.loads(line) for line in
                 (tmp_path / "operator-actions.jsonl").read_text().splitlines()]
    assert audit[0]["operator"] == "asha" and audit[0]["action"] == "close"
    assert audit[0]["target"] == target and audit[0]["ok"] is True
    assert audit[0]["address"] == "127.0.0.1"
    assert story["position"]["exit_reason"] == "MANUAL"
    assert [a["reason"] for a in story["exit_attempts"]] == ["MANUAL"]
    assert any("operator asha" in line for line in story["trace"])


def _story_with(http: httpx.Client, position_id: str, text: str) -> dict[str, Any] | None:
    story: dict[str, Any] = http.get(f"/api/positions/{position_id}/story").json()
    return story if any(text in line for line in story["trace"]) else None


def test_flatten_closes_every_open_position(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=3) as session:
        rows = open_rows(session, 3)
        with session.client() as http:
            answer = http.post("/api/flatten")
        assert answer.status_code == 200 and "3 open positions" in answer.json()["detail"]
        for row in rows:
            wait_for(exited(session, row["position_id"]))
        with session.client(None) as http:
            exits = wait_for(lambda: http.get("/api/exits").json()["points"])
    assert {p["reason"] for p in exits} == {"MANUAL"}
    assert len(exits) == 3


def test_halt_closes_positions_that_open_and_resume_runs_again(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=4, interval_ms=1500) as session:
        first = open_rows(session, 1)[0]["position_id"]
        with session.client() as http:
            halted = http.post("/api/halt")
            assert halted.status_code == 200 and halted.json()["trading_state"] == "HALTED"
            later = wait_for(lambda: [p for p in session.system.parts.store.list_positions()
                                      if p.position_id != first
                                      and p.status is PositionStatus.EXITED])
            resumed = http.post("/api/resume")
        assert resumed.status_code == 200 and resumed.json()["trading_state"] == "RUNNING"
        assert stored_status(session, first) is PositionStatus.ACTIVE
    assert later[0].exit_reason == "MANUAL"


def _latched(store: Store) -> None:
    # Latched on the paper session's own exchange day: late at night in IST, or on a
    # holiday, that session begins on a later trading day than today's date, and a latch of
    # an earlier day is not in force there.
    latched_at = paper_session_start(datetime.now(IST), risk_config_from_mapping(POLICY).calendar)
    store.latch_kill_switch(KillSwitch(latched_at=latched_at, reason="test",
                                       day_pnl=Decimal(-5000)))


def test_reset_kill_switch_reaches_the_running_process_and_resume_waits_for_it(
        tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=0, before_start=_latched) as session:
        with session.client() as http:
            assert http.get("/api/status").json()["kill_switch"] is True
            refused = http.post("/api/resume")
            assert refused.status_code == 409 and "kill switch" in refused.json()["detail"]
            reset = http.post("/api/kill-switch/reset")
            assert reset.status_code == 200, reset.text
            assert reset.json() == {"ok": True, "action": "reset-kill-switch", "target": None,
                                    "detail": "kill switch reset", "trading_state": "RUNNING"}
        assert session.system.parts.store.kill_switch() is None


def test_metrics_speak_prometheus_with_latency_histograms(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=2) as session:
        target = open_rows(session, 2)[0]["position_id"]
        with session.client() as http:
            http.post(f"/api/positions/{target}/close")
            wait_for(lambda: stored_status(session, target) is PositionStatus.EXITED)
            text = wait_for(lambda: (t := http.get("/metrics").text)
                            and 'tracker_exits_total{account="paper",reason="MANUAL"} 1.0' in t
                            and t)
            answer = http.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    positions = {s.labels["status"]: s.value for s in families["tracker_positions"].samples}
    assert positions["EXITED"] == 1 and positions["ACTIVE"] >= 1
    placed = families["tracker_decision_to_order_seconds"]
    assert placed.type == "histogram"
    count = [s.value for s in placed.samples if s.name.endswith("_count")]
    assert count == [1.0]
    assert families["tracker_price_to_decision_seconds"].type == "histogram"
    depths = {s.labels["actor"] for s in families["tracker_mailbox_depth"].samples}
    assert depths == {"orders", "batcher", "index", "pnl", "supervisor", "stops", "intents",
                      "trackers"}
    for name in ("tracker_actor_restarts", "tracker_dead_letters", "tracker_quote_api_calls",
                 "tracker_gateway_errors"):
        assert families[name].type == "counter", name
    assert families["tracker_gateway_up"].samples[0].value == 1
    assert families["tracker_books_agree"].samples[0].value == 1
    # Every sample names the account it belongs to (SPEC §13).
    assert {s.labels.get("account") for f in families.values() for s in f.samples} == {"paper"}
    # The Grafana dashboard in docs/ queries only what is exported here (the token's expiry
    # is exported by a gateway that has a token; paper has none).
    board = json.loads((Path(__file__).resolve().parents[2] / "docs" /
                        "grafana-dashboard.json").read_text(encoding="utf-8"))
    queried = {name for panel in board["panels"] for target in panel["targets"]
               for name in re.findall(r"\btracker_[a-z_]+", target["expr"])}
    exported = {sample.name for family in families.values() for sample in family.samples}
    exported |= {f"{family.name}_total" for family in families.values()
                 if family.type == "counter"}  # a family with no sample yet
    assert queried - exported == {"tracker_token_expiry_seconds"}
    # ... and every query shows the accounts chosen in the dashboard's Account variable.
    assert "account" in {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"\btracker_[a-z_]+(\{[^}]*\})?", target["expr"])
            assert names and all(s == '{account=~"$account"}' for s in names), target["expr"]
            assert "{{account}}" in target["legendFormat"], target


def test_probes_and_openapi_schema(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=1) as session:
        open_rows(session, 1)
        with session.client(None) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            ready = http.get("/readyz")
            schema = http.get("/api/openapi.json").json()
            page = http.get("/")
            chart = http.get("/static/uPlot.iife.min.js")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    paths = set(schema["paths"])
    assert {"/api/status", "/api/positions", "/api/positions/{position_id}/story",
            "/api/positions/{position_id}/close", "/api/flatten", "/api/halt",
            "/api/resume", "/api/kill-switch/reset", "/metrics"} <= paths
    close = schema["paths"]["/api/positions/{position_id}/close"]["post"]
    assert close["security"] == [{"APIKeyHeader": []}]
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert chart.status_code == 200 and "uPlot" in chart.text


def test_readyz_fails_while_the_store_is_unreachable(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=0) as session:
        store = session.system.parts.store
        original = store.schema_version

        def broken() -> int:
            raise OSError("disk gone")

        store.schema_version = broken  # type: ignore[method-assign]
        try:
            with session.client(None) as http:
                answer = http.get("/readyz")
        finally:
            store.schema_version = original  # type: ignore[method-assign]
    assert answer.status_code == 503
    assert answer.json()["checks"]["store"] is False


def test_push_stream_sends_snapshots_with_positions(tmp_path: Path) -> None:
    with paper_console(tmp_path, positions=2) as session:
        open_rows(session, 2)
        events: list[tuple[str | None, Any]] = []
        with session.client(None) as http, http.stream("GET", "/api/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind: str | None = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
                if sum(1 for k, _ in events if k == "snapshot") >= 2:
                    break
    snapshots = [data for kind, data in events if kind == "snapshot"]
    assert len(snapshots[-1]["positions"]) >= 2
    assert snapshots[0]["at"] != snapshots[1]["at"]
    assert any(kind == "exits" for kind, _ in events)
