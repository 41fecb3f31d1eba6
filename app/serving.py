"""What a runner runs on its partitions (SPEC §13): one ``System`` per account of each partition
it holds, fed the account's order updates and the prices of its open positions.

- **Start** (``start``, once the partition is ready): each account's ``System`` is made by the
  composition root (``make(account, lease)``: a store fenced by the partition's lease, a gateway
  that sends only under it) and started: it loads the account's open positions from the store,
  routes again the stored frames not yet marked applied, and resumes every exit in flight by
  looking its order up by client id before placing anything (``System.start``). The runner
  then hands over the order updates waiting on the stream (``Runner._drain``) and calls
  ``ready``: each account is reconciled with the broker (``Served.reconcile``,
  ``BookReader.takeover``): its positions compared with the broker's, and only when they
  differ its order book read in as frames (fills the stream has not brought yet, orders placed
  elsewhere) and compared again, a difference alarmed, never traded away; all before its
  prices are subscribed. A reconcile that could not read the broker's books is tried again
  every ``RECONCILE_RETRY`` seconds while the account is served (its positions stay protected
  meanwhile).
- **Order updates** (``deliver``): the update's account (the transport carries it) picks the
  System; a pull's updates of one account are stored in one write, in order, and count as
  delivered once the order-update actor has stored them (``System.store_frames``), so the
  runner acks them only then. An update of an account this runner
  does not serve is left unacked, for a runner configured with it.
- **Prices** (``step``): the instruments of every open position of the running Systems are
  subscribed on the transport (``prices.<segment>.<security>``) and unsubscribed once no
  position needs them; each price goes to the tick path of the Systems holding the instrument.
  A price is the last traded price as decimal text (``b"101.35"``); anything else is logged and
  dropped. The circuit limits of each held instrument are read once, as for a live session,
  on a thread of their own (``CircuitReads``; ``Served.circuits``, ``broker/dhan/circuits.py``).
- **Stop** (``stop``): in order (``System.stop``: checkpoints under the live lease) on a graceful
  stop; at once (``System.abandon``) when the lease is lost, writing and sending nothing more.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import pykka
from loguru import logger

from actors.system import System
from app.console import status_line
from app.reconcile import BookReader
from app.runner import PartitionLease
from broker.transport.ports import Delivery, Subscription, Transport
from models.accounts import check_account, shown
from models.common import Instrument
from models.partitions import partition_of
from store.ports import LeaseLost

FRAME_WAIT = 10.0
"""Seconds a runner waits for an order update to be stored before it naks it."""
RECONCILE_RETRY = 2.0
"""Seconds between tries of a takeover's reconcile that could not read the broker's books."""


class Circuits(Protocol):
    def read(self, instruments: Iterable[Instrument]) -> int: ...

    def known(self) -> int: ...


@dataclass
class Served:
    """One account's running System and what goes with it."""

    system: System
    note_price: Callable[[Instrument, Decimal], None] | None = None
    """Hears every price first (a gateway pricing its exits from the last one)."""
    close: Callable[[], None] = field(default=lambda: None)
    """Closes the adapters (store, broker client) once the System has stopped."""
    books: BookReader | None = None
    """Reads the account's books at the broker into the System (None: nothing to reconcile)."""
    reconcile_at: float | None = None
    """``time.monotonic()`` after which a failed reconcile is tried again (None: done)."""
    read_book: bool = False
    """Read the whole order book at every takeover, not only when the positions differ
    (``BookReader.takeover``): for order updates from a stream not known to be complete."""
    ready: bool = False
    """Reconciled (or its reconcile tried): its prices are subscribed."""
    circuits: Circuits | None = None
    """Reads the circuit limits of the instruments it holds that have none yet
    (``broker.dhan.circuits.CircuitReader``; None: none to read)."""

    def recheck(self) -> None:
        """A difference the last reconcile left, compared again once it is due
        (``BookReader.recheck``)."""
        if self.books is None:
            return
        try:
            self.books.recheck()
        except Exception as error:  # the runner outlives any one broker failure
            logger.warning("account {}: positions not compared again ({}); tried again",
                           self.system.account, type(error).__name__)

    def reconcile(self, catch_up: Callable[[], object] | None = None) -> bool:
        """The account's books checked against the broker's (``BookReader.takeover``, with
        ``catch_up``); False (and tried again later) when they could not be read."""
        if self.books is None:
            return True
        try:
            done = self.books.reconcile() if self.read_book else \
                self.books.takeover(catch_up)
        except Exception as error:  # the runner outlives any one broker failure
            logger.warning("account {}: reconcile failed ({}); trying again",
                           self.system.account, type(error).__name__)
            done = False
        self.reconcile_at = None if done else time.monotonic() + RECONCILE_RETRY
        return done


MakeSystem = Callable[[str, PartitionLease], Served]


