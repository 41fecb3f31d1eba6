"""Opening the store a database URL names (SPEC §6), migrated and ready.

- ``postgresql://…`` or ``postgres://…`` → ``PostgresStore``;
- ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` → ``SqliteStore`` (the
  SQLAlchemy convention: what follows ``sqlite:///`` is the path);
- ``None`` → ``SqliteStore(data_dir / "tracker.sqlite3")``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from models.accounts import DEFAULT_ACCOUNT, check_account
from store.ports import Store
from store.sql import SqlStore

DEFAULT_FILE = "tracker.sqlite3"
_POSTGRES = frozenset({"postgresql", "postgres"})
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_SUPPORTED = "postgresql://, postgres:// or sqlite:///PATH"


def open_store(database_url: str | None, data_dir: Path = Path("data"), *,
               account: str = DEFAULT_ACCOUNT) -> Store:
    """The store of ``account`` for ``database_url``, migrated. Raises ``ValueError`` for a URL
    that names no supported store (the message names the scheme, never the rest), or for a
    malformed account id; ``StoreError`` when the store cannot be opened or migrated."""
    store = _open(database_url, data_dir, check_account(account))
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def check_database_url(database_url: str | None) -> None:
    """Raises the ``ValueError`` ``open_store`` would for this URL, without connecting: a
    command line can refuse bad input before it starts anything."""
    _scheme(database_url)


def _scheme(database_url: str | None) -> str | None:
    """``postgresql``, ``sqlite`` or None (the default file); ``ValueError`` otherwise."""
    if database_url is None:
        return None
    scheme = database_url.partition("://")[0].lower() if "://" in database_url else ""
    if not _SCHEME.fullmatch(scheme):
        scheme = ""  # not a scheme at all, and possibly carrying a secret: never echoed
    if scheme in _POSTGRES:
        return "postgresql"
    if scheme == "sqlite":
        sqlite_path(database_url)
        return "sqlite"
    if not scheme:
        raise ValueError(f"the database URL has no valid scheme; use {_SUPPORTED}")
    raise ValueError(f"unsupported database URL scheme {scheme!r}; use {_SUPPORTED}")


def _open(database_url: str | None, data_dir: Path, account: str) -> SqlStore:
    # Imported here so an SQLite-only run never loads psycopg.
    scheme = _scheme(database_url)
    if database_url is None or scheme is None:
        from store.sqlite import SqliteStore

        return SqliteStore(data_dir / DEFAULT_FILE, account=account)
    if scheme == "postgresql":
        from store.postgres import PostgresStore

        return PostgresStore(database_url, account=account)
    from store.sqlite import SqliteStore

    return SqliteStore(sqlite_path(database_url), account=account)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise ValueError("an SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
    return Path(unquote(parts.path[1:]))
