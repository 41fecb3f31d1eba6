"""Command line and composition root (SPEC §7).

Only this module pairs the ports with concrete adapters, in ``build_system(settings, ...)``.
Exit codes: 0 done, 1 a run failed, 2 bad input (flags, files, configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import ssl
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from loguru import logger
from redis.connection import parse_url as parse_redis_url
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type hints

from actors.runtime.logging_bridge import route_stdlib_logging
from actors.system import Parts, System
from actors.tracing import recorder as tracing
from actors.tracing.recorder import Tracer, iter_records
from actors.tracing.views import Filters, render
from app.chart import write_pnl_chart
from app.clocks import ManualClock, SessionClock, paper_session_start
from app.console import print_summary, status_line
from app.days import (
    Day,
    DaysError,
    chart_name,
    combine,
    find_days,
    pair_days,
    policy_names,
    policy_report,
    table,
)
from app.live import LiveSession, would_exit_rows
from app.reconcile import RECHECK_AFTER, BookReader
from app.replay import (
    Event,
    Replayer,
    ReplayInputError,
    merge,
    read_orders,
    read_ticks,
    replay_exchange,
)
from app.runner import CurrentLease, PartitionLease, Runner, parse_partitions, store_frames
from app.serving import AccountSystems, Served
from app.settings import Settings, SettingsError, load_settings
from broker.dhan import DhanRest, TokenSource
from broker.dhan import TokenError as DhanTokenError
from broker.dhan.circuits import CircuitReader
from broker.dhan.gateway import DhanGateway, NotingQuotes, ShadowGateway
from broker.dhan.rest import shared_tls
from broker.leased import lease_refusal, leased
from broker.paper import PaperBroker, PaperConfig, entry_interval
from broker.paper.market import TapeMarket
from console.app import ConsoleConfig, build_app
from console.audit import AuditLog
from console.server import DEFAULT_BIND, Bind, BindError, ConsoleServer, parse_bind
from console.token import TokenError, operator_token
from models.accounts import shown
from models.common import IST, Instrument, Segment
from models.partitions import PARTITIONS, partition_of
from models.position import PositionStatus
from models.report import build_report, position_row
from store.factory import check_database_url, open_store
from store.pnl_cache import open_pnl_cache
from store.ports import LeaseLost, Store, StoreError
from store.postgres import PostgresStore
from store.urls import redact_text, redact_url


class InputError(ValueError):
    """Bad input from the user (a URL, a path, a flag's value): one line on stderr, exit 2."""


@dataclass
class Built:
    system: System
    broker: PaperBroker
    store: Store


def build_system(settings: Settings, clock: Callable[[], datetime], *,
                 entry_gap: timedelta | None = None) -> Built:
    """The one place where ports meet adapters. ``entry_gap`` overrides the strategy's pace."""
    account = settings.account_id()
    store = open_store(settings.database_url, settings.data_dir, account=account)
    paper = settings.paper
    interval_ms = paper.interval_ms if entry_gap is None else \
        int(entry_gap / timedelta(milliseconds=1))
    broker = PaperBroker(PaperConfig(
        positions=paper.positions, instruments=paper.instruments, seed=paper.seed,
        latency_ms=paper.latency_ms, long_ratio=paper.long_ratio,
        interval_ms=interval_ms, volatility=paper.volatility), start=clock(),
        order_prefix=f"PB{datetime.now(IST):%H%M%S}-")
    parts = Parts(store=store, cache=open_pnl_cache(settings.redis_url, account),
                  gateway=broker.exchange, quotes=broker.quotes, config=settings.risk,
                  clock=clock, account=account, correlation_prefix=settings.correlation_prefix,
                  urgent_prices=True)
    return Built(system=System(parts), broker=broker, store=store)


# Console ------------------------------------------------------------------------------------------
def start_console(system: System, settings: Settings, bind: Bind | None,
                  mode: str) -> ConsoleServer | None:
    """The operator console beside the actors (SPEC §12); None when ``--http off``."""
    if bind is None:
        return None
    token, source = operator_token(os.environ, settings.data_dir)
    app = build_app(system, ConsoleConfig(
        token=token, mode=mode, audit=AuditLog(settings.data_dir / "operator-actions.jsonl")))
    server = ConsoleServer(app, bind).start()
    print(f"dashboard: {server.url}  (operator token: {source})", flush=True)
    return server


def _console_or_stop(system: System, settings: Settings, bind: Bind | None,
                     mode: str) -> ConsoleServer | None:
    """A console that cannot start (port taken, token file unreadable) stops the run."""
    try:
        return start_console(system, settings, bind, mode)
    except (TokenError, OSError):
        system.stop()
        raise


def _stop_console(server: ConsoleServer | None) -> None:
    if server is not None:
        server.stop()


# Paper --------------------------------------------------------------------------------------------
def run_paper(settings: Settings, *, duration: float | None, report: Path | None,
              live_status: bool, trace: Path | None = None, burst: bool = False,
              http: Bind | None = None) -> int:
    gap = _entry_plan(settings, duration, burst)
    tracing.install(Tracer(trace))
    clock = SessionClock(paper_session_start(datetime.now(IST), settings.risk.calendar))
    built = build_system(settings, clock, entry_gap=gap)
    system, broker = built.system, built.broker

    def step(now: datetime) -> None:
        for instrument, ltp, at in broker.advance(now):
            system.tick(instrument, ltp, at)

    stop = threading.Event()
    _on_signals(stop)
    system.start(on_step=step)
    started = clock()
    logger.info("paper session started at exchange time {}", started.isoformat())
    console = _console_or_stop(system, settings, http, "paper")
    try:
        while not stop.wait(1.0):
            if live_status:
                print(status_line(system.status(), clock().strftime("%H:%M:%S")), flush=True)
            if duration is not None and (clock() - started).total_seconds() >= duration:
                break
    finally:
        _stop_console(console)
    return _finish(system, built.store, "paper", started, clock(), report,
                   entries=(settings.paper.positions, broker))


def _entry_plan(settings: Settings, duration: float | None, burst: bool) -> timedelta:
    """The strategy's pace: all ``--positions`` entries within the first half of a bounded
    session (or at once with ``--burst``), said on stderr when it differs from the configured
    pace, and when the session is too short for them to fill."""
    paper = settings.paper
    configured = timedelta(milliseconds=paper.interval_ms)
    length = timedelta(seconds=duration) if duration is not None else None
    gap = entry_interval(paper.positions, configured, length, burst=burst)
    if paper.positions > 1 and gap != configured and not burst and length is not None:
        print(f"paper: {paper.positions} entries spread over the first "
              f"{(length / 2).total_seconds():g} s of the session, one every "
              f"{gap.total_seconds() * 1000:.0f} ms (at the configured "
              f"{paper.interval_ms} ms they would need "
              f"{(configured * (paper.positions - 1)).total_seconds():g} s)", file=sys.stderr)
    latency = timedelta(milliseconds=paper.latency_ms)
    if length is not None and paper.positions and gap * (paper.positions - 1) + latency * 2 \
            > length:
        print(f"paper: --duration {duration:g} s is too short for {paper.positions} entries "
              f"to fill (the paper exchange answers after {paper.latency_ms} ms); some "
              "positions may not open", file=sys.stderr)
    return gap


def _opened_of_requested(requested: int, broker: PaperBroker, store: Store) -> str:
    """How many of this session's entry orders became positions, and why not all did."""
    ours = set(broker.strategy.order_nos.values())
    opened = sum(1 for p in store.list_positions()
                 if p.entry_order_no in ours and p.opened_at is not None)
    line = f"paper: {opened} of {requested} requested positions opened"
    if opened < requested:
        placed, refused = len(ours), len(broker.strategy.failures)
        line += (f" ({placed} entry orders placed, {refused} refused, "
                 f"{requested - placed - refused} not yet due when the session ended: "
                 "a longer --duration, or --burst, opens them all)")
    return line


def _exchange_clock(settings: Settings) -> Callable[[], datetime]:
    """The exchange time of a live session, a runner or the venue: the wall clock, or for
    drills against the fake a session clock from ``DHAN_SESSION_START``."""
    start = settings.dhan.session_start
    return SessionClock(start) if start is not None else _wall_clock


def _stop_event(duration: float | None) -> threading.Event:
    """Set by SIGINT or SIGTERM, or once ``duration`` seconds have passed."""
    stop = threading.Event()
    _on_signals(stop)
    if duration is not None:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    return stop


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        logger.info("signal {}: stopping gracefully", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _finish(system: System, store: Store, mode: str, started: datetime, ended: datetime,
            report_path: Path | None, *, entries: tuple[int, PaperBroker] | None = None,
            extra: Callable[[Store], dict[str, Any]] | None = None) -> int:
    report = _stop(system, store, mode, started, ended)
    if extra is not None:
        report.update(extra(store))
    if report_path is not None:
        _publish(report, report_path)
    print_summary(report, sys.stdout)
    if entries is not None:
        print(_opened_of_requested(entries[0], entries[1], store))
    store.close()
    return 0


def _stop(system: System, store: Store, mode: str, started: datetime,
          ended: datetime) -> dict[str, Any]:
    """Stop the system (and the trace sink) and report on what the store holds."""
    metrics = system.parts.metrics
    system.quiesce()
    books = system.books()
    system.stop()
    active = tracing.tracer()
    if active is not None:
        active.close()
        tracing.install(None)
    metrics.incr("db_queries", store.queries)
    report = build_report(mode, started, ended, store.list_positions(),
                          system.parts.config.policy, metrics.snapshot(),
                          account=system.account)
    report["books"] = books.as_dict()
    report["alarms"] = metrics.alarms()
    if not books.agree:
        logger.error("the broker's book and ours differ at the end of the session: {}",
                     books.line())
    return report


def _write_atomically(path: Path, text: str) -> None:
    """Nothing half-written: the file appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# Live (SPEC §10) ----------------------------------------------------------------------------------
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/=-]{8,4096}")


def live_credentials(settings: Settings, environ: Mapping[str, str]) -> TokenSource:
    """The client id and token of a live session, checked before anything connects: a missing
    or malformed one is an ``InputError`` naming the variable, never echoing its value."""
    dhan = settings.dhan
    if not dhan.client_id:
        raise InputError("DHAN_CLIENT_ID is not set: the DhanHQ client id of the account "
                         "(export DHAN_CLIENT_ID=...)")
    if not dhan.client_id.isdigit() or len(dhan.client_id) > 20:
        raise InputError("DHAN_CLIENT_ID is malformed: DhanHQ client ids are digits only")
    for name, url, schemes in (("DHAN_API_URL", dhan.api_url, ("http", "https")),
                               ("DHAN_ORDER_WS_URL", dhan.order_ws_url, ("ws", "wss")),
                               ("DHAN_FEED_WS_URL", dhan.feed_ws_url, ("ws", "wss"))):
        parsed = urlsplit(url)
        if parsed.scheme not in schemes or not parsed.hostname:
            raise InputError(f"{name} must be a {' or '.join(schemes)} URL with a host")
    if not environ.get("DHAN_ACCESS_TOKEN", "").strip() and dhan.access_token_file is None:
        raise InputError("DHAN_ACCESS_TOKEN is not set (or set access_token_file under [dhan] "
                         "in tracker.toml): the account's access token from web.dhan.co")
    tokens = TokenSource(path=dhan.access_token_file, environ=environ)
    name = "DHAN_ACCESS_TOKEN" if environ.get("DHAN_ACCESS_TOKEN", "").strip() else \
        f"the token file {dhan.access_token_file}"
    try:
        token = tokens.current()
    except DhanTokenError as error:
        raise InputError(str(error)) from None
    if not _TOKEN_TEXT.fullmatch(token.reveal()):
        raise InputError(f"{name} is malformed: a DhanHQ access token is one line of letters, "
                         "digits and . _ - (a JWT)")
    return tokens


def runner_credentials(settings: Settings, accounts: Sequence[str],
                       environ: Mapping[str, str]) -> dict[str, TokenSource]:
    """Each account's token for a runner, checked before anything connects: from its file in
    ``token_dir`` (named by the account id, its DhanHQ client id) when that is set, else the
    one token of ``live_credentials`` for all. A missing or malformed file is an
    ``InputError`` naming the file, never echoing its content."""
    token_dir = settings.dhan.token_dir
    if token_dir is None:
        shared = live_credentials(settings, environ)
        return {account: shared for account in accounts}
    if not token_dir.is_dir():
        raise InputError(f"DHAN_TOKEN_DIR / token_dir: {token_dir} is not a directory")
    tokens: dict[str, TokenSource] = {}
    for account in accounts:
        path = token_dir / account
        if not path.is_file():
            raise InputError(f"no token for account {shown(account)}: expected the file "
                             f"{token_dir / shown(account)} in token_dir")
        source = TokenSource(path=path, environ={})
        try:
            token = source.current()
        except DhanTokenError:
            raise InputError(f"account {shown(account)}: its token file cannot be read or is "
                             "empty") from None
        if not _TOKEN_TEXT.fullmatch(token.reveal()):
            raise InputError(f"account {shown(account)}: its token file is malformed: a DhanHQ "
                             "access token is one line of letters, digits and . _ - (a JWT)")
        tokens[account] = source
    return tokens


LIVE_GATEWAYS = 10
"""Gateway actors of a live session: DhanHQ takes 10 orders a second, and each call holds its
actor for a round trip, so a wave of exits goes out side by side rather than in a queue."""
LIVE_RESERVE = 8
"""Dispatcher threads kept for urgent work (possible exits) in a live session, so a wave of
stops decides side by side; the other threads stay free for fills and refreshes. Sized when
each exit's tracker held one through its own commit; since the intent writer
(``actors/tracker/intents.py``) no tracker waits on a commit, and a smaller reserve is not
measured yet."""
LIVE_FULL_COLLECTIONS = 10.0
"""Seconds between the cyclic collector's full passes in a live session, each at a quiet
moment rather than in the burst of allocation a wave of exits makes (``QuietCollector``)."""


def run_live(settings: Settings, *, shadow: bool, duration: float | None,
             report: Path | None, trace: Path | None, http: Bind | None) -> int:
    tokens = live_credentials(settings, os.environ)
    dhan = settings.dhan
    # a line per request at DEBUG (urllib3's pool): the session logs its own
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    clock = _exchange_clock(settings)
    account = settings.account_id(live=True)
    tracing.install(Tracer(trace))
    store = open_store(settings.database_url, settings.data_dir, account=account)
    # The account is its DhanHQ client id: the broker keeps each account's books apart by it.
    launcher = None
    if dhan.launch_exits and not shadow:  # --shadow sends no order: nothing to launch
        from broker.dhan.launch import Launcher
        from broker.dhan.wire import WireError

        try:
            launcher = Launcher(dhan.api_url, connect=dhan.request_timeout_seconds,
                                read=dhan.request_timeout_seconds)
            logger.info("exit orders launched by a process of their own (pid {})",
                        launcher.pid)
        except WireError as error:  # the session still runs: each gateway actor sends
            logger.warning("launch_exits: {}; each exit order is sent by its gateway actor",
                           error)
    rest = DhanRest(dhan.api_url, account, tokens, timeout=dhan.request_timeout_seconds,
                    launcher=launcher)
    gateway = DhanGateway(rest, protection_pct=dhan.exit_protection_pct, tick=dhan.tick_size,
                          max_modifications=dhan.exit_max_modifications,
                          chase_after_seconds=dhan.exit_chase_after_ms / 1000)
    shadowing = ShadowGateway(gateway, clock) if shadow else None
    holder: list[LiveSession] = []
    parts = Parts(store=store, cache=open_pnl_cache(settings.redis_url, account),
                  gateway=shadowing or gateway, quotes=NotingQuotes(rest, gateway),
                  config=settings.risk, clock=clock, account=account,
                  correlation_prefix=settings.correlation_prefix,
                  gateway_status=lambda: holder[0].gateway_status(), urgent_prices=True,
                  gateways=LIVE_GATEWAYS, reserve=LIVE_RESERVE,
                  launch=gateway.launch_exits if launcher is not None else None,
                  quiet_collections=LIVE_FULL_COLLECTIONS)
    system = System(parts)
    session = LiveSession(system, rest, gateway, tokens, client_id=dhan.client_id or "",
                          order_ws_url=dhan.order_ws_url, feed_ws_url=dhan.feed_ws_url,
                          clock=clock, poll_active=dhan.poll_active_seconds,
                          poll_idle=dhan.poll_idle_seconds, shadow=shadowing,
                          correlation_prefix=settings.correlation_prefix)
    holder.append(session)
    stop = threading.Event()
    _on_signals(stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: session.reload_token())
    system.start()
    session.start()
    mode = "shadow" if shadow else "live"
    started = clock()
    logger.info("{} session on DhanHQ account {} started{}", mode,
                shown(account), " (SHADOW: no order is placed, modified or "
                "cancelled)" if shadow else "")
    console = _console_or_stop(system, settings, http, mode)
    try:
        while not stop.wait(1.0):
            print(f"{status_line(system.status(), clock().strftime('%H:%M:%S'))} | "
                  f"{session.status_line()}", flush=True)
            if duration is not None and (clock() - started).total_seconds() >= duration:
                break
    finally:
        _stop_console(console)
        session.stop()

    def extra(store: Store) -> dict[str, Any]:
        out: dict[str, Any] = {"gateway": session.report()}
        if shadowing is not None:
            attempts = {a.client_id: a for a in store.exit_attempts()}
            out["would_exit"] = would_exit_rows(shadowing, attempts)
        return out

    try:
        return _finish(system, store, mode, started, clock(), report, extra=extra)
    finally:
        rest.close()


def _wall_clock() -> datetime:
    return datetime.now(IST)


# Replay -----------------------------------------------------------------------------------------
def run_replay(runs: Sequence[tuple[str, Settings]], days: Sequence[Day], report: Path | None,
               db: str | None, trace: Path | None = None, *, stepped: bool = False,
               http: Bind | None = None) -> int:
    """Each day under each policy (``runs``: a name and the settings carrying its policy). One
    day under one policy prints and writes the session report as ever; more print a table with
    a column per policy and write one document with every report and the totals."""
    single = len(days) == 1 and len(runs) == 1
    if not single and (db is not None or trace is not None):
        raise InputError("--db and --trace keep one replay: give one day and one policy")
    inputs = [(day, _read_day(day)) for day in days]
    # On a terminal only (tqdm's disable=None): a report piped elsewhere stays clean.
    bar = tqdm(total=sum(len(events) for _, events in inputs) * len(runs), unit="ev",
               unit_scale=True, disable=None, file=sys.stderr, leave=False)
    try:
        return _replay_all(runs, inputs, report, db, trace, stepped, bar, http)
    finally:
        bar.close()


def _replay_all(runs: Sequence[tuple[str, Settings]], inputs: list[tuple[Day, list[Event]]],
                report: Path | None, db: str | None, trace: Path | None, stepped: bool,
                bar: Any, http: Bind | None = None) -> int:
    if len(inputs) == 1 and len(runs) == 1:
        bar.set_description(f"replay {inputs[0][0].name}")
        one = _replay_day(runs[0][1], inputs[0][1], db, trace, stepped, bar.update, http)
        if report is not None:
            _publish(one, report)
        print_summary(one, sys.stdout)
        return 0
    reports: dict[tuple[str, str], dict[str, Any]] = {}
    for number, (day, events) in enumerate(inputs, 1):
        for name, settings in runs:
            bar.set_description(f"day {number}/{len(inputs)} {day.name} {name}")
            reports[day.name, name] = _replay_day(settings, events, None, None, stepped,
                                                  bar.update)
            summary = reports[day.name, name]["summary"]
            logger.info("day {} under {}: net PnL {}, exits {}", day.name, name,
                        summary["net_pnl"], summary["exits_by_reason"])
    combined = combine([day.name for day, _ in inputs], [name for name, _ in runs], reports)
    if report is not None:
        _write_atomically(report, json.dumps(combined, indent=2))
        for name, _ in runs:  # a chart of cumulative PnL per policy, over every day
            write_pnl_chart(policy_report(combined, name), chart_name(report, name))
        logger.info("report written to {} (a chart per policy beside it)", report)
    print("\n".join(table(combined)))
    return 0


def _read_day(day: Day) -> list[Event]:
    try:
        updates = read_orders(day.orders)
        tape = read_ticks(day.ticks) if day.ticks is not None else []
    except ReplayInputError as error:
        raise InputError(str(error)) from None
    if not updates and not tape:
        raise InputError(f"{day.orders} has no order updates")
    return merge(updates, tape)


def _replay_day(settings: Settings, events: list[Event], db: str | None, trace: Path | None,
                stepped: bool, progress: Callable[[int], object] | None = None,
                http: Bind | None = None) -> dict[str, Any]:
    tracing.install(Tracer(trace))
    clock = ManualClock(events[0].at - timedelta(seconds=1))
    with tempfile.TemporaryDirectory(prefix="replay-") as scratch:
        url = db or f"sqlite:///{Path(scratch) / 'replay.sqlite3'}"
        account = settings.account_id()
        store = open_store(url, Path(scratch), account=account)
        market = TapeMarket([])
        exchange = replay_exchange(market, store)
        parts = Parts(store=store, cache=open_pnl_cache(settings.redis_url, account),
                      gateway=exchange, quotes=None, config=settings.risk, clock=clock,
                      account=account,
                      correlation_prefix=settings.correlation_prefix, deadlines=not stepped,
                      settle_on_idle=True)
        system = System(parts).start(ticker=False)
        started = clock()
        ended = Replayer(system, clock, market, exchange, stepped=stepped,
                         progress=progress).play(events)
        report = _stop(system, store, "replay", started, ended)
        store.close()
        return report


def _publish(report: dict[str, Any], path: Path) -> None:
    _write_atomically(path, json.dumps(report, indent=2))
    chart = path.with_suffix(".png")
    write_pnl_chart(report, chart)
    logger.info("report written to {} (chart: {})", path, chart)


# Store commands -----------------------------------------------------------------------------------
RUNNER_STATUS_EVERY = 30.0
"""Seconds between a runner's status lines in its log."""


RUNNER_DB_CONNECTIONS = 12
"""PostgreSQL connections of one account's store on a runner, at most (opened as its writes
need them: ``Parts.connections_ahead`` is off on a runner)."""
RUNNER_SEND_MARGIN = 6.0
"""A runner's lease is this many times the margin its exits keep before the lease's end
(``broker.leased``): 1 s of a 6 s lease, a third of what is left when a renewal is due."""


def build_runner_system(settings: Settings, account: str, lease: PartitionLease, *, url: str,
                        clock: Callable[[], datetime], tokens: TokenSource,
                        on_lease_lost: Callable[[LeaseLost], None],
                        lease_seconds: float, tls: ssl.SSLContext | bool = True,
                        db_connections: int = RUNNER_DB_CONNECTIONS,
                        read_book: bool = False) -> Served:
    """One account's System on a runner's partition (SPEC §13): its store fenced by the
    partition's lease, its exits sent to the DhanHQ API (in paper runs the loopback fake
    DhanHQ, one for every runner) only while the lease has ``lease_seconds /
    RUNNER_SEND_MARGIN`` left."""
    dhan = settings.dhan
    store = PostgresStore(url, account=account, lease=lease, on_lease_lost=on_lease_lost,
                          pool_size=db_connections)
    # The account is its DhanHQ client id: the broker keeps each account's books apart by it.
    rest = DhanRest(dhan.api_url, account, tokens, timeout=dhan.request_timeout_seconds,
                    verify=tls)
    gateway = DhanGateway(rest, protection_pct=dhan.exit_protection_pct, tick=dhan.tick_size,
                          max_modifications=dhan.exit_max_modifications,
                          chase_after_seconds=dhan.exit_chase_after_ms / 1000)
    margin = lease_seconds / RUNNER_SEND_MARGIN
    # Checked before a send and again once its rate-limit slot is taken, as it leaves.
    rest.may_send = lease_refusal(lease.deadline, margin)
    parts = Parts(store=store, cache=open_pnl_cache(settings.redis_url, account),
                  gateway=leased(gateway, lease.deadline, margin=margin),
                  quotes=NotingQuotes(rest, gateway), config=settings.risk, clock=clock,
                  account=account, correlation_prefix=settings.correlation_prefix,
                  urgent_prices=True, connections_ahead=False)

    system = System(parts)

    def close() -> None:
        store.close()
        rest.close()

    def alarm(text: str) -> None:
        logger.error("account {}: {}", shown(account), text)

    books = BookReader(rest, system.order_frame, system, clock=clock, alarm=alarm,
                       correlation_prefix=settings.correlation_prefix,
                       recheck_after=RECHECK_AFTER)
    circuits = CircuitReader(rest, gateway, label=f"account {shown(account)}: ")
    return Served(system, gateway.note_price, close, books=books, read_book=read_book,
                  circuits=circuits)


def run_runner(settings: Settings, *, nats_url: str, partitions: str | None,
               owner: str | None, lease_seconds: float, duration: float | None,
               namespace: str = "", db_connections: int = RUNNER_DB_CONNECTIONS,
               report: Path | None = None, status_every: float = RUNNER_STATUS_EVERY,
               read_book: bool = False) -> int:
    """``run.py runner --nats URL``: a scale-out runner (``app/runner.py``). With accounts
    (``--accounts`` or ``accounts`` in ``tracker.toml``) it claims their partitions and runs a
    System per account (``app/serving.py``); without, it stores its partitions' order updates
    raw, fenced by their leases."""
    # Imported here: a single-process run never loads the NATS client.
    from broker.transport.jetstream import JetStreamTransport
    from broker.transport.ports import TransportError, orders_wildcard
    from store.leases import PostgresLeases

    url = settings.database_url
    if url is None or not url.lower().startswith(("postgresql://", "postgres://")):
        raise InputError("a runner needs PostgreSQL (--db / DATABASE_URL): its leases live "
                         "there")
    try:
        wanted = parse_partitions(partitions) if partitions is not None else None
    except ValueError as error:
        raise InputError(f"--partitions: {error}") from None
    try:
        orders_wildcard(namespace)
    except ValueError as error:
        raise InputError(f"--namespace: {error}") from None
    accounts = settings.accounts
    tokens = runner_credentials(settings, accounts, os.environ) if accounts else None
    if accounts:
        mine = sorted({partition_of(account) for account in accounts})
        wanted = mine if wanted is None else sorted(set(mine) & set(wanted))
    elif wanted is None:
        wanted = list(range(PARTITIONS))
    open_store(url).close()  # migrated unfenced: a fenced store writes only under a lease
    leases = PostgresLeases(url, lease_seconds=lease_seconds,
                            http_timeout=settings.dhan.request_timeout_seconds)
    leases.migrate()
    try:
        transport = JetStreamTransport(nats_url, namespace=namespace)
    except TransportError as error:
        leases.close()
        print(f"transport error: {one_line(error)}", file=sys.stderr)
        return 1
    name = owner or f"runner-{uuid.uuid4().hex[:8]}"
    closing: list[Callable[[], None]] = [leases.close, transport.close]
    if tokens is not None:
        clock = _exchange_clock(settings)
        holder: list[Runner] = []
        tls = shared_tls()  # made now, not at a partition's hand-over
        systems = AccountSystems(accounts, lambda account, lease: build_runner_system(
            settings, account, lease, url=url, clock=clock, tokens=tokens[account],
            on_lease_lost=holder[0].lease_lost, lease_seconds=lease_seconds, tls=tls,
            db_connections=db_connections, read_book=read_book),
            transport, clock=clock)
        runner = Runner(leases, transport, owner=name, partitions=wanted, serve=systems,
                        share=partitions is None)
        holder.append(runner)
        closing.insert(0, systems.close)
    else:
        current = CurrentLease()
        store = PostgresStore(url, lease=current)
        closing.append(store.close)
        runner = Runner(leases, transport, owner=name, partitions=wanted,
                        deliver=store_frames(store, _wall_clock), current=current,
                        share=partitions is None)
    stop = _stop_event(duration)
    logger.info("runner {} on {} partitions ({} accounts)", name, len(wanted), len(accounts))

    def reported() -> dict[str, Any]:
        return {**runner.report(), "nats_reconnects_forced": transport.reconnects_forced,
                "accounts": systems.report() if tokens is not None else {}}

    status = threading.Thread(target=_log_runner_status, args=(stop, reported, status_every),
                              daemon=True, name="runner-status")
    status.start()
    final: dict[str, Any] | None = None
    try:
        runner.run(stop)
    finally:
        try:
            if report is not None:
                final = reported()  # before the release stops the Systems
            runner.release_all()
        finally:
            for close in closing:
                close()
    if report is not None and final is not None:
        final["updates_stored"] = runner.delivered
        _write_atomically(report, json.dumps(final, indent=1, default=str))
    logger.info("runner {} stopped: {} updates stored", name, runner.delivered)
    return 0


def _log_runner_status(stop: threading.Event, reported: Callable[[], dict[str, Any]],
                       every: float) -> None:
    """A runner's status in its log every ``every`` seconds: what it holds and serves, and a
    status line per account (positions, books, alarms)."""
    while not stop.wait(every):
        try:
            now = reported()
        except Exception as error:  # the status is a view: the runner goes on regardless
            logger.warning("runner status not made: {}", one_line(error))
            continue
        logger.info("runner {}: {} partitions held, served {}; {} updates stored{}",
                    now["owner"], len(now["partitions_held"]), now["partitions_served"],
                    now["updates_stored"],
                    f"; NATS reconnected {now['nats_reconnects_forced']} times after it "
                    "stopped reading" if now.get("nats_reconnects_forced") else "")
        for row in now["accounts"].values():
            logger.info("  partition {}: {}", row["partition"], row["status_line"])


def run_connector(settings: Settings, *, nats_url: str, namespace: str, poll_every: float,
                  duration: float | None, report: Path | None = None) -> int:
    """``run.py connector --nats URL``: each account's DhanHQ order socket and order book onto
    JetStream for the runners (``app/connector.py``); credentials as a runner's
    (``runner_credentials``)."""
    from app.connector import AccountConnector, Connectors
    from broker.transport.jetstream import JetStreamTransport
    from broker.transport.ports import TransportError, orders_wildcard

    try:
        orders_wildcard(namespace)
    except ValueError as error:
        raise InputError(f"--namespace: {error}") from None
    accounts = settings.accounts
    if not accounts:
        raise InputError("--accounts: name the accounts (DhanHQ client ids) to connect")
    tokens = runner_credentials(settings, accounts, os.environ)
    dhan = settings.dhan
    try:
        transport = JetStreamTransport(nats_url, namespace=namespace)
    except TransportError as error:
        print(f"transport error: {one_line(error)}", file=sys.stderr)
        return 1
    tls = shared_tls()
    rests = [DhanRest(dhan.api_url, account, tokens[account],
                      timeout=dhan.request_timeout_seconds, verify=tls) for account in accounts]
    connectors = Connectors([
        AccountConnector(account, rest, tokens[account], transport,
                         order_ws_url=dhan.order_ws_url, poll_every=poll_every)
        for account, rest in zip(accounts, rests, strict=True)])
    stop = _stop_event(duration)
    logger.info("connector of {} accounts onto {}", len(accounts), redact_url(nats_url))
    try:
        connectors.run(stop)
    finally:
        for rest in rests:
            rest.close()
        transport.close()
        if report is not None:
            _write_atomically(report, json.dumps(connectors.report(), indent=1))
    return 0


def run_feed(settings: Settings, *, nats_url: str, namespace: str, duration: float | None,
             report: Path | None = None) -> int:
    """``run.py feed --nats URL``: DhanHQ's market feed for the accounts' open positions (read
    from PostgreSQL) onto NATS (``app/feed.py``), with ``DHAN_CLIENT_ID``'s credentials."""
    from app.feed import PriceFeed
    from broker.transport.jetstream import JetStreamTransport
    from broker.transport.ports import TransportError, orders_wildcard

    try:
        orders_wildcard(namespace)
    except ValueError as error:
        raise InputError(f"--namespace: {error}") from None
    url = settings.database_url
    if url is None or not url.lower().startswith(("postgresql://", "postgres://")):
        raise InputError("a price feed reads the open positions from PostgreSQL (--db / "
                         "DATABASE_URL)")
    accounts = settings.accounts
    if not accounts:
        raise InputError("--accounts: name the accounts whose open positions it prices")
    tokens = live_credentials(settings, os.environ)
    client_id = settings.dhan.client_id or ""
    stores = [PostgresStore(url, account=account, pool_size=1) for account in accounts]
    try:
        transport = JetStreamTransport(nats_url, namespace=namespace)
    except TransportError as error:
        for store in stores:
            store.close()
        print(f"transport error: {one_line(error)}", file=sys.stderr)
        return 1

    def instruments() -> set[Instrument]:
        found: set[Instrument] = set()
        for store in stores:
            for segment, security in store.open_instruments():
                try:
                    found.add(Instrument(segment=Segment(segment), security_id=security))
                except ValueError:  # a row no position of ours writes: the others go on
                    logger.warning("price feed: {}:{} of account {} is no instrument",
                                   segment, security, shown(store.account))
        return found

    feed = PriceFeed(transport, tokens, instruments, feed_ws_url=settings.dhan.feed_ws_url,
                     client_id=client_id)
    stop = _stop_event(duration)
    logger.info("price feed for the open positions of {} accounts onto {}", len(accounts),
                redact_url(nats_url))
    try:
        feed.run(stop)
    finally:
        transport.close()
        for store in stores:
            store.close()
        if report is not None:
            _write_atomically(report, json.dumps(vars(feed.status()), indent=1))
    return 0


def run_venue(settings: Settings, *, nats_url: str, port: int, namespace: str,
              entry_every: float, duration: float | None, record: Path | None = None,
              instruments: int = 4, partial_fills: int = 1, publish: bool = True) -> int:
    """``run.py venue``: the paper broker every runner shares (``app/venue.py``); with
    ``record``, its placements and books written there as JSON when it stops."""
    from app.venue import PaperVenue
    from broker.transport.jetstream import JetStreamTransport
    from broker.transport.ports import TransportError, orders_wildcard

    try:
        orders_wildcard(namespace)
    except ValueError as error:
        raise InputError(f"--namespace: {error}") from None
    if not 0 < port < 65536:
        raise InputError(f"--port: {port} is not a TCP port")
    if not settings.accounts:
        raise InputError("--accounts: name the accounts whose entries the venue places")
    try:
        transport = JetStreamTransport(nats_url, namespace=namespace)
    except TransportError as error:
        print(f"transport error: {one_line(error)}", file=sys.stderr)
        return 1
    clock = _exchange_clock(settings)
    venue = PaperVenue(transport, settings.accounts, clock=clock, entry_every=entry_every,
                       seed=settings.paper.seed, instruments=instruments,
                       partial_fills=partial_fills, publish=publish)
    stop = _stop_event(duration)
    try:
        venue.run(stop, port)
    finally:
        transport.close()
        if record is not None:
            _write_atomically(record, json.dumps(venue.record(), indent=1))
    logger.info("paper venue stopped: {} entries, {} order updates published", venue.entries,
                venue.published)
    return 0


def run_positions(settings: Settings, status: str | None, as_json: bool) -> int:
    try:
        wanted = PositionStatus(status.upper()) if status else None
    except ValueError:
        allowed = ", ".join(s.value for s in PositionStatus)
        raise InputError(f"--status: unknown status {status!r} (allowed: {allowed})") from None
    store = open_store(settings.database_url, settings.data_dir, account=settings.account_id())
    rows = [position_row(p, settings.risk.policy) for p in store.list_positions(wanted)]
    store.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['position_id']:<14}{row['segment']}:{row['security_id']:<10} "
              f"{row['side']:<6}{row['status']:<10}{row['quantity']:>7} "
              f"{row['entry_price'] or '-':>10} {row['exit_price'] or '-':>10} "
              f"{row['exit_reason'] or '-'}")
    print(f"{len(rows)} positions")
    return 0


