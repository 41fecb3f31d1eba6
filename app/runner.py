"""A runner (SPEC §13): it claims partitions, keeps their leases, runs the actors of their
accounts and feeds them their order updates.

What it does, one ``step`` at a time (``run`` repeats it until told to stop):

1. drops at once every partition whose lease a fenced write found lost (``lease_lost``, called
   by the store from any thread: the partition's ``PartitionLease`` refuses from that moment);
2. looks at the leases (``Leases.survey``: one read, every ``look_every``; with a heartbeat,
   ``Leases.beat``, every ``claim_every``) and claims the free partitions of its set
   (``Leases.claim``), with ``share`` no more than its fair share of them, and releases one
   over that share (``models.partitions.plan_share``); one taken over from a lapsed owner is
   held back for ``claim_wait`` (the old lease plus the HTTP timeout);
3. renews every lease past a third of its life (and, while ``run`` runs, so does a thread of
   its own, so a slow step never lets a lease lapse); a renewal refused (``LeaseLost``)
   revokes the partition's lease at once and the step drops the partition;
4. starts what serves a partition once it is ready (``Serve.start``: the Systems of its
   accounts, ``app/serving.py``), then pulls its order updates and hands each over; acks once
   the update is stored, naks when it is not, and drops the partition on ``LeaseLost``;
5. lets the served Systems keep their price subscriptions (``Serve.step``).

Dropping a partition (its lease lost) stops what serves it without a write or an order more
(``Serve.stop(lost=True)``); a graceful stop (``release_all``: the heartbeat removed first)
and a partition over the runner's share stop it in order under the live lease and then release
the lease, so the next owner need not wait.

Without a ``Serve`` (``deliver``) the runner only stores each update raw (``store_frames``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loguru import logger

from broker.transport.ports import Delivery, Transport, TransportError
from models.partitions import PARTITIONS, plan_share
from models.wire import Rejection, parse_order_update
from store.ports import Lease, LeaseLost, Leases, Store, StoreError

RENEW_CHECKS = 12
"""Looks per lease length for leases to renew, on the renewal thread (every 0.5 s with 6 s
leases): a lease is renewed a third into its life, well before it could lapse."""
DRAIN_WAIT = 0.05
"""Seconds a partition just started waits for the stream's first waiting order update
(``Runner._drain``); a pull that brings less than a batch brought all that waited."""
DRAIN_LIMIT = 5.0
"""Seconds at most a start spends on the stream's waiting updates before the reconcile."""

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


class PartitionLease:
    """One partition's lease as what serves it sees it: the ``lease=`` of its fenced stores
    (``__call__``) and the ``deadline`` of its leased gateways. Renewals replace the lease;
    ``revoke`` ends it at once for every thread: a write then raises ``LeaseLost`` without
    reaching the database, and a send is refused."""

    def __init__(self, lease: Lease) -> None:
        self.partition, self.epoch = lease.partition, lease.epoch
        self._lease: Lease | None = lease

    def __call__(self) -> Lease:
        lease = self._lease  # one read: revoke may come from another thread
        if lease is None:
            raise LeaseLost(self.partition, self.epoch, "write after the loss")
        return lease

    def deadline(self) -> float:
        lease = self._lease
        return -math.inf if lease is None else lease.deadline

    @property
    def revoked(self) -> bool:
        return self._lease is None

    def renewed(self, lease: Lease) -> None:
        if self._lease is not None:
            self._lease = lease

    def revoke(self) -> None:
        self._lease = None


class Serve(Protocol):
    """What runs on a runner's partitions (``app.serving.AccountSystems``); called from the
    runner's thread only."""

    def start(self, partition: int, lease: PartitionLease) -> None:
        """The partition is ready (claimed, ``claim_wait`` over): start serving it (its state
        loaded; order updates are delivered from here on, nothing is priced yet)."""

    def ready(self, partition: int, catch_up: Callable[[], object] | None = None) -> None:
        """The stream's waiting updates are in (``Runner._drain``): reconcile with the broker,
        then act (prices subscribed). ``catch_up`` hands over what the stream brought since
        (an update on its way while the broker's positions were read)."""

    def deliver(self, partition: int, deliveries: Sequence[Delivery]) -> list[bool | None]:
        """Hand a pull's order updates over, in order; for each, True once it is stored
        (ack), False when it is not (nak: it comes again), None to leave it (redelivered
        after the ack wait)."""

    def stop(self, partition: int, *, lost: bool) -> None:
        """Stop serving the partition: in order under its live lease, or (``lost``) at once,
        writing and sending nothing more."""

    def step(self) -> None:
        """Routine upkeep between pulls (price subscriptions)."""


