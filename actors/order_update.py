"""OrderUpdateActor: the only entry for broker order updates (SPEC §2, §3.2, §4.1).

Every raw frame is stored as received, parsed once, de-duplicated, and routed to the position
that owns the order: its entry order, one of its exit orders (known by the deterministic client
id in ``CorrelationId`` even before the broker's order number is), or an untracked order whose
fill reduces opposite positions and whose remainder opens a new one. An update for an unknown
order without a fill is parked (persisted) until the order becomes known; the actor knows which
orders have updates parked (those of an earlier run are read at start-up), so a new position
costs a store query only when something waits for it. Frames that queue up are stored in one
transaction before they are routed (``frame_batch.py``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.dispatch import SingletonActor
from actors.frame_batch import BatchesFrames
from actors.metrics import Metrics
from actors.protocol import KnownPosition
from models.allocation import Allocation, Share, allocate, share_progress
from models.common import parse_exit_client_id, position_id_for
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    CreatePosition,
    Message,
    OrderUpdateReceived,
    PositionChanged,
    PositionClosed,
    PositionOpened,
)
from models.orders import OrderProgress, OrderUpdate
from models.position import OPEN, OrderRole, Position, new_position
from models.wire import Rejection, parse_order_update
from store.ports import FrameBatches, Store, StoreError
from store.records import ReceivedFrame

Owner = tuple[str, OrderRole, int | None]


class OrderUpdateActor(SingletonActor, BatchesFrames):
    trace_kind = "orders"

    def __init__(self, store: Store, supervisor: ActorRef[Any] | None,
                 clock: Callable[[], datetime], metrics: Metrics, *,
                 correlation_prefix: str | None = None, dedup_window: int = 100_000,
                 park_limit: int = 10_000) -> None:
        super().__init__()
        self.store, self.supervisor, self.clock, self.metrics = store, supervisor, clock, metrics
        self.batches = store if isinstance(store, FrameBatches) else None
        self.prefix = correlation_prefix
        self.owners: dict[str, Owner] = {}
        self.positions: dict[str, Position] = {}
        self.by_instrument: dict[tuple[object, ...], dict[str, Position]] = {}
        """Open positions per (segment, security id, product): the candidates to reduce."""
        self.allocated: dict[str, dict[str, int]] = {}
        """position → untracked order → quantity of that order allocated to the position."""
        self.allocations: dict[str, Allocation] = {}
        self.seen: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self.dedup_window, self.park_limit = dedup_window, park_limit
        self.parked = 0
        self.parked_for: Counter[str] = Counter()
        """order number → updates parked for it (in the store) and not yet taken back."""

    # Start-up and position events -------------------------------------------------------------
    def load(self, positions: list[Position]) -> None:
        """Learn every stored position's orders (call before the first update)."""
        self._rebuild_allocations(positions)
        for position in positions:
            self._learn(position)
        parked = self.store.parked_updates()
        self.parked_for = Counter(item.order_no for item in parked)
        self.parked = len(parked)

    def set_supervisor(self, supervisor: ActorRef[Any]) -> None:
        self.supervisor = supervisor

    def _learn(self, position: Position) -> None:
        pid = position.position_id
        self._put(position)
        for order in position.orders:
            number = order.progress.order_no
            if order.role is not OrderRole.OPPOSITE and number not in self.allocations:
                self.owners[number] = (pid, order.role, order.attempt)

    def _rebuild_allocations(self, positions: list[Position]) -> None:
        """An order split between positions is an untracked order: rebuild how it was split."""
        split = {o.progress.order_no for p in positions for o in p.orders
                 if o.role is OrderRole.OPPOSITE}
        for number in split:
            shares, opened, seen = [], None, OrderProgress.empty(number)
            qty, value = 0, Decimal(0)
            for position in positions:
                order = position.order(number)
                if order is None:
                    continue
                qty += order.progress.traded_qty
                value += order.progress.traded_value
                seen = seen.join(order.progress.model_copy(update={"traded_qty": 0,
                                                                   "traded_value": Decimal(0)}))
                if order.role is OrderRole.ENTRY:
                    opened = position.position_id
                else:
                    shares.append(Share(position_id=position.position_id,
                                        qty=order.progress.traded_qty,
                                        value=order.progress.traded_value))
            seen = seen.model_copy(update={"traded_qty": qty, "traded_value": value})
            self.allocations[number] = Allocation(order_no=number, seen=seen,
                                                  shares=tuple(shares), opened=opened)
            for share in shares:
                self.allocated.setdefault(share.position_id, {})[number] = share.qty

    def on_receive(self, message: Any) -> Any:
        match message:
            case OrderUpdateReceived():
                self.hold(message)
            case PositionOpened() | PositionChanged() | PositionClosed() | KnownPosition():
                self._position_event(message.position)
            case _:
                logger.warning("order update actor ignores {}", type(message).__name__)
        return None

    def _put(self, position: Position) -> None:
        key = (position.segment, position.security_id, position.product)
        if position.status in OPEN:
            self.positions[position.position_id] = position
            self.by_instrument.setdefault(key, {})[position.position_id] = position
        else:
            self.positions.pop(position.position_id, None)
            self.by_instrument.get(key, {}).pop(position.position_id, None)

    def _position_event(self, position: Position) -> None:
        known = position.position_id in self.positions
        self._learn(position)
        if not known:
            self._unpark(position.entry_order_no)

    # Updates ----------------------------------------------------------------------------------
    def handle_frames(self, frames: list[OrderUpdateReceived]) -> None:
        """Store every frame as received, durably, then route it (after all of a batch)."""
        parsed = [parse_order_update(frame.raw) for frame in frames]
        now = self.clock()
        rows = [ReceivedFrame(raw=frame.raw, received_at=now, order_no=update.order_no,
                              accepted=isinstance(update, OrderUpdate),
                              reason=update.reason if isinstance(update, Rejection) else None)
                for frame, update in zip(frames, parsed, strict=True)]
        batched = self._record_batch(rows)
        for frame, update, row in zip(frames, parsed, rows, strict=True):
            if not batched:
                self.store.record_order_update(row.raw, row.received_at, order_no=row.order_no,
                                               accepted=row.accepted, reason=row.reason)
            self._accept(frame, update)

    def _record_batch(self, rows: list[ReceivedFrame]) -> bool:
        """One transaction for the frames. False for a single frame, a store that cannot, or
        a batch that failed: then each frame is stored and routed in turn, as if it came alone,
        so a frame the store refuses does not take the others down with it."""
        if len(rows) < 2 or self.batches is None:
            return False
        try:
            self.batches.record_order_updates(rows)
        except StoreError as error:
            logger.warning("{} order-update frames not stored as a batch ({}); one by one",
                           len(rows), error)
            return False
        return True

    def _accept(self, frame: OrderUpdateReceived, update: OrderUpdate | Rejection) -> None:
        if isinstance(update, Rejection):
            self.metrics.incr("rejected_updates")
            logger.bind(order_no=update.order_no).warning(
                "order update rejected: {} (raw stored: {:.300})", update.reason, frame.raw)
            return
        key = update.dedup_key()
        if key in self.seen:
            return
        self.seen[key] = None
        if len(self.seen) > self.dedup_window:
            self.seen.popitem(last=False)
        self._route(update, frame, raw=frame.raw)

    def _route(self, update: OrderUpdate, cause: Message, *, raw: str) -> None:
        exit_id = parse_exit_client_id(update.correlation_id)
        if exit_id is not None and update.order_no not in self.owners:
            self.owners[update.order_no] = (exit_id[0], OrderRole.EXIT, exit_id[1])
        owner = self.owners.get(update.order_no)
        if owner is not None:
            pid, role, attempt = owner
            self._tell(ApplyOrderUpdate(position_id=pid, update=update, role=role,
                                        attempt=attempt, sent_at=self.clock(), **cause.caused()))
        elif update.order_no in self.allocations or self._fill_of_untracked(update):
            self._untracked(update, cause)
        else:
            self._park(update, raw)

    def _fill_of_untracked(self, update: OrderUpdate) -> bool:
        if update.traded_qty <= 0 or update.txn_type is None or update.segment is None \
                or update.security_id is None or not update.segment.tradable:
            return False
        return self.prefix is None or (update.correlation_id or "").startswith(self.prefix)

    def _park(self, update: OrderUpdate, raw: str) -> None:
        self.store.park_update(update.order_no, raw, self.clock())
        self.parked_for[update.order_no] += 1
        self.parked += 1
        if self.parked > self.park_limit:
            logger.error("{} order updates parked for unknown orders (limit {})", self.parked,
                         self.park_limit)

    def _unpark(self, order_no: str) -> None:
        if order_no not in self.parked_for:
            return
        parked = self.store.take_parked(order_no)
        del self.parked_for[order_no]
        self.parked = max(0, self.parked - len(parked))
        for item in parked:
            update = parse_order_update(item.raw)
            if isinstance(update, OrderUpdate):
                cause = OrderUpdateReceived(raw=item.raw, correlation_id=f"parked-{order_no}",
                                            sent_at=self.clock(), source="parked")
                self._route(update, cause, raw=item.raw)

    # Untracked orders -------------------------------------------------------------------------
    def _untracked(self, update: OrderUpdate, cause: Message) -> None:
        assert update.txn_type is not None
        allocation = self.allocations.get(update.order_no) or Allocation(
            order_no=update.order_no, seen=OrderProgress.empty(update.order_no))
        progress = allocation.seen.merge(update)
        remaining = [] if allocation.opened else self._opposites(update)
        allocation, left_qty, _ = allocate(allocation, progress, remaining)
        for share in allocation.shares:
            self._tell(ApplyProgress(position_id=share.position_id,
                                     progress=share_progress(allocation, share),
                                     role=OrderRole.OPPOSITE, sent_at=self.clock(),
                                     **cause.caused()))
        opened_now = left_qty > 0 and allocation.opened is None
        if opened_now:
            allocation = self._open(update, allocation, cause)
        if allocation.opened is not None:
            self._tell(ApplyProgress(position_id=allocation.opened,
                                     progress=_entry_progress(allocation), role=OrderRole.ENTRY,
                                     sent_at=self.clock(), **cause.caused()))
        self.allocations[update.order_no] = allocation
        for share in allocation.shares:
            self.allocated.setdefault(share.position_id, {})[update.order_no] = share.qty
        if opened_now:
            self._unpark(update.order_no)  # earlier updates of this order: now it is known

    def _opposites(self, update: OrderUpdate) -> list[tuple[str, int]]:
        assert update.txn_type is not None
        side = update.txn_type.opens
        key = (update.segment, update.security_id, update.product)
        candidates = sorted((p for p in self.by_instrument.get(key, {}).values()
                             if p.side is not side),
                            key=lambda p: (p.created_at, p.position_id))
        return [(p.position_id, self._open_qty(p, update.order_no)) for p in candidates]

    def _open_qty(self, position: Position, order_no: str) -> int:
        """Open quantity, counting every allocation we made even if not yet announced back."""
        allocated = sum(qty for number, qty in
                        self.allocated.get(position.position_id, {}).items()
                        if number != order_no)
        exited = sum(o.progress.traded_qty for o in position.orders if o.role is OrderRole.EXIT)
        return max(0, position.entry_qty - exited - allocated)

    def _open(self, update: OrderUpdate, allocation: Allocation, cause: Message) -> Allocation:
        assert update.txn_type is not None
        pid = position_id_for(update.order_no)
        position = new_position(update, position_id=pid, side=update.txn_type.opens,
                                created_at=update.updated_at or self.clock())
        self._put(position)
        self._tell(CreatePosition(position=position, sent_at=self.clock(), **cause.caused()))
        logger.bind(position_id=pid).info("new {} position from order {} on {}:{}",
                                          position.side, update.order_no, update.segment,
                                          update.security_id)
        return allocation.model_copy(update={"opened": pid})

    def _tell(self, message: Message) -> None:
        if self.supervisor is not None:
            self.supervisor.tell(message)


def _entry_progress(allocation: Allocation) -> OrderProgress:
    if not allocation.shares:  # the common case, an order that reduced nothing: all of it
        return allocation.seen
    qty = allocation.seen.traded_qty - sum(s.qty for s in allocation.shares)
    value = allocation.seen.traded_value - sum((s.value for s in allocation.shares), Decimal(0))
    return OrderProgress(order_no=allocation.order_no, status=allocation.seen.status,
                         traded_qty=qty, traded_value=value,
                         updated_at=allocation.seen.updated_at)
