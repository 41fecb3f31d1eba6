"""The console's routes: dashboard, JSON API (OpenAPI at ``/api/openapi.json``), operator
actions, push stream, metrics and probes.

Every call into the system is a blocking ask with a timeout: FastAPI runs plain ``def`` routes
on its worker threads, and the push stream calls the system through that pool too, so the
event loop never waits on an actor. One snapshot of status and positions serves every open
dashboard (``Snapshots``): a second browser tab costs nothing more on the actors.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies made inside build_app.

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from actors.protocol import Operator, OperatorOutcome
from actors.system import System
from console.audit import AuditLog
from console.metrics import render_metrics
from console.token import HEADER, token_matches
from console.views import RowMaker, pnl_curve, status_view
from models.report import position_row

STATIC = Path(__file__).parent / "static"
T = TypeVar("T")
_NAME = re.compile(r"[^A-Za-z0-9 ._@-]")


@dataclass
class ConsoleConfig:
    token: str
    audit: AuditLog
    push_every: float = 1.0
    """Seconds between pushes of status and positions to the open dashboards."""
    mode: str = "paper"


class ActionResult(BaseModel):
    ok: bool
    action: str
    target: str | None = None
    detail: str
    trading_state: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Status and positions at one moment. The rows are kept as JSON text only (one string a
    row, and the whole snapshot once more as the push streams send it): 1,000 rows of dicts
    and lists held between pushes were thousands of objects promoted to the cyclic
    collector's oldest generation every second, and its full collections, which stop every
    thread, came three times as often with the dashboard open as without."""

    status: dict[str, Any]
    at: str
    rows: list[str]
    text: str

    def positions_json(self) -> str:
        return "[" + ",".join(self.rows) + "]"


class Snapshots:
    """The latest snapshot, made at most once per ``every`` seconds whatever the number of
    readers, and encoded once for every push stream."""

    def __init__(self, system: System, config: ConsoleConfig) -> None:
        self.system, self.every, self.config = system, config.push_every, config
        self._lock = threading.Lock()
        self._made = 0.0
        self._value: Snapshot | None = None
        self._exits: tuple[int, dict[str, Any]] | None = None
        self._rows = RowMaker(system.parts.config.policy)

    def current(self) -> Snapshot:
        with self._lock:
            if self._value is None or time.monotonic() - self._made >= self.every:
                self._value = self._make()
                self._made = time.monotonic()
            return self._value

    def _make(self) -> Snapshot:
        system = self.system
        status = system.status()
        now = system.parts.clock()
        rows = self._rows.rows(system.positions(status), now,
                               pause=lambda: _let_the_price_path_run(system), every=CHUNK)
        shown = {**status_view(status), "gateway": _gateway(system), "mode": self.config.mode,
                 "operator_actions": self.config.audit.recent[-10:]}
        at = now.isoformat()
        head = json.dumps({"status": shown, "at": at})
        text = head[:-1] + ', "positions": [' + ",".join(rows) + "]}"  # one C call
        return Snapshot(status=shown, at=at, rows=rows, text=text)

    def exits(self, status: dict[str, Any]) -> dict[str, Any]:
        """The PnL curve, read from the store again only when the exit count moved."""
        count = sum(status.get("exits_by_reason", {}).values())
        with self._lock:
            if self._exits is None or self._exits[0] != count:
                closed = _paced(self.system.closed_today(), self.system)
                self._exits = (count, {"points": pnl_curve(closed,
                                                           self.system.parts.config.policy),
                                       "exits_by_reason": status.get("exits_by_reason", {})})
            return self._exits[1]


CHUNK = 25
"""Rows made between two pauses for the price path (about half a millisecond of work)."""
PAUSE = 0.0005
"""Seconds of each pause: long enough for a thread woken for the interpreter to take it.
(``sleep(0)`` gives it up and takes it back before that thread has woken: chunks of 100 rows
with such pauses still put 10-30 ms on the p99 price-to-decision of ``python -m bench.latency
--dashboard``, at the pushes.)"""