def parse_price(data: bytes) -> Decimal | None:
    """A price message's last traded price; None when it is not a positive decimal."""
    try:
        price = Decimal(data.decode("ascii").strip())
    except (UnicodeDecodeError, InvalidOperation):
        return None
    return price if price.is_finite() and price > 0 else None


class CircuitReads:
    """The served accounts' circuit-limit reads, off the runner's thread: a quote request may
    wait up to a second for the quote bucket's slot (its stale prices are quoted too), and the
    runner's step delivers every partition's order updates. One worker thread; an account's
    read is queued at most once at a time, and skipped once it is no longer served."""

    def __init__(self, serving: Callable[[Served], bool]) -> None:
        self.serving = serving
        self._queue: queue.SimpleQueue[tuple[Served, frozenset[Instrument]] | None] = \
            queue.SimpleQueue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.done = 0
        """Reads finished (tried), for a caller that waits for them."""

    def ask(self, served: Served, instruments: Iterable[Instrument]) -> None:
        with self._lock:
            if id(served) in self._pending:
                return
            self._pending.add(id(served))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="circuit-reads",
                                                daemon=True)
                self._thread.start()
        self._queue.put((served, frozenset(instruments)))

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            served, instruments = item
            try:
                if served.circuits is not None and self.serving(served):
                    served.circuits.read(instruments)
            except Exception:  # the runner outlives any one broker failure
                logger.opt(exception=True).warning(
                    "account {}: circuit limits not read", served.system.account)
            finally:
                with self._lock:
                    self._pending.discard(id(served))
                    self.done += 1


