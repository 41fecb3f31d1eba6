"""Exit prices inside the circuit limits (SPEC §10 "Exit orders"): ``DhanGateway.limit_price``
clamps to the limits read for the instrument, and forgets limits the market has left (the
exchange moved the band: an exit clamped to the old one would never fill); ``CircuitReader``
reads them for a live session and for each account a runner serves."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any, cast

from loguru import logger

from broker.dhan import DhanRest
from broker.dhan.circuits import RETRY, CircuitReader
from broker.dhan.gateway import DhanGateway
from broker.ports import GatewayError
from models.common import Instrument, Segment, TxnType

FUT = Instrument(segment=Segment.NSE_FNO, security_id="49081")
OTHER = Instrument(segment=Segment.NSE_FNO, security_id="49082")


def gateway() -> DhanGateway:
    return DhanGateway(cast(DhanRest, cast(Any, object())), protection_pct=D("0.01"))


def test_an_exit_past_a_circuit_is_priced_at_it() -> None:
    dhan = gateway()
    dhan.note_circuits(FUT, D("93.50"), D("106.50"))
    assert dhan.limit_price(FUT, D("94.10"), TxnType.SELL) == D("93.50")  # 93.15 past it
    assert dhan.limit_price(FUT, D("105.90"), TxnType.BUY) == D("106.50")  # 107.00 past it
    assert dhan.limit_price(FUT, D("100"), TxnType.SELL) == D("99.00")  # inside: unchanged
    assert dhan.limit_price(OTHER, D("94.10"), TxnType.SELL) == D("93.15")  # none known


def test_limits_the_market_has_left_are_forgotten_and_not_used() -> None:
    dhan = gateway()
    dhan.note_circuits(FUT, D("93.50"), D("106.50"))
    assert dhan.limit_price(FUT, D("92.00"), TxnType.SELL) == D("91.05")  # the band moved
    assert dhan.circuits(FUT) is None  # read again by the session
    assert dhan.circuits_known() == 0


class Quotes:
    """What ``CircuitReader`` asks of the REST client: each request, and an answer or an
    error."""

    max_instruments = 2

    def __init__(self) -> None:
        self.requests: list[dict[Segment, list[int]]] = []
        self.failing = False

    def circuit_limits(self, request: dict[Segment, list[int]]
                       ) -> dict[Instrument, tuple[D, D]]:
        self.requests.append({k: list(v) for k, v in request.items()})
        if self.failing:
            raise GatewayError("429 Too Many Requests")
        return {Instrument(segment=segment, security_id=str(number)): (D("90"), D("110"))
                for segment, numbers in request.items() for number in numbers}


def reader(quotes: Quotes, now: list[float]) -> tuple[CircuitReader, DhanGateway]:
    dhan = gateway()
    return CircuitReader(cast(DhanRest, quotes), dhan, clock=lambda: now[0]), dhan


def test_the_reader_asks_once_for_each_instrument_held_batched_and_capped() -> None:
    quotes, now = Quotes(), [0.0]
    read, dhan = reader(quotes, now)
    third = Instrument(segment=Segment.NSE_EQ, security_id="1333")
    odd = Instrument(segment=Segment.NSE_FNO, security_id="NIFTY-FUT")  # no numeric id
    assert read.read([FUT, OTHER, third, odd]) == 2  # at most max_instruments a request
    assert quotes.requests == [{Segment.NSE_EQ: [1333], Segment.NSE_FNO: [49081]}]
    assert read.read([FUT, OTHER, third, odd]) == 1  # only the one still without limits
    assert quotes.requests[-1] == {Segment.NSE_FNO: [49082]}
    assert read.read([FUT, OTHER, third]) == 0 and len(quotes.requests) == 2  # all known
    assert read.known() == dhan.circuits_known() == 3
    assert dhan.circuits(third) == (D("90"), D("110"))


def test_a_failed_read_is_logged_and_asked_again_only_after_the_retry_wait() -> None:
    quotes, now = Quotes(), [0.0]
    read, _ = reader(quotes, now)
    quotes.failing = True
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        assert read.read([FUT]) == 0  # not raised
    finally:
        logger.remove(sink)
    assert lines == ["circuit limits of 1 instruments not read (429 Too Many Requests); "
                     "asked again in 30 s\n"]
    now[0] = RETRY - 1
    quotes.failing = False
    assert read.read([FUT]) == 0 and len(quotes.requests) == 1  # not yet
    now[0] = RETRY
    assert read.read([FUT]) == 1 and len(quotes.requests) == 2


def test_limits_forgotten_by_the_gateway_are_read_again() -> None:
    quotes, now = Quotes(), [0.0]
    read, dhan = reader(quotes, now)
    assert read.read([FUT]) == 1
    dhan.limit_price(FUT, D("85"), TxnType.SELL)  # the price left the band: forgotten
    now[0] = RETRY
    assert read.read([FUT]) == 1 and len(quotes.requests) == 2
