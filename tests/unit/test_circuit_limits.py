"""Exit prices inside the circuit limits (SPEC §10 "Exit orders"): ``DhanGateway.limit_price``
clamps to the limits read for the instrument, and forgets limits the market has left (the
exchange moved the band: an exit clamped to the old one would never fill)."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any, cast

from broker.dhan import DhanRest
from broker.dhan.gateway import DhanGateway
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
