"""Fixtures of the fault-injection suite: a database of the test's own on the shared server
(its connections may be killed), a throw-away cluster (it may be restarted), Redis behind a
proxy that can cut it off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.services import Cluster, own_database, throwaway_cluster


@pytest.fixture
def own_db(pg_server_url: str) -> Iterator[str]:
    """The URL of a fresh database ``faults_<random>`` on the shared server, dropped after."""
    with own_database(pg_server_url) as url:
        yield url


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, stopped and removed after."""
    with throwaway_cluster() as server:
        yield server
