"""The report's PnL chart: a PNG (read back with matplotlib) whose markers show each exit in
its reason's colour, at its place on the cumulative curve; and the curve itself."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.chart import HEIGHT, REASON_COLORS, WIDTH, pnl_chart_png, write_pnl_chart
from models.orders import OrderStatus
from models.policy import ExitPolicy
from models.position import ExitReason
from models.report import build_report, exit_curve
from tests.unit.builders import apply_exit, exit_update, exiting, t

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(n: int, reason: str | None, pnl: str | None, exited: str | None) -> dict[str, Any]:
    return {"position_id": f"P{n}", "status": "EXITED" if exited else "ACTIVE",
            "exit_reason": reason, "realized_pnl": pnl,
            "opened_at": t(9, 20).isoformat(), "exited_at": exited}


def report(*rows: dict[str, Any], net: str = "0.00") -> dict[str, Any]:
    return {"mode": "paper", "started_at": t(9, 15).isoformat(),
            "ended_at": t(15, 30).isoformat(), "positions": list(rows),
            "summary": {"net_pnl": net}}


def decode(data: bytes) -> np.ndarray[Any, Any]:
    """RGB pixels as 0-255 integers, rows top to bottom."""
    assert data.startswith(SIGNATURE)
    image: np.ndarray[Any, Any] = matplotlib.image.imread(io.BytesIO(data), format="png")
    pixels: np.ndarray[Any, Any] = np.rint(image[..., :3] * 255).astype(int)
    return pixels


def where(image: np.ndarray[Any, Any], colour: str) -> np.ndarray[Any, Any]:
    """(y, x) of every pixel of exactly ``colour`` (a marker's inside)."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return np.argwhere(np.all(image == rgb, axis=-1))


def draw(tmp_path: Path, data: dict[str, Any]) -> np.ndarray[Any, Any]:
    path = tmp_path / "chart.png"
    write_pnl_chart(data, path)
    return decode(path.read_bytes())


RED, GREEN = REASON_COLORS["STOP_LOSS"], REASON_COLORS["TAKE_PROFIT"]
MIXED = report(row(1, "STOP_LOSS", "-250.00", t(10, 5).isoformat()),
               row(2, "TAKE_PROFIT", "480.50", t(11, 40).isoformat()),
               row(3, None, None, None), net="230.50")


def test_chart_is_a_png_of_the_chart_size(tmp_path: Path) -> None:
    image = draw(tmp_path, MIXED)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert tuple(image[0, 0]) == (255, 255, 255)


def test_exits_draw_markers_in_their_reasons_colours_where_the_curve_is(
        tmp_path: Path) -> None:
    image = draw(tmp_path, MIXED)
    red, green = where(image, RED), where(image, GREEN)
    assert len(red) > 20 and len(green) > 20
    # The stop loss comes first (left) at -250; the take profit later (right) at +230.50.
    assert red[:, 1].mean() < green[:, 1].mean()
    assert red[:, 0].mean() > green[:, 0].mean()


def test_no_stop_loss_colour_without_a_stop_loss_exit(tmp_path: Path) -> None:
    others = report(*(row(n, reason, "10.00", t(10, n).isoformat())
                      for n, reason in enumerate(r for r in REASON_COLORS if r != "STOP_LOSS")))
    image = draw(tmp_path, others)
    assert len(where(image, RED)) == 0
    assert len(where(image, GREEN)) > 0


def test_each_exit_reason_draws_its_own_colour(tmp_path: Path) -> None:
    for n, (reason, colour) in enumerate(REASON_COLORS.items()):
        image = draw(tmp_path, report(row(n, reason, "5.00", t(12).isoformat())))
        assert len(where(image, colour)) > 20, reason


def test_report_without_exits_still_writes_a_valid_png(tmp_path: Path) -> None:
    image = draw(tmp_path, report(row(1, None, None, None)))
    assert image.shape == (HEIGHT, WIDTH, 3)
    # No marker (a few anti-aliased text pixels may share a grey by chance, no more).
    assert all(len(where(image, colour)) < 20 for colour in REASON_COLORS.values())


def test_writing_leaves_no_tmp_file_and_replaces_an_old_chart(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    path.write_bytes(b"old")
    write_pnl_chart(MIXED, path)
    assert path.read_bytes().startswith(SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]


def test_chart_is_written_to_a_png_tmp_file_then_renamed_over_the_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, Path]] = []
    original = Path.replace

    def spy(self: Path, target: Path) -> Path:
        renames.append((self.name, Path(target)))
        assert self.read_bytes().startswith(SIGNATURE)
        return original(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    write_pnl_chart(MIXED, tmp_path / "chart.png")
    assert renames == [("chart.png.tmp", tmp_path / "chart.png")]


def test_unreadable_report_keeps_the_old_chart_and_leaves_no_tmp_file(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    path.write_bytes(b"old")
    with pytest.raises(InvalidOperation):
        write_pnl_chart(report(row(1, "MANUAL", "n/a", t(10).isoformat())), path)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]


def test_single_exit_at_session_start_and_end_still_draws_it(tmp_path: Path) -> None:
    same = t(10).isoformat()
    data = report(row(1, "STOP_LOSS", "-5.00", same))
    data["started_at"] = data["ended_at"] = same
    assert len(where(draw(tmp_path, data), RED)) > 20


def test_naive_and_utc_times_are_read_as_aware_times(tmp_path: Path) -> None:
    data = report(row(1, "TAKE_PROFIT", "7.00", "2025-01-06T10:00:00"),
                  row(2, "STOP_LOSS", "-3.00", "2025-01-06T05:00:00+00:00"))
    image = draw(tmp_path, data)
    assert len(where(image, RED)) and len(where(image, GREEN))
    points = exit_curve(data["positions"])
    assert [p.reason for p in points] == ["TAKE_PROFIT", "STOP_LOSS"]  # 10:00 IST < 10:30 IST


def test_report_built_by_build_report_renders_its_stop_loss(tmp_path: Path) -> None:
    position = apply_exit(exiting(reason=ExitReason.STOP_LOSS, at=t(11)),
                          exit_update(OrderStatus.TRADED, 100, "95", at=t(11, 1)))
    built = build_report("paper", t(9, 15), t(15, 30), [position], ExitPolicy(), {})
    assert built["positions"][0]["exit_reason"] == "STOP_LOSS"
    assert len(where(draw(tmp_path, built), RED)) > 20


def test_exit_curve_accumulates_in_time_order_and_counts_a_missing_pnl_as_zero() -> None:
    points = exit_curve([row(1, "TAKE_PROFIT", "10.50", t(11).isoformat()),
                         row(2, "STOP_LOSS", "-4.00", t(10).isoformat()),
                         row(3, "MANUAL", None, t(12).isoformat()),
                         row(4, None, None, None)])
    assert [(p.position_id, p.reason, p.cumulative) for p in points] == [
        ("P2", "STOP_LOSS", Decimal("-4.00")), ("P1", "TAKE_PROFIT", Decimal("6.50")),
        ("P3", "MANUAL", Decimal("6.50"))]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.decimals(-10**6, 10**6, places=2),
                          st.sampled_from([*REASON_COLORS, "SOMETHING_NEW"])), max_size=12))
def test_any_exits_with_repeated_times_give_a_full_size_png(
        exits: list[tuple[int, Decimal, str]]) -> None:
    data = report(*(row(n, reason, str(pnl), (t(10) + timedelta(seconds=s)).isoformat())
                    for n, (s, pnl, reason) in enumerate(exits)))
    data["started_at"] = data["ended_at"] = t(10).isoformat()
    assert decode(pnl_chart_png(data)).shape == (HEIGHT, WIDTH, 3)
