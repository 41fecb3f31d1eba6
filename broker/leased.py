"""An order gateway that sends only under a live partition lease (SPEC §13).

A runner wraps its account's gateway with ``leased(gateway, deadline, margin=...)``: before
each request that changes the broker's book (place, cancel, and a chase's modification) it
checks ``models.partitions.lease_allows_send`` against the lease's monotonic ``deadline``; past
it the request is refused with ``LeaseExpiring`` (a ``GatewayError``: nothing was sent, so the
gateway actor answers ``ExitOrderFailed`` and retries with back-off, which goes through once the
lease is renewed). Look-ups and the order socket are not guarded: they change nothing. A client
that waits before its request leaves (DhanHQ's, for a rate-limit slot) checks again just before
it does (``lease_refusal`` as ``DhanRest.may_send``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from broker.ports import ChasingGateway, GatewayError, OrderGateway, OrderView
from models.common import Instrument, TxnType
from models.partitions import lease_allows_send


class LeaseExpiring(GatewayError):
    """The partition's lease ends too soon to send: nothing was sent."""

    code = "LEASE"


def lease_refusal(deadline: Callable[[], float], margin: float,
                  clock: Callable[[], float] = time.monotonic) -> Callable[[], str | None]:
    """Why a request must not leave now under the lease ending at ``deadline()`` (None: it
    may), for a client that checks again just before its request leaves (``DhanRest.may_send``)."""

    def refusal() -> str | None:
        if lease_allows_send(deadline(), clock(), margin):
            return None
        return f"the partition's lease ends within {margin:g} s"

    return refusal


class LeasedGateway:
    def __init__(self, inner: OrderGateway, deadline: Callable[[], float], *, margin: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self._deadline, self._margin, self._clock = inner, deadline, margin, clock

    def _check(self, what: str) -> None:
        refused = lease_refusal(self._deadline, self._margin, self._clock)()
        if refused is not None:
            raise LeaseExpiring(f"{what} not sent: {refused}")

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        self._check(f"exit {client_id}")
        return self.inner.place_order(client_id=client_id, instrument=instrument,
                                      txn_type=txn_type, quantity=quantity, product=product)

    def cancel_order(self, order_no: str) -> None:
        self._check(f"cancel of {order_no}")
        self.inner.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        return self.inner.find_order(client_id)

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self.inner.subscribe(sink)


class LeasedChasingGateway(LeasedGateway):
    """The same around a gateway whose exits rest and are chased (DhanHQ)."""

    def __init__(self, inner: OrderGateway, deadline: Callable[[], float], *, margin: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(inner, ChasingGateway):
            raise TypeError("a LeasedChasingGateway wraps a ChasingGateway")
        super().__init__(inner, deadline, margin=margin, clock=clock)
        self.chaser = inner
        self.chase_after_seconds = inner.chase_after_seconds

    def chase(self, order_no: str) -> Decimal | None:
        self._check(f"chase of {order_no}")
        return self.chaser.chase(order_no)

    def modifications_left(self, order_no: str) -> int:
        return self.chaser.modifications_left(order_no)

    def forget(self, order_no: str) -> None:
        self.chaser.forget(order_no)


def leased(inner: OrderGateway, deadline: Callable[[], float], *, margin: float,
           clock: Callable[[], float] = time.monotonic) -> LeasedGateway:
    """``inner`` guarded by the lease; a chasing gateway stays one."""
    if isinstance(inner, ChasingGateway):
        return LeasedChasingGateway(inner, deadline, margin=margin, clock=clock)
    return LeasedGateway(inner, deadline, margin=margin, clock=clock)
