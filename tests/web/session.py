"""A real paper session with the console serving it on a free loopback port.

Real actors, a real SQLite store, the paper broker, uvicorn on its thread: what ``run.py``
starts, minus the terminal. The policy keeps positions open (no take profit or trailing
within reach of a short test) so the tests decide when they close; every entry is a BUY by
default, so no entry order reduces another position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pykka

from actors.system import Parts, System
from actors.tracing import recorder as tracing
from actors.tracing.recorder import Tracer
from app.clocks import SessionClock, paper_session_start
from broker.paper import PaperBroker, PaperConfig
from console.app import ConsoleConfig, build_app
from console.audit import AuditLog
from console.server import Bind, ConsoleServer
from models.common import IST
from models.policy import risk_config_from_mapping
from store.factory import open_store
from store.pnl_cache import InMemoryPnLCache
from store.ports import Store

TOKEN = "test-operator-token-0123456789"
POLICY: dict[str, Any] = {"policy": {"take_profit_pct": 1.0, "stop_loss_pct": 0.9,
                                     "trailing": {"mode": "off"}}}


@dataclass
class Session:
    system: System
    broker: PaperBroker
    server: ConsoleServer
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"X-Operator-Token": token} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll an outside observation (over HTTP) until it holds: the server pushes on its own
    cadence, so there is no message to wait on here."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)


@contextmanager
def paper_console(tmp: Path, *, positions: int = 4, instruments: int = 4,
                  push_every: float = 0.5, policy: dict[str, Any] | None = None,
                  interval_ms: int = 100, long_ratio: float = 1.0,
                  before_start: Callable[[Store], None] | None = None) -> Iterator[Session]:
    tracing.install(Tracer(None))
    config = risk_config_from_mapping(POLICY if policy is None else policy)
    clock = SessionClock(paper_session_start(datetime.now(IST), config.calendar))
    store = open_store(f"sqlite:///{tmp / 'tracker.sqlite3'}", tmp)
    if before_start is not None:
        before_start(store)
    broker = PaperBroker(PaperConfig(positions=positions, instruments=instruments, seed=5,
                                     interval_ms=interval_ms, latency_ms=10,
                                     long_ratio=long_ratio), start=clock(),
                         order_prefix="W")
    system = System(Parts(store=store, cache=InMemoryPnLCache(), gateway=broker.exchange,
                          quotes=broker.quotes, config=config, clock=clock))

    def step(now: datetime) -> None:
        for instrument, ltp, at in broker.advance(now):
            system.tick(instrument, ltp, at)

    system.start(on_step=step)
    app = build_app(system, ConsoleConfig(token=TOKEN, push_every=push_every,
                                          audit=AuditLog(tmp / "operator-actions.jsonl")))
    server = ConsoleServer(app, Bind("127.0.0.1", 0)).start()
    try:
        yield Session(system=system, broker=broker, server=server, data_dir=tmp)
    finally:
        server.stop()
        system.stop()
        pykka.ActorRegistry.stop_all()
        store.close()
        tracing.install(None)
