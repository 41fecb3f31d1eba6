"""The console's pure parts: the operator token, ``--http`` values, and the rows it shows."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from actors.system import PositionView
from console.server import Bind, BindError, parse_bind
from console.token import ENV, TokenError, operator_token, token_matches
from console.views import live_row, pnl_curve
from models.common import Side
from models.orders import OrderStatus
from models.policy import ExitPolicy
from models.position import Position
from models.rules import PriceMark
from tests.unit.builders import active, apply_exit, exit_update, exiting, t


def test_token_file_is_made_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    token, source = operator_token({}, tmp_path / "data")
    path = tmp_path / "data" / "operator-token"
    assert source == str(path) and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert operator_token({}, tmp_path / "data") == (token, source)


def test_token_from_the_environment_wins_and_no_file_is_made(tmp_path: Path) -> None:
    assert operator_token({ENV: " s3cret "}, tmp_path) == ("s3cret", ENV)
    assert not (tmp_path / "operator-token").exists()


def test_an_empty_token_file_is_an_error_naming_the_file_not_a_token(tmp_path: Path) -> None:
    (tmp_path / "operator-token").write_text("\n")
    with pytest.raises(TokenError, match="operator-token is empty"):
        operator_token({}, tmp_path)


def test_token_matches_only_the_exact_token() -> None:
    assert token_matches("abc", "abc")
    for given in (None, "", "ab", "abcd", "ABC", "abc "):
        assert not token_matches(given, "abc")


def test_http_values() -> None:
    assert parse_bind("off") is None and parse_bind("OFF") is None
    assert parse_bind("127.0.0.1:8600") == Bind("127.0.0.1", 8600)
    assert parse_bind(":0") == Bind("127.0.0.1", 0)
    assert parse_bind("0.0.0.0:9000") == Bind("0.0.0.0", 9000)
    assert parse_bind("[::1]:8600") == Bind("::1", 8600)
    for bad in ("8600", "host:", "host:port", "h:70000", ""):
        with pytest.raises(BindError, match="HOST:PORT or off"):
            parse_bind(bad)


def test_live_row_shows_stop_and_distance_for_long_and_short() -> None:
    policy = ExitPolicy()
    now = t(10, 0)
    for side, ltp, stop, distance in ((Side.LONG, "110", "88.00", 20.0),
                                      (Side.SHORT, "90", "112.00", 24.444)):
        position = active(side=side, qty=10, price="100")
        row = live_row(PositionView(position=position, mark=PriceMark(
            ltp=Decimal(ltp), at=now - timedelta(seconds=7))), policy, now)
        assert row["stop_price"] == stop
        assert row["stop_distance_pct"] == pytest.approx(distance, abs=0.001)
        assert row["last_price"] == f"{ltp}.00" and row["price_age_s"] == 7.0
        assert row["flags"] == ["STALE"]  # older than the 5 s stale_after


def test_live_row_uses_the_tighter_trailing_stop_and_flags_it() -> None:
    position = active(side=Side.LONG, qty=10, price="100").model_copy(
        update={"trail_stop": Decimal("104"), "peak_price": Decimal("106.66")})
    row = live_row(PositionView(position=position, mark=None, unprotected=True),
                   ExitPolicy(), t(10, 0))
    assert row["stop_price"] == "104.00" and row["stop_distance_pct"] is None
    assert row["last_price"] is None and row["price_age_s"] is None
    assert row["flags"] == ["UNPROTECTED", "TRAILING"]


def test_pnl_curve_accumulates_net_exits_in_time_order() -> None:
    def exited(position_id: str, price: str, at: datetime) -> Position:
        position = apply_exit(exiting(qty=10, price="100"), exit_update(
            OrderStatus.TRADED, 10, price, at=at, quantity=10))
        return position.model_copy(update={"position_id": position_id, "exited_at": at})

    points = pnl_curve([exited("P1", "110", t(11)), exited("P2", "95", t(10))], ExitPolicy())
    # Realised (gross, as in the report and its chart); the earlier exit first.
    assert [(p["position_id"], p["pnl"], p["cumulative"]) for p in points] == [
        ("P2", "-50.00", "-50.00"), ("P1", "100.00", "50.00")]
    assert points[0]["reason"] == "STOP_LOSS"

