"""The end-to-end tests' account on the loopback fake (``broker.fake_dhan.venue``): three
instruments, the tests' policy, and a second token for the expiry episode."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.fake_dhan import venue as shared
from broker.fake_dhan.venue import CLIENT, ROOT, TOKEN, access_token, wait_until
from models.common import Instrument, Segment

__all__ = ["CLIENT", "EQ", "FUT", "OPT", "POLICY", "ROOT", "TOKEN", "TOKEN_2", "LiveRun",
           "Venue", "wait_until"]

TOKEN_2 = access_token(2, 9)
FUT = Instrument(segment=Segment.NSE_FNO, security_id="49081")
OPT = Instrument(segment=Segment.NSE_FNO, security_id="49082")
EQ = Instrument(segment=Segment.NSE_EQ, security_id="11536")

POLICY = """
[policy]
stop_loss_pct = 0.05
take_profit_pct = 0.50
exit_timeout_ms = 4000

[dhan]
exit_chase_after_ms = 1000
exit_max_modifications = 2
poll_active_seconds = 1.0
poll_idle_seconds = 3.0
request_timeout_seconds = 1.5
"""


class Venue(shared.Venue):
    def __init__(self, prices: dict[Instrument, Decimal] | None = None, *,
                 partial_fills: int = 1) -> None:
        super().__init__(prices or {FUT: Decimal("100"), OPT: Decimal("200"),
                                    EQ: Decimal("2500")}, partial_fills=partial_fills)


class LiveRun(shared.LiveRun):
    def __init__(self, venue: Venue, folder: Path, *, policy: str = POLICY,
                 **kw: Any) -> None:
        super().__init__(venue, folder, policy=policy, **kw)