class AccountSystems:
    """``AccountSystems(accounts, make, transport)``: the ``Serve`` of a runner whose accounts
    are ``accounts``; ``partitions()`` is the set of partitions to claim."""

    def __init__(self, accounts: Iterable[str], make: MakeSystem, transport: Transport, *,
                 clock: Callable[[], datetime], frame_wait: float = FRAME_WAIT) -> None:
        self.by_partition: dict[int, list[str]] = {}
        for account in sorted(set(accounts)):
            self.by_partition.setdefault(partition_of(check_account(account)), []).append(
                account)
        self.make, self.transport, self.clock = make, transport, clock
        self.frame_wait = frame_wait
        self.running: dict[int, dict[str, Served]] = {}
        self._subscriptions: dict[Instrument, Subscription] = {}
        self._holders: dict[Instrument, tuple[Served, ...]] = {}
        """Read on the transport's thread: replaced whole, never changed in place."""
        self.circuit_reads = CircuitReads(lambda served: any(
            served is one for accounts in list(self.running.values())
            for one in list(accounts.values())))

    def partitions(self) -> list[int]:
        return sorted(self.by_partition)

    def subscribed(self) -> set[Instrument]:
        return set(self._subscriptions)

    def systems(self, partition: int) -> dict[str, System]:
        return {account: served.system
                for account, served in self.running.get(partition, {}).items()}

    # Serve ------------------------------------------------------------------------------------
    def start(self, partition: int, lease: PartitionLease) -> None:
        started: dict[str, Served] = {}
        try:
            for account in self.by_partition.get(partition, []):
                began = time.perf_counter()
                served = self.make(account, lease)
                logger.info("partition {}: account {} made in {:.3f} s", partition, account,
                            time.perf_counter() - began)
                try:
                    served.system.start()
                except BaseException:
                    served.system.abandon()
                    served.close()
                    raise
                started[account] = served
                logger.info("partition {}: account {} started", partition, account)
        except BaseException:
            for served in started.values():  # nothing of a partition half-served
                self._stop_one(served, lost=True)
            raise
        self.running[partition] = started

    def ready(self, partition: int, catch_up: Callable[[], object] | None = None) -> None:
        """Each account reconciled with the broker, now that the stream's waiting updates are
        in (``catch_up`` takes in what came since: ``BookReader.takeover``); then its prices
        subscribed. An account whose reconcile failed is served all the same (its positions
        protected) and reconciled again every ``RECONCILE_RETRY`` s."""
        for account, served in self.running.get(partition, {}).items():
            served.reconcile(catch_up)
            served.ready = True
            logger.info("partition {}: account {} reconciled{}", partition, account,
                        "" if served.reconcile_at is None else " (not yet: tried again)")
        self.step()

    def deliver(self, partition: int, deliveries: Sequence[Delivery]) -> list[bool | None]:
        """Each account's updates among ``deliveries`` stored in one write, in order
        (``System.store_frames``); an answer per delivery, as ``Serve.deliver`` says."""
        answers: list[bool | None] = [None] * len(deliveries)
        by_account: dict[str, list[int]] = {}
        for number, delivery in enumerate(deliveries):
            by_account.setdefault(delivery.account, []).append(number)
        for account, numbers in by_account.items():
            served = self.running.get(partition, {}).get(account)
            if served is None:
                logger.error("{} order updates of account {!r} on partition {} (first {}): no "
                             "such account here (left for a runner that serves it)",
                             len(numbers), account, partition, deliveries[numbers[0]].msg_id)
                continue
            raws = [deliveries[n].data.decode("utf-8", errors="replace") for n in numbers]
            try:
                stored: bool | None = served.system.store_frames(raws, timeout=self.frame_wait)
            except (pykka.Timeout, pykka.ActorDeadError) as error:  # not known to be stored
                logger.warning("{} order updates of account {} not stored in time ({}): they "
                               "come again", len(numbers), account, type(error).__name__)
                stored = False
            for n in numbers:
                answers[n] = stored
        return answers

    def stop(self, partition: int, *, lost: bool) -> None:
        served = self.running.pop(partition, {})
        self.step()  # its instruments unsubscribed unless another partition holds them
        refused: LeaseLost | None = None
        for one in served.values():
            try:
                self._stop_one(one, lost=lost or refused is not None)
            except LeaseLost as error:
                refused = error
        if refused is not None:
            raise refused

    def step(self) -> None:
        holders: dict[Instrument, list[Served]] = {}
        now = time.monotonic()
        for accounts in self.running.values():
            for served in accounts.values():
                if not served.ready:
                    continue  # started, its stream's waiting updates not in yet
                if served.reconcile_at is not None and now >= served.reconcile_at:
                    served.reconcile()
                served.recheck()
                try:
                    positions = served.system.open_positions()
                except pykka.ActorDeadError:
                    continue
                held = {Instrument(segment=p.segment, security_id=p.security_id)
                        for p in positions}
                for instrument in held:
                    holders.setdefault(instrument, []).append(served)
                if served.circuits is not None and held:
                    self.circuit_reads.ask(served, held)
        self._holders = {i: tuple(found) for i, found in holders.items()}
        for instrument in sorted(set(self._subscriptions) - set(holders), key=str):
            self._subscriptions.pop(instrument).unsubscribe()
        for instrument in sorted(set(holders) - set(self._subscriptions), key=str):
            self._subscriptions[instrument] = self.transport.subscribe_prices(
                instrument.segment.value, instrument.security_id, self._pricer(instrument))

    def report(self) -> dict[str, Any]:
        """Each served account as the operator sees it (its partition, status line, positions,
        books, the last reconcile with the broker); an account whose System does not answer
        in time says so."""
        accounts: dict[str, Any] = {}
        for partition, served_here in sorted(list(self.running.items())):
            for account, served in sorted(served_here.items()):
                row: dict[str, Any] = {"partition": partition}
                try:
                    status = served.system.status()
                except (pykka.Timeout, pykka.ActorDeadError) as error:
                    row["status_line"] = f"account {shown(account)}: no answer " \
                                         f"({type(error).__name__})"
                else:
                    row.update(status_line=status_line(status, self.clock().strftime("%H:%M:%S")),
                               positions=status.get("positions", {}),
                               books=status.get("books"),
                               unprotected=len(status.get("unprotected", [])),
                               alarms=list(status.get("alarms", []))[-5:])
                    if served.circuits is not None:
                        row["circuits_known"] = served.circuits.known()
                reconciled = served.books.reconciled if served.books is not None else None
                if reconciled is not None:
                    row["reconciled"] = {
                        "at": reconciled.at.isoformat() if reconciled.at else None,
                        "differences": reconciled.differences, "error": reconciled.error,
                        "book_read": reconciled.book_read,
                        "due_again": served.reconcile_at is not None}
                accounts[account] = row
        return accounts

    def close(self) -> None:
        """Every subscription ended (after every partition stopped)."""
        for subscription in self._subscriptions.values():
            subscription.unsubscribe()
        self._subscriptions.clear()
        self._holders = {}
        self.circuit_reads.close()

    # Helpers ----------------------------------------------------------------------------------
    def _pricer(self, instrument: Instrument) -> Callable[[bytes], None]:
        def on_price(data: bytes) -> None:
            price = parse_price(data)
            if price is None:
                logger.warning("price of {} dropped: not a positive decimal: {!r:.80}",
                               instrument, data)
                return
            at = self.clock()
            for served in self._holders.get(instrument, ()):
                if served.note_price is not None:
                    served.note_price(instrument, price)
                try:
                    served.system.tick(instrument, price, at)
                except pykka.ActorDeadError:
                    continue  # its partition is stopping

        return on_price

    def _stop_one(self, served: Served, *, lost: bool) -> None:
        started = time.monotonic()
        try:
            if not lost:
                served.system.stop()
        except LeaseLost:  # lost while stopping: abandoned below, writing nothing more
            raise
        finally:
            served.system.abandon()  # nothing left to do after an orderly stop
            served.close()
        logger.info("account {} stopped{} in {:.2f} s", served.system.account,
                    " at once" if lost else "", time.monotonic() - started)