def run_reset_kill_switch(settings: Settings) -> int:
    store = open_store(settings.database_url, settings.data_dir, account=settings.account_id())
    was = store.reset_kill_switch()
    store.close()
    print("kill switch reset: trading may resume" if was else "kill switch was not latched")
    return 0


def run_trace(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"trace: {args.file}: no such file", file=sys.stderr)
        return 2
    filters = Filters(position=args.position, order=args.order, security=args.security,
                      actor=args.actor, errors=args.errors)
    try:
        records = list(iter_records(args.file))
    except ValueError as error:
        print(f"trace: {error}", file=sys.stderr)
        return 2
    print(render(records, args.format, filters))
    return 0


# Arguments ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="run.py", description="Position tracker and risk "
                  "supervisor. With no command: a paper session until Ctrl-C.")
    commands = top.add_subparsers(dest="command")
    paper = commands.add_parser("paper", help="a bounded paper session")
    paper.add_argument("--positions", type=int, help="entry orders the strategy places")
    paper.add_argument("--duration", type=_positive, help="seconds of exchange time to run; "
                       "the entries are spread over its first half")
    paper.add_argument("--burst", action="store_true", help="place every entry at the start")
    paper.add_argument("--seed", type=int, help="random seed of market and strategy")
    paper.add_argument("--report", type=Path, help="write the JSON report here")
    paper.add_argument("--trace", type=Path, help="write message traces as JSON lines")
    replay = commands.add_parser("replay", help="play a recorded session through the actors")
    replay.add_argument("--orders", type=Path, action="append", default=[],
                        help="order updates, one DhanHQ frame per line (JSONL); repeat for "
                        "several days")
    replay.add_argument("--ticks", type=Path, action="append", default=[],
                        help="price tape CSV ts,segment,security_id,ltp; one per --orders")
    replay.add_argument("--days", type=Path, help="a folder of days: sub-folders with "
                        "orders.jsonl (and ticks.csv), or NAME.jsonl files (and NAME.csv)")
    replay.add_argument("--policy", type=Path, action="append", dest="policies", default=[],
                        help="policy TOML file; repeat to compare policies side by side")
    replay.add_argument("--report", type=Path, help="write the JSON report here")
    replay.add_argument("--trace", type=Path, help="write message traces as JSON lines")
    replay.add_argument("--http", default="off", help="serve the operator console on "
                        "HOST:PORT while replaying (default: off)")
    paper.add_argument("--http", default=DEFAULT_BIND, help="operator console HOST:PORT, or "
                       f"off (default {DEFAULT_BIND})")
    replay.add_argument("--stepped", action="store_true", help="a timer every simulated second "
                        "and one tick at a time (slow; the same decisions, for checking)")
    positions = commands.add_parser("positions", help="list positions from the store")
    positions.add_argument("--status", help="PENDING, ACTIVE, EXITING, EXITED or CANCELLED")
    positions.add_argument("--json", action="store_true", help="JSON like the report")
    live = commands.add_parser("live", help="watch a DhanHQ account (DHAN_CLIENT_ID, "
                               "DHAN_ACCESS_TOKEN)")
    live.add_argument("--shadow", action="store_true", help="decide and report exits "
                      "(would_exit) but place, modify and cancel nothing")
    live.add_argument("--duration", type=_positive, help="seconds to run (default: until "
                      "Ctrl-C)")
    live.add_argument("--report", type=Path, help="write the JSON report here")
    live.add_argument("--trace", type=Path, help="write message traces as JSON lines")
    live.add_argument("--http", default=DEFAULT_BIND, help="operator console HOST:PORT, or "
                      f"off (default {DEFAULT_BIND})")
    runner = _scaleout(commands, "runner", "scale-out runner: claims the partitions of its "
                       "accounts and runs their actors, order updates from NATS JetStream, "
                       "prices from NATS", accounts="accounts served: a System each, on their "
                       "partitions")
    runner.add_argument("--partitions", help="partitions to claim, e.g. 0-63,128 (default: "
                        "those of the accounts; all when there are none)")
    runner.add_argument("--owner", help="this runner's name in the leases (default: random)")
    runner.add_argument("--lease-seconds", type=_positive, default=6.0,
                        help="lease length (default 6)")
    runner.add_argument("--report", type=Path, help="write what it held and served, and each "
                        "account's status and last reconcile, here as JSON when it stops")
    runner.add_argument("--db-connections", type=_count, default=RUNNER_DB_CONNECTIONS,
                        help="PostgreSQL connections of each account's store, at most "
                        f"(default {RUNNER_DB_CONNECTIONS})")
    runner.add_argument("--read-book", action="store_true", help="read each account's whole "
                        "order book at every takeover, not only when its positions differ "
                        "from the broker's (order updates that do not come from `run.py "
                        "connector` or another complete source)")
    connector = _scaleout(commands, "connector", "scale-out: DhanHQ accounts' order updates "
                          "(order socket, order book) onto NATS JetStream",
                          accounts="accounts (DhanHQ client ids)")
    connector.add_argument("--poll-seconds", type=_positive, default=5.0, help="seconds "
                           "between reads of each account's order book (default 5)")
    connector.add_argument("--report", type=Path, help="write each account's connector status "
                           "here as JSON when it stops")
    feed = _scaleout(commands, "feed", "scale-out: DhanHQ's market feed for the accounts' "
                     "open positions onto NATS", accounts="accounts whose open positions it "
                     "prices")
    feed.add_argument("--report", type=Path, help="write the feed's status here as JSON when "
                      "it stops")
    venue = _scaleout(commands, "venue", "the paper broker shared by runners: fake DhanHQ API, "
                      "entries, order updates to JetStream, prices to NATS",
                      accounts="accounts whose entries it places")
    venue.add_argument("--port", type=int, default=8900, help="the fake DhanHQ's port on "
                       "127.0.0.1 (default 8900)")
    venue.add_argument("--entry-every", type=_positive, default=2.0,
                       help="seconds between entries (default 2)")
    venue.add_argument("--instruments", type=_count, default=4, help="instruments of its "
                       "market, each priced every 0.1 s (default 4)")
    venue.add_argument("--partial-fills", type=_count, default=1, help="parts each order "
                       "fills in (default 1)")
    venue.add_argument("--no-publish", action="store_true", help="leave order updates and "
                       "prices to run.py connector and run.py feed (from its order sockets and "
                       "feed)")
    venue.add_argument("--record", type=Path, help="write its placements and each account's "
                       "book here as JSON when it stops (the failover rig's check)")
    commands.add_parser("reset-kill-switch", help="operator reset of the latched kill switch")
    trace = commands.add_parser("trace", help="views of a trace file written with --trace")
    trace.add_argument("file", type=Path)
    trace.add_argument("--position", help="the story of one position")
    trace.add_argument("--order", help="the story of the position owning this order")
    trace.add_argument("--security", help="only this security id")
    trace.add_argument("--actor", help="only this actor (e.g. supervisor, tracker:P123)")
    trace.add_argument("--errors", action="store_true", help="only failures and dead letters")
    trace.add_argument("--format", choices=("tree", "timeline", "chrome", "json"), default="tree",
                       help="tree: causal trees, or a position's story with --position / --order; "
                       "json: the same for tools")
    for sub in (top, *commands.choices.values()):
        sub.add_argument("--db", dest="database_url", help="database URL (overrides "
                         "DATABASE_URL)", default=argparse.SUPPRESS)
        sub.add_argument("--redis", dest="redis_url", help="Redis URL (overrides REDIS_URL)",
                         default=argparse.SUPPRESS)
        if sub is not replay:
            sub.add_argument("--policy", type=Path, help="policy TOML file",
                             default=argparse.SUPPRESS)
        if sub not in (runner, venue, connector, feed):
            sub.add_argument("--account", help="the account served (overrides "
                             "TRACKER_ACCOUNT; default: paper, or DHAN_CLIENT_ID live)",
                             default=argparse.SUPPRESS)
    top.add_argument("--trace", type=Path, help="write message traces as JSON lines")
    top.add_argument("--http", default=DEFAULT_BIND, help="operator console HOST:PORT, or off "
                     f"(default {DEFAULT_BIND})")
    return top


