"""GatewayActor: every broker call of the exit path, on a thread of its own (SPEC §10).

The supervisor never waits on the network: it tells this actor ``PlaceExitOrder``,
``LookUpExitOrder`` and ``CancelExitOrder``, and the answers come back as messages to the
supervisor, which hands them to the position's owner. Every outcome of a placement is
classified: placed (``ExitOrderPlaced``), refused for sure (``GatewayError``:
``ExitOrderFailed``, retried with back-off), or unknown (any other failure: ``ExitOrderUnknown``,
resolved by a look-up, never placed again blindly).

A gateway whose exits are LIMIT orders (``ChasingGateway``: DhanHQ) has its resting exits
chased: at each timer past ``chase_after_seconds`` since the placement or the last
modification, the order is re-priced toward the market (``ExitOrderChased`` tells the
supervisor, so every step is traced); after the last allowed modification it is left to the
keeper's time-out, which looks it up, cancels it and places a new attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.protocol import Snapshot
from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from broker.ports import ChasingGateway, GatewayError, OrderGateway
from models.common import Instrument
from models.messages import (
    CancelExitOrder,
    ExitOrderChased,
    ExitOrderFailed,
    ExitOrderLookedUp,
    ExitOrderPlaced,
    ExitOrderUnknown,
    ExitRequested,
    ExitSettled,
    LookUpExitOrder,
    Message,
    PlaceExitOrder,
    TimerFired,
)


@dataclass
class _Chase:
    order_no: str
    attempt: int
    since: datetime
    """The placement or the last modification."""
    modifications: int = 0
    ids: dict[str, Any] = field(default_factory=dict)
    """The placement's correlation and causation: a chase belongs to the same causal tree."""


