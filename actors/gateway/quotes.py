"""QuoteActor: the quote API's round trips, on a thread of their own (SPEC §4.3, §10).

The batcher decides what to ask and when (staleness, the one-call-per-second limit, batch or
single calls, its breaker); this actor makes the call and answers with ``QuotesFetched``, so the
batcher, and the prices it flushes every 50 ms, never wait on the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.protocol import Snapshot
from actors.runtime.dispatch import SingletonActor
from broker.ports import GatewayError, QuoteApi, QuoteThrottled
from models.common import Instrument, Segment


@dataclass(frozen=True, slots=True)
class FetchQuotes:
    """Batcher → quote actor: one request, for ``chunk``, asked at ``at``."""

    chunk: tuple[Instrument, ...]
    request: dict[Segment, list[int]]
    at: datetime


@dataclass(frozen=True, slots=True)
class QuotesFetched:
    """Quote actor → batcher: the answer to a ``FetchQuotes`` (``failure`` is None when it
    succeeded; ``throttled`` tells a 429 from another failure)."""

    chunk: tuple[Instrument, ...]
    at: datetime
    prices: dict[Instrument, Decimal]
    failure: str | None = None
    throttled: bool = False


class QuoteActor(SingletonActor):
    trace_kind = "quotes"

    def __init__(self, quotes: QuoteApi, reply_to: ActorRef[Any]) -> None:
        super().__init__()
        self.quotes, self.reply_to = quotes, reply_to

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, FetchQuotes):
            self.reply_to.tell(self._fetch(message))
        elif not isinstance(message, Snapshot):  # a Snapshot: an edge settling, nothing to do
            logger.warning("quote actor ignores {}", type(message).__name__)
        return None

    def _fetch(self, message: FetchQuotes) -> QuotesFetched:
        try:
            prices = self.quotes.ltp(message.request)
        except QuoteThrottled as error:
            return QuotesFetched(message.chunk, message.at, {}, str(error), throttled=True)
        except GatewayError as error:
            return QuotesFetched(message.chunk, message.at, {}, str(error))
        except Exception as error:  # an unexpected failure is a failed call, never a dead actor
            logger.opt(exception=error).error("quote call failed")
            return QuotesFetched(message.chunk, message.at, {}, f"{type(error).__name__}: {error}")
        return QuotesFetched(message.chunk, message.at, prices)
