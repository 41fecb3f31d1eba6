"""``run.py live`` end to end against the loopback fake DhanHQ (SPEC §10), one scripted episode
per test: positions found at start by reconcile, a stop loss exited with a LIMIT order at the
protective price, an exit filled in parts, a chase, a fill while the socket was down, a manual
close at the broker, a 429, a placement that times out, a token that expires and is replaced,
a static-IP refusal, positions that disagree, and ``--shadow`` on the same script.

Each test runs the real program as a subprocess (its own folder, SQLite store) against the fake
served from this process over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.dhan.limits import Bucket
from models.common import TxnType
from tests.live.venue import (
    CLIENT,
    FUT,
    OPT,
    POLICY,
    ROOT,
    TOKEN,
    TOKEN_2,
    LiveRun,
    Venue,
    wait_until,
)

pytestmark = pytest.mark.live


def positions(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["security_id"] + ":" + row["side"]: row for row in report["positions"]}


def exit_posts(venue: Venue) -> list[Any]:
    return [r for r in venue.order_requests("POST")]


def exit_filled(venue: Venue, timeout: float) -> None:
    wait_until(lambda: any(o.status.value == "TRADED" for o in venue.exits()), timeout,
               "an exit order of ours filled")


def started(run: LiveRun) -> None:
    run.wait_log("reconcile:", 30)
    run.wait_log("(1 subscribed)", 15)


LAUNCH = POLICY + "launch_exits = true\n"
"""``[dhan] launch_exits``: a wave's exit orders sent by the launch process."""
ACTORS = POLICY + "launch_exits = false\n"
"""Each exit sent by its gateway actor (whatever the default)."""


def stop_loss_script(venue: Venue, folder: Path, *, shadow: bool,
                     policy: str = POLICY) -> dict[str, Any]:
    venue.enter(FUT, TxnType.BUY, 75)   # LONG 75 @ 100, before the session starts
    venue.enter(OPT, TxnType.SELL, 50)  # SHORT 50 @ 200
    time.sleep(0.2)
    run = LiveRun(venue, folder, shadow=shadow, policy=policy)
    run.wait_log("reconcile:", 30)
    run.wait_log("(2 subscribed)", 15)
    venue.set_price(FUT, "94.10")  # -5.9 %: the stop loss of 5 % fires
    if shadow:
        run.wait_log("SHADOW: would place exit", 15)
    else:
        exit_filled(venue, 15)
    time.sleep(1.5)
    return run.stop()


@pytest.mark.parametrize("policy", [ACTORS, LAUNCH], ids=["gateway-actor", "launched"])
def test_positions_found_at_start_and_a_stop_loss_exits_with_a_protective_limit(
        tmp_path: Path, policy: str) -> None:
    with Venue() as venue:
        report = stop_loss_script(venue, tmp_path, shadow=False, policy=policy)
        exits = venue.exits()
    rows = positions(report)
    assert rows["49081:LONG"]["status"] == "EXITED"
    assert rows["49081:LONG"]["exit_reason"] == "STOP_LOSS"
    assert rows["49082:SHORT"]["status"] == "ACTIVE"  # found at start, still protected
    assert rows["49082:SHORT"]["quantity"] == 50
    assert len(exits) == 1
    order = exits[0]
    # LIMIT at the last price less 1 %, rounded down to the tick: 94.10 * 0.99 = 93.159 → 93.15
    assert (order.order_type, order.price, order.txn_type, order.quantity, order.product) == \
        ("LMT", Decimal("93.15"), TxnType.SELL, 75, "I")
    assert order.client_id.startswith("X-")
    assert report["books"]["agree"] is True
    assert report["gateway"]["positions_differ"] == {}
    assert report["gateway"]["placements"] == 1
    assert report["gateway"]["launched"] == (1 if policy == LAUNCH else 0)  # one order
    assert report["summary"]["exits_by_reason"] == {"STOP_LOSS": 1}