def _scaleout(commands: Any, name: str, text: str, *, accounts: str) -> Any:
    """A scale-out command with what every one of them takes: ``--nats``, ``--accounts``,
    ``--namespace`` and ``--duration``."""
    sub = commands.add_parser(name, help=text)
    sub.add_argument("--nats", required=True, help="NATS URL, e.g. nats://127.0.0.1:4222")
    sub.add_argument("--accounts", help=f"{accounts}, comma-separated (overrides accounts in "
                     "tracker.toml)")
    sub.add_argument("--namespace", default="", help="prefix of the NATS subjects and stream, "
                     "for several deployments on one server; the same for every process of "
                     "one (default none)")
    sub.add_argument("--duration", type=_positive, help="seconds to run (default: until "
                     "Ctrl-C)")
    return sub


def preflight(settings: Settings, outputs: Sequence[Path | None]) -> None:
    """Refuse bad input before anything starts: URLs that name no store or cache, and output
    files that cannot be written. Connects to nothing."""
    try:
        check_database_url(settings.database_url)
    except ValueError as error:
        raise InputError(f"--db / DATABASE_URL: {error}") from None
    if settings.redis_url is not None:
        try:
            parse_redis_url(settings.redis_url)  # type: ignore[no-untyped-call]  # redis-py
        except ValueError as error:
            text = redact_text(str(error), settings.redis_url)
            raise InputError(f"--redis / REDIS_URL: {text}") from None
    for path in outputs:
        if path is None:
            continue
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not a file to write")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{path}: cannot create its folder ({error.strerror})") from None
        if not os.access(path.parent, os.W_OK):
            raise InputError(f"{path}: its folder is not writable")


