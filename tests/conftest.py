"""Shared fixtures. Real services for integration tests: PostgreSQL and Redis.

Under ``CI=true`` a missing service fails the test (a CI run must never pass by skipping);
elsewhere it skips with the reason, so the unit tests still run on a laptop without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: integration services are required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as error:
        _unavailable("PostgreSQL", error)
    return PG_URL


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty schema per test, dropped afterwards; the URL selects it by search_path."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    sep = "&" if "?" in pg_server_url else "?"
    yield f"{pg_server_url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"drop schema {schema} cascade")


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as error:
        _unavailable("Redis", error)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def nats_url() -> str:
    """A NATS server with JetStream (tests name their streams and subjects uniquely, so runs
    in parallel do not meet)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(NATS_URL)
    try:
        with socket.create_connection((where.hostname or "127.0.0.1", where.port or 4222),
                                      timeout=3) as conn:
            info = conn.recv(4096)
            if not info.startswith(b"INFO"):
                raise ConnectionError("not a NATS server")
            if b'"jetstream":true' not in info.replace(b" ", b""):
                raise ConnectionError("NATS runs without JetStream (start it with -js)")
    except Exception as error:
        _unavailable("NATS", error)
    return NATS_URL
