"""A DhanHQ account on the loopback fake, and ``run.py live`` run against it as a user would
(the end-to-end tests, ``tests/live/``, and the live benchmark, ``bench/live_exits.py``).

``Venue``: a still paper market (prices move only when set) and a paper exchange behind
``FakeDhan``, their time driven by a thread on the same exchange clock the session uses
(``DHAN_SESSION_START``: 10:00 IST of a Monday, whatever the hour here). ``LiveRun``: the
``run.py live`` subprocess in its own folder (store, ``tracker.toml``, report, log).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import jwt

from broker.dhan.limits import Bucket
from broker.fake_dhan.server import FakeDhan, Recorded
from broker.paper.exchange import PaperExchange, PaperOrder
from broker.paper.market import PaperMarket
from models.common import IST, Instrument, TxnType

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "1000000001"
SIGNING_KEY = "fake-dhan-signing-key-for-the-tests"
START = datetime(2026, 11, 23, 10, 0, tzinfo=IST)  # a Monday, in market hours


def access_token(n: int = 1, hours: float = 8.0) -> str:
    """A JWT shaped like DhanHQ's, for the fake (``n`` tells tokens apart)."""
    return jwt.encode({"dhanClientId": CLIENT, "exp": int(time.time() + hours * 3600), "n": n},
                      SIGNING_KEY, algorithm="HS256")


TOKEN = access_token(1, 8)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.05)


class _Clock:
    """Exchange time from ``start``, running with the wall clock (as ``app.clocks``'
    ``SessionClock``, which ``run.py live`` uses with ``DHAN_SESSION_START``)."""

    def __init__(self, start: datetime) -> None:
        self.start, self._t0 = start, time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self._t0)


class Venue:
    """The fake DhanHQ over a paper market of ``prices`` (every instrument's price is sent on
    the feed every ``step_seconds``, changed or not) and a paper exchange."""

    def __init__(self, prices: Mapping[Instrument, Decimal], *, partial_fills: int = 1,
                 token: str = TOKEN, step_seconds: float = 0.1,
                 latency: timedelta = timedelta(milliseconds=20)) -> None:
        self.clock = _Clock(START)
        self.market = PaperMarket(list(prices), seed=1, volatility=0, start_prices=prices,
                                  step_seconds=step_seconds)
        self.market.advance(self.clock())
        self.exchange = PaperExchange(self.market, start=self.clock(), latency=latency,
                                      partial_fills=partial_fills)
        self.fake = FakeDhan(self.exchange, self.market, client_id=CLIENT, valid_token=token)
        self._halt = threading.Event()
        self._driver = threading.Thread(target=self._drive, name="venue", daemon=True)
        self._entries = 0

    def __enter__(self) -> Self:
        self.fake.start()
        self._driver.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._driver.join(timeout=5)
        self.fake.stop()

    def _drive(self) -> None:
        while not self._halt.wait(0.02):
            self.fake.advance(self.clock())

    # What a trader does at the broker ----------------------------------------------------------
    def enter(self, instrument: Instrument, txn: TxnType, quantity: int, *,
              correlation: str | None = None) -> str:
        """An order from the broker's app or web (not from us): filled at the market."""
        self._entries += 1
        return self.exchange.place_order(
            client_id=correlation or f"APP-{self._entries}", instrument=instrument,
            txn_type=txn, quantity=quantity, product="I", now=self.clock())

    def set_price(self, instrument: Instrument, price: str | Decimal) -> None:
        """The market moves; the fake sends the tick at its next step (within 20 ms)."""
        self.market.set_price(instrument, Decimal(price), self.clock())

    def exits(self) -> list[PaperOrder]:
        """The exit orders we placed (client ids X-...)."""
        return [o for o in self.exchange.orders() if o.client_id.startswith("X-")]

    def order_requests(self, method: str) -> list[Recorded]:
        return [r for r in self.fake.requests_in(Bucket.ORDERS) if r.method == method]


class LiveRun:
    """``python run.py live`` in ``folder`` against ``venue``: SQLite in the folder unless
    ``database_url`` is given, the in-process PnL cache unless ``redis_url`` is, no operator
    console unless ``http`` binds one (``HOST:PORT``)."""

    def __init__(self, venue: Venue, folder: Path, *, policy: str, shadow: bool = False,
                 duration: float = 60.0, token: str = TOKEN, token_file: bool = False,
                 database_url: str | None = None, redis_url: str | None = None,
                 http: str = "off", extra_env: dict[str, str] | None = None,
                 trace: Path | None = None) -> None:
        self.venue, self.folder = venue, folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tracker.toml").write_text(
            policy + ('access_token_file = "token.txt"\n' if token_file else ""),
            encoding="utf-8")
        self.report_path = folder / "report.json"
        self.log_path = folder / "run.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DHAN_") and k not in ("DATABASE_URL", "REDIS_URL")}
        env.update({"DHAN_CLIENT_ID": CLIENT, "DHAN_API_URL": venue.fake.rest_url,
                    "DHAN_ORDER_WS_URL": venue.fake.order_ws_url,
                    "DHAN_FEED_WS_URL": venue.fake.feed_ws_url,
                    "DHAN_SESSION_START": venue.clock().isoformat(),
                    "PYTHONPATH": str(ROOT), "LOG_LEVEL": "INFO"})
        if database_url is not None:
            env["DATABASE_URL"] = database_url
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        if token_file:
            (folder / "token.txt").write_text(token, encoding="utf-8")
        else:
            env["DHAN_ACCESS_TOKEN"] = token
        env.update(extra_env or {})
        args = [sys.executable, str(ROOT / "run.py"), "live", "--duration", str(duration),
                "--report", str(self.report_path), "--http", http]
        if shadow:
            args.append("--shadow")
        if trace is not None:
            args += ["--trace", str(trace)]
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(args, cwd=folder, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.log() or self.process.poll() is not None, timeout,
                   f"{text!r} in the log")
        assert text in self.log(), f"{text!r} not in the log:\n{self.log()[-3000:]}"

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop it as Ctrl-C would; the report it wrote."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()
        assert code == 0, f"run.py live exited {code}:\n{self.log()[-4000:]}"
        report: dict[str, Any] = json.loads(self.report_path.read_text(encoding="utf-8"))
        return report

    def kill(self) -> None:
        """After a failure: the process must not outlive its caller."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()
