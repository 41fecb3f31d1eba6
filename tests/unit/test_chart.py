"""The PnL chart: a valid PNG decoded here by hand, whose pixels show the exits by reason."""

from __future__ import annotations

import struct
import zlib
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.chart import BOTTOM, HEIGHT, REASON_COLORS, WIDTH, pnl_chart_png, write_pnl_chart
from models.orders import OrderStatus
from models.policy import ExitPolicy
from models.position import ExitReason
from models.report import build_report
from tests.unit.builders import apply_exit, exit_update, exiting, t

SIGNATURE = b"\x89PNG\r\n\x1a\n"
Pixel = tuple[int, int, int]


def row(n: int, reason: str | None, pnl: str | None, exited: str | None) -> dict[str, Any]:
    return {"position_id": f"P{n}", "status": "EXITED" if exited else "ACTIVE",
            "exit_reason": reason, "realized_pnl": pnl,
            "opened_at": t(9, 20).isoformat(), "exited_at": exited}


def report(*rows: dict[str, Any], net: str = "0.00") -> dict[str, Any]:
    return {"mode": "paper", "started_at": t(9, 15).isoformat(),
            "ended_at": t(15, 30).isoformat(), "positions": list(rows),
            "summary": {"net_pnl": net}}


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk as (tag, data), asserting its CRC."""
    assert data[:8] == SIGNATURE
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        tag, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        found.append((tag, body))
        at += 12 + length
    return found


def decode(data: bytes) -> list[list[Pixel]]:
    """The image as rows of RGB pixels; only what the chart writes (8-bit RGB, filter 0)."""
    parts = chunks(data)
    assert parts[0][0] == b"IHDR" and parts[-1] == (b"IEND", b"")
    width, height, depth, kind, *_ = struct.unpack(">IIBBBBB", parts[0][1])
    assert (depth, kind) == (8, 2)
    raw = zlib.decompress(b"".join(body for tag, body in parts if tag == b"IDAT"))
    assert len(raw) == height * (1 + width * 3)
    stride = 1 + width * 3
    lines = [raw[y * stride:(y + 1) * stride] for y in range(height)]
    assert all(line[0] == 0 for line in lines)
    return [[(line[i], line[i + 1], line[i + 2]) for i in range(1, stride, 3)] for line in lines]


def where(image: list[list[Pixel]], test: Any) -> list[tuple[int, int]]:
    return [(x, y) for y, line in enumerate(image) for x, pixel in enumerate(line) if test(pixel)]


def reddish(p: Pixel) -> bool:
    return p[0] >= 180 and p[1] <= 80 and p[2] <= 80


def greenish(p: Pixel) -> bool:
    return p[1] >= 120 and p[0] <= 80 and p[2] <= 80


def draw(tmp_path: Path, data: dict[str, Any]) -> list[list[Pixel]]:
    path = tmp_path / "chart.png"
    write_pnl_chart(data, path)
    return decode(path.read_bytes())


MIXED = report(row(1, "STOP_LOSS", "-250.00", t(10, 5).isoformat()),
               row(2, "TAKE_PROFIT", "480.50", t(11, 40).isoformat()),
               row(3, None, None, None), net="230.50")


def test_chart_is_a_png_with_the_chart_size_in_ihdr_and_correct_crcs(tmp_path: Path) -> None:
    write_pnl_chart(MIXED, tmp_path / "chart.png")
    parts = chunks((tmp_path / "chart.png").read_bytes())
    assert [tag for tag, _ in parts] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">II", parts[0][1][:8]) == (WIDTH, HEIGHT)


def test_idat_holds_one_filter_byte_and_width_rgb_pixels_per_row(tmp_path: Path) -> None:
    image = draw(tmp_path, MIXED)
    assert len(image) == HEIGHT and {len(line) for line in image} == {WIDTH}
    assert image[0][0] == (255, 255, 255)


def test_stop_loss_exit_draws_a_red_marker_in_the_plot(tmp_path: Path) -> None:
    red = where(draw(tmp_path, MIXED), reddish)
    assert any(y < BOTTOM for _, y in red), "a marker above the x axis"
    assert any(y > BOTTOM for _, y in red), "a legend swatch below it"


def test_take_profit_exit_draws_a_green_marker(tmp_path: Path) -> None:
    assert any(y < BOTTOM for _, y in where(draw(tmp_path, MIXED), greenish))


def test_no_red_pixel_without_a_stop_loss_exit(tmp_path: Path) -> None:
    others = report(*(row(n, reason, "10.00", t(10, n).isoformat())
                      for n, reason in enumerate(r for r in REASON_COLORS if r != "STOP_LOSS")))
    image = draw(tmp_path, others)
    assert where(image, reddish) == []
    assert where(image, greenish) != []


def test_each_exit_reason_draws_its_own_colour(tmp_path: Path) -> None:
    for n, (reason, colour) in enumerate(REASON_COLORS.items()):
        image = draw(tmp_path, report(row(n, reason, "5.00", t(12).isoformat())))
        assert where(image, lambda p, c=colour: p == c), reason


def test_report_without_exits_still_writes_a_valid_png(tmp_path: Path) -> None:
    image = draw(tmp_path, report(row(1, None, None, None)))
    assert len(image) == HEIGHT
    assert where(image, reddish) == [] and where(image, greenish) == []
    assert where(image, lambda p: p == (0, 0, 0)), "axes and labels are drawn"


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


def test_single_exit_at_session_start_and_end_does_not_divide_by_zero(tmp_path: Path) -> None:
    same = t(10).isoformat()
    data = report(row(1, "STOP_LOSS", "-5.00", same))
    data["started_at"] = data["ended_at"] = same
    assert where(draw(tmp_path, data), reddish)


def test_naive_and_utc_times_are_read_as_aware_times(tmp_path: Path) -> None:
    data = report(row(1, "TAKE_PROFIT", "7.00", "2025-01-06T10:00:00"),
                  row(2, "STOP_LOSS", "-3.00", "2025-01-06T05:00:00+00:00"))
    image = draw(tmp_path, data)
    assert where(image, reddish) and where(image, greenish)


def test_report_built_by_build_report_renders_its_stop_loss(tmp_path: Path) -> None:
    position = apply_exit(exiting(reason=ExitReason.STOP_LOSS, at=t(11)),
                          exit_update(OrderStatus.TRADED, 100, "95", at=t(11, 1)))
    built = build_report("paper", t(9, 15), t(15, 30), [position], ExitPolicy(), {})
    assert built["positions"][0]["exit_reason"] == "STOP_LOSS"
    image = draw(tmp_path, built)
    assert any(y < BOTTOM for _, y in where(image, reddish))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.decimals(-10**6, 10**6, places=2),
                          st.sampled_from([*REASON_COLORS, "SOMETHING_NEW"])), max_size=12))
def test_any_exits_with_repeated_times_give_a_full_size_png(
        exits: list[tuple[int, Decimal, str]]) -> None:
    data = report(*(row(n, reason, str(pnl), (t(10) + timedelta(seconds=s)).isoformat())
                    for n, (s, pnl, reason) in enumerate(exits)))
    data["started_at"] = data["ended_at"] = t(10).isoformat()
    image = decode(pnl_chart_png(data))
    assert len(image) == HEIGHT and {len(line) for line in image} == {WIDTH}
