"""The operator token (SPEC §12): ``TRACKER_OPERATOR_TOKEN``, or a token file made on first
start with mode 0600 under the data directory. Compared in constant time; never logged."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

ENV = "TRACKER_OPERATOR_TOKEN"
FILE_NAME = "operator-token"
HEADER = "X-Operator-Token"


class TokenError(ValueError):
    """The token file cannot be made or read; the message names the file, never the token."""


def operator_token(environ: Mapping[str, str], data_dir: Path) -> tuple[str, str]:
    """The token and where it came from (for the start-up message, which names only that)."""
    given = environ.get(ENV, "").strip()
    if given:
        return given, ENV
    path = data_dir / FILE_NAME
    try:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes starting at once cannot both write a token.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
        token = path.read_text(encoding="ascii").strip()
    except FileExistsError:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenError(f"operator token file {path}: {type(error).__name__}") from None
    if not token:
        raise TokenError(f"operator token file {path} is empty")
    return token, str(path)


def token_matches(given: str | None, token: str) -> bool:
    """Constant time in the token's content (``hmac.compare_digest``)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))
