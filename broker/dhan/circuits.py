"""Reading the circuit limits of the instruments an account holds (SPEC §10: exits priced
inside them), for a live session and for each account a runner serves.

An exit priced past a circuit is rejected by the exchange, and a stock locked at its lower
circuit is exactly when a stop loss fires; so each instrument with an open position has its
limits read once from the quote endpoint (``DhanRest.circuit_limits``: ``POST
/marketfeed/quote``, up to 1,000 instruments a request, in the quote API's one request a
second) and noted at the gateway (``DhanGateway.note_circuits``), which keeps every exit price
inside them. The gateway forgets limits the last price has left (F&O bands widen during the
day), and they are read again here. A failed read is logged and its instruments asked again
after ``RETRY`` seconds; exits are priced without the limits meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from loguru import logger

from broker.dhan.gateway import DhanGateway
from broker.dhan.rest import DhanRest
from broker.ports import GatewayError
from models.common import Instrument, Segment

RETRY = 30.0
"""Seconds before an instrument whose circuit limits could not be read is asked again."""


def order_key(instrument: Instrument) -> tuple[str, str]:
    """Instruments in the order DhanHQ requests list them: by segment, then security id."""
    return instrument.segment.value, instrument.security_id


class CircuitReader:
    """One account's circuit limits, read as its positions need them (``read``)."""

    def __init__(self, rest: DhanRest, gateway: DhanGateway, *, label: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rest, self.gateway, self.clock = rest, gateway, clock
        self.label = label
        """Put before each log line (a runner's account)."""
        self._asked: dict[Instrument, float] = {}

    def known(self) -> int:
        """Instruments whose limits the gateway holds."""
        return self.gateway.circuits_known()

    def read(self, instruments: Iterable[Instrument]) -> int:
        """The circuit limits of those of ``instruments`` that have none yet (and were not
        asked within ``RETRY`` s), in one quote request of at most ``max_instruments``; how
        many were noted. A failure is logged, never raised."""
        now = self.clock()
        ask = sorted((i for i in set(instruments) if i.security_id.isdigit() and
                      self.gateway.circuits(i) is None and
                      now - self._asked.get(i, -RETRY) >= RETRY),
                     key=order_key)[:self.rest.max_instruments]
        if not ask:
            return 0
        for instrument in ask:
            self._asked[instrument] = now
        request: dict[Segment, list[int]] = {}
        for instrument in ask:
            request.setdefault(instrument.segment, []).append(int(instrument.security_id))
        try:
            limits = self.rest.circuit_limits(request)
        except (GatewayError, ValueError) as error:
            logger.warning("{}circuit limits of {} instruments not read ({}); asked again in "
                           "{:.0f} s", self.label, len(ask), error, RETRY)
            return 0
        for instrument, (lower, upper) in limits.items():
            self.gateway.note_circuits(instrument, lower, upper)
        logger.info("{}circuit limits read for {} of {} instruments", self.label, len(limits),
                    len(ask))
        return len(limits)