def test_shadow_places_nothing_and_reports_the_same_decision(tmp_path: Path) -> None:
    with Venue() as venue:
        live = stop_loss_script(venue, tmp_path / "live", shadow=False)
    with Venue() as venue:
        shadow = stop_loss_script(venue, tmp_path / "shadow", shadow=True)
        assert venue.order_requests("POST") == []
        assert venue.order_requests("PUT") == []
        assert venue.order_requests("DELETE") == []
        assert venue.exits() == []
    decided = {(row["security_id"], row["exit_reason"]) for row in live["positions"]
               if row["exit_reason"]}
    would = shadow["would_exit"]
    assert would, "the shadow run reported no exit"
    assert {(row["security_id"], row["reason"]) for row in would} == decided
    first = would[0]
    assert (first["transaction_type"], first["quantity"], first["limit_price"]) == \
        ("SELL", 75, "93.15")
    assert positions(shadow)["49081:LONG"]["status"] == "ACTIVE"  # nothing placed: still open
    assert shadow["mode"] == "shadow"


def test_an_exit_is_priced_inside_the_circuit_limits(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.fake.quotes.circuits[FUT] = (Decimal("93.50"), Decimal("106.50"))
        venue.enter(FUT, TxnType.BUY, 75)
        wait_until(lambda: venue.exchange.orders()[0].status.value == "TRADED", 5)
        run = LiveRun(venue, tmp_path)
        started(run)
        run.wait_log("circuit limits read for 1 of 1 instruments", 15)
        venue.set_price(FUT, "94.10")  # the stop loss; 1 % below is 93.15, past the circuit
        exit_filled(venue, 15)
        time.sleep(1.0)
        report = run.stop()
        exits = venue.exits()
        reads = [r for r in venue.fake.requests if r.path.endswith("/marketfeed/quote")]
    assert len(exits) == 1 and exits[0].price == Decimal("93.50")  # at the lower circuit
    assert len(reads) == 1  # read once for the instrument, not per step
    assert report["gateway"]["circuits_known"] == 1
    assert positions(report)["49081:LONG"]["exit_reason"] == "STOP_LOSS"


def test_an_exit_filled_in_parts(tmp_path: Path) -> None:
    with Venue(partial_fills=3) as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        wait_until(lambda: venue.exchange.orders()[0].status.value == "TRADED", 5)
        run = LiveRun(venue, tmp_path)
        started(run)
        venue.set_price(FUT, "94")
        exit_filled(venue, 15)
        time.sleep(1.0)
        report = run.stop()
        exits = venue.exits()
        trades = [t for t in venue.fake.trades.trades() if t.order_no == exits[0].order_no]
    assert len(exits) == 1
    assert [t.quantity for t in trades] == [25, 25, 25]  # three fills of one exit order
    row = positions(report)["49081:LONG"]
    assert (row["status"], row["quantity"], row["exit_reason"]) == ("EXITED", 75, "STOP_LOSS")
    assert report["books"]["agree"] is True


def test_a_resting_exit_is_chased_toward_the_market(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path)
        started(run)
        venue.exchange.rest_next(1)  # our exit will rest at the exchange
        venue.set_price(FUT, "94")
        wait_until(lambda: bool(venue.exits()), 15, "the exit placed")
        placed_at = venue.exits()[0].price
        venue.set_price(FUT, "92")  # the market runs away from the resting limit
        wait_until(lambda: bool(venue.order_requests("PUT")), 15, "a chase")
        exit_filled(venue, 15)
        time.sleep(1.0)
        report = run.stop()
        exits = venue.exits()
    assert placed_at == Decimal("93.05")
    assert len(exits) == 1, "chased by modification, not placed again"
    assert exits[0].modifications >= 1
    assert exits[0].price == Decimal("91.05")  # 92 * 0.99 = 91.08 → 91.05
    assert positions(report)["49081:LONG"]["status"] == "EXITED"
    assert "re-priced to 91.05" in run.log()


def test_a_fill_while_the_order_socket_was_down_is_found_on_reconnect(tmp_path: Path) -> None:
    with Venue() as venue:
        run = LiveRun(venue, tmp_path)
        run.wait_log("reconcile:", 30)
        run.wait_log("socket LIVE", 15)
        venue.fake.drop_order_sockets()
        venue.enter(FUT, TxnType.BUY, 75)  # filled while nobody listens: no replay
        wait_until(lambda: run.log().count("reconcile:") >= 2, 20, "a reconcile on reconnect")
        run.wait_log("(1 subscribed)", 15)
        venue.set_price(FUT, "94")
        exit_filled(venue, 15)
        time.sleep(1.0)
        report = run.stop()
    row = positions(report)["49081:LONG"]
    assert (row["status"], row["exit_reason"]) == ("EXITED", "STOP_LOSS")
    assert report["books"]["agree"] is True


def test_a_manual_close_at_the_broker_is_a_broker_exit(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path)
        started(run)
        venue.fake.camel_case = True  # frames as some accounts get them: camelCase keys
        venue.enter(FUT, TxnType.SELL, 75)  # the trader closes it in the broker's app
        run.wait_log("(0 subscribed)", 15)
        venue.set_price(FUT, "90")  # would have been a stop loss: nothing may be sent now
        time.sleep(2.0)
        report = run.stop()
        posts = venue.order_requests("POST")
    row = positions(report)["49081:LONG"]
    assert (row["status"], row["exit_reason"]) == ("EXITED", "BROKER_EXIT")
    assert posts == []
    assert report["books"]["agree"] is True


def test_429_on_placement_is_looked_up_and_placed_once(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path)
        started(run)
        venue.fake.throttle(Bucket.ORDERS, 1)
        venue.set_price(FUT, "94")
        exit_filled(venue, 25)
        time.sleep(1.0)
        report = run.stop()
        exits, taken = venue.exits(), list(venue.fake.placements)
    assert len(exits) == 1 and len(taken) == 1
    assert exits[0].client_id.endswith("-2"), "the throttled attempt 1 was never taken"
    assert "UNKNOWN" in run.log()
    assert positions(report)["49081:LONG"]["status"] == "EXITED"
    assert report["gateway"]["unknown"] >= 1


@pytest.mark.parametrize("policy", [ACTORS, LAUNCH], ids=["gateway-actor", "launched"])
def test_a_placement_that_times_out_is_resolved_by_look_up_without_a_second_order(
        tmp_path: Path, policy: str) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path, policy=policy)
        started(run)
        venue.fake.lose_placements(1)  # taken (and filled), never answered
        venue.set_price(FUT, "94")
        exit_filled(venue, 15)
        time.sleep(5.0)  # time-out 1.5 s, then the look-up
        report = run.stop()
        taken = list(venue.fake.placements)
    assert len(taken) == 1, f"placed more than once: {taken}"
    row = positions(report)["49081:LONG"]
    assert (row["status"], row["exit_reason"]) == ("EXITED", "STOP_LOSS")
    assert report["gateway"]["unknown"] == 1
    assert report["gateway"]["launched"] == (1 if policy == LAUNCH else 0)


