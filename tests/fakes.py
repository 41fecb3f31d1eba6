"""Hand-written fakes of our own ports, for actor tests (never a mock of the port)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from broker.ports import GatewayError, OrderView
from models.accounts import DEFAULT_ACCOUNT
from models.closed import PlainClosed, digest, read_digest
from models.common import Instrument, TxnType
from models.orders import OrderStatus
from models.position import OPEN, Fill, Position, PositionStatus
from store.ports import StaleWriteError, StoreError, StoreRefused
from store.records import (
    DeadLetter,
    ExitAttempt,
    KillSwitch,
    ParkedUpdate,
    ReceivedFrame,
    StoredOrderUpdate,
)


class FakeStore:
    """The Store port in memory, with the same idempotence rules as the real ones.

    Switches make calls fail as a database outage does (``StoreError``, nothing written):
    ``fail_loads`` (``load_position``), ``fail_frames`` (``record_order_update(s)``),
    ``fail_parks`` (``park_update``, ``take_parked``, ``parked_updates``), ``fail_saves`` (the
    next that many ``save_position`` calls, ``record_exit`` and ``record_exits`` too),
    ``fail_marks``
    (``save_marks``), ``fail_exits`` (``update_exit_attempt``: the attempts' audit columns);
    ``refuse_text``
    makes a frame or park whose text contains it fail as data the backend cannot hold
    (``StoreRefused``); ``crash_fills`` makes the next that many ``save_position`` calls that
    carry fills raise ``RuntimeError`` (not the store's outage: a crash of the caller, as a bug
    or a driver's unexpected error would make it). ``failed_calls`` counts the calls that
    failed."""

    def __init__(self, account: str = DEFAULT_ACCOUNT) -> None:
        self.account = account
        self._lock = threading.Lock()
        self.positions: dict[str, Position] = {}
        self.fill_rows: dict[tuple[str, str, int], Fill] = {}
        self.updates: list[StoredOrderUpdate] = []
        self.parked: list[ParkedUpdate] = []
        self.attempts: dict[tuple[str, int], ExitAttempt] = {}
        self.letters: list[DeadLetter] = []
        self.latch: KillSwitch | None = None
        self.mark = 0
        """``mark_frames``'s mark."""
        self._queries = 0
        self.fail_loads = False
        self.fail_frames = False
        self.fail_parks = False
        self.fail_saves = 0
        self.saves = 0
        """``save_position`` calls that wrote (one commit each in a real store)."""
        self.refuse_text: str | None = None
        self.failed_calls = 0
        self.fail_marks = 0
        self.crash_fills = 0
        """The next that many ``save_marks`` calls fail."""
        self.fail_exits = False
        self.marks_writes: list[int] = []
        self.exits_writes: list[int] = []
        """Exits handed to each ``record_exits`` call, in order."""
        """Positions handed to each ``save_marks`` call, in order."""

    @property
    def queries(self) -> int:
        return self._queries

    def _q(self) -> None:
        self._queries += 1

    def _check(self, down: bool, *texts: str | None) -> None:
        if down:
            self.failed_calls += 1
            raise StoreError("the fake database is down")
        if self.refuse_text is not None and any(self.refuse_text in (t or "") for t in texts):
            self.failed_calls += 1
            raise StoreRefused(f"the fake database cannot hold {self.refuse_text!r}")

    def migrate(self) -> None: ...

    def schema_version(self) -> int:
        return 1

    def prepare(self, concurrency: int) -> None: ...

    def close(self) -> None: ...

    def save_position(self, position: Position, fills: Sequence[Fill] = ()) -> None:
        with self._lock:
            self._q()
            if self.fail_saves > 0:
                self.fail_saves -= 1
                self._check(True)
            if fills and self.crash_fills > 0:
                self.crash_fills -= 1
                self.failed_calls += 1
                raise RuntimeError("the fake store crashed its caller while storing fills")
            stored = self.positions.get(position.position_id)
            if stored is not None and (stored.version > position.version or (
                    stored.version == position.version and stored != position)):
                raise StaleWriteError(position.position_id)
            self.positions[position.position_id] = position
            self.saves += 1
            for fill in fills:
                self.fill_rows.setdefault((fill.position_id, fill.order_no, fill.cum_qty), fill)

    def save_positions(self, positions: Sequence[Position]) -> None:
        for position in positions:
            self.save_position(position)

    def save_marks(self, positions: Sequence[Position]) -> set[str]:
        with self._lock:
            self._q()
            if self.fail_marks > 0:
                self.fail_marks -= 1
                self._check(True)
            self.marks_writes.append(len(positions))
            written: set[str] = set()
            for position in positions:
                stored = self.positions.get(position.position_id)
                if stored is not None and stored.version < position.version:
                    self.positions[position.position_id] = position
                    written.add(position.position_id)
            return written

    def load_position(self, position_id: str) -> Position | None:
        self._q()
        if self.fail_loads:
            raise StoreError("the fake database is down")
        return self.positions.get(position_id)

    def load_open_positions(self) -> list[Position]:
        self._q()
        return sorted((p for p in self.positions.values() if p.status in OPEN),
                      key=lambda p: p.created_at)

    def list_positions(self, status: PositionStatus | None = None, *,
                       exited_since: datetime | None = None) -> list[Position]:
        self._q()
        return sorted((p for p in self.positions.values() if status in (None, p.status) and (
            exited_since is None or (p.exited_at is not None and p.exited_at >= exited_since))),
                      key=lambda p: p.created_at)

    def closed_between(self, since: datetime, until: datetime
                       ) -> tuple[list[Position], list[PlainClosed]]:
        """As a real store: the plain ones as their digests, read back from the text."""
        whole: list[Position] = []
        plain: list[PlainClosed] = []
        for position in self.list_positions(PositionStatus.EXITED, exited_since=since):
            if position.exited_at is None or position.exited_at >= until:
                continue
            text = digest(position)
            if text is None:
                whole.append(position)
            else:
                plain.append(read_digest(position.position_id, text))
        return whole, plain

    def fills(self, position_id: str) -> list[Fill]:
        return [f for (pid, _, _), f in self.fill_rows.items() if pid == position_id]

    def record_order_update(self, raw: str, received_at: datetime, *, order_no: str | None,
                            accepted: bool, reason: str | None = None) -> int:
        return self._record([ReceivedFrame(raw=raw, received_at=received_at,
                                           order_no=order_no, accepted=accepted,
                                           reason=reason)])[0]

    def record_order_updates(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        return self._record(frames)

    def _record(self, frames: Sequence[ReceivedFrame]) -> list[int]:
        """All the frames, or none when a switch makes the call fail."""
        with self._lock:
            self._q()
            for f in frames:
                self._check(self.fail_frames, f.raw, f.order_no, f.reason)
            start = len(self.updates)
            for seq, f in enumerate(frames, start + 1):
                self.updates.append(StoredOrderUpdate(seq=seq, received_at=f.received_at,
                                                      raw=f.raw, order_no=f.order_no,
                                                      accepted=f.accepted, reason=f.reason))
            return list(range(start + 1, len(self.updates) + 1))

    def order_updates(self, since: datetime | None = None, *,
                      after: int = 0) -> list[StoredOrderUpdate]:
        return [u for u in self.updates
                if (since is None or u.received_at >= since) and u.seq > after]

    def frames_mark(self) -> int:
        return self.mark

    def mark_frames(self, through: int) -> None:
        self._check(self.fail_frames)
        self.mark = max(self.mark, through)

    def park_update(self, order_no: str, raw: str, parked_at: datetime) -> None:
        self._check(self.fail_parks, order_no, raw)
        self.parked.append(ParkedUpdate(order_no=order_no, parked_at=parked_at, raw=raw))

    def take_parked(self, order_no: str, *,
                    refile_at: datetime | None = None) -> list[ParkedUpdate]:
        self._check(self.fail_parks)
        taken = [p for p in self.parked if p.order_no == order_no]
        self.parked = [p for p in self.parked if p.order_no != order_no]
        if refile_at is not None and taken:
            with self._lock:
                start = len(self.updates)
                self.updates += [StoredOrderUpdate(
                    seq=seq, received_at=refile_at, raw=p.raw, order_no=p.order_no,
                    accepted=True, reason="unparked")
                    for seq, p in enumerate(taken, start + 1)]
        return taken

    def parked_updates(self) -> list[ParkedUpdate]:
        self._check(self.fail_parks)
        return list(self.parked)

    def record_exit_attempt(self, attempt: ExitAttempt) -> bool:
        key = (attempt.position_id, attempt.attempt)
        if key in self.attempts:
            return False
        self.attempts[key] = attempt
        return True

    def record_exit(self, attempt: ExitAttempt, position: Position) -> bool:
        """One write, as in a real store: a failure (an outage) writes nothing; a stale
        position keeps the attempt stored."""
        try:
            self.save_position(position)
        except StaleWriteError:
            self.record_exit_attempt(attempt)
            raise
        return self.record_exit_attempt(attempt)

    def record_exits(self, exits: Sequence[tuple[ExitAttempt, Position]]) -> set[str]:
        """One write, as in a real store: a failure writes nothing; each position is written
        only over an older version (or none)."""
        with self._lock:
            self._q()
            if self.fail_saves > 0:
                self.fail_saves -= 1
                self._check(True)
            self.exits_writes.append(len(exits))
            written: set[str] = set()
            for attempt, position in exits:
                self.attempts.setdefault((attempt.position_id, attempt.attempt), attempt)
                stored = self.positions.get(position.position_id)
                if stored is None or stored.version < position.version:
                    self.positions[position.position_id] = position
                    written.add(position.position_id)
            self.saves += 1 if written else 0  # one commit for them all
            return written

    def update_exit_attempt(self, client_id: str, *, order_no: str | None = None,
                            outcome: str | None = None) -> None:
        self._check(self.fail_exits)
        for key, attempt in self.attempts.items():
            if attempt.client_id == client_id:
                self.attempts[key] = attempt.model_copy(update={
                    "order_no": order_no or attempt.order_no,
                    "outcome": outcome or attempt.outcome})

    def exit_attempts(self, position_id: str | None = None) -> list[ExitAttempt]:
        return [a for a in self.attempts.values() if position_id in (None, a.position_id)]

    def record_dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def dead_letters(self) -> list[DeadLetter]:
        return list(self.letters)

    def latch_kill_switch(self, state: KillSwitch) -> None:
        self.latch = self.latch or state

    def kill_switch(self) -> KillSwitch | None:
        return self.latch

    def reset_kill_switch(self) -> bool:
        was, self.latch = self.latch is not None, None
        return was

    def counts(self) -> Mapping[str, int]:
        return {"positions": len(self.positions), "fills": len(self.fill_rows)}


class FakeGateway:
    """Records placed orders; idempotent per client id; can refuse."""

    def __init__(self) -> None:
        self.placed: dict[str, tuple[str, Instrument, TxnType, int]] = {}
        self.calls: list[str] = []
        """The client id of every ``place_order`` call, a repeated one included."""
        self.refuse = 0
        self.cancelled: list[str] = []
        self.sink: Callable[[str], None] | None = None

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        self.calls.append(client_id)
        if client_id in self.placed:
            return self.placed[client_id][0]
        if self.refuse:
            self.refuse -= 1
            raise GatewayError("refused by the fake")
        order_no = f"EX{len(self.placed) + 1}"
        self.placed[client_id] = (order_no, instrument, txn_type, quantity)
        return order_no

    def cancel_order(self, order_no: str) -> None:
        self.cancelled.append(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        placed = self.placed.get(client_id)
        if placed is None:
            return None
        order_no, _, _, quantity = placed
        return OrderView(order_no=order_no, client_id=client_id, status=OrderStatus.PENDING,
                         quantity=quantity)

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self.sink = sink
