"""Settings: flags > environment (``DATABASE_URL``, ``REDIS_URL``, ``TRACKER_ACCOUNT``) >
``tracker.toml`` > defaults.

Validation errors name the key and what is allowed; nothing here connects to anything.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from models.accounts import DEFAULT_ACCOUNT, AccountError, check_account
from models.common import Frozen
from models.policy import PolicyError, RiskConfig, risk_config_from_mapping


class SettingsError(ValueError):
    """Bad configuration: the message names the key or file."""


class PaperSettings(Frozen):
    positions: int = Field(default=20, ge=0, le=100_000)
    instruments: int = Field(default=10, ge=1, le=10_000)
    seed: int = 7
    latency_ms: int = Field(default=50, ge=0, le=60_000)
    long_ratio: float = Field(default=0.5, ge=0, le=1)
    interval_ms: int = Field(default=500, ge=0, le=3_600_000)
    volatility: float = Field(default=0.002, ge=0, le=0.2)
    """Standard deviation of one 100 ms step of the simulated random walk."""


class DhanSettings(Frozen):
    """``[dhan]`` in ``tracker.toml`` (SPEC §10); ``DHAN_*`` environment variables win."""

    client_id: str | None = None
    """``DHAN_CLIENT_ID``."""
    access_token_file: Path | None = None
    """Read when ``DHAN_ACCESS_TOKEN`` is not set; read again when the token is refused or on
    SIGHUP."""
    token_dir: Path | None = None
    """A runner's accounts' tokens, one file per account named by its id (its DhanHQ client
    id), each read as ``access_token_file`` is (``DHAN_TOKEN_DIR``); unset, every account of
    the runner uses the one token."""
    api_url: str = "https://api.dhan.co/v2"
    order_ws_url: str = "wss://api-order-update.dhan.co"
    feed_ws_url: str = "wss://api-feed.dhan.co"
    exit_protection_pct: Decimal = Field(default=Decimal("0.01"), ge=0, lt=Decimal("0.2"))
    """An exit is a LIMIT order this far beyond the last price (a fraction: 0.01 is 1 %)."""
    tick_size: Decimal = Field(default=Decimal("0.05"), gt=0, le=100)
    exit_chase_after_ms: int = Field(default=1_500, ge=100, le=600_000)
    exit_max_modifications: int = Field(default=10, ge=0, le=25)
    poll_active_seconds: float = Field(default=5.0, gt=0, le=3_600)
    """The order book is read this often while an exit of ours is in flight ..."""
    poll_idle_seconds: float = Field(default=60.0, gt=0, le=3_600)
    """... and this often otherwise (the socket has no replay and may go quiet)."""
    request_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    launch_exits: bool = True
    """``run.py live``: a wave's exit orders handed together, right after their intents are
    committed, to a process that sends them (``broker/dhan/launch.py``), rather than each
    from its gateway actor's thread (false). On since the live row, measured at the fake's
    kernel on a quiet machine, showed a lower median with it (BENCHMARKS, 2026-12-05); an
    order without a free slot or a price in hand is still sent by its gateway actor, and a
    child that will not start leaves every order to them."""
    session_start: AwareDatetime | None = None
    """For drills against the loopback fake only: exchange time starts here and runs with the
    wall clock (``DHAN_SESSION_START``); live trading leaves it unset (the wall clock)."""


    @field_validator("access_token_file", "token_dir", mode="before")
    @classmethod
    def _no_empty_path(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


DHAN_ENV = {"client_id": "DHAN_CLIENT_ID", "api_url": "DHAN_API_URL",
            "order_ws_url": "DHAN_ORDER_WS_URL", "feed_ws_url": "DHAN_FEED_WS_URL",
            "session_start": "DHAN_SESSION_START", "token_dir": "DHAN_TOKEN_DIR"}


class Settings(Frozen):
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("data")
    risk: RiskConfig = RiskConfig()
    paper: PaperSettings = PaperSettings()
    dhan: DhanSettings = DhanSettings()
    correlation_prefix: str | None = None
    """Track only orders whose CorrelationId starts with this (default: every order)."""
    account: str | None = None
    """The account of a paper session, a replay, ``positions`` and ``reset-kill-switch``
    (``--account``, ``account`` in ``tracker.toml``, ``TRACKER_ACCOUNT``); None: the
    DhanHQ client id in a live session, ``DEFAULT_ACCOUNT`` otherwise."""

    accounts: tuple[str, ...] = ()
    """The accounts a runner serves (``run.py runner --accounts a,b`` or ``accounts = [...]``
    in ``tracker.toml``): it claims their partitions and runs a System for each."""

    @field_validator("account")
    @classmethod
    def _well_formed_account(cls, value: str | None) -> str | None:
        try:
            return None if value is None else check_account(value)
        except AccountError as error:  # its own words, without pydantic's "Value error, "
            raise PydanticCustomError("account", str(error)) from None

    @field_validator("accounts")
    @classmethod
    def _well_formed_accounts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(check_account(account) for account in value)
        except AccountError as error:
            raise PydanticCustomError("account", str(error)) from None

    def account_id(self, *, live: bool = False) -> str:
        """The account this run serves: a live session's is its DhanHQ client id (a different
        ``account`` is a ``SettingsError``), any other run's the configured one or
        ``DEFAULT_ACCOUNT``."""
        if not live:
            return self.account or DEFAULT_ACCOUNT
        client = self.dhan.client_id or ""
        if self.account is not None and self.account != client:
            raise SettingsError("account: a live session's account is its DhanHQ client id "
                                "(DHAN_CLIENT_ID); leave account unset or make them equal")
        return check_account(client)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML: {error}") from None


def load_settings(*, config_file: Path | None = None, policy_file: Path | None = None,
                  environ: Mapping[str, str], flags: Mapping[str, Any]) -> Settings:
    """Merge the sources in order of precedence; ``flags`` holds only flags the user gave."""
    data: dict[str, Any] = {}
    if config_file is not None and config_file.exists():
        data = _read_toml(config_file)
    risk_tables: dict[str, Any] = {k: data.pop(k) for k in ("policy", "portfolio", "calendar")
                                   if k in data}
    if policy_file is not None:
        risk_tables = _read_toml(policy_file)
    try:
        risk = risk_config_from_mapping(risk_tables)
    except PolicyError as error:
        source = policy_file or config_file
        raise SettingsError(f"{source}: {error}") from None
    values: dict[str, Any] = {**data, "risk": risk}
    for key, env in (("database_url", "DATABASE_URL"), ("redis_url", "REDIS_URL"),
                     ("account", "TRACKER_ACCOUNT")):
        if environ.get(env):
            values[key] = environ[env]
    dhan = dict(values.pop("dhan", {}) or {})
    for key, env in DHAN_ENV.items():
        if environ.get(env):
            dhan[key] = environ[env]
    values["dhan"] = dhan
    paper = dict(values.pop("paper", {}) or {})
    for key, value in flags.items():
        if value is None:
            continue
        if key in PaperSettings.model_fields:
            paper[key] = value
        else:
            values[key] = value
    values["paper"] = paper
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: "
            f"{'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}"
            for item in error.errors())
        raise SettingsError(problems) from None