def test_with_the_launch_process_a_wave_is_launched_and_a_lost_placement_looked_up_once(
        tmp_path: Path) -> None:
    """``[dhan] launch_exits = true``: the exits leave from the launch process; a placement
    taken but never answered is still an unknown outcome, looked up and not placed again."""
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        venue.enter(OPT, TxnType.SELL, 50)
        run = LiveRun(venue, tmp_path, policy=LAUNCH)
        run.wait_log("reconcile:", 30)
        run.wait_log("(2 subscribed)", 15)
        venue.set_price(OPT, "211")  # SHORT -5.5 %: its stop loss, answered as usual
        wait_until(lambda: len(venue.exits()) == 1, 15, "the first exit placed")
        venue.fake.lose_placements(1)  # the next one taken (and filled), never answered
        venue.set_price(FUT, "94")
        wait_until(lambda: sum(o.status.value == "TRADED" for o in venue.exits()) == 2, 15,
                   "both exits filled")
        time.sleep(5.0)  # time-out 1.5 s, then the look-up
        report = run.stop()
        taken = list(venue.fake.placements)
    assert len(taken) == 2, f"placed more than once: {taken}"
    rows = positions(report)
    assert [(rows[k]["status"], rows[k]["exit_reason"]) for k in ("49081:LONG", "49082:SHORT")] \
        == [("EXITED", "STOP_LOSS")] * 2
    gateway = report["gateway"]
    assert (gateway["unknown"], gateway["placements"], gateway["launched"]) == (1, 1, 2)
    assert report["books"]["agree"] is True
    assert "launched by a process of their own" in run.log()
    assert TOKEN not in run.log()


