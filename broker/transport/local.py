"""The transport in one process (the default): the same contract as JetStream's, without a
server. Order updates wait per partition until acked (a pulled update not acked within
``ack_wait``, or nak'ed, is delivered again); message ids seen among the last
``duplicate_window`` are dropped; prices are handed to the subscribers at once, on the
publisher's thread."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.transport.ports import (
    Delivery,
    PriceHandler,
    Subscription,
    order_subject,
    price_subject,
)
from models.partitions import partition_of


@dataclass
class _Entry:
    seq: int
    msg_id: str
    data: bytes
    account: str
    deliveries: int = 0
    due: float = 0.0  # may be delivered (again) from this monotonic time


@dataclass
class _Delivery:
    transport: LocalTransport
    partition: int
    entry: _Entry
    redelivered: bool

    @property
    def subject(self) -> str:
        return order_subject(self.partition)

    @property
    def msg_id(self) -> str:
        return self.entry.msg_id

    @property
    def account(self) -> str:
        return self.entry.account

    @property
    def data(self) -> bytes:
        return self.entry.data

    def ack(self) -> None:
        self.transport._ack(self.partition, self.entry)

    def nak(self) -> None:
        self.transport._nak(self.partition, self.entry)


@dataclass(eq=False)  # each subscription is itself, even with the same handler
class _Subscription:
    transport: LocalTransport
    subject: str
    handler: PriceHandler = field(repr=False)

    def unsubscribe(self) -> None:
        self.transport._unsubscribe(self)


class LocalTransport:
    def __init__(self, *, ack_wait: float = 30.0, duplicate_window: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ack_wait, self._clock = ack_wait, clock
        self._changed = threading.Condition()
        self._pending: dict[int, dict[int, _Entry]] = defaultdict(dict)
        self._seq = 0
        self._seen: set[str] = set()
        self._recent: deque[str] = deque(maxlen=duplicate_window)
        self._subscribers: dict[str, list[_Subscription]] = defaultdict(list)

    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        partition = partition_of(account_id)
        with self._changed:
            if msg_id in self._seen:
                return False
            if len(self._recent) == self._recent.maxlen:
                self._seen.discard(self._recent[0])
            self._recent.append(msg_id)
            self._seen.add(msg_id)
            self._seq += 1
            self._pending[partition][self._seq] = _Entry(self._seq, msg_id, data, account_id)
            self._changed.notify_all()
        return True

    def pull_order_updates(self, partition: int, *, batch: int = 100,
                           timeout: float = 1.0) -> list[Delivery]:
        until = self._clock() + timeout
        with self._changed:
            while True:
                now = self._clock()
                taken = self._take(partition, batch, now)
                if taken or now >= until:
                    return taken
                dues = [e.due for e in self._pending[partition].values() if e.due > now]
                self._changed.wait(min([until, *dues]) - now)

    def waiting_order_updates(self, partition: int) -> int:
        with self._changed:
            return len(self._pending[partition])

    def _take(self, partition: int, batch: int, now: float) -> list[Delivery]:
        taken: list[Delivery] = []
        for entry in self._pending[partition].values():  # in publishing order
            if len(taken) == batch:
                break
            if entry.due <= now:
                taken.append(_Delivery(self, partition, entry, entry.deliveries > 0))
                entry.deliveries += 1
                entry.due = now + self._ack_wait
        return taken

    def _ack(self, partition: int, entry: _Entry) -> None:
        with self._changed:
            self._pending[partition].pop(entry.seq, None)

    def _nak(self, partition: int, entry: _Entry) -> None:
        with self._changed:
            if entry.seq in self._pending[partition]:
                entry.due = self._clock()
                self._changed.notify_all()

    def publish_price(self, segment: str, security_id: str, data: bytes) -> None:
        with self._changed:
            handlers = [s.handler for s in self._subscribers.get(
                price_subject(segment, security_id), ())]
        for handler in handlers:
            handler(data)

    def subscribe_prices(self, segment: str, security_id: str,
                         handler: PriceHandler) -> Subscription:
        subscription = _Subscription(self, price_subject(segment, security_id), handler)
        with self._changed:
            self._subscribers[subscription.subject].append(subscription)
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        with self._changed:
            found = self._subscribers.get(subscription.subject, [])
            if subscription in found:
                found.remove(subscription)

    def close(self) -> None:
        with self._changed:
            self._subscribers.clear()
