"""``python -m bench [--quick]``: run the benchmarks, print a table, append to BENCHMARKS.md.

Real PostgreSQL and Redis are used when ``BENCH_DATABASE_URL`` / ``BENCH_REDIS_URL`` (defaults:
the local test services) answer; otherwise the embedded SQLite store and the in-process cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from bench import cycle, dispatch_vs_threads, throughput

PG = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _services() -> tuple[str | None, str | None]:
    pg: str | None = PG
    rd: str | None = REDIS
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=2).close()
    except Exception:
        pg = None
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception:
        rd = None
    return pg, rd


def _fresh_pg(url: str) -> str:
    import uuid

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}?options=-csearch_path%3D{schema}"


def _store_and_cache(pg: str | None, rd: str | None, scratch: Path) -> tuple[Any, Any, str | None]:
    from store.factory import open_store
    from store.pnl_cache import open_pnl_cache

    url = _fresh_pg(pg) if pg else None
    store = open_store(url or f"sqlite:///{scratch / f'b{os.urandom(4).hex()}.db'}", scratch)
    if rd:
        import redis

        redis.Redis.from_url(rd).flushdb()
    return store, open_pnl_cache(rd), url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a reduced set, under a minute")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    pg, rd = _services()
    rows: list[dict[str, Any]] = []
    repeats = 5 if args.quick else 20
    with tempfile.TemporaryDirectory() as scratch:
        for count in (10, 100, 1000):
            store, cache, url = _store_and_cache(pg, rd, Path(scratch))
            rows.append({"benchmark": f"cycle at {count} positions", **cycle.compare(
                count, store=store, store_url=url, cache=cache, redis_url=rd,
                repeats=repeats)})
            store.close()
        store, cache, url = _store_and_cache(pg, rd, Path(scratch))
        rows.append(throughput.order_updates(store, 2_000 if args.quick else 10_000))
        store.close()
    rows += dispatch_vs_threads.run(args.quick)
    _report(rows, args, pg is not None, rd is not None)
    return 0


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, pg: bool, rd: bool) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    services = f"PostgreSQL: {'yes' if pg else 'no (SQLite)'}, Redis: {'yes' if rd else 'no'}"
    text = json.dumps(_rounded(rows), indent=1, default=str)
    print(text)
    with args.out.open("a", encoding="utf-8") as out:
        command = "python -m bench" + (" --quick" if args.quick else "")
        out.write(f"\n## {stamp} — `{command}`\n\n{machine}; {services}\n\n```json\n{text}\n```\n")


if __name__ == "__main__":
    sys.exit(main())
