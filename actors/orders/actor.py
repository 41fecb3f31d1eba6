"""OrderUpdateActor: the only entry for broker order updates (SPEC §2, §3.2, §4.1).

Every raw frame is stored as received, parsed once, de-duplicated, and routed to the position
that owns the order: its entry order, one of its exit orders (known by the deterministic client
id in ``CorrelationId`` even before the broker's order number is), or an untracked order whose
fill reduces opposite positions and whose remainder opens a new one. An update for an unknown
order without a fill is parked (persisted) until the order becomes known; the actor knows which
orders have updates parked (those of an earlier run are read at start-up), so a new position
costs a store query only when something waits for it. Frames that queue up are stored in one
transaction before they are routed (``hold``). At start-up the frames stored since the exchange
day began are routed again (``recover``): one stored just before a kill, never routed, is not
lost, and the others change nothing. Only the frames after the account's mark are read
(``Store.frames_mark``): the frames up to it are applied and their effects stored
(``System.mark_frames``), so a start late in a busy day reads what its last owner left, not the
day.

The actor never stops for the store or for a payload: its store calls go through
``OrderAudit`` (``audit.py``), which keeps in memory what the store does not take and
stores it later, while the updates are routed all the same; an update whose ids hold a NUL is
rejected by the parser; a frame that breaks the routing itself is logged and skipped.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.anomalies import report_anomaly
from actors.orders.audit import OrderAudit, RetryStore
from actors.protocol import KnownPosition
from actors.runtime.dispatch import SingletonActor
from actors.runtime.metrics import Metrics
from models import lifecycle
from models.allocation import (
    Allocation,
    allocate,
    entry_progress,
    rebuilt_allocation,
    share_progress,
)
from models.books import BookKey, BooksReport, compare
from models.closed import PlainClosed
from models.common import Side, TxnType, parse_exit_client_id, position_id_for
from models.lifecycle import fit_remainder
from models.messages import (
    ApplyOrderUpdate,
    ApplyProgress,
    Cause,
    CreatePosition,
    Message,
    OrderUpdateReceived,
    Overfilled,
    PositionChanged,
    PositionClosed,
    PositionOpened,
    TimerFired,
)
from models.orders import OrderProgress, OrderStatus, OrderUpdate, traded_in_full
from models.position import (
    OPEN,
    OrderRole,
    Position,
    TrackedOrder,
    new_position,
    remainders_among,
)
from models.wire import Rejection, parse_order_update
from store.ports import Store
from store.records import ReceivedFrame

Owner = tuple[str, OrderRole, int | None]


@dataclass(frozen=True, slots=True)
class _Booked:
    key: BookKey
    sign: int
    traded: int
    quantity: int = 0
    full: bool = False
    """An update said TRADED without a traded quantity: the whole ``quantity`` traded."""


@dataclass(frozen=True, slots=True)
class FlushFrames:
    """To the order-update actor itself: store and route the frames held for a batch."""


@dataclass(frozen=True, slots=True)
class StoreFrame:
    """Asked of the order-update actor (a runner, SPEC §13): handle ``frames`` now, in order
    and stored in one write, and answer whether they are all stored durably (False: some wait
    in memory for the store, or the partition's lease is lost); the runner acks the updates
    only on True."""

    frames: tuple[OrderUpdateReceived, ...]


class OrderUpdateActor(SingletonActor):
    trace_kind = "orders"
    batch_limit = 64
    """Frames stored in one transaction at most."""

    def __init__(self, store: Store, supervisor: ActorRef[Any] | None,
                 clock: Callable[[], datetime], metrics: Metrics, *,
                 correlation_prefix: str | None = None, dedup_window: int = 100_000,
                 park_limit: int = 10_000, unstored_limit: int = 100_000,
                 retry_every: timedelta = timedelta(seconds=1),
                 gate: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.store, self.supervisor, self.clock, self.metrics = store, supervisor, clock, metrics
        self.gate = gate
        """Called before each message: ``Dispatcher.yield_to_urgent`` (an update waits, at most
        the dispatcher's hold, while possible exits are decided and placed)."""
        self.audit = OrderAudit(store, metrics, clock, limit=unstored_limit,
                                retry_every=retry_every)
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
        self.booked: dict[str, _Booked] = {}
        """Every order's cumulative fill as the broker reported it (``books``)."""
        self.left_out: set[str] = set()
        """Orders whose correlation id the prefix policy does not track as entries: only
        their fills can be left untracked on purpose (``books``)."""
        self.remainders: set[str] = set()
        """Positions opened for over-fills (their entry order is another position's exit)."""
        self._held: list[OrderUpdateReceived] = []
        self._flush_told = False
        self._parked_raws: set[str] | None = None
        """While ``recover`` runs: the raw frames parked in the store already."""
        self.routed_through: int | None = None
        """Every frame stored up to this sequence number was routed (``recover``; None: the
        stored frames were not read: no mark may pass them)."""
        self.route_failed = False
        """A frame failed to route (a bug): no mark is set in this run."""

    @property
    def parked(self) -> int:
        """Updates parked for orders not known yet (in the store or, in an outage, memory)."""
        return self.audit.parked

    @property
    def unstored(self) -> int:
        """Frames waiting in memory to be stored (non-zero only while the store fails)."""
        return self.audit.unstored

    # Start-up and position events -------------------------------------------------------------
    def load(self, positions: list[Position], plain: Sequence[PlainClosed] = ()) -> None:
        """Learn every stored position's orders (call before the first update), and see that
        every over-fill among them has its remainder as it should stand (a kill between the
        write of an over-filled position and its remainder's left it missing or unfitted).
        ``plain``: plain closed positions (``models.closed``) none of whose orders another
        position holds (``entangled``): each gives its orders' owner and what they booked,
        as ``_learn`` does, and has no part in remainders or split orders."""
        self._rebuild_allocations(positions)
        self.remainders = remainders_among(positions)
        # A remainder's entry order is the other position's exit order, which owns it.
        for position in sorted(positions, key=lambda p: p.position_id in self.remainders):
            self._learn(position)
        for one in plain:
            self._learn_plain(one)
        self._book_allocations(positions)
        self.audit.load_parked()
        self._refit_remainders(positions)

    def recover(self, since: datetime) -> int:
        """Route again the frames stored since ``since`` (the exchange day's start), after
        ``load``: one stored but never routed before the last run died is applied now, before
        exits resume; one already applied changes nothing (a position applies an update once)
        and one already parked is not parked again. A frame of a closed position's order that
        adds no fill is skipped: that position holds it. How many were routed."""
        mark = self._mark()
        try:
            frames = self.store.order_updates(since, after=mark)
            self._parked_raws = {item.raw for item in self.store.parked_updates()}
        except Exception as error:  # the store failed: nothing to go on but the loaded state
            logger.error("frames stored since {} not read again ({}): one stored but never "
                         "routed before the last stop stays unapplied", since, error)
            return 0
        routed = 0
        now = self.clock()
        try:
            for frame in frames:
                update = parse_order_update(frame.raw)
                if not frame.accepted or not isinstance(update, OrderUpdate) or \
                        update.dedup_key() in self.seen or self._holds(update):
                    continue
                self._remember(update)
                self._book(update)
                if self._open_holds(update, now):
                    continue
                cause = OrderUpdateReceived(raw=frame.raw, correlation_id=f"stored-{frame.seq}",
                                            sent_at=self.clock(), source="stored")
                self._route_guarded(update, cause, raw=frame.raw)
                routed += 1
        finally:
            self._parked_raws = None
        self.routed_through = max(mark, frames[-1].seq if frames else 0)
        logger.info("{} of {} frames stored since {}{} routed again", routed, len(frames), since,
                    f" after #{mark} (applied before)" if mark else "")
        return routed

    def _mark(self) -> int:
        """The stored mark through which frames are applied (0: read the whole day)."""
        try:
            return self.store.frames_mark()
        except Exception as error:  # the whole day, as without a mark
            logger.warning("the applied frames' mark not read ({}): every frame of the day is "
                           "read again", error)
            return 0

    def frames_routed(self) -> int | None:
        """The highest sequence number through which every stored frame is routed (the held
        frames went before this call: ``intercept``), for ``System.mark_frames``; None when no
        mark may be set now: the day's stored frames were not read at the start, a frame
        failed to route, or something handed in waits in memory for the store."""
        if self.routed_through is None or self.route_failed or not self.audit.durable:
            return None
        return max(self.routed_through, self.audit.stored_through)

    def _open_holds(self, update: OrderUpdate, now: datetime) -> bool:
        """An open position's order whose update the position, as loaded, holds already
        (``lifecycle.holds``): routing it again would change nothing. After a graceful
        hand-over that is every frame of the day (the last owner applied and stored them all),
        and a start-up routes only what a kill -9 left unapplied."""
        owner = self.owners.get(update.order_no)
        position = self.positions.get(owner[0]) if owner is not None else None
        return position is not None and owner is not None and \
            lifecycle.holds(position, update, owner[1], at=now)

    def _holds(self, update: OrderUpdate) -> bool:
        """A closed position's order whose fill that position already holds in full."""
        owner = self.owners.get(update.order_no)
        booked = self.booked.get(update.order_no)
        return owner is not None and owner[0] not in self.positions and \
            update.traded_qty <= (booked.traded if booked is not None else 0)

    def news(self, updates: list[OrderUpdate]) -> list[bool]:
        """For each update (an order as the broker's order book shows it: a reconcile), whether
        handing it in could change anything. False only when the state here holds all of it
        already: an exact repeat of an update seen; an open position's order whose update the
        position holds (``lifecycle.holds``); a closed position's order whose fill it holds in
        full; a split untracked order whose progress it does not move. Anything else is news
        (handing in an update held already changes nothing, so a doubt costs only its work).
        The positions here may lag their trackers, never lead them: what an older state holds,
        the newer holds too."""
        now = self.clock()
        return [not self._held_already(update, now) for update in updates]

    def _held_already(self, update: OrderUpdate, now: datetime) -> bool:
        if update.dedup_key() in self.seen:
            return True
        owner = self.owners.get(update.order_no)
        if owner is not None:
            return self._holds(update) or self._open_holds(update, now)
        allocation = self.allocations.get(update.order_no)
        return allocation is not None and update.traded_qty > 0 and \
            allocation.seen.merge(update) == allocation.seen

    def set_supervisor(self, supervisor: ActorRef[Any]) -> None:
        self.supervisor = supervisor

    def _learn(self, position: Position) -> None:
        pid = position.position_id
        self._put(position)
        self._book_position(position)
        for order in position.orders:
            number = order.progress.order_no
            owner = self.owners.get(number)
            if order.role not in (OrderRole.OPPOSITE, OrderRole.RETRACTED) and \
                    number not in self.allocations and (
                    owner is None or owner[0] == pid):  # an over-fill's remainder owns nothing
                self.owners[number] = (pid, order.role, order.attempt)

    def _learn_plain(self, position: PlainClosed) -> None:
        """``_learn`` of a plain closed position (closed: not among ``positions``)."""
        pid, side = position.position_id, position.side
        key = (position.segment, position.security_id, position.product)
        for order in position.orders:
            number = order.order_no
            owner = self.owners.get(number)
            if number in self.allocations or (owner is not None and owner[0] != pid):
                continue  # never for a plain one (``entangled``): the whole position's rules
            self.owners[number] = (pid, order.role, order.attempt)
            txn = side.entry_txn if order.role is OrderRole.ENTRY else side.exit_txn
            booked = self.booked.get(number)
            traded = max(order.traded_qty, booked.traded if booked else 0)
            if traded:
                self.booked[number] = _Booked(booked.key if booked else key,
                                              1 if txn is TxnType.BUY else -1, traded)

    def _rebuild_allocations(self, positions: list[Position]) -> None:
        """An order split between positions is an untracked order: rebuild how it was split."""
        split = {o.progress.order_no for p in positions for o in p.orders
                 if o.role is OrderRole.OPPOSITE}
        for number in split:
            allocation = self.allocations[number] = rebuilt_allocation(number, positions)
            for share in allocation.shares:
                self.allocated.setdefault(share.position_id, {})[number] = share.qty

    # Frames in batches ------------------------------------------------------------------------
    # Every raw frame is stored, durably, before the update it carries is routed (SPEC §4.1).
    # Stored one by one, that is one commit per frame on this actor's single thread, the
    # ceiling of the whole order path. So a frame that arrives while more messages are waiting
    # is held; the held frames are stored in one transaction and then routed in order, when the
    # batch is full or a frame finds the inbox empty; when the ``FlushFrames`` told at the first
    # held frame comes up (a quiet feed never strands one); or before any other message, a
    # proxy call or a stop too (``intercept``), so mailbox order is kept. Under light load every
    # frame is stored and routed at once.
    def intercept(self, message: Any) -> bool:
        if isinstance(message, FlushFrames):
            self._flush_told = False
            self.flush_frames()
            return True
        if not isinstance(message, OrderUpdateReceived):
            self.flush_frames()
        return False

    def hold(self, frame: OrderUpdateReceived) -> None:
        self._held.append(frame)
        if len(self._held) >= self.batch_limit or self.actor_inbox.empty():
            self.flush_frames()
        elif not self._flush_told:
            self._flush_told = True
            self.actor_ref.tell(FlushFrames())

    def flush_frames(self) -> None:
        held, self._held = self._held, []
        try:
            if held:
                self.handle_frames(held)
            else:
                self.store_later()
        except Exception:
            # Not the store's failure (handle_frames keeps what it does not take) but a bug:
            # logged, not raised, so the actor goes on with the fills that follow.
            logger.opt(exception=True).error("handling {} held order-update frames failed",
                                             len(held))

    def on_receive(self, message: Any) -> Any:
        if self.gate is not None:
            self.gate()
        match message:
            case OrderUpdateReceived():
                self.hold(message)
            case StoreFrame():  # the frames held before it were handled by ``intercept``
                frames = list(message.frames)
                for start in range(0, len(frames), self.batch_limit):
                    self.handle_frames(frames[start:start + self.batch_limit])
                return self.audit.unstored == 0
            case PositionOpened() | PositionChanged() | PositionClosed():
                self._position_event(message.position, message)
            case KnownPosition():
                self._position_event(message.position, None)
            case Overfilled():
                self._overfilled(message)
            case RetryStore():
                self.store_later(force=True)
            case TimerFired():
                self.store_later()
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

    def _position_event(self, position: Position, cause: Cause | None) -> None:
        known = position.position_id in self.positions
        self._learn(position)
        if not known:
            self._unpark(position.entry_order_no, cause)

    def on_stop(self) -> None:
        self.audit.close()

    def store_later(self, *, force: bool = False) -> None:
        """Store what an outage left in memory, if its wait is over (or ``force``)."""
        self.audit.retry(force=force)
        self._recheck()

    # Updates ----------------------------------------------------------------------------------
    def handle_frames(self, frames: list[OrderUpdateReceived]) -> None:
        """Store every frame as received, durably, then route it (after all of a batch); a
        frame the store does not take now is kept and stored later, and routed all the same."""
        parsed = [parse_order_update(frame.raw) for frame in frames]
        now = self.clock()
        rows = [ReceivedFrame(raw=frame.raw, received_at=now, order_no=update.order_no,
                              accepted=isinstance(update, OrderUpdate),
                              reason=update.reason if isinstance(update, Rejection)
                              else update.anomaly)
                for frame, update in zip(frames, parsed, strict=True)]
        self.audit.record(rows)
        for frame, update in zip(frames, parsed, strict=True):
            self._accept(frame, update)
        self._recheck()

    def _accept(self, frame: OrderUpdateReceived, update: OrderUpdate | Rejection) -> None:
        if isinstance(update, Rejection):
            self.metrics.incr("rejected_updates")
            # A rejected fill is real exposure nobody tracks: an operator must look at it.
            log = logger.bind(order_no=update.order_no)
            if update.traded_qty > 0:
                log.error("a fill of {} rejected: {}; review its stored raw frame: {:.300}",
                          update.traded_qty, update.reason, frame.raw)
            else:
                log.warning("order update rejected: {} (raw stored: {:.300})", update.reason,
                            frame.raw)
            return
        if update.dedup_key() in self.seen:
            return
        self._remember(update)
        if update.anomaly is not None:  # read the safe way; its row holds the reason
            report_anomaly(self.metrics, self.clock(), update.anomaly, order_no=update.order_no)
        self._book(update)
        self._route_guarded(update, frame, raw=frame.raw)

    def _remember(self, update: OrderUpdate) -> None:
        self.seen[update.dedup_key()] = None
        if len(self.seen) > self.dedup_window:
            self.seen.popitem(last=False)

    # The broker's book -------------------------------------------------------------------------
    def _book(self, update: OrderUpdate) -> None:
        """Keep the broker's word on this order's cumulative fill (a TRADED order traded all of
        its quantity), for ``books``."""
        booked = self.booked.get(update.order_no)
        key: BookKey | None = booked.key if booked else None
        if update.segment is not None and update.security_id is not None:
            key = (update.segment, update.security_id, update.product)
        sign = booked.sign if booked else 0
        if update.txn_type is not None:
            sign = 1 if update.txn_type is TxnType.BUY else -1
        quantity = max(update.quantity or 0, booked.quantity if booked else 0)
        full = (update.status is OrderStatus.TRADED and update.traded_qty == 0) or (
            booked is not None and booked.full)
        traded = max(update.traded_qty, update.quantity or 0
                     if update.status is OrderStatus.TRADED else 0, quantity if full else 0)
        if not self._tracks_entry(update):
            self.left_out.add(update.order_no)
        if key is None or not sign:
            if traded:
                logger.bind(order_no=update.order_no).warning(
                    "a fill of {} names no instrument or side: the book check cannot count it",
                    traded)
            return
        self.booked[update.order_no] = _Booked(key, sign, max(traded, booked.traded
                                                              if booked else 0), quantity, full)

    def _book_position(self, position: Position) -> None:
        """What a position recorded of its own orders (a TRADED frame that gave no quantity
        counts as what the position took of it)."""
        key = (position.segment, position.security_id, position.product)
        for order in position.orders:
            if order.role is OrderRole.RETRACTED:
                continue  # no broker order: the over-fill's source gave it back
            if order.role is OrderRole.OPPOSITE or order.progress.order_no in self.allocations:
                continue  # the order's own frames count it, whole
            number = order.progress.order_no
            owner = self.owners.get(number)
            if owner is not None and owner[0] != position.position_id:
                continue  # an over-fill's remainder: its order is the other position's exit
            txn = position.side.entry_txn if order.role is OrderRole.ENTRY \
                else position.side.exit_txn
            booked = self.booked.get(number)
            traded = max(order.progress.traded_qty, booked.traded if booked else 0)
            if traded:
                self.booked[number] = _Booked(booked.key if booked else key,
                                              1 if txn is TxnType.BUY else -1, traded)

    def _book_allocations(self, positions: list[Position]) -> None:
        """At start-up: each split order, whole, as the positions it touched recorded it."""
        by_id = {p.position_id: p for p in positions}
        for number, allocation in self.allocations.items():
            touched = [by_id[s.position_id] for s in allocation.shares
                       if s.position_id in by_id]
            opened = by_id.get(allocation.opened) if allocation.opened else None
            source = opened or (touched[0] if touched else None)
            if source is None or not allocation.seen.traded_qty:
                continue
            txn = source.side.entry_txn if opened is not None else source.side.exit_txn
            self.booked[number] = _Booked((source.segment, source.security_id, source.product),
                                          1 if txn is TxnType.BUY else -1,
                                          allocation.seen.traded_qty)

    def books(self) -> BooksReport:
        """The broker's book against ours, for what this process has seen since it started
        (the positions it loaded count as the broker reported them)."""
        broker: dict[BookKey, int] = defaultdict(int)
        untracked: dict[BookKey, int] = defaultdict(int)
        for number, booked in self.booked.items():
            broker[booked.key] += booked.sign * booked.traded
            allocation = self.allocations.get(number)
            if number in self.owners or (allocation is not None and allocation.opened) or \
                    number not in self.left_out:
                continue  # tracked: what positions lack of it is a difference, not left out
            shared = sum(s.qty for s in allocation.shares) if allocation is not None else 0
            untracked[booked.key] += booked.sign * max(0, booked.traded - shared)
        return compare(broker, self.positions.values(), untracked)

    def _route_guarded(self, update: OrderUpdate, cause: Cause, *, raw: str) -> None:
        """Route, and outlive a bug the payload triggers: the frame is stored, the actor must
        stay up for the fills that follow."""
        try:
            self._route(update, cause, raw=raw)
        except Exception:
            self.metrics.incr("order_update_errors")
            self.route_failed = True  # a start-up must read it again: no mark passes it
            logger.opt(exception=True).bind(order_no=update.order_no).error(
                "order update not routed, a bug (raw stored: {:.300})", raw)

    def _route(self, update: OrderUpdate, cause: Cause, *, raw: str) -> None:
        exit_id = parse_exit_client_id(update.correlation_id)
        if exit_id is not None and update.order_no not in self.owners:
            self.owners[update.order_no] = (exit_id[0], OrderRole.EXIT, exit_id[1])
        owner = self.owners.get(update.order_no)
        if owner is not None:
            pid, role, attempt = owner
            self._tell(ApplyOrderUpdate(position_id=pid, update=update, role=role,
                                        attempt=attempt, sent_at=self.clock(), **cause.caused()))
        elif update.order_no in self.allocations or (self._fill_of_untracked(update) and (
                self._tracks_entry(update) or any(qty for _, qty in self._opposites(update)))):
            self._untracked(update, cause)
        elif self._parked_raws is None or raw not in self._parked_raws:
            self._park(update, raw)

    def _fill_of_untracked(self, update: OrderUpdate) -> bool:
        """A fill of an order nobody placed through us: whatever the tracking policy, it
        reduces opposite positions (SPEC §11.2); the policy decides only whether its remainder
        opens a position (``_tracks_entry``)."""
        return self._traded(update) > 0 and update.txn_type is not None and \
            update.segment is not None and update.security_id is not None and \
            update.segment.tradable

    def _traded(self, update: OrderUpdate) -> int:
        """What the broker says the order traded: a TRADED update without a quantity traded
        the order's quantity known from its earlier updates."""
        booked = self.booked.get(update.order_no)
        return booked.traded if booked is not None else update.traded_qty

    def _tracks_entry(self, update: OrderUpdate) -> bool:
        """Whether the policy tracks this order as an entry; one it does not track is parked
        (its order may become known) unless it reduces an opposite position."""
        return self.prefix is None or (update.correlation_id or "").startswith(self.prefix)

    def _park(self, update: OrderUpdate, raw: str) -> None:
        self.audit.park(update.order_no, raw)
        if self.parked > self.park_limit:
            logger.error("{} order updates parked for unknown orders (limit {})", self.parked,
                         self.park_limit)

    def _unpark(self, order_no: str, cause: Cause | None = None) -> None:
        """Route the updates parked for ``order_no``, now known, as consequences of ``cause``
        (the fill or the announcement that made it known: in a trace they hang under it);
        without one (a recheck) each is an outside event of its own."""
        if not self.audit.has_parked(order_no):
            return
        for item in self.audit.take(order_no):
            update = parse_order_update(item.raw)
            if isinstance(update, OrderUpdate):
                self._route_guarded(update, cause or OrderUpdateReceived(
                    raw=item.raw, correlation_id=f"parked-{order_no}", sent_at=self.clock(),
                    source="parked"), raw=item.raw)

    def _recheck(self) -> None:
        """Parked updates the store could not give back: look again, for known orders."""
        for order_no in self.audit.recheck():
            if order_no in self.owners or order_no in self.allocations:
                self._unpark(order_no)

    # Untracked orders -------------------------------------------------------------------------
    def _untracked(self, update: OrderUpdate, cause: Cause) -> None:
        assert update.txn_type is not None
        allocation = self.allocations.get(update.order_no) or Allocation(
            order_no=update.order_no, seen=OrderProgress.empty(update.order_no))
        booked = self.booked.get(update.order_no)
        progress = traded_in_full(allocation.seen.merge(update),
                                  booked.quantity if booked is not None else None,
                                  update.fill_price)
        remaining = [] if allocation.opened else self._opposites(update)
        allocation, left_qty, _ = allocate(allocation, progress, remaining)
        for share in allocation.shares:
            self._tell(ApplyProgress(position_id=share.position_id,
                                     progress=share_progress(allocation, share),
                                     role=OrderRole.OPPOSITE, sent_at=self.clock(),
                                     **cause.caused()))
        opened_now = left_qty > 0 and allocation.opened is None and self._tracks_entry(update)
        if left_qty > 0 and not opened_now and allocation.opened is None:
            logger.bind(order_no=update.order_no).info(
                "{} of order {} left untracked: its correlation id {!r} lacks the prefix {!r}",
                left_qty, update.order_no, update.correlation_id, self.prefix)
        if opened_now:
            allocation = self._open(update, allocation, cause)
        if allocation.opened is not None:
            self._tell(ApplyProgress(position_id=allocation.opened,
                                     progress=entry_progress(allocation), role=OrderRole.ENTRY,
                                     sent_at=self.clock(), **cause.caused()))
        self.allocations[update.order_no] = allocation
        for share in allocation.shares:
            self.allocated.setdefault(share.position_id, {})[update.order_no] = share.qty
        # Updates of this order parked before it became known as untracked (a TRADED frame
        # without quantities that came before its partial fills, a reordered stream), or
        # before it opened a position: its own now, taken back in order, under their cause.
        self._unpark(update.order_no, cause)

    def _opposites(self, update: OrderUpdate) -> list[tuple[str, int]]:
        assert update.txn_type is not None
        side = update.txn_type.opens
        key = (update.segment, update.security_id, update.product)
        candidates = sorted((p for p in self.by_instrument.get(key, {}).values()
                             if p.side is not side),
                            key=lambda p: (p.created_at, p.position_id))
        return [(p.position_id, self._open_qty(p, update.order_no)) for p in candidates]

    def _open_qty(self, position: Position, order_no: str) -> int:
        """Open quantity, counting every allocation we made even if not yet announced back,
        this order's own included: ``allocate`` adds its new fill to the share it already
        has, so a burst of one order's partial fills cannot allocate past what is open."""
        allocated = sum(self.allocated.get(position.position_id, {}).values())
        exited = sum(o.progress.traded_qty for o in position.orders
                     if o.role in (OrderRole.EXIT, OrderRole.RETRACTED))
        return max(0, position.entry_qty - exited - allocated)

    def _open(self, update: OrderUpdate, allocation: Allocation, cause: Cause) -> Allocation:
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

    def _refit_remainders(self, positions: list[Position]) -> None:
        """At start-up: each stored over-fill's remainder opened if it is missing and fitted
        if it holds another excess than its exit order's now (``lifecycle.fit_remainder``
        decides; a remainder that holds it already is not told)."""
        by_id = {p.position_id: p for p in positions}
        now = self.clock()
        for position in positions:
            for progress in position.excess_fills(every=True):
                pid = position_id_for(progress.order_no)
                remainder = by_id.get(pid)
                if remainder is None and not progress.traded_qty:
                    continue  # no over-fill
                if remainder is None:
                    remainder = self._stored_remainder(pid)
                if remainder is not None and fit_remainder(remainder, progress).position is \
                        remainder:
                    continue
                logger.bind(position_id=pid).warning(
                    "the remainder of exit order {} of {} is {} at start-up: fitted to its "
                    "excess of {}", progress.order_no, position.position_id,
                    "missing" if remainder is None else "unfitted", progress.traded_qty)
                self._overfilled(Overfilled(position_id=position.position_id,
                                            position=position, progress=progress,
                                            correlation_id=f"refit-{pid}", sent_at=now))

    def _stored_remainder(self, pid: str) -> Position | None:
        """A remainder not loaded (closed on an earlier day), or None: not made yet."""
        try:
            stored = self.store.load_position(pid)
        except Exception as error:  # the store failed: the store's version check still guards
            logger.bind(position_id=pid).error("could not look up the remainder {} ({})", pid,
                                               error)
            return None
        if stored is not None:
            self.remainders.add(pid)
        return stored

    def _overfilled(self, message: Overfilled) -> None:
        """Open (once) and fit the position that tracks an over-fill's opposite remainder;
        the order stays routed to the position it over-filled."""
        source = message.position
        pid = position_id_for(message.progress.order_no)
        if not message.progress.traded_qty and pid not in self.positions and \
                pid not in self.remainders:
            return  # nothing to give back: it never opened
        if pid not in self.positions and pid not in self.remainders:
            remainder = Position(position_id=pid, entry_order_no=message.progress.order_no,
                                 segment=source.segment, security_id=source.security_id,
                                 side=Side.SHORT if source.side is Side.LONG else Side.LONG,
                                 product=source.product,
                                 created_at=message.progress.updated_at or self.clock(),
                                 orders=(TrackedOrder(role=OrderRole.ENTRY, progress=OrderProgress.
                                                      empty(message.progress.order_no)),))
            self.remainders.add(pid)
            self._put(remainder)
            self._tell(CreatePosition(position=remainder, sent_at=self.clock(),
                                      **message.caused()))
            logger.bind(position_id=pid).error(
                "new {} position {} for the {} that exit order {} filled past {}'s open "
                "quantity", remainder.side, pid, message.progress.traded_qty,
                message.progress.order_no, source.position_id)
        self._tell(ApplyProgress(position_id=pid, progress=message.progress,
                                 role=OrderRole.ENTRY, excess=True, sent_at=self.clock(),
                                 **message.caused()))

    def _tell(self, message: Message) -> None:
        if self.supervisor is not None:
            self.supervisor.tell(message)

