"""Exit policy, portfolio limits and exchange sessions (SPEC §3.1, §3.4): frozen config models.

Validation errors name the key and the allowed range; ``load_policy_toml`` turns a TOML document
with the ``[policy]`` and ``[portfolio]`` tables into a ``RiskConfig``.
"""

from __future__ import annotations

import tomllib
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from models.common import IST, Frozen, Segment


class PolicyError(ValueError):
    """A policy or configuration value is wrong; the message names the key."""


@lru_cache(maxsize=256)
def _hhmm(value: str) -> time | None:
    """``"HH:MM"`` as a time (``""``: none); cached, the time rules ask on every evaluation."""
    if value == "":
        return None
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"expected \"HH:MM\" (00:00-23:59) or \"\", got {value!r}") from None


def _check_hhmm(value: str) -> str:
    _hhmm(value)
    return value


HHMM = Annotated[str, AfterValidator(_check_hhmm)]
"""An exchange wall-clock time "HH:MM", or "" for off; checked per value so errors name the key."""


class TrailingPolicy(Frozen):
    mode: Literal["percent", "tiers", "off"] = "percent"
    activation_pct: Decimal = Field(default=Decimal("0.035"), ge=0, le=10)
    trail_pct: Decimal = Field(default=Decimal("0.025"), gt=0, lt=1)
    tiers: tuple[tuple[Decimal, Decimal], ...] = (
        (Decimal("0.05"), Decimal("-0.15")), (Decimal("0.10"), Decimal("-0.05")),
        (Decimal("0.15"), Decimal("0")), (Decimal("0.25"), Decimal("0.10")),
        (Decimal("0.40"), Decimal("0.20")), (Decimal("0.60"), Decimal("0.30")),
        (Decimal("0.80"), Decimal("0.40")), (Decimal("1.20"), Decimal("0.60")),
    )

    @field_validator("tiers")
    @classmethod
    def _tiers_ascending(cls, tiers: tuple[tuple[Decimal, Decimal], ...]
                         ) -> tuple[tuple[Decimal, Decimal], ...]:
        thresholds = [threshold for threshold, _ in tiers]
        if thresholds != sorted(thresholds) or len(set(thresholds)) != len(thresholds):
            raise ValueError("tier thresholds must be strictly ascending")
        for threshold, offset in tiers:
            if threshold <= 0 or not -1 < offset < threshold:
                raise ValueError("each tier is [threshold > 0, -1 < offset < threshold]")
        return tiers


DEFAULT_SQUARE_OFF: dict[Segment, str] = {
    Segment.NSE_EQ: "15:15", Segment.NSE_FNO: "15:15", Segment.BSE_EQ: "15:15",
    Segment.BSE_FNO: "15:15", Segment.NSE_CURRENCY: "16:45", Segment.BSE_CURRENCY: "16:45",
    Segment.MCX_COMM: "23:15",
}


class ExitPolicy(Frozen):
    stop_loss_pct: Decimal = Field(default=Decimal("0.12"), gt=0, le=1)
    take_profit_pct: Decimal = Field(default=Decimal("0.50"), gt=0, le=100)
    max_hold_minutes: int = Field(default=0, ge=0, le=60 * 24 * 7)
    exit_at: HHMM = ""
    stale_after_seconds: Decimal = Field(default=Decimal(5), gt=0, le=3600)
    unprotected_after_seconds: Decimal = Field(default=Decimal(30), gt=0, le=3600)
    fee_per_order: Decimal = Field(default=Decimal(20), ge=0, le=100_000)
    exit_timeout_ms: int = Field(default=10_000, ge=100, le=3_600_000)
    """An exit order without a terminal update this long is looked up at the broker and
    resolved (SPEC §11.6)."""
    trailing: TrailingPolicy = TrailingPolicy()
    square_off: dict[Segment, HHMM] = Field(default_factory=lambda: dict(DEFAULT_SQUARE_OFF))

    @field_validator("square_off")
    @classmethod
    def _square_off_defaults(cls, value: dict[Segment, str]) -> dict[Segment, str]:
        return {**DEFAULT_SQUARE_OFF, **value}

    @property
    def exit_at_time(self) -> time | None:
        return _hhmm(self.exit_at)

    def square_off_time(self, segment: Segment) -> time | None:
        return _hhmm(self.square_off.get(segment, ""))


