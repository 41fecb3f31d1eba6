"""Simulated prices (SPEC §4.2, §5): a seeded random walk per instrument, or a recorded tape.

Both are driven only by ``advance(now)``: they own no thread and read no clock, so the same code
runs on the wall clock (a driver calls ``advance`` every few milliseconds) and in replay.
Prices are ``Decimal``; the walk moves in whole ticks of 0.05 and never goes below one tick.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol

from models.common import Instrument, Segment

TICK = Decimal("0.05")
"""The price step of NSE/BSE instruments; walk prices are multiples of it."""

START_LOW, START_HIGH = 50, 500
"""Range of the start prices drawn for instruments given none."""

TAPE_HEADER = ("ts", "segment", "security_id", "ltp")

Tick = tuple[Instrument, Decimal, datetime]
"""One price change: (instrument, last traded price, exchange time)."""


class Market(Protocol):
    """What the exchange and the quote API need from a market."""

    def advance(self, now: datetime) -> list[Tick]: ...

    def get(self, instrument: Instrument) -> Decimal | None:
        """The current price, or None for an instrument with no price yet."""

    def set_price(self, instrument: Instrument, price: Decimal, at: datetime) -> None: ...


def to_tick(price: Decimal) -> Decimal:
    """``price`` rounded to the nearest tick, and at least one tick."""
    ticks = (price / TICK).to_integral_value(rounding=ROUND_HALF_UP)
    return max(TICK, ticks * TICK).quantize(TICK)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _require_positive(instrument: Instrument, price: Decimal) -> None:
    if not price.is_finite() or price <= 0:
        raise ValueError(f"price of {instrument} must be positive, got {price}")


class _Prices:
    """Current prices and the ticks that ``set_price`` queued for the next ``advance``."""

    def __init__(self) -> None:
        self.current: dict[Instrument, Decimal] = {}
        self.queued: list[Tick] = []

    def get(self, instrument: Instrument) -> Decimal | None:
        return self.current.get(instrument)

    def price(self, instrument: Instrument) -> Decimal:
        found = self.current.get(instrument)
        if found is None:
            raise KeyError(f"no price for {instrument}")
        return found

    def set_price(self, instrument: Instrument, price: Decimal, at: datetime) -> None:
        """Set the current price now; the tick is reported by the next ``advance``."""
        _require_aware(at, "at")
        _require_positive(instrument, price)
        self.current[instrument] = price
        self.queued.append((instrument, price, at))

    def take_queued(self, now: datetime) -> list[Tick]:
        due = [tick for tick in self.queued if tick[2] <= now]
        self.queued = [tick for tick in self.queued if tick[2] > now]
        return due


class PaperMarket(_Prices):
    """A seeded random walk per instrument, one step per instrument every ``step_seconds``.

    The same seed, instruments and ``advance`` times give the same ticks. The first ``advance``
    (or ``start``) reports every start price; later ones report the steps elapsed since.
    """

    def __init__(self, instruments: Sequence[Instrument], *, seed: int,
                 start_prices: Mapping[Instrument, Decimal] | None = None,
                 step_seconds: float = 0.1, volatility: float = 0.002,
                 start: datetime | None = None) -> None:
        super().__init__()
        if step_seconds <= 0:
            raise ValueError(f"step_seconds must be positive, got {step_seconds}")
        if volatility < 0:
            raise ValueError(f"volatility must not be negative, got {volatility}")
        self.rng = random.Random(seed)
        self.step = timedelta(seconds=step_seconds)
        self.volatility = volatility
        given = start_prices or {}
        for instrument in instruments:
            price = given.get(instrument)
            if price is None:
                price = to_tick(Decimal(self.rng.randint(START_LOW * 20, START_HIGH * 20)) * TICK)
            _require_positive(instrument, price)
            self.current[instrument] = price
        self.origin: datetime | None = None
        self.steps_done = 0
        if start is not None:
            self._open(start)

    @property
    def instruments(self) -> list[Instrument]:
        return list(self.current)

    def _open(self, at: datetime) -> None:
        _require_aware(at, "start")
        self.origin = at
        self.queued.extend((instrument, price, at) for instrument, price in self.current.items())

    def advance(self, now: datetime) -> list[Tick]:
        """Walk every step due up to ``now`` and return the ticks, in time order."""
        _require_aware(now, "now")
        if self.origin is None:
            self._open(now)
        ticks = self.take_queued(now)
        ticks.extend(self._walk(now))
        ticks.sort(key=lambda tick: tick[2])  # stable: instruments keep their order per step
        return ticks

    def _walk(self, now: datetime) -> Iterator[Tick]:
        assert self.origin is not None
        while self.origin + self.step * (self.steps_done + 1) <= now:
            self.steps_done += 1
            at = self.origin + self.step * self.steps_done
            for instrument, price in self.current.items():
                moved = self._move(price)
                self.current[instrument] = moved
                yield instrument, moved, at

    def _move(self, price: Decimal) -> Decimal:
        ticks = round(float(price) * self.volatility * self.rng.gauss(0.0, 1.0) / float(TICK))
        return to_tick(price + ticks * TICK)


class TapeError(ValueError):
    """A replay tape is malformed; the message names the file and line."""


class TapeMarket(_Prices):
    """Prices played back from a recorded tape: ``advance(now)`` reports the rows up to ``now``.

    ``rows`` keeps the file order; playback is in time order (file order on a tie), so a tape
    that is not sorted still never reports a row before its time.
    """

    def __init__(self, rows: Sequence[Tick]) -> None:
        super().__init__()
        for instrument, price, at in rows:
            _require_aware(at, "ts")
            _require_positive(instrument, price)
        self.rows = list(rows)
        self._playback = sorted(self.rows, key=lambda row: row[2])
        self._next = 0

    @classmethod
    def from_csv(cls, path: Path | str) -> TapeMarket:
        return cls(read_tape(Path(path)))

    @property
    def remaining(self) -> int:
        return len(self._playback) - self._next

    def advance(self, now: datetime) -> list[Tick]:
        _require_aware(now, "now")
        ticks = self.take_queued(now)
        while self._next < len(self._playback) and self._playback[self._next][2] <= now:
            instrument, price, at = self._playback[self._next]
            self.current[instrument] = price
            ticks.append((instrument, price, at))
            self._next += 1
        ticks.sort(key=lambda tick: tick[2])
        return ticks


def read_tape(path: Path) -> list[Tick]:
    """The rows of a tape CSV ``ts,segment,security_id,ltp`` in file order."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return list(_parse_tape(csv.reader(handle), str(path)))
    except OSError as error:
        raise TapeError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TapeError(f"{path}: not UTF-8 text: {error.reason}") from None


