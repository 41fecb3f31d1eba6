"""Database URLs made safe to log: a password never reaches a log line, a trace or an error."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


def redact_url(url: str) -> str:
    """The URL with any password (in its user info or a ``password=`` query parameter)
    replaced by ``***``; a URL without one comes back unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable netloc (bad port, bracket): keep nothing of it
        return "<unparsable URL>"
    if password is not None:
        # Edit the text rather than re-assemble the parts: urlunsplit drops the empty
        # authority of "sqlite:////abs/path", which would change the URL's meaning.
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        url = url.replace(parts.netloc, f"{user}:***@{host}", 1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` (an error message, say) with every URL in it redacted and, when ``url`` is
    given, every occurrence of that URL's password removed as well (a driver may quote its
    connection string in pieces)."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str | None) -> list[str]:
    if not url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    found = [password, unquote(password)] if password else []
    found += [unquote(m.group(0).partition("=")[2]) for m in _QUERY_PASSWORD.finditer(url)]
    # Longest first, so a secret that contains another one is replaced whole.
    return sorted({s for s in found if s}, key=len, reverse=True)
