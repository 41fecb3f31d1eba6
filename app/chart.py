"""A PNG chart of a session report (SPEC §7 shape): cumulative realized PnL over time.

Stdlib only: a small RGB canvas, the bitmap font of :mod:`app.font`, and a PNG encoder on
``zlib``/``struct``. Sums stay in Decimal; floats appear only as pixel coordinates.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from app.font import GLYPH_HEIGHT, text_pixels, text_width
from models.common import IST

Color = tuple[int, int, int]

WIDTH, HEIGHT = 900, 420
TOP, BOTTOM, RIGHT = 50, HEIGHT - 70, WIDTH - 30
PAD = 12  # keeps markers off the plot's edges
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
LINE: Color = (60, 60, 60)
ZERO: Color = (190, 190, 190)
OTHER: Color = (100, 100, 100)
BLUE: Color = (30, 90, 220)
REASON_COLORS: dict[str, Color] = {
    "STOP_LOSS": (220, 30, 30), "TAKE_PROFIT": (20, 160, 40), "TRAILING_STOP": (255, 140, 0),
    "TIME_STOP": BLUE, "TIME_EXIT": BLUE, "SESSION_END": BLUE, "KILL_SWITCH": BLACK,
    "BROKER_EXIT": (128, 0, 160), "MANUAL": (150, 150, 150),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Exit(NamedTuple):
    at: datetime
    pnl: Decimal
    reason: str


class Frame(NamedTuple):
    """Maps times and PnL values to pixels; a zero time span or value range never divides."""

    left: int
    start: datetime | None
    end: datetime | None
    low: Decimal
    high: Decimal

    def x(self, at: datetime) -> int:
        if self.start is None or self.end is None or self.end <= self.start:
            return (self.left + RIGHT) // 2
        share = (at - self.start) / (self.end - self.start)
        return round(self.left + PAD + share * (RIGHT - self.left - 2 * PAD))

    def y(self, value: Decimal) -> int:
        share = float((value - self.low) / (self.high - self.low))
        return round(BOTTOM - PAD - share * (BOTTOM - TOP - 2 * PAD))


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def fill(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        """Fill a rectangle, clipped to the canvas."""
        x0, x1 = max(x, 0), min(x + w, self.width)
        if x1 <= x0:
            return
        for row in range(max(y, 0), min(y + h, self.height)):
            start = (row * self.width + x0) * 3
            self.pixels[start:start + (x1 - x0) * 3] = bytes(color) * (x1 - x0)

    def disc(self, cx: int, cy: int, radius: int, color: Color) -> None:
        for dy in range(-radius, radius + 1):
            half = int((radius * radius - dy * dy) ** 0.5)
            self.fill(cx - half, cy + dy, 2 * half + 1, 1, color)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> None:
        for dx, dy in text_pixels(text):
            self.fill(x + dx * scale, y + dy * scale, scale, scale, color)

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + self.pixels[row * stride:(row + 1) * stride]
                       for row in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (PNG_SIGNATURE + _chunk(b"IHDR", header)
                + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def write_pnl_chart(report: dict[str, Any], path: Path) -> None:
    """Render ``report`` as a PNG at ``path``, atomically (via ``<path>.png.tmp``)."""
    tmp = path.with_suffix(".png.tmp")
    try:
        tmp.write_bytes(pnl_chart_png(report))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def pnl_chart_png(report: Mapping[str, Any]) -> bytes:
    """The chart as PNG bytes: step line of cumulative realized PnL, one marker per exit."""
    exits = exits_of(report)
    totals = cumulative(exits)
    frame = _frame(report, exits, totals)
    canvas = Canvas(WIDTH, HEIGHT)
    canvas.text(frame.left, 14, _title(report, totals))
    _draw_axes(canvas, frame, totals)
    _draw_steps(canvas, frame, exits, totals)
    for item, total in zip(exits, totals[1:], strict=True):
        canvas.disc(frame.x(item.at), frame.y(total), 5, _color(item.reason))
    _draw_legend(canvas, frame.left, [item.reason for item in exits])
    return canvas.png()


def aware(text: str) -> datetime:
    """An ISO-8601 time as an aware datetime; a naive one is exchange (IST) time."""
    moment = datetime.fromisoformat(text)
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=IST)


def exits_of(report: Mapping[str, Any]) -> list[Exit]:
    """The report's exits in time order; an exit without a realized PnL adds zero."""
    found = [Exit(aware(row["exited_at"]), Decimal(row.get("realized_pnl") or 0),
                  row.get("exit_reason") or "UNKNOWN")
             for row in report.get("positions", []) if row.get("exited_at")]
    return sorted(found, key=lambda item: item.at)


