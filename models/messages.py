"""Messages between actors: commands are imperative, events past tense (SPEC §2).

Every message carries a ``message_id``, the ``correlation_id`` of the outside event that started
the chain (an order update, a price batch, a timer, an operator command), the ``causation_id`` of
the message being handled when it was sent, and ``sent_at`` (our clock). Exchange times travel in
the payload (``PriceMark.at``, ``OrderUpdate.updated_at``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from pydantic import Field

from models.common import AwareDatetime, Frozen, Instrument, TxnType
from models.orders import OrderProgress, OrderStatus, OrderUpdate
from models.position import ExitReason, OrderRole, Position
from models.rules import ExitDecision, PriceMark

_PREFIX = os.urandom(3).hex()
_COUNTER = itertools.count(1)


def new_id() -> str:
    """Unique within a process run and cheap: a random prefix and a counter."""
    return f"{_PREFIX}-{next(_COUNTER)}"


class Message(Frozen):
    message_id: str = Field(default_factory=new_id)
    correlation_id: str
    causation_id: str | None = None
    sent_at: AwareDatetime

    def caused(self) -> dict[str, str]:
        """Ids for a message sent while handling this one."""
        return {"correlation_id": self.correlation_id, "causation_id": self.message_id}


# Inputs from the outside ----------------------------------------------------------------------
class OrderUpdateReceived(Message):
    """A raw broker frame, exactly as received: parsed once, by OrderUpdateActor."""

    raw: str
    source: str = "broker"


class Cause(Protocol):
    """What a message sent while handling another needs of it: any message here, pydantic
    model or dataclass."""

    @property
    def correlation_id(self) -> str: ...

    @property
    def message_id(self) -> str: ...

    @property
    def causation_id(self) -> str | None: ...

    def caused(self) -> dict[str, str]: ...


class _Caused:
    """``Message.caused`` for the dataclass messages of the price path."""

    __slots__ = ()
    correlation_id: str
    message_id: str

    def caused(self) -> dict[str, str]:
        return {"correlation_id": self.correlation_id, "causation_id": self.message_id}


@dataclass(frozen=True, slots=True)
class PriceTick(_Caused):
    """A pushed price, feed → batcher. A frozen dataclass, as are ``PriceBatch`` and
    ``PriceUpdate``: the price path makes one per tick, per flush and per instrument told, and
    each is built from values already checked (the ``PriceMark`` checks itself)."""

    instrument: Instrument
    mark: PriceMark
    correlation_id: str
    sent_at: datetime
    causation_id: str | None = None
    message_id: str = field(default_factory=new_id)


class TimerFired(Message):
    """The clock, as a message: timers drive time rules without waiting for a tick."""

    name: str


# Order flow -------------------------------------------------------------------------------------
class ApplyOrderUpdate(Message):
    position_id: str
    update: OrderUpdate
    role: OrderRole
    attempt: int | None = None


class ApplyProgress(Message):
    """A position's share of an untracked opposite order (allocated by OrderUpdateActor)."""

    position_id: str
    progress: OrderProgress
    role: OrderRole
    excess: bool = False
    """``progress`` is how far another position's exit order went past its open quantity, as
    it stands now: the over-fill's remainder is fitted to it (``lifecycle.fit_remainder``;
    it may give some back), not joined with it."""


class Overfilled(Message):
    """Tracker → order-update actor: exit fills went past what was open; the excess (cumulative,
    of ``progress.order_no``) is opposite exposure that a position of its own must track. Told
    again when it shrinks (the entry grew since), down to nothing."""

    position_id: str
    position: Position
    progress: OrderProgress


class CreatePosition(Message):
    """Start tracking a new position for an entry order, then apply its first update."""

    position: Position
    update: OrderUpdate | None = None


# Prices -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PriceBatch(_Caused):
    prices: tuple[tuple[Instrument, PriceMark], ...]
    correlation_id: str
    sent_at: datetime
    causation_id: str | None = None
    message_id: str = field(default_factory=new_id)
    ahead: bool = False
    """An urgent flush's batch, counted as urgent work ahead of the trackers
    (``Dispatcher.urgent_ahead``) from the batcher's tell until the index has told its
    possible exits (``urgent_arrived``)."""


@dataclass(frozen=True, slots=True)
class PriceUpdate(_Caused):
    instrument: Instrument
    mark: PriceMark
    sent_at: datetime
    correlation_id: str
    causation_id: str | None = None
    urgent: bool = False
    """The price crossed the receiver's band (it may fire a rule): handled ahead of others."""
    message_id: str = field(default_factory=new_id)


class QuoteRequested(Message):
    """A tracker saw a stale price: ask the batcher for a fresh quote at once."""

    instrument: Instrument


