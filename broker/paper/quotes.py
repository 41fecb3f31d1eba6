"""The paper quote API (SPEC §4.3): DhanHQ ``POST /v2/marketfeed/ltp`` (and
``POST /v2/marketfeed/quote``, ``handle_json(full=True)``: each instrument's answer also
carries its circuit limits, ``lower_circuit_limit`` and ``upper_circuit_limit``) over a
``Market``.

``handle_json`` serves the exact wire shapes — request ``{"NSE_FNO": [49081], "NSE_EQ": [11536]}``,
answer ``{"data": {"NSE_FNO": {"49081": {"last_price": 368.15}}}, "status": "success"}`` or
``{"data": {"805": "..."}, "status": "failed"}`` — and ``ltp`` is built on it, so every call
exercises the wire format. The limits are DhanHQ's: 1,000 instruments per request over all
segments, one request per second (on the injected clock). Failures can be injected for tests.

DhanHQ data API error codes used: 800 internal error, 804 too many instruments, 805 too many
requests (HTTP 429), 814 invalid request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from broker.paper.market import Market
from broker.ports import GatewayError, QuoteThrottled, QuoteTimeout
from models.common import Instrument, Segment

THROTTLED = "805"
TOO_MANY_INSTRUMENTS = "804"
INVALID_REQUEST = "814"
INTERNAL_ERROR = "800"

RESOLUTION = 1e-6
"""Seconds: the finest step of the clocks read here (aware datetimes: a microsecond). Readings
a whole interval apart may differ by 0.9999999999999998 s once taken as float seconds
(1.05 and 2.05); such a request comes a full interval later and is admitted."""


class _Failed(Exception):
    """A request answered with the failed shape: ``{"data": {code: message}, ...}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def dumps(value: object) -> str:
    """JSON with ``Decimal`` written as a number from its exact text (never through float)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(key))}: {dumps(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(item) for item in value) + "]"
    return json.dumps(value)


class PaperQuoteApi:
    """Implements ``QuoteApi``; ``calls`` counts every request received, answered or not."""

    def __init__(self, market: Market, *, max_instruments: int = 1000,
                 min_interval_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.market = market
        self.max_instruments = max_instruments
        self.min_interval_seconds = min_interval_seconds
        self.clock = clock
        self.calls = 0
        self._last_call: float | None = None
        self._fail = self._timeout = self._throttle = 0
        self.circuits: dict[Instrument, tuple[Decimal, Decimal]] = {}
        """Circuit limits set by a test; an instrument without is given ``circuit_band``
        around the first price quoted for it (as an exchange fixes a day's band)."""
        self.circuit_band = Decimal("0.2")

    def fail_next(self, n: int = 1) -> None:
        """The next ``n`` requests fail (``GatewayError``; answer code 800)."""
        self._fail += n

    def timeout_next(self, n: int = 1) -> None:
        """The next ``n`` requests get no answer (``QuoteTimeout``)."""
        self._timeout += n

    def throttle_next(self, n: int = 1) -> None:
        """The next ``n`` requests are answered 429 (``QuoteThrottled``)."""
        self._throttle += n

    # The typed port -----------------------------------------------------------------------------
    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        body = dumps({Segment(segment).value: [int(i) for i in ids]
                      for segment, ids in request.items()})
        answer = json.loads(self.handle_json(body), parse_float=Decimal)
        if answer.get("status") != "success":
            code, message = next(iter(answer["data"].items()))
            if code == THROTTLED:
                raise QuoteThrottled(f"quote API 429 ({code}): {message}")
            raise GatewayError(f"quote API failed ({code}): {message}")
        return {Instrument(segment=Segment(segment), security_id=security_id):
                Decimal(quote["last_price"])
                for segment, quotes in answer["data"].items()
                for security_id, quote in quotes.items()}

    # The wire ---------------------------------------------------------------------------------
    def handle_json(self, body: str, *, full: bool = False) -> str:
        """The answer to one raw request body (``full``: the quote endpoint's, with circuit
        limits). Raises ``QuoteTimeout`` when told to time out: a request that times out has
        no answer."""
        self.calls += 1
        try:
            self._admit()
            request = _parse_request(body)
            self._check(request)
            data = self._prices(request)
            if full:
                self._add_circuits(data)
            return dumps({"data": data, "status": "success"})
        except _Failed as failed:
            return dumps({"data": {failed.code: str(failed)}, "status": "failed"})

    def _admit(self) -> None:
        """Rate limit first: a throttled request is not counted against the next second."""
        now = self.clock()
        if self._throttle > 0:
            self._throttle -= 1
            raise _Failed(THROTTLED, "Too many requests: told to throttle")
        if (self._last_call is not None
                and now - self._last_call < self.min_interval_seconds - RESOLUTION):
            raise _Failed(THROTTLED, "Too many requests or connections: "
                          f"at most one request every {self.min_interval_seconds:g} s")
        self._last_call = now
        if self._timeout > 0:
            self._timeout -= 1
            raise QuoteTimeout("quote API did not answer in time (told to time out)")
        if self._fail > 0:
            self._fail -= 1
            raise _Failed(INTERNAL_ERROR, "Internal server error: told to fail")

    def _check(self, request: dict[Segment, list[int]]) -> None:
        total = sum(len(ids) for ids in request.values())
        if total > self.max_instruments:
            raise _Failed(TOO_MANY_INSTRUMENTS, f"too many instruments: {total} requested, "
                          f"at most {self.max_instruments} per request")

    def _prices(self, request: dict[Segment, list[int]]) -> dict[str, dict[str, Any]]:
        """Known instruments only; a segment with none known is left out."""
        data: dict[str, dict[str, Any]] = {}
        for segment, ids in request.items():
            for security_id in ids:
                price = self.market.get(Instrument(segment=segment, security_id=str(security_id)))
                if price is not None:
                    data.setdefault(segment.value, {})[str(security_id)] = {"last_price": price}
        return data

    def _add_circuits(self, data: dict[str, dict[str, Any]]) -> None:
        for segment, quotes in data.items():
            for security_id, quote in quotes.items():
                instrument = Instrument(segment=Segment(segment), security_id=security_id)
                price = Decimal(quote["last_price"])
                lower, upper = self.circuits.setdefault(instrument, (
                    (price * (1 - self.circuit_band)).quantize(Decimal("0.05")),
                    (price * (1 + self.circuit_band)).quantize(Decimal("0.05"))))
                quote.update(lower_circuit_limit=lower, upper_circuit_limit=upper)


def _parse_request(body: str) -> dict[Segment, list[int]]:
    try:
        document = json.loads(body)
    except ValueError:
        raise _Failed(INVALID_REQUEST, "Invalid request: body is not JSON") from None
    if not isinstance(document, dict):
        raise _Failed(INVALID_REQUEST, "Invalid request: body must be a JSON object")
    request: dict[Segment, list[int]] = {}
    for name, ids in document.items():
        if name not in Segment.__members__:
            raise _Failed(INVALID_REQUEST, f"Invalid request: unknown segment {name!r}")
        if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _Failed(INVALID_REQUEST,
                          f"Invalid request: {name} must be a list of integer security ids")
        request[Segment(name)] = ids
    return request
