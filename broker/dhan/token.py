"""The DhanHQ access token (SPEC §10): where it comes from, when it expires, and keeping it secret.

The token is a JWT whose ``exp`` we read without verifying (we are not its audience; DhanHQ is).
It never reaches a log, a trace, a report or an exception message: it travels as a ``Secret``
whose ``str``/``repr`` are redacted, and ``scrub`` removes it (and a URL embedding it) from any
text that might leave the process.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import jwt
from loguru import logger

REDACTED: Final = "***"
WARN_BEFORE = timedelta(minutes=30)
"""A warning is due this long before the token expires."""

ENV_TOKEN: Final = "DHAN_ACCESS_TOKEN"


class Secret:
    """A secret string: ``reveal()`` gives the value, everything else shows ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class TokenError(Exception):
    """No token could be read; the message names the source, never the token."""


def expires_at(token: Secret) -> datetime | None:
    """The token's ``exp`` as an aware UTC time, or None when it is not a JWT with ``exp``."""
    try:
        claims = jwt.decode(token.reveal(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def time_left(token: Secret, now: datetime) -> timedelta | None:
    """Time until the token expires (negative once expired); None when unknown."""
    expiry = expires_at(token)
    return None if expiry is None else expiry - now


def expiry_warning_due(token: Secret, now: datetime, before: timedelta = WARN_BEFORE) -> bool:
    """True from ``before`` ahead of expiry on (and once expired)."""
    left = time_left(token, now)
    return left is not None and left <= before


class TokenSource:
    """Reads the token from ``DHAN_ACCESS_TOKEN`` or a token file, again on ``reload()`` (a
    refused token, SIGHUP). Thread-safe: the REST client and both sockets share one."""

    def __init__(self, *, token: str | Secret | None = None, path: str | Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._fixed = Secret(token) if isinstance(token, str) else token
        self._path = Path(path) if path is not None else None
        self._environ = environ if environ is not None else os.environ
        self._lock = threading.Lock()
        self._current: Secret | None = None
        self._warned: Secret | None = None

    def current(self) -> Secret:
        with self._lock:
            if self._current is None:
                self._current = self._read()
            return self._current

    def reload(self) -> Secret:
        """Read the source again; returns the (possibly new) token."""
        with self._lock:
            self._current = self._read()
            return self._current

    def warn_if_expiring(self, now: datetime, before: timedelta = WARN_BEFORE
                         ) -> timedelta | None:
        """Time left on the current token; logs one warning per token once it is within
        ``before`` of its expiry (or expired). None when the expiry is unknown."""
        token = self.current()
        left = time_left(token, now)
        if left is None or left > before:
            return left
        with self._lock:
            first = self._warned != token
            self._warned = token
        if first:
            logger.warning("the DhanHQ access token expires in {:.0f} min: renew it",
                           left.total_seconds() / 60)
        return left

    def set(self, token: str) -> None:
        """Replace the token (an operator handing a new one, or a test)."""
        with self._lock:
            self._fixed = self._current = Secret(token)

    def _read(self) -> Secret:
        if self._fixed is not None:
            return self._fixed
        value = self._environ.get(ENV_TOKEN, "").strip()
        if value:
            return Secret(value)
        if self._path is None:
            raise TokenError(f"no DhanHQ access token: set {ENV_TOKEN} or a token file")
        try:
            value = self._path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise TokenError(f"cannot read the token file {self._path}: "
                             f"{error.strerror or type(error).__name__}") from None
        if not value:
            raise TokenError(f"the token file {self._path} is empty")
        return Secret(value)


_URL_TOKEN = re.compile(r"(?i)([?&](?:token|access[-_]?token)=)[^&\s'\"]+")


def scrub(text: str, secrets: Iterable[Secret | str] = ()) -> str:
    """``text`` with every given secret and every ``token=`` URL parameter replaced by ``***``."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, REDACTED)
    return _URL_TOKEN.sub(lambda match: match.group(1) + REDACTED, text)


class Refusal:
    """The access token DhanHQ refused, for the calls and sockets that share one
    ``TokenSource``: recorded when one of them is refused, cleared once the source gives
    another token. What stops meanwhile, and how often the source is read, is the caller's.
    Thread-safe."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens
        self._lock = threading.Lock()
        self._refused: Secret | None = None

    @property
    def active(self) -> bool:
        with self._lock:
            return self._refused is not None

    def refuse(self) -> bool:
        """Record the current token as refused (one that cannot be read counts as refused
        too); True the first time, for the caller to say so once."""
        try:
            token = self.tokens.current()
        except TokenError:
            token = Secret("")
        with self._lock:
            first = self._refused is None
            self._refused = token
        return first

    def cleared_by(self, token: Secret) -> bool:
        """True, and the refusal cleared, when a token was refused and ``token`` (just read
        from the source) is another one."""
        with self._lock:
            if self._refused is None or token == self._refused:
                return False
            self._refused = None
            return True