@dataclass(frozen=True, slots=True)
class FetchQuotes(_Caused):
    """Batcher → quote actor: make one quote API call for ``instruments`` (integer ids, at most
    ``QuoteApi.max_instruments``). ``sent_at`` is when the batcher decided it."""

    instruments: tuple[Instrument, ...]
    correlation_id: str
    sent_at: datetime
    causation_id: str | None = None
    message_id: str = field(default_factory=new_id)


@dataclass(frozen=True, slots=True)
class QuotesFetched(_Caused):
    """Quote actor → batcher: the answer to one ``FetchQuotes``. ``sent_at`` is when the
    answer came (the quote actor's clock after the call returned): the next call is counted
    from it. ``failure`` is None when the call succeeded; ``throttled`` tells a 429 apart."""

    instruments: tuple[Instrument, ...]
    prices: tuple[tuple[Instrument, Decimal], ...]
    asked_at: datetime
    correlation_id: str
    sent_at: datetime
    failure: str | None = None
    throttled: bool = False
    causation_id: str | None = None
    message_id: str = field(default_factory=new_id)


# Position events --------------------------------------------------------------------------------
class PositionOpened(Message):
    position: Position


class PositionChanged(Message):
    position: Position


class PositionClosed(Message):
    position: Position


@dataclass(frozen=True, slots=True)
class PnLMarked:
    """A tracker's latest valuation, for the PnL cache and the kill switch.

    A frozen dataclass rather than a pydantic model: one is sent per price per position, the
    most frequent message of all, and it is built from values the tracker already validated.
    """

    position_id: str
    ltp: Decimal
    pnl: Decimal
    pnl_pct: Decimal
    hwm_pnl: Decimal
    peak_price: Decimal | None
    realized: Decimal
    sent_at: datetime
    correlation_id: str
    causation_id: str | None = None
    message_id: str = field(default_factory=new_id)
    trail_stop: Decimal | None = None
    """The trailing stop in force (None: not armed), so a trace shows when it armed and moved."""


# Exits ------------------------------------------------------------------------------------------
class ExitRequested(Message):
    position: Position
    decision: ExitDecision
    attempt: int
    client_id: str
    placed: bool = False
    """The tracker told the position's gateway actor the order itself (after storing the
    intent): the supervisor only hears of it and must not place it again."""


class RequestExit(Message):
    """A command to a tracker: exit now for ``reason`` (operator, kill switch, timers)."""

    position_id: str | None = None
    """None: every open position (the kill switch, a square-off of everything)."""
    reason: ExitReason
    detail: str = ""


class PlaceExitOrder(Message):
    client_id: str
    position_id: str
    attempt: int
    instrument: Instrument
    txn_type: TxnType
    quantity: int = Field(gt=0)
    product: str | None = None
    decided_at: AwareDatetime | None = None
    """When the exit was decided (the console's decision→order histogram)."""


class ExitOrderPlaced(Message):
    position_id: str
    attempt: int
    client_id: str
    order_no: str


class ExitOrderFailed(Message):
    """The broker did not take the exit order (a definitive rejection): retried with back-off."""

    position_id: str
    attempt: int
    client_id: str
    reason: str


class ExitOrderUnknown(Message):
    """No answer proves whether the exit order was taken (a time-out, a reset, an unexpected
    error): never placed again blindly; resolved by looking the client id up."""

    position_id: str
    attempt: int
    client_id: str
    reason: str


class LookUpExitOrder(Message):
    """Tracker → gateway (through the supervisor): how does the broker's book show this exit?"""

    position_id: str
    attempt: int
    client_id: str


class ExitOrderLookedUp(Message):
    """The gateway's answer to ``LookUpExitOrder``: ``found`` is False when the broker knows no
    order for the client id; ``error`` is set when the look-up itself failed."""

    position_id: str
    attempt: int
    client_id: str
    found: bool = False
    order_no: str | None = None
    status: OrderStatus | None = None
    quantity: int = 0
    traded_qty: int = 0
    avg_price: Decimal | None = None
    error: str | None = None


class ExitOrderChased(Message):
    """Gateway → supervisor: a resting exit order was re-priced toward the market (SPEC §10
    "Exit orders"); traced and counted, nothing to decide."""

    position_id: str
    attempt: int
    order_no: str
    price: Decimal
    modification: int


class ExitSettled(Message):
    """Supervisor → the position's gateway actor: the position's exit has ended (closed, or
    back to ACTIVE): stop chasing its order."""

    position_id: str


class CancelExitOrder(Message):
    """Tracker → gateway: cancel the exit order (it rests unfilled past its time-out, or the
    position went flat at the broker meanwhile)."""

    position_id: str
    order_no: str