class PortfolioLimits(Frozen):
    daily_loss_limit: Decimal = Field(default=Decimal(0), ge=0, le=10**12)
    """Rupees; 0 turns the kill switch off."""
    kill_switch_carries: bool = False
    """A kill switch latched on an earlier exchange day still halts trading (SPEC §11.7)."""

    def latch_in_force(self, latched_at: datetime, now: datetime) -> bool:
        """Whether a latch made at ``latched_at`` halts trading ``now``: on its own exchange
        day, and on later ones only if ``kill_switch_carries``."""
        return self.kill_switch_carries or \
            latched_at.astimezone(IST).date() >= now.astimezone(IST).date()


SESSION_HOURS: dict[Segment, tuple[time, time]] = {
    Segment.NSE_EQ: (time(9, 15), time(15, 30)), Segment.NSE_FNO: (time(9, 15), time(15, 30)),
    Segment.BSE_EQ: (time(9, 15), time(15, 30)), Segment.BSE_FNO: (time(9, 15), time(15, 30)),
    Segment.IDX_I: (time(9, 15), time(15, 30)),
    Segment.NSE_CURRENCY: (time(9, 0), time(17, 0)),
    Segment.BSE_CURRENCY: (time(9, 0), time(17, 0)),
    Segment.MCX_COMM: (time(9, 0), time(23, 30)),
}


class SessionCalendar(Frozen):
    """Exchange sessions in IST; weekends and listed holidays are closed."""

    holidays: frozenset[date] = frozenset()

    def trading_day(self, day: date) -> bool:
        return _trading_day(self.holidays, day)

    def in_session(self, segment: Segment, now: datetime) -> bool:
        return _in_session(self.holidays, segment, now)

    def at(self, day: date, clock: time) -> datetime:
        """An exchange wall-clock time on ``day``, as an aware datetime."""
        return datetime.combine(day, clock, tzinfo=IST)

    def next_open(self, segment: Segment, now: datetime) -> datetime:
        local = now.astimezone(IST)
        start, _ = SESSION_HOURS[segment]
        day = local.date()
        for _ in range(30):
            candidate = self.at(day, start)
            if self.trading_day(day) and candidate > local:
                return candidate
            day += timedelta(days=1)
        raise ValueError("no trading day in the next 30 days")


@lru_cache(maxsize=1024)
def _in_session(holidays: frozenset[date], segment: Segment, now: datetime) -> bool:
    """``SessionCalendar.in_session``, remembered: one price's handling asks it of the same
    instant several times (the rules, the quiet guard, freshness), as every position on a
    segment does of one batch's time."""
    local = now.astimezone(IST)
    start, end = SESSION_HOURS[segment]
    return _trading_day(holidays, local.date()) and start <= local.time() < end


def _trading_day(holidays: frozenset[date], day: date) -> bool:
    return day.weekday() < 5 and day not in holidays


class RiskConfig(Frozen):
    policy: ExitPolicy = ExitPolicy()
    portfolio: PortfolioLimits = PortfolioLimits()
    calendar: SessionCalendar = SessionCalendar()


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _allowed_range(loc: tuple[int | str, ...]) -> str:
    """The bounds declared on the field at ``loc`` of a ``RiskConfig``, e.g. ``> 0, <= 1``."""
    model: object = RiskConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return ""
        field = fields[part]
        model = field.annotation
    metadata = field.metadata if field is not None else []
    return ", ".join(f"{symbol} {getattr(meta, name)}" for meta in metadata
                     for name, symbol in _BOUNDS if getattr(meta, name, None) is not None)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif allowed := _allowed_range(item["loc"]):
            message = f"{message} (allowed: {allowed})"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def risk_config_from_mapping(data: dict[str, Any]) -> RiskConfig:
    """Build a config from the ``[policy]``/``[portfolio]``/``[calendar]`` tables."""
    known = {"policy", "portfolio", "calendar"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"{unknown[0]}: unknown table (allowed: {', '.join(sorted(known))})")
    try:
        return RiskConfig.model_validate(data)
    except ValidationError as error:
        raise PolicyError(_describe(error)) from None


def load_policy_toml(text: str) -> RiskConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"not valid TOML: {error}") from None
    return risk_config_from_mapping(data)