def test_a_token_that_expires_is_replaced_and_the_session_resumes(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path, token_file=True)
        started(run)
        venue.fake.expire_token(TOKEN_2)
        run.wait_log("TOKEN_INVALID", 20)
        (tmp_path / "token.txt").write_text(TOKEN_2 + "\n", encoding="utf-8")
        run.wait_log("a new DhanHQ access token", 20)
        wait_until(lambda: run.log().count("reconcile:") >= 2, 20, "a full reconcile")
        run.wait_log("socket LIVE", 15)
        venue.set_price(FUT, "94")
        exit_filled(venue, 15)
        time.sleep(1.0)
        report = run.stop()
    assert positions(report)["49081:LONG"]["exit_reason"] == "STOP_LOSS"
    text = run.log() + (tmp_path / "report.json").read_text(encoding="utf-8")
    assert TOKEN not in text and TOKEN_2 not in text
    resumed = run.log().split("a new DhanHQ access token", 1)[1]
    assert "dhan UP" in resumed


def test_a_static_ip_refusal_stops_placement_with_an_alarm(tmp_path: Path) -> None:
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75)
        run = LiveRun(venue, tmp_path)
        started(run)
        venue.fake.refuse_ip = True
        venue.set_price(FUT, "94")
        run.wait_log("static IP", 15)
        time.sleep(3.0)
        report = run.stop()
        posts = venue.order_requests("POST")
    assert len(posts) == 1, "placement stops after the refusal (retried after a minute)"
    assert any("static IP" in alarm for alarm in report["gateway"]["alarms"])
    assert report["gateway"]["ip_refused"] is True
    assert positions(report)["49081:LONG"]["status"] == "ACTIVE"


def test_positions_that_disagree_raise_an_alarm_and_trade_nothing(tmp_path: Path) -> None:
    policy_with_prefix = 'correlation_prefix = "ALGO-"\n' + \
        (Path(__file__).parent / "venue.py").read_text(encoding="utf-8").split(
            'POLICY = """', 1)[1].split('"""', 1)[0]
    with Venue() as venue:
        venue.enter(FUT, TxnType.BUY, 75, correlation="ALGO-1")  # ours
        venue.enter(OPT, TxnType.BUY, 50)  # another strategy's: not tracked, but at DhanHQ
        run = LiveRun(venue, tmp_path, policy=policy_with_prefix)
        run.wait_log("POSITIONS DIFFER", 30)
        time.sleep(1.0)
        report = run.stop()
        posts = venue.order_requests("POST")
    assert report["gateway"]["positions_differ"] == {
        "NSE_FNO:49082/I": {"broker": 50, "ours": 0}}
    assert posts == []
    assert positions(report)["49081:LONG"]["status"] == "ACTIVE"


@pytest.mark.parametrize(("env", "named"), [
    ({"DHAN_ACCESS_TOKEN": TOKEN}, "DHAN_CLIENT_ID"),
    ({"DHAN_CLIENT_ID": CLIENT}, "DHAN_ACCESS_TOKEN"),
    ({"DHAN_CLIENT_ID": "12ab-secret-value", "DHAN_ACCESS_TOKEN": TOKEN}, "DHAN_CLIENT_ID"),
    ({"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "bad token with spaces secret-value"},
     "DHAN_ACCESS_TOKEN"),
    ({"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": TOKEN, "DHAN_API_URL": "ftp://x"},
     "DHAN_API_URL"),
])
def test_a_missing_or_malformed_credential_exits_2_naming_the_variable(
        tmp_path: Path, env: dict[str, str], named: str) -> None:
    import os
    base = {k: v for k, v in os.environ.items() if not k.startswith("DHAN_")}
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "live", "--http", "off"],
                            cwd=tmp_path, env={**base, **env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "secret-value" not in result.stderr + result.stdout
    assert TOKEN not in result.stderr + result.stdout