@dataclass
class Held:
    lease: Lease
    ready_at: float  # monotonic: claim_wait over, the partition may act
    renew_at: float
    shared: PartitionLease
    served: bool = False  # started (Serve.start)
    ready: bool = False  # made ready (Serve.ready): acting on it


class Runner:
    def __init__(self, leases: Leases, transport: Transport, *, owner: str,
                 partitions: Iterable[int], deliver: Deliver | None = None,
                 current: CurrentLease | None = None, serve: Serve | None = None,
                 batch: int = 100, pull_budget: float = 0.2, claim_every: float | None = None,
                 look_every: float = 0.2, share: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Either ``serve`` (the actors of the partitions' accounts) or ``deliver`` with
        ``current`` (raw frames stored). ``pull_budget``: seconds one step waits for updates,
        shared by the partitions (a step must come round to renewals well within a lease);
        ``claim_every``: seconds between rounds of claims (a third of the lease by default: a
        claim is a transaction per partition); ``look_every``: seconds between looks, in one
        read, for a partition of this runner's set that is free (released by its owner's
        graceful stop, or expired), which is then claimed at once rather than at the next
        round: a graceful hand-over takes well under a second. ``share``: claim no more than
        a fair share of the partitions (``models.partitions.plan_share``: the live runners
        counted by their heartbeats) and release, one at a time, what is over it when a
        runner joins; without, every free partition of the set is claimed."""
        if (serve is None) == (deliver is None or current is None):
            raise ValueError("a runner serves (serve) or stores frames (deliver, current)")
        self.leases, self.transport, self.owner = leases, transport, owner
        self.partitions = sorted(set(partitions))
        self.deliver, self.current, self.serve = deliver, current, serve
        self._lost: set[int] = set()
        self._lost_lock = threading.Lock()
        self._renewing = threading.Lock()
        self.batch, self.pull_budget, self.clock = batch, pull_budget, clock
        self.claim_every = leases.lease_seconds / 3 if claim_every is None else claim_every
        self.look_every, self.share = look_every, share
        self.next_claim = self.next_look = 0.0
        self.held: dict[int, Held] = {}
        self._free_since: dict[int, float] = {}
        """When this runner first saw each partition now free (for ``plan_share``'s grace)."""
        self.delivered = 0
        self.log = logger.bind(runner=owner)

    def owned(self) -> list[int]:
        return sorted(self.held)

    def report(self) -> dict[str, Any]:
        """What this runner holds and has done, for its status line and report."""
        held = dict(self.held)
        return {"owner": self.owner, "partitions_held": sorted(held),
                "partitions_served": sorted(p for p, h in held.items() if h.ready),
                "updates_stored": self.delivered}

    def lease_lost(self, lost: LeaseLost) -> None:
        """A fenced write found the partition's lease lost (any thread): nothing more is
        written or sent under it from now on, and the next step stops the partition."""
        held = self.held.get(lost.partition)
        if held is not None and held.shared.epoch == lost.epoch:
            held.shared.revoke()
        with self._lost_lock:
            self._lost.add(lost.partition)

    def step(self) -> None:
        self._drop_lost()
        if self.clock() >= self.next_claim:
            self.leases.beat(self.owner)
            self.next_claim = self.clock() + self.claim_every
            self._look()
            self.next_look = self.clock() + self.look_every
        else:
            self._look_if_due()
        self._renew()
        self._drop_lost()
        now = self.clock()
        ready = [p for p, held in sorted(self.held.items()) if now >= held.ready_at]
        # Every partition ready is started before any is pulled from: a pull waits up to its
        # share of the budget, and a partition handed over must not wait behind another's.
        started = [p for p in ready if p in self.held and self._started(p)]
        served = [p for p in started if p in self.held and self._served(p)]
        for partition in served:
            if partition in self.held:  # not dropped meanwhile
                self._consume(partition, self.pull_budget / len(served))
            self._drop_lost()
            if self._look_if_due():
                break  # a partition claimed: the next step starts it, not after more pulls
        if self.serve is not None:
            self.serve.step()

    def _look_if_due(self) -> bool:
        """A look when one is due, between one partition's pull and the next's too: a
        partition released meanwhile (a graceful hand-over's second one, released while this
        runner pulls) is claimed without waiting out the step's other pulls. True when it
        claimed a partition."""
        if self.clock() < self.next_look:
            return False
        self.next_look = self.clock() + self.look_every
        before = len(self.held)
        self._look()
        return len(self.held) > before

    def _look(self) -> None:
        """One read of the leases, then the claims and the release it calls for."""
        survey = self.leases.survey(self.partitions)
        now = self.clock()
        self._free_since = {p: self._free_since.get(p, now) for p in survey.free}
        plan = plan_share(self.partitions, self.held,
                          {p: now - since for p, since in self._free_since.items()},
                          survey.runners if self.share else None,
                          grace=self.leases.lease_seconds)
        self._claim(plan.claim)
        if plan.release is not None:
            self.log.info("partition {} over this runner's share ({} held, {} runners): "
                          "handed over", plan.release, len(self.held), survey.runners)
            self._release(plan.release)

    def _started(self, partition: int) -> bool:
        """The partition started (``Serve.start``: its state loaded, nothing priced yet);
        False when a write under its lease was refused."""
        held = self.held[partition]
        if self.serve is None or held.served:
            return True
        try:
            self.serve.start(partition, held.shared)
        except LeaseLost:
            self._drop(partition, "a write under its lease was refused at the start")
            return False
        held.served = True  # from here a drop stops what was started
        return True

    def _served(self, partition: int) -> bool:
        """A started partition made ready: the order updates waiting for it on the stream
        handed over (``_drain``), then ``Serve.ready`` (its accounts reconciled with the
        broker, their prices subscribed). True once it is served."""
        held = self.held[partition]
        if self.serve is None or held.ready:
            return True
        self._drain(partition)
        self._drop_lost()
        if partition not in self.held:
            return False
        try:
            self.serve.ready(partition, lambda: self._drain(partition, count_first=False))
        except LeaseLost:
            self._drop(partition, "a write under its lease was refused at the start")
            return False
        held.ready = True
        self.log.info("serving partition {}", partition)
        return True

    def _drain(self, partition: int, *, count_first: bool = True) -> None:
        """The order updates the stream holds for a partition just started, handed over
        before it is made ready: its reconcile then compares the broker's books with a
        state that holds everything the stream had (``DRAIN_LIMIT`` seconds at most; what
        is left comes by the ordinary pulls). ``count_first``: none pulled when the stream
        counts none waiting; without (a reconcile's catch-up, ``Serve.ready``), one pull
        waits up to ``DRAIN_WAIT`` for an update on its way."""
        began = time.monotonic()
        drained = 0
        assert self.serve is not None
        try:
            if count_first and self.transport.waiting_order_updates(partition) == 0:
                return  # none to hand over: no pull's wait for the first
        except TransportError as error:  # not known: pulled as if some waited
            self.log.warning("partition {}: updates waiting on the stream not counted ({})",
                             partition, error)
        while time.monotonic() - began < DRAIN_LIMIT and partition not in self._lost:
            deliveries = self.transport.pull_order_updates(partition, batch=self.batch,
                                                           timeout=DRAIN_WAIT)
            stored = self._hand_over(partition, self.serve, deliveries)
            drained += len(deliveries)
            if len(deliveries) < self.batch or not stored:
                break  # no more waited, or the store refuses: the ordinary flow goes on
        if drained:
            self.log.info("partition {}: {} order updates waiting on the stream handed over "
                          "in {:.3f} s", partition, drained, time.monotonic() - began)

    def _drop_lost(self) -> None:
        with self._lost_lock:
            lost, self._lost = self._lost, set()
        for partition in sorted(lost):
            if partition in self.held and self.held[partition].shared.revoked:
                self._drop(partition, "a write under its lease was refused")

    def run(self, stop: threading.Event) -> None:
        """Steps until ``stop``; the leases are renewed on a thread of their own meanwhile, so
        that a slow step (a System's start, a store that answers late) never lets a lease
        lapse under the runner that holds it."""
        renewals = threading.Thread(target=self._keep_renewing, args=(stop,), daemon=True,
                                    name=f"{self.owner}-renewals")
        renewals.start()
        try:
            while not stop.is_set():
                try:
                    self.step()
                    if not self.held:
                        stop.wait(self.pull_budget)  # nothing to pull: no busy loop of claims
                except (StoreError, TransportError) as error:
                    self.log.warning("runner step failed, trying again: {}", error)
                    stop.wait(1.0)
        finally:
            stop.set()
            renewals.join()

    def _keep_renewing(self, stop: threading.Event) -> None:
        while not stop.wait(self.leases.lease_seconds / RENEW_CHECKS):
            try:
                self._renew()
            except StoreError as error:  # the lease runs on; tried again at the next check
                self.log.warning("lease renewal failed, trying again: {}", error)

    def release_all(self) -> None:
        """Graceful hand-over: what serves each partition stopped in order under its lease,
        then every lease released, so the next owner need not wait."""
        self._drop_lost()
        try:
            self.leases.leave(self.owner)  # first: the others' share grows before the releases
        except StoreError as error:
            self.log.warning("heartbeat not removed (it lapses in a lease): {}", error)
        for partition in sorted(self.held):
            self._release(partition)

    def _release(self, partition: int) -> None:
        """Hand one partition over: what serves it stopped in order under its lease, then the
        lease released, so the next owner need not wait."""
        held = self.held[partition]
        if self.serve is not None and held.served:
            try:
                self.serve.stop(partition, lost=False)
            except LeaseLost:
                self._drop(partition, "a write under its lease was refused at the stop")
                return
            except Exception:  # stopped all the same (at once); the store has the state
                self.log.opt(exception=True).error("partition {}: the orderly stop "
                                                   "failed", partition)
        with self._renewing:  # the renewal thread renews it no more
            del self.held[partition]
            held.shared.revoke()  # stopped: nothing more is written or sent under it
        self.leases.release(held.lease)
        self.log.info("released partition {}", partition)

    def _claim(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            if partition in self.held:
                continue
            lease = self.leases.claim(partition, self.owner)
            if lease is None:
                continue
            wait = self.leases.claim_wait(lease)
            now = self.clock()
            self.held[partition] = Held(lease, now + wait, self._renew_at(lease),
                                        PartitionLease(lease))
            self.log.info("claimed partition {} (epoch {}, acting in {:.1f} s)", partition,
                          lease.epoch, wait)

    def _renew_at(self, lease: Lease) -> float:
        return lease.deadline - 2 * self.leases.lease_seconds / 3

    def _renew(self) -> None:
        """Every lease past a third of its life renewed (from the step or the renewal thread,
        one at a time); one that cannot be is revoked at once and the next step drops its
        partition."""
        with self._renewing:
            now = self.clock()
            for partition, held in list(self.held.items()):
                if now < held.renew_at or held.shared.revoked:
                    continue
                try:
                    renewed = self.leases.renew(held.lease)
                except LeaseLost as lost:
                    self.log.warning("lease of partition {} could not be renewed", partition)
                    self.lease_lost(lost)
                    continue
                held.lease = renewed
                held.renew_at = self._renew_at(renewed)
                held.shared.renewed(renewed)

    def _consume(self, partition: int, timeout: float) -> None:
        deliveries = self.transport.pull_order_updates(partition, batch=self.batch,
                                                       timeout=timeout)
        if self.serve is not None:
            self._hand_over(partition, self.serve, deliveries)
            return
        assert self.deliver is not None and self.current is not None
        held = self.held[partition]
        for delivery in deliveries:
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

    def _hand_over(self, partition: int, serve: Serve, deliveries: list[Delivery]) -> bool:
        """The deliveries to ``serve``, each acked once stored; False when any was not."""
        if not deliveries:
            return True
        try:
            answers = serve.deliver(partition, deliveries)
        except LeaseLost:
            answers = [False] * len(deliveries)
            self.lease_lost(LeaseLost(partition, self.held[partition].lease.epoch))
        except Exception:
            for left in deliveries:
                left.nak()  # not stored: delivered again
            raise
        for delivery, stored in zip(deliveries, answers, strict=True):
            if stored is None:
                continue
            if not stored:
                delivery.nak()  # comes again (to the next owner, if the lease went with it)
                continue
            delivery.ack()
            self.delivered += 1
        return all(stored is not False for stored in answers)

    def _drop(self, partition: int, why: str) -> None:
        held = self.held.pop(partition, None)
        if held is not None:
            held.shared.revoke()  # first: nothing more is written or sent under it
        self.log.warning("partition {} dropped: {}", partition, why)
        if held is not None and held.served and self.serve is not None:
            self.serve.stop(partition, lost=True)


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