def _days(args: argparse.Namespace) -> list[Day]:
    if args.days is not None and args.orders:
        raise InputError("give --orders files or a --days folder, not both")
    if args.days is None and not args.orders:
        raise InputError("give --orders FILE (repeat for several days) or --days FOLDER")
    try:
        return find_days(args.days) if args.days is not None else \
            pair_days(args.orders, args.ticks)
    except DaysError as error:
        raise InputError(str(error)) from None


def _policy_runs(args: argparse.Namespace, flags: dict[str, Any]) -> list[tuple[str, Settings]]:
    """The settings for each ``--policy`` of a replay (one run on the configured policy when
    none is given)."""
    files: list[Path | None] = list(args.policies) or [None]
    try:
        names = policy_names(files)
    except DaysError as error:
        raise InputError(str(error)) from None
    return [(name, load_settings(config_file=Path("tracker.toml"), policy_file=path,
                                 environ=os.environ, flags=flags))
            for name, path in zip(names, files, strict=True)]


def one_line(error: BaseException) -> str:
    """An error's text on one line (drivers add hints on further lines)."""
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    logger.remove()
    # no variable values in tracebacks: a frame may hold a token or a password
    logger.add(sys.stderr, level=os.environ.get("LOG_LEVEL", "INFO").upper(), diagnose=False)
    route_stdlib_logging()
    args = parser().parse_args(argv)
    flags = {k: getattr(args, k, None) for k in ("database_url", "redis_url", "positions",
                                                   "seed", "account")}
    if getattr(args, "accounts", None) is not None:
        flags["accounts"] = tuple(a.strip() for a in args.accounts.split(",") if a.strip())
    if args.command == "trace":
        return run_trace(args)
    try:
        settings = load_settings(config_file=Path("tracker.toml"),
                                 policy_file=getattr(args, "policy", None),
                                 environ=os.environ, flags=flags)
        preflight(settings, [getattr(args, "report", None), getattr(args, "trace", None)])
        if args.command == "positions":
            return run_positions(settings, args.status, args.json)
        if args.command == "reset-kill-switch":
            return run_reset_kill_switch(settings)
        if args.command == "runner":
            return run_runner(settings, nats_url=args.nats, partitions=args.partitions,
                              owner=args.owner, lease_seconds=args.lease_seconds,
                              duration=args.duration, namespace=args.namespace,
                              db_connections=args.db_connections, report=args.report,
                              read_book=args.read_book)
        if args.command == "feed":
            return run_feed(settings, nats_url=args.nats, namespace=args.namespace,
                            duration=args.duration, report=args.report)
        if args.command == "connector":
            return run_connector(settings, nats_url=args.nats, namespace=args.namespace,
                                 poll_every=args.poll_seconds, duration=args.duration,
                                 report=args.report)
        if args.command == "venue":
            return run_venue(settings, nats_url=args.nats, port=args.port,
                             namespace=args.namespace, entry_every=args.entry_every,
                             duration=args.duration, record=args.record,
                             instruments=args.instruments, partial_fills=args.partial_fills,
                             publish=not args.no_publish)
        if args.command == "replay":
            return run_replay(_policy_runs(args, flags), _days(args), args.report,
                              getattr(args, "database_url", None), args.trace,
                              stepped=args.stepped, http=parse_bind(args.http))
        if args.command == "live":
            return run_live(settings, shadow=args.shadow, duration=args.duration,
                            report=args.report, trace=args.trace, http=parse_bind(args.http))
        if args.command == "paper":
            return run_paper(settings, duration=args.duration, report=args.report,
                             burst=args.burst, live_status=False, trace=args.trace,
                             http=parse_bind(args.http))
        return run_paper(settings, duration=None, live_status=True, trace=args.trace,
                         report=settings.data_dir / "last-session.json",
                         http=parse_bind(args.http))
    except (SettingsError, BindError) as error:
        print(f"configuration error: {one_line(error)}", file=sys.stderr)
        return 2
    except InputError as error:
        command = f"run.py {args.command}" if args.command else "run.py"
        print(f"{command}: {one_line(error)}", file=sys.stderr)
        return 2
    except (TokenError, OSError) as error:
        print(f"console error: {error}", file=sys.stderr)
        return 1
    except StoreError as error:
        print(f"store error: {one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