class GatewayActor(SingletonActor):
    trace_kind = "gateway"

    def __init__(self, gateway: OrderGateway, clock: Callable[[], datetime], metrics: Metrics,
                 reply_to: ActorRef[Any]) -> None:
        super().__init__()
        self.gateway, self.clock, self.metrics, self.reply_to = gateway, clock, metrics, reply_to
        self.chaser = gateway if isinstance(gateway, ChasingGateway) else None
        self._chasing: dict[str, _Chase] = {}
        """Position id → its resting exit order (chasing gateways only)."""

    def on_receive(self, message: Any) -> Any:
        match message:
            case PlaceExitOrder():
                answer = self._place(message)
                if isinstance(answer, ExitOrderPlaced) and self.chaser is not None:
                    self._chasing[message.position_id] = _Chase(
                        answer.order_no, message.attempt, self.clock(), ids=answer.caused())
                self._reply(answer)
            case LookUpExitOrder():
                self._reply(self._look_up(message))
            case CancelExitOrder():
                self._stop_chasing(message.position_id, message.order_no)
                self._cancel(message)
            case TimerFired():
                self._chase()
            case ExitSettled():
                self._stop_chasing(message.position_id)
            case Snapshot():
                return None  # an edge waiting for what was told before it (settle)
            case _:
                logger.warning("gateway ignores {}", type(message).__name__)
        return None

    def _chase(self) -> None:
        chaser = self.chaser
        if chaser is None or not self._chasing:
            return
        now = self.clock()
        after = timedelta(seconds=chaser.chase_after_seconds)
        for position_id, chase in list(self._chasing.items()):
            if now - chase.since < after:
                continue
            log = logger.bind(position_id=position_id)
            try:
                price = chaser.chase(chase.order_no)
            except Exception as error:  # finished meanwhile, most likely: its update says
                log.warning("chasing exit order {} failed: {}", chase.order_no, error)
                self._stop_chasing(position_id)
                continue
            chase.since = now
            if price is not None:
                self.metrics.incr("exit_chases")
                chase.modifications += 1
                self._reply(ExitOrderChased(
                    position_id=position_id, attempt=chase.attempt, order_no=chase.order_no,
                    price=price, modification=chase.modifications, sent_at=now,
                    **chase.ids))
            if chaser.modifications_left(chase.order_no) <= 0:
                log.warning("exit order {} still rests after its last modification: left to "
                            "the time-out (look-up, cancel, a new attempt)", chase.order_no)
                del self._chasing[position_id]

    def _stop_chasing(self, position_id: str, order_no: str | None = None) -> None:
        chase = self._chasing.get(position_id)
        if chase is None or (order_no is not None and chase.order_no != order_no):
            return
        del self._chasing[position_id]
        if self.chaser is not None:
            self.chaser.forget(chase.order_no)

    def _reply(self, message: Message) -> None:
        self.reply_to.tell(message)

    def _place(self, message: PlaceExitOrder) -> Message:
        ids = message.caused()
        log = logger.bind(position_id=message.position_id)
        self.metrics.observe("decision_to_order_seconds", (
            self.clock() - (message.decided_at or message.sent_at)).total_seconds())
        try:
            order_no = self.gateway.place_order(
                client_id=message.client_id, instrument=message.instrument,
                txn_type=message.txn_type, quantity=message.quantity, product=message.product)
        except GatewayError as error:
            if _code(error) == "SHADOW":  # --shadow: decided, recorded, not placed
                self.metrics.incr("shadow_exits")
                return ExitOrderFailed(position_id=message.position_id, attempt=message.attempt,
                                       client_id=message.client_id, reason=str(error),
                                       sent_at=self.clock(), **ids)
            self.metrics.incr("gateway_rejections")
            self.metrics.incr(f"gateway_errors.{_code(error)}")
            log.warning("exit order {} refused: {}", message.client_id, error)
            return ExitOrderFailed(position_id=message.position_id, attempt=message.attempt,
                                   client_id=message.client_id, reason=str(error),
                                   sent_at=self.clock(), **ids)
        except Exception as error:  # no answer proves the outcome: look it up, never re-send
            self.metrics.incr("gateway_unknown_outcomes")
            self.metrics.incr(f"gateway_errors.{_code(error)}")
            log.opt(exception=error).error("exit order {}: outcome unknown ({}: {}); it will "
                                           "be looked up", message.client_id,
                                           type(error).__name__, error)
            return ExitOrderUnknown(position_id=message.position_id, attempt=message.attempt,
                                    client_id=message.client_id,
                                    reason=f"{type(error).__name__}: {error}",
                                    sent_at=self.clock(), **ids)
        return ExitOrderPlaced(position_id=message.position_id, attempt=message.attempt,
                               client_id=message.client_id, order_no=order_no,
                               sent_at=self.clock(), **ids)

    def _look_up(self, message: LookUpExitOrder) -> Message:
        ids = message.caused()
        base = {"position_id": message.position_id, "attempt": message.attempt,
                "client_id": message.client_id, "sent_at": self.clock(), **ids}
        try:
            view = self.gateway.find_order(message.client_id)
        except Exception as error:  # tried again at the keeper's next time-out
            logger.bind(position_id=message.position_id).warning(
                "look-up of exit {} failed: {}", message.client_id, error)
            return ExitOrderLookedUp(**base, error=f"{type(error).__name__}: {error}")
        if view is None:
            return ExitOrderLookedUp(**base)
        return ExitOrderLookedUp(**base, found=True, order_no=view.order_no, status=view.status,
                                 quantity=view.quantity, traded_qty=view.traded_qty,
                                 avg_price=view.avg_price)

    def _cancel(self, message: CancelExitOrder) -> None:
        try:
            self.gateway.cancel_order(message.order_no)
        except Exception as error:  # finished meanwhile, or the broker refused: the book says
            logger.bind(position_id=message.position_id).warning(
                "cancel of exit order {} failed: {}", message.order_no, error)


def exit_order(message: ExitRequested, now: datetime) -> PlaceExitOrder:
    """The order an exit request asks a gateway actor to place (told by the tracker that
    decided it, or by the supervisor for a position it keeps)."""
    position = message.position
    return PlaceExitOrder(
        client_id=message.client_id, position_id=position.position_id,
        attempt=message.attempt,
        instrument=Instrument(segment=position.segment, security_id=position.security_id),
        txn_type=position.side.exit_txn, quantity=position.quantity,
        product=position.product, sent_at=now, decided_at=message.sent_at,
        **message.caused())


def _code(error: BaseException) -> str:
    """The broker's error code when the error carries one, else the error's kind (the label
    of the console's ``tracker_gateway_errors_total``)."""
    return str(getattr(error, "code", None) or type(error).__name__)
