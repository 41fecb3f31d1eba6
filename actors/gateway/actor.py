"""GatewayActor: every broker call of the exit path, on a thread of its own (SPEC §10).

The supervisor never waits on the network: it tells this actor ``PlaceExitOrder``,
``LookUpExitOrder`` and ``CancelExitOrder``, and the answers come back as messages to the
supervisor, which hands them to the position's owner. Every outcome of a placement is
classified: placed (``ExitOrderPlaced``), refused for sure (``GatewayError``:
``ExitOrderFailed``, retried with back-off), or unknown (any other failure: ``ExitOrderUnknown``,
resolved by a look-up, never placed again blindly).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.protocol import Snapshot
from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from broker.ports import GatewayError, OrderGateway
from models.messages import (
    CancelExitOrder,
    ExitOrderFailed,
    ExitOrderLookedUp,
    ExitOrderPlaced,
    ExitOrderUnknown,
    LookUpExitOrder,
    Message,
    PlaceExitOrder,
)


class GatewayActor(SingletonActor):
    trace_kind = "gateway"

    def __init__(self, gateway: OrderGateway, clock: Callable[[], datetime], metrics: Metrics,
                 reply_to: ActorRef[Any]) -> None:
        super().__init__()
        self.gateway, self.clock, self.metrics, self.reply_to = gateway, clock, metrics, reply_to

    def on_receive(self, message: Any) -> Any:
        match message:
            case PlaceExitOrder():
                self._reply(self._place(message))
            case LookUpExitOrder():
                self._reply(self._look_up(message))
            case CancelExitOrder():
                self._cancel(message)
            case Snapshot():
                return None  # an edge waiting for what was told before it (settle)
            case _:
                logger.warning("gateway ignores {}", type(message).__name__)
        return None

    def _reply(self, message: Message) -> None:
        self.reply_to.tell(message)

    def _place(self, message: PlaceExitOrder) -> Message:
        ids = message.caused()
        log = logger.bind(position_id=message.position_id)
        try:
            order_no = self.gateway.place_order(
                client_id=message.client_id, instrument=message.instrument,
                txn_type=message.txn_type, quantity=message.quantity, product=message.product)
        except GatewayError as error:
            self.metrics.incr("gateway_rejections")
            log.warning("exit order {} refused: {}", message.client_id, error)
            return ExitOrderFailed(position_id=message.position_id, attempt=message.attempt,
                                   client_id=message.client_id, reason=str(error),
                                   sent_at=self.clock(), **ids)
        except Exception as error:  # no answer proves the outcome: look it up, never re-send
            self.metrics.incr("gateway_unknown_outcomes")
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