def cumulative(exits: Iterable[Exit]) -> list[Decimal]:
    """Running realized PnL, starting at zero before the first exit."""
    totals = [Decimal(0)]
    for item in exits:
        totals.append(totals[-1] + item.pnl)
    return totals


def _frame(report: Mapping[str, Any], exits: Sequence[Exit], totals: Sequence[Decimal]) -> Frame:
    times = [item.at for item in exits]
    times += [aware(report[key]) for key in ("started_at", "ended_at") if report.get(key)]
    low, high = min(totals), max(totals)
    left = max(60, 20 + max(text_width(_money(value), 2) for value in (low, high)))
    if low == high:
        low, high = low - 1, high + 1
    return Frame(left, min(times, default=None), max(times, default=None), low, high)


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _title(report: Mapping[str, Any], totals: Sequence[Decimal]) -> str:
    net = report.get("summary", {}).get("net_pnl")
    count = len(totals) - 1
    exits = "NO EXITS" if count == 0 else f"{count} EXIT" + ("S" if count > 1 else "")
    return f"NET PNL {_money(Decimal(net) if net is not None else totals[-1])} · {exits}"


def _draw_axes(canvas: Canvas, frame: Frame, totals: Sequence[Decimal]) -> None:
    canvas.fill(frame.left, TOP, 2, BOTTOM - TOP + 1, BLACK)
    canvas.fill(frame.left, BOTTOM, RIGHT - frame.left + 1, 2, BLACK)
    canvas.fill(frame.left + 2, frame.y(Decimal(0)), RIGHT - frame.left - 1, 1, ZERO)
    for value in _y_labels(frame, totals):
        label = _money(value)
        y = frame.y(value) - GLYPH_HEIGHT
        canvas.text(frame.left - 10 - text_width(label, 2), y, label)
        canvas.fill(frame.left - 6, frame.y(value), 6, 1, BLACK)
    if frame.start is not None and frame.end is not None:
        last = f"{frame.end.astimezone(frame.start.tzinfo):%H:%M:%S}"
        canvas.text(frame.left, BOTTOM + 10, f"{frame.start:%H:%M:%S}")
        canvas.text(RIGHT - text_width(last, 2), BOTTOM + 10, last)


def _y_labels(frame: Frame, totals: Sequence[Decimal]) -> list[Decimal]:
    """Min and max PnL, plus zero when it has room between them."""
    labels = sorted({min(totals), max(totals)})
    if all(abs(frame.y(Decimal(0)) - frame.y(value)) > 3 * GLYPH_HEIGHT for value in labels):
        labels.append(Decimal(0))
    return labels


def _draw_steps(canvas: Canvas, frame: Frame, exits: Sequence[Exit],
                totals: Sequence[Decimal]) -> None:
    """Horizontal runs between exits, a vertical jump at each exit."""
    x, y = frame.left + 2, frame.y(totals[0])
    for item, total in zip(exits, totals[1:], strict=True):
        x_next, y_next = frame.x(item.at), frame.y(total)
        canvas.fill(x, y - 1, x_next - x + 1, 2, LINE)
        canvas.fill(x_next - 1, min(y, y_next), 2, abs(y_next - y) + 1, LINE)
        x, y = x_next, y_next
    canvas.fill(x, y - 1, RIGHT - x + 1, 2, LINE)


def _color(reason: str) -> Color:
    return REASON_COLORS.get(reason, OTHER)


def _draw_legend(canvas: Canvas, left: int, reasons: Iterable[str]) -> None:
    """One swatch and name per reason that occurs, wrapping onto a second row when needed."""
    seen = set(reasons)
    ordered = [r for r in REASON_COLORS if r in seen] + sorted(seen - REASON_COLORS.keys())
    x, y = left, HEIGHT - 36
    for reason in ordered:
        width = 18 + text_width(reason, 1) + 16
        if x + width > WIDTH - 10 and x > left:
            x, y = left, y + 14
        canvas.fill(x, y, 10, 10, _color(reason))
        canvas.text(x + 16, y + 2, reason, BLACK, 1)
        x += width
