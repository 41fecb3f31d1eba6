"""The broker ports actors depend on (SPEC §4.3, §5); the paper broker and the DhanHQ gateway
implement them.

Error tree::

    GatewayError               the broker did not take a request
    ├── QuoteThrottled         429: the quote API's rate limit was hit
    └── QuoteTimeout           no answer in time
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, runtime_checkable

from pydantic import Field

from models.common import Frozen, Instrument, Segment, TxnType
from models.orders import OrderStatus


class GatewayError(Exception):
    """The broker refused or failed a request; ``str()`` is safe to log (no secrets)."""


class QuoteThrottled(GatewayError):
    pass


class QuoteTimeout(GatewayError):
    pass


class QuoteApi(Protocol):
    """DhanHQ ``POST /v2/marketfeed/ltp``: several segments in one request, integer ids."""

    max_instruments: int
    """Instruments allowed in one request over all segments (1,000 for DhanHQ)."""

    min_interval_seconds: float
    """Requests allowed per second, as an interval (1.0 for DhanHQ)."""

    def ltp(self, request: Mapping[Segment, Sequence[int]]) -> dict[Instrument, Decimal]:
        """Last traded prices; instruments the broker does not know are absent.
        Raises ``QuoteThrottled``, ``QuoteTimeout`` or ``GatewayError``."""


class OrderView(Frozen):
    """An order as the broker's book shows it (a look-up by our client id)."""

    order_no: str
    client_id: str
    status: OrderStatus
    quantity: int = Field(ge=0)
    traded_qty: int = Field(default=0, ge=0)
    avg_price: Decimal | None = None


class OrderGateway(Protocol):
    """Placing and cancelling orders. Order updates come back as raw frames to the sink."""

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        """Place a MARKET order tagged with ``client_id`` (sent as its CorrelationId) and return
        the broker's order number. Placing the same ``client_id`` again returns the first
        order's number and places nothing. Raises ``GatewayError`` when refused."""

    def cancel_order(self, order_no: str) -> None:
        """Cancel what has not filled; raises ``GatewayError`` for an unknown or finished
        order."""

    def find_order(self, client_id: str) -> OrderView | None:
        """The order placed with ``client_id`` (our exit client id), or None if the broker
        knows none (SPEC §10: resolving an unknown outcome or an exit that never filled)."""

    def subscribe(self, sink: Callable[[str], None]) -> None:
        """Deliver every order update as the raw text of a DhanHQ websocket frame."""


@runtime_checkable
class ChasingGateway(Protocol):
    """A gateway whose exits are LIMIT orders that may rest: its gateway actor re-prices them
    toward the market ``chase_after_seconds`` after placement and after each modification
    (SPEC §10 "Exit orders"). The paper exchange fills MARKET orders and does not chase."""

    chase_after_seconds: float

    def chase(self, order_no: str) -> Decimal | None:
        """Re-price the exit order toward the market; the new limit, or None when there is
        nothing to do. Raises ``GatewayError`` when the broker refuses (it has finished)."""

    def modifications_left(self, order_no: str) -> int:
        """How many more times the order may be chased (0: it is left to the time-out)."""

    def forget(self, order_no: str) -> None:
        """The order has ended: no more chasing."""
