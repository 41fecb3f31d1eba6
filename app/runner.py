"""A runner (SPEC §13), the skeleton: it claims partitions, keeps their leases, and consumes
their order updates, storing each under its partition's lease before acking it.

What it does now, one ``step`` at a time (``run`` repeats it until told to stop):

1. claims each partition of its set that it does not hold (``Leases.claim``); one taken over
   from a lapsed owner is held back for ``claim_wait`` (the old lease plus the HTTP timeout);
2. renews every lease past a third of its life; a renewal refused (``LeaseLost``) drops the
   partition at once;
3. pulls each ready partition's order updates and hands each to ``deliver(partition, data)``
   while the partition's lease is the current one (``CurrentLease``: a store made with
   ``lease=current`` fences its writes by it); acks once ``deliver`` returns, naks when it
   raises, and drops the partition on ``LeaseLost``.

Not yet: the actors. Updates are stored raw (the audit trail), not applied to positions; a new
owner does not yet reload its partitions' positions nor reconcile the accounts with the broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from loguru import logger

from broker.transport.ports import Transport, TransportError
from models.partitions import PARTITIONS
from models.wire import Rejection, parse_order_update
from store.ports import Lease, LeaseLost, Leases, Store, StoreError

Deliver = Callable[[int, bytes], None]


class CurrentLease:
    """The lease of the partition whose update this thread is applying: the ``lease=`` of a
    fenced store shared by all the runner's partitions."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> Lease:
        lease: Lease | None = getattr(self._local, "lease", None)
        if lease is None:
            raise RuntimeError("a partition's state written outside its lease")
        return lease

    def set(self, lease: Lease | None) -> None:
        self._local.lease = lease


@dataclass
class Held:
    lease: Lease
    ready_at: float  # monotonic: claim_wait over, the partition may act
    renew_at: float


class Runner:
    def __init__(self, leases: Leases, transport: Transport, *, owner: str,
                 partitions: Iterable[int], deliver: Deliver, current: CurrentLease,
                 batch: int = 100, pull_budget: float = 0.2, claim_every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``pull_budget``: seconds one step waits for updates, shared by the partitions
        (a step must come round to renewals well within a lease); ``claim_every``: seconds
        between rounds of claims (a third of the lease by default: a claim is a transaction
        per partition)."""
        self.leases, self.transport, self.owner = leases, transport, owner
        self.partitions = sorted(set(partitions))
        self.deliver, self.current = deliver, current
        self.batch, self.pull_budget, self.clock = batch, pull_budget, clock
        self.claim_every = leases.lease_seconds / 3 if claim_every is None else claim_every
        self.next_claim = 0.0
        self.held: dict[int, Held] = {}
        self.delivered = 0
        self.log = logger.bind(runner=owner)

    def owned(self) -> list[int]:
        return sorted(self.held)

    def step(self) -> None:
        if self.clock() >= self.next_claim:
            self._claim()
            self.next_claim = self.clock() + self.claim_every
        self._renew()
        now = self.clock()
        ready = [p for p, held in sorted(self.held.items()) if now >= held.ready_at]
        for partition in ready:
            if partition in self.held:  # not dropped meanwhile
                self._consume(partition, self.pull_budget / len(ready))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
                if not self.held:
                    stop.wait(self.pull_budget)  # nothing to pull: no busy loop of claims
            except (StoreError, TransportError) as error:
                self.log.warning("runner step failed, trying again: {}", error)
                stop.wait(1.0)

    def release_all(self) -> None:
        """Graceful hand-over: every lease released, so the next owner need not wait."""
        for partition, held in sorted(self.held.items()):
            self.leases.release(held.lease)
            self.log.info("released partition {}", partition)
        self.held.clear()

    def _claim(self) -> None:
        for partition in self.partitions:
            if partition in self.held:
                continue
            lease = self.leases.claim(partition, self.owner)
            if lease is None:
                continue
            wait = self.leases.claim_wait(lease)
            now = self.clock()
            self.held[partition] = Held(lease, now + wait, self._renew_at(lease))
            self.log.info("claimed partition {} (epoch {}, acting in {:.1f} s)", partition,
                          lease.epoch, wait)

    def _renew_at(self, lease: Lease) -> float:
        return lease.deadline - 2 * self.leases.lease_seconds / 3

    def _renew(self) -> None:
        now = self.clock()
        for partition, held in list(self.held.items()):
            if now < held.renew_at:
                continue
            try:
                held.lease = self.leases.renew(held.lease)
                held.renew_at = self._renew_at(held.lease)
            except LeaseLost:
                self._drop(partition, "its lease could not be renewed")

    def _consume(self, partition: int, timeout: float) -> None:
        held = self.held[partition]
        for delivery in self.transport.pull_order_updates(partition, batch=self.batch,
                                                          timeout=timeout):
            self.current.set(held.lease)
            try:
                self.deliver(partition, delivery.data)
            except LeaseLost:
                delivery.nak()
                self._drop(partition, "a write under its lease was refused")
                return
            except Exception:
                delivery.nak()  # not stored: delivered again
                raise
            finally:
                self.current.set(None)
            delivery.ack()
            self.delivered += 1

    def _drop(self, partition: int, why: str) -> None:
        self.held.pop(partition, None)
        self.log.warning("partition {} dropped: {}", partition, why)


def store_frames(store: Store, clock: Callable[[], datetime]) -> Deliver:
    """Deliver by storing the raw frame as received (parsed once for its order number and
    whether it can be read). A redelivered frame is stored again: the store keeps every frame
    as it came, and applying them (later, the actors) is idempotent."""

    def deliver(partition: int, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        parsed = parse_order_update(text)
        if isinstance(parsed, Rejection):
            store.record_order_update(text, clock(), order_no=parsed.order_no, accepted=False,
                                      reason=parsed.reason)
        else:
            store.record_order_update(text, clock(), order_no=parsed.order_no, accepted=True)

    return deliver


def parse_partitions(text: str) -> list[int]:
    """``0-63,128,200-201`` → the partitions named; ``ValueError`` for anything else."""
    found: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if not 0 <= first <= last < PARTITIONS:
            raise ValueError(f"partitions {part.strip()!r}: want 0..{PARTITIONS - 1}, "
                             "low-high")
        found.update(range(first, last + 1))
    return sorted(found)