def _parse_tape(reader: Iterator[list[str]], name: str) -> Iterator[Tick]:
    header = next(reader, None)
    if header is None or tuple(field.strip().lstrip("\ufeff") for field in header) != TAPE_HEADER:
        raise TapeError(f"{name}:1: the header must be {','.join(TAPE_HEADER)}")
    line = 1
    for row in reader:
        line = getattr(reader, "line_num", line + 1)
        if not row or all(not field.strip() for field in row):
            continue
        yield _tape_row(row, f"{name}:{line}")


def _tape_row(row: list[str], where: str) -> Tick:
    if len(row) != len(TAPE_HEADER):
        raise TapeError(f"{where}: expected {len(TAPE_HEADER)} fields "
                        f"({','.join(TAPE_HEADER)}), got {len(row)}")
    ts, segment, security_id, ltp = (field.strip() for field in row)
    instrument = Instrument(segment=_tape_segment(segment, where),
                            security_id=_tape_security(security_id, where))
    return instrument, _tape_ltp(ltp, where), _tape_time(ts, where)


def _tape_time(text: str, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise TapeError(f"{where}: ts {text!r} is not an ISO-8601 time") from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise TapeError(f"{where}: ts {text!r} has no UTC offset (e.g. +05:30)")
    return at


def _tape_segment(text: str, where: str) -> Segment:
    if text.upper() not in Segment.__members__:
        allowed = ", ".join(Segment)
        raise TapeError(f"{where}: unknown segment {text!r} (allowed: {allowed})")
    return Segment(text.upper())


def _tape_security(text: str, where: str) -> str:
    if not text:
        raise TapeError(f"{where}: security_id is empty")
    return text


def _tape_ltp(text: str, where: str) -> Decimal:
    try:
        ltp = Decimal(text)
    except InvalidOperation:
        raise TapeError(f"{where}: ltp {text!r} is not a number") from None
    if not ltp.is_finite():
        raise TapeError(f"{where}: ltp {text!r} is not a number")
    if ltp <= 0:
        raise TapeError(f"{where}: ltp must be positive, got {text}")
    return ltp