def _let_the_price_path_run(system: System) -> None:
    """A pause in the console's work on a big book: wait while possible exits are being
    decided (``Dispatcher.yield_to_urgent``), then give up the interpreter for ``PAUSE``, so
    the actors' threads waiting for it go first. Without these pauses, making and encoding
    1,000 rows held it for tens of milliseconds at a time, and the p99 price-to-decision of
    ``python -m bench.latency --dashboard`` was 2-4x that of the run without the page."""
    system.yield_to_urgent()
    time.sleep(PAUSE)


def _paced(items: Iterable[T], system: System) -> Iterator[T]:
    """``items``, with a pause for the price path after each ``CHUNK`` (a day's exits)."""
    for n, item in enumerate(items, 1):
        if n % CHUNK == 0:
            _let_the_price_path_run(system)
        yield item


def _gateway(system: System) -> dict[str, Any]:
    gateway = system.gateway_status()
    expires = gateway.get("token_expires_at")
    return {**gateway, "token_expires_at": expires.isoformat()
            if isinstance(expires, datetime) else None}


def build_app(system: System, config: ConsoleConfig) -> FastAPI:
    app = FastAPI(title="Position tracker console", version="1",
                  openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None,
                  description="Operator console of the position tracker (SPEC §12). Actions "
                  f"need the operator token in the `{HEADER}` header.")
    snapshots = Snapshots(system, config)
    stopping = threading.Event()
    app.state.stopping = stopping
    key = APIKeyHeader(name=HEADER, auto_error=False, description="operator token")

    def operator(request: Request, given: Annotated[str | None, Depends(key)]) -> Operator:
        address = request.client.host if request.client else "?"
        name = _NAME.sub("", request.headers.get("X-Operator", "operator"))[:40] or "operator"
        if not token_matches(given, config.token):
            config.audit.record(system.parts.clock(), name, address, request.url.path, None,
                                "refused: no valid operator token", ok=False)
            raise HTTPException(status_code=401, detail="a valid operator token is required "
                                f"in the {HEADER} header")
        return Operator(name=name, address=address, at=system.parts.clock())

    Who = Annotated[Operator, Depends(operator)]

    def done(who: Operator, action: str, target: str | None, ok: bool, detail: str,
             state: str | None = None) -> ActionResult:
        config.audit.record(who.at, who.name, who.address, action, target, detail, ok)
        return ActionResult(ok=ok, action=action, target=target, detail=detail,
                            trading_state=state)

    # Pages and probes ---------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is alive and serving."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> JSONResponse:
        """Ready: the store answers, the actors answer, and watched prices are fresh."""
        checks: dict[str, Any] = {"store": system.store_reachable()}
        try:
            status = system.status()
        except Exception as error:  # an actor that cannot answer in time is "not ready"
            checks["actors"] = f"no answer ({type(error).__name__})"
        else:
            checks["actors"] = True
            # Fresh in the domain's sense: no position in session without a fresh price for
            # too long (UNPROTECTED, ``models.rules.is_unprotected``); out of session hours no
            # price moves, and that is not a reason to be unready.
            checks["prices_fresh"] = not status.get("unprotected")
            checks["gateway"] = system.gateway_status().get("state") == "UP"
        ready = all(value is True for value in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready
                            else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(render_metrics(system), media_type=CONTENT_TYPE_LATEST)

    # Read API -----------------------------------------------------------------------------
    @app.get("/api/status", tags=["read"])
    def status() -> dict[str, Any]:
        """Trading state, counts, day PnL, flags, gateway and token state."""
        return snapshots.current().status

    @app.get("/api/positions", tags=["read"], response_class=Response, responses={200: {
        "content": {"application/json": {"schema": {"type": "array",
                                                    "items": {"type": "object"}}}}}})
    def positions() -> Response:
        """Open positions: the report's fields plus last price, its age, PnL and stop."""
        return Response(snapshots.current().positions_json(), media_type="application/json")

    @app.get("/api/exits", tags=["read"])
    def exits() -> dict[str, Any]:
        """Today's exits as a cumulative PnL curve, and the count per reason."""
        return snapshots.exits(snapshots.current().status)

    @app.get("/api/positions/{position_id}/story", tags=["read"])
    def position_story(position_id: str) -> dict[str, Any]:
        """Why a position is where it is: its trace (SPEC §8), fills and exit attempts."""
        told = system.story(position_id)
        if told is None:
            raise HTTPException(status_code=404, detail=f"no position {position_id}")
        policy = system.parts.config.policy
        return {"position": position_row(told["position"], policy), "trace": told["trace"],
                "fills": [json.loads(f.model_dump_json()) for f in told["fills"]],
                "exit_attempts": [_plain(a) for a in told["exit_attempts"]]}

    @app.get("/api/stream", tags=["read"], response_class=StreamingResponse)
    async def stream(request: Request) -> StreamingResponse:
        """Server-sent events: ``snapshot`` (status and positions) every push interval,
        ``exits`` when the exit count moved."""
        return StreamingResponse(_events(request, snapshots, config.push_every, stopping),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # Operator actions ---------------------------------------------------------------------
    @app.post("/api/positions/{position_id}/close", tags=["actions"])
    def close(position_id: str, who: Who) -> ActionResult:
        """Close one open position now (reason ``MANUAL``)."""
        if not system.request_exit(position_id, who):
            done(who, "close", position_id, False, "no open position with that id")
            raise HTTPException(status_code=404, detail=f"no open position {position_id}")
        return done(who, "close", position_id, True, "exit requested (MANUAL)")

    @app.post("/api/flatten", tags=["actions"])
    def flatten(who: Who) -> ActionResult:
        """Close every open position (reason ``MANUAL``)."""
        count = system.flatten(who)
        return done(who, "flatten", None, True, f"exit requested for {count} open positions")

    def trading(who: Operator, action: str,
                command: Callable[[Operator], OperatorOutcome]) -> ActionResult:
        outcome = command(who)
        result = done(who, action, None, outcome.done, outcome.detail, outcome.trading_state)
        if not outcome.done:
            raise HTTPException(status_code=409, detail=outcome.detail)
        return result

    @app.post("/api/halt", tags=["actions"])
    def halt(who: Who) -> ActionResult:
        """Halt trading: open positions stay protected; a position that opens is closed."""
        return trading(who, "halt", system.halt)

    @app.post("/api/resume", tags=["actions"])
    def resume(who: Who) -> ActionResult:
        """Resume trading (refused with 409 while the kill switch is latched)."""
        return trading(who, "resume", system.resume)

    @app.post("/api/kill-switch/reset", tags=["actions"])
    def reset_kill_switch(who: Who) -> ActionResult:
        """Reset the latched kill switch (in the store and in this process); trading
        resumes."""
        return trading(who, "reset-kill-switch", system.reset_kill_switch)

    return app


def _plain(value: Any) -> dict[str, Any]:
    fields = getattr(value, "model_dump", None)
    raw = fields(mode="json") if fields is not None else dict(vars(value))
    return {k: (str(v) if not isinstance(v, str | int | float | bool | type(None)) else v)
            for k, v in raw.items()}


async def _events(request: Request, snapshots: Snapshots, every: float,
                  stopping: threading.Event) -> AsyncIterator[str]:
    exits_seen: int | None = None
    while not stopping.is_set() and not await request.is_disconnected():
        try:
            snapshot = await run_in_threadpool(snapshots.current)
        except Exception as error:  # an ask timed out under load: tell the page, go on
            logger.warning("console push skipped: {}", type(error).__name__)
            yield f"event: trouble\ndata: {json.dumps(type(error).__name__)}\n\n"
        else:
            yield f"event: snapshot\ndata: {snapshot.text}\n\n"
            count = sum(snapshot.status.get("exits_by_reason", {}).values())
            if count != exits_seen:
                exits = await run_in_threadpool(snapshots.exits, snapshot.status)
                exits_seen = count
                yield f"event: exits\ndata: {json.dumps(exits)}\n\n"
        await asyncio.sleep(every)
