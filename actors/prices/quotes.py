"""QuoteActor: the quote API's round trips, on a thread of their own (SPEC §4.3, §10).

The batcher decides what to ask and when (staleness, one call per ``min_interval_seconds``
counted from the previous answer, batch or single calls, its breaker); this actor makes the
call and answers with ``QuotesFetched``, so the batcher, and the prices it flushes every 50 ms,
never wait on the network (a live call takes 100-500 ms). Every outcome is an answer, a failure
included: the batcher makes no next call before it has one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.protocol import Snapshot
from actors.runtime.dispatch import SingletonActor
from broker.ports import GatewayError, QuoteApi, QuoteThrottled
from models.common import Instrument, Segment
from models.messages import FetchQuotes, QuotesFetched


class QuoteActor(SingletonActor):
    trace_kind = "quotes"

    def __init__(self, quotes: QuoteApi, clock: Callable[[], datetime],
                 reply_to: ActorRef[Any]) -> None:
        super().__init__()
        self.quotes, self.clock, self.reply_to = quotes, clock, reply_to

    def on_receive(self, message: Any) -> Any:
        match message:
            case FetchQuotes():
                answer = self._fetch(message)
                try:
                    self.reply_to.tell(answer)
                except ActorDeadError:  # the batcher stopped while the call was out
                    logger.debug("quote answer for {} instruments not delivered: batcher "
                                 "stopped", len(answer.instruments))
            case Snapshot():
                return None  # an edge waiting for what was told before it (settle)
            case _:
                logger.warning("quote actor ignores {}", type(message).__name__)
        return None

    def _fetch(self, message: FetchQuotes) -> QuotesFetched:
        request: dict[Segment, list[int]] = {}
        for instrument in message.instruments:
            request.setdefault(instrument.segment, []).append(int(instrument.security_id))
        prices: dict[Instrument, Decimal] = {}
        failure: str | None = None
        throttled = False
        try:
            prices = self.quotes.ltp(request)
        except QuoteThrottled as error:
            failure, throttled = str(error), True
        except GatewayError as error:
            failure = str(error)
        except Exception as error:  # a broken adapter is a failed call, never a lost answer
            failure = f"{type(error).__name__}: {error}"
            # No traceback: its frames' values (loguru's diagnose) could show the token.
            logger.error("quote call failed unexpectedly: {}", failure)
        return QuotesFetched(instruments=message.instruments, prices=tuple(prices.items()),
                             asked_at=message.sent_at, failure=failure, throttled=throttled,
                             sent_at=self.clock(), **message.caused())
