"""The runner's side of serving partitions (SPEC §13), on an in-memory lease table and the
in-process transport: what serves a partition starts once it is ready, updates are acked only
once stored, a lease found lost by a write stops the partition at once, a graceful stop stops
before it releases; price messages and the paper venue's accounts are read strictly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from app.runner import PartitionLease, Runner
from app.serving import parse_price
from app.venue import TOKEN, PaperVenue
from broker.dhan import DhanRest, TokenSource
from broker.transport.local import LocalTransport
from broker.transport.ports import Delivery
from models.common import Instrument, Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.partitions import partition_of
from store.ports import Lease, LeaseLost, Survey

ACCOUNT = "desk-7"
P = partition_of(ACCOUNT)
T0 = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)


class MemoryLeases:
    lease_seconds = 6.0

    def __init__(self) -> None:
        self.released: list[int] = []
        self.log: list[str] = []

    def claim(self, partition: int, owner: str) -> Lease | None:
        return Lease(partition=partition, owner=owner, epoch=1, expires_at=T0,
                     claimed_at=T0, deadline=1e12, previous_expiry=None)

    def renew(self, lease: Lease) -> Lease:
        return lease

    def release(self, lease: Lease) -> bool:
        self.log.append(f"release {lease.partition}")
        self.released.append(lease.partition)
        return True

    def free(self, partitions: Sequence[int]) -> list[int]:
        return sorted(partitions)

    def survey(self, partitions: Sequence[int]) -> Survey:
        return Survey(free=tuple(self.free(partitions)), runners=1)

    def beat(self, owner: str) -> None:
        pass

    def leave(self, owner: str) -> None:
        self.log.append(f"leave {owner}")

    def claim_wait(self, lease: Lease) -> float:
        return 0.0

    def fenced(self, lease: Lease) -> AbstractContextManager[Any]:
        raise AssertionError("the runner itself writes nothing")


class FakeServe:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.answers: list[bool | None] = []
        self.leases: dict[int, PartitionLease] = {}
        self.delivered: list[bytes] = []

    def start(self, partition: int, lease: PartitionLease) -> None:
        self.log.append(f"start {partition}")
        self.leases[partition] = lease

    def ready(self, partition: int, catch_up: Callable[[], object] | None = None) -> None:
        self.log.append(f"ready {partition} after {len(self.delivered)} updates")

    def deliver(self, partition: int, deliveries: Sequence[Delivery]) -> list[bool | None]:
        answers: list[bool | None] = []
        for delivery in deliveries:
            assert delivery.account == ACCOUNT
            self.delivered.append(delivery.data)
            answers.append(self.answers.pop(0) if self.answers else True)
        return answers

    def stop(self, partition: int, *, lost: bool) -> None:
        self.log.append(f"stop {partition} lost={lost}")

    def step(self) -> None:
        pass


@pytest.fixture
def rig() -> tuple[Runner, MemoryLeases, FakeServe, LocalTransport]:
    leases = MemoryLeases()
    serve = FakeServe(leases.log)
    transport = LocalTransport(ack_wait=60)
    runner = Runner(leases, transport, owner="r1", partitions=[P], serve=serve,
                    claim_every=0.0, pull_budget=0.05)
    return runner, leases, serve, transport


def test_when_partition_ready_then_served_once_and_updates_acked_only_when_stored(
        rig: tuple[Runner, MemoryLeases, FakeServe, LocalTransport]) -> None:
    runner, leases, serve, transport = rig
    serve.answers = [True, False, None]
    for n in range(3):
        transport.publish_order_update(ACCOUNT, f"m-{n}", f"frame-{n}".encode())
    runner.step()
    runner.step()
    # started once; every update waiting on the stream handed over before it is made ready
    # (the one nak'ed comes again by the ordinary pulls)
    assert leases.log == [f"start {P}", f"ready {P} after 3 updates"]
    # m-1 was nak'ed (delivered again at once, stored then); m-2 was left for the ack wait
    assert serve.delivered == [b"frame-0", b"frame-1", b"frame-2", b"frame-1"]
    assert runner.delivered == 2  # acked: m-0, and m-1 the second time
    assert transport.pull_order_updates(P, timeout=0) == []


def test_when_a_write_finds_the_lease_lost_then_nothing_more_and_the_partition_stops(
        rig: tuple[Runner, MemoryLeases, FakeServe, LocalTransport]) -> None:
    runner, leases, serve, _ = rig
    runner.step()
    shared = serve.leases[P]
    assert shared().epoch == 1 and shared.deadline() == 1e12
    runner.lease_lost(LeaseLost(P, 1))  # from an actor's thread, in the middle of a write
    with pytest.raises(LeaseLost):
        shared()
    assert shared.deadline() == float("-inf")  # every send refused from now on
    runner.step()
    assert runner.owned() == [P]  # claimed anew by the next round: a new lease, a new start
    assert leases.log == [f"start {P}", f"ready {P} after 0 updates", f"stop {P} lost=True",
                          f"start {P}", f"ready {P} after 0 updates"]
    assert serve.leases[P] is not shared and not serve.leases[P].revoked


def test_when_lost_lease_of_an_older_epoch_reported_then_the_current_one_is_kept(
        rig: tuple[Runner, MemoryLeases, FakeServe, LocalTransport]) -> None:
    runner, leases, serve, _ = rig
    runner.step()
    runner.lease_lost(LeaseLost(P, 0))
    runner.step()
    assert not serve.leases[P].revoked and \
        leases.log == [f"start {P}", f"ready {P} after 0 updates"]


def test_when_stopped_gracefully_then_served_partitions_stop_before_their_release(
        rig: tuple[Runner, MemoryLeases, FakeServe, LocalTransport]) -> None:
    runner, leases, _, _ = rig
    runner.step()
    runner.release_all()
    # its heartbeat goes first: the others' share grows before they see the partition free
    assert leases.log == [f"start {P}", f"ready {P} after 0 updates", "leave r1",
                          f"stop {P} lost=False", f"release {P}"]
    assert runner.owned() == []


class LookedLeases(MemoryLeases):
    """Claims succeed only for partitions marked free; counts claims and looks."""

    def __init__(self) -> None:
        super().__init__()
        self.open: set[int] = set()
        self.claims: list[int] = []
        self.looks = 0

    def claim(self, partition: int, owner: str) -> Lease | None:
        self.claims.append(partition)
        if partition not in self.open:
            return None
        self.open.discard(partition)
        return super().claim(partition, owner)

    def free(self, partitions: Sequence[int]) -> list[int]:
        self.looks += 1
        return sorted(set(partitions) & self.open)


def test_a_partition_freed_between_claim_rounds_is_claimed_at_the_next_look() -> None:
    """A graceful stop releases its leases: a spare finds them at its next look (one read)
    and claims only those, instead of waiting for its next round of claims (a third of a
    lease: 2 s with 6 s leases)."""
    now = [100.0]
    leases = LookedLeases()
    runner = Runner(leases, LocalTransport(ack_wait=60), owner="spare", partitions=[P, P + 1],
                    serve=FakeServe(leases.log), claim_every=2.0, look_every=0.2,
                    pull_budget=0.0, clock=lambda: now[0])
    runner.step()  # the first round: one look, nothing free, no claim tried
    assert leases.claims == [] and leases.looks == 1 and runner.owned() == []
    now[0] += 0.1
    runner.step()  # before the next look: no read at all
    assert leases.looks == 1
    leases.open.add(P + 1)  # released by its owner
    now[0] += 0.15
    runner.step()
    assert leases.looks == 2 and runner.owned() == [P + 1]
    assert leases.claims == [P + 1]  # only the free one was claimed


def test_a_partition_released_while_the_runner_pulls_is_claimed_before_its_next_pulls(
        ) -> None:
    """A graceful stop releases its partitions one after another: the second is released
    while its successor pulls for the first. The look comes between one partition's pull
    and the next's (not after every pull of the step), and a claim ends the step's pulls."""
    now = [100.0]
    leases = LookedLeases()
    leases.open |= {P, P + 1}

    class Releasing(LocalTransport):
        """Each pull takes its whole wait on the clock; once armed, the next lets P + 2 go."""

        def __init__(self) -> None:
            super().__init__(ack_wait=60, clock=lambda: now[0])
            self.pulls: list[int] = []
            self.armed = False

        def pull_order_updates(self, partition: int, *, batch: int = 100,
                               timeout: float = 1.0) -> list[Delivery]:
            self.pulls.append(partition)
            now[0] += timeout
            if self.armed:
                self.armed = False
                leases.open.add(P + 2)  # released by its owner meanwhile
            return []

    transport = Releasing()
    runner = Runner(leases, transport, owner="r2", partitions=[P, P + 1, P + 2],
                    serve=FakeServe(leases.log), claim_every=60.0, look_every=0.2,
                    pull_budget=0.4, clock=lambda: now[0])
    runner.step()  # claims P and P + 1, starts and serves both, then pulls from each
    assert runner.owned() == [P, P + 1] and transport.pulls == [P, P + 1]
    pulls, transport.armed = len(transport.pulls), True
    runner.step()  # P's pull (0.2 s) lets P + 2 go: a look is due, so claimed at once
    assert runner.owned() == [P, P + 1, P + 2]
    assert transport.pulls[pulls:] == [P]  # P + 1's pull left to the next step
    runner.step()
    assert f"start {P + 2}" in leases.log


def test_when_runner_given_neither_or_both_ways_of_serving_then_refused() -> None:
    with pytest.raises(ValueError, match="serves"):
        Runner(MemoryLeases(), LocalTransport(), owner="r1", partitions=[P])


@pytest.mark.parametrize(("data", "expected"), [
    (b"101.35", Decimal("101.35")), (b" 7\n", Decimal("7")), (b"0", None), (b"-1", None),
    (b"NaN", None), (b"Infinity", None), (b"abc", None), (b"\xff", None), (b"", None)])
def test_when_price_message_read_then_only_a_positive_decimal_passes(
        data: bytes, expected: Decimal | None) -> None:
    assert parse_price(data) == expected


def test_when_venue_publishes_updates_then_each_goes_to_its_accounts_partition() -> None:
    transport = LocalTransport()
    venue = PaperVenue(transport, ["a", "a-b"], clock=lambda: T0 + timedelta(hours=5))

    def update(order_no: str, correlation: str) -> OrderUpdate:
        return OrderUpdate(order_no=order_no, status=OrderStatus.TRADED,
                           segment=Segment.NSE_FNO, security_id="40001", txn_type=TxnType.BUY,
                           product="I", quantity=50, traded_qty=50,
                           avg_traded_price=Decimal("100"), updated_at=T0,
                           correlation_id=correlation)

    assert venue._account(update("PB1", "E-a-b-1")) == "a-b"  # not "a": the id is whole
    assert venue._account(update("PB2", "E-a-2")) == "a"
    assert venue._account(update("PB3", "X-PPB1-1")) == "a-b"  # an exit, by its entry's
    assert venue._account(update("PB4", "APP-9")) is None


def test_when_venue_records_then_each_accounts_book_nets_its_entries_and_their_exits() -> None:
    now = T0 + timedelta(hours=5)
    venue = PaperVenue(LocalTransport(), ["a", "a-b"], clock=lambda: now, quantity=50)
    venue._enter(now)  # a's
    venue._enter(now)  # a-b's
    venue._enter(now)  # a's
    later = now + timedelta(seconds=1)
    venue.market.advance(later)
    venue.exchange.advance(later)
    entries = {o.client_id: o for o in venue.exchange.orders()}
    first = entries["E-a-1"]
    venue.exchange.place_order(client_id=f"X-P{first.order_no}-1", instrument=first.instrument,
                               txn_type=TxnType.SELL, quantity=50, product="I", now=later)
    venue.exchange.place_order(client_id="APP-1", instrument=first.instrument,  # no account's
                               txn_type=TxnType.SELL, quantity=10, product="I", now=later)
    venue.exchange.advance(later + timedelta(seconds=1))

    record = venue.record()
    assert record["entries"] == 3 and record["placements"] == []  # none came over REST
    nets: dict[str, dict[tuple[str, str], int]] = {}
    for account, rows in record["books"].items():
        for segment, security, product, net in rows:
            assert product == "I"
            nets.setdefault(account, {})
            nets[account][(segment, security)] = nets[account].get((segment, security), 0) + net
    third = entries["E-a-3"].instrument
    # the first entry bought and sold (its exit known by its entry), the third held; the
    # order of no account's counted nowhere
    assert {k: v for k, v in nets["a"].items() if v} == {
        (third.segment.value, third.security_id): 50}
    b = entries["E-a-b-2"].instrument
    assert nets["a-b"] == {(b.segment.value, b.security_id): 50}


class SharedLeases(MemoryLeases):
    """One lease table for several runners: a partition has one owner at a time; heartbeats
    count the runners."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[int, str] = {}
        self.beating: set[str] = set()
        self.epochs: dict[int, int] = {}

    def claim(self, partition: int, owner: str) -> Lease | None:
        if self.owners.get(partition, owner) != owner:
            return None
        self.owners[partition] = owner
        self.epochs[partition] = self.epochs.get(partition, 0) + 1
        return Lease(partition=partition, owner=owner, epoch=self.epochs[partition],
                     expires_at=T0, claimed_at=T0, deadline=1e12, previous_expiry=None)

    def release(self, lease: Lease) -> bool:
        assert self.owners.get(lease.partition) == lease.owner
        del self.owners[lease.partition]
        self.log.append(f"release {lease.partition} by {lease.owner}")
        return True

    def free(self, partitions: Sequence[int]) -> list[int]:
        return sorted(p for p in partitions if p not in self.owners)

    def survey(self, partitions: Sequence[int]) -> Survey:
        return Survey(free=tuple(self.free(partitions)), runners=len(self.beating))

    def beat(self, owner: str) -> None:
        self.beating.add(owner)

    def leave(self, owner: str) -> None:
        self.beating.discard(owner)


def test_a_runner_joining_gets_a_fair_share_handed_over_one_at_a_time() -> None:
    wanted = [10, 20, 30, 40]
    leases = SharedLeases()
    log: list[str] = leases.log

    def runner(owner: str) -> Runner:
        return Runner(leases, LocalTransport(ack_wait=60), owner=owner, partitions=wanted,
                      serve=FakeServe(log), claim_every=0.0, pull_budget=0.0, share=True)

    first = runner("r1")
    first.step()
    assert first.owned() == wanted  # alone: all of them
    second = runner("r2")
    second.step()  # its heartbeat: r1 is over its share of 2 from now on
    assert second.owned() == []
    for _ in range(4):
        first.step()  # at most one released a step, and only once the last one was taken
        assert len(leases.free(wanted)) <= 1
        second.step()
        assert not set(first.owned()) & set(second.owned())
    assert (first.owned(), second.owned()) == ([10, 20], [30, 40])
    handed = log.index("release 40 by r1")  # stopped in order under its lease first
    assert log[handed - 1] == "stop 40 lost=False" and "start 40" in log[handed:]
    first.release_all()  # a graceful stop: r2's share is everything at once
    second.step()
    assert second.owned() == wanted


def test_without_sharing_a_runner_keeps_every_partition_a_joining_one_wants() -> None:
    leases = SharedLeases()
    first = Runner(leases, LocalTransport(ack_wait=60), owner="r1", partitions=[10, 20],
                   serve=FakeServe(leases.log), claim_every=0.0, pull_budget=0.0)
    second = Runner(leases, LocalTransport(ack_wait=60), owner="r2", partitions=[10, 20],
                    serve=FakeServe(leases.log), claim_every=0.0, pull_budget=0.0, share=True)
    first.step()
    for _ in range(3):
        second.step()
        first.step()
    assert (first.owned(), second.owned()) == ([10, 20], [])


def test_every_partition_ready_is_started_before_any_is_pulled_from() -> None:
    """A partition handed over waits for no other's pull (each may wait its share of the
    budget): the second start comes before the first partition's updates are handed over."""
    leases = MemoryLeases()

    class Logged(FakeServe):
        def deliver(self, partition: int, deliveries: Sequence[Delivery]
                    ) -> list[bool | None]:
            self.log.append(f"deliver {partition}")
            return super().deliver(partition, deliveries)

    transport = LocalTransport(ack_wait=60)
    runner = Runner(leases, transport, owner="r1", partitions=[P, P + 1],
                    serve=Logged(leases.log), claim_every=0.0, pull_budget=0.05)
    transport.publish_order_update(ACCOUNT, "m-1", b"frame")
    runner.step()
    assert leases.log == [f"start {P}", f"start {P + 1}", f"deliver {P}",
                          f"ready {P} after 1 updates", f"ready {P + 1} after 1 updates"]


def test_a_partition_with_no_update_waiting_is_made_ready_without_waiting_for_a_pull() -> None:
    """A hand-over's drain asks the stream first: with nothing held for the partition it
    pulls nothing (a pull would wait ``DRAIN_WAIT`` for a first update that never comes)."""

    class Pulls(LocalTransport):
        def __init__(self) -> None:
            super().__init__(ack_wait=60)
            self.pulls: list[int] = []

        def pull_order_updates(self, partition: int, *, batch: int = 100,
                               timeout: float = 1.0) -> list[Delivery]:
            self.pulls.append(partition)
            return super().pull_order_updates(partition, batch=batch, timeout=timeout)

    leases = MemoryLeases()
    transport = Pulls()
    runner = Runner(leases, transport, owner="r1", partitions=[P, P + 1],
                    serve=FakeServe(leases.log), claim_every=0.0, pull_budget=0.05)
    transport.publish_order_update(ACCOUNT, "m-1", b"frame")  # P's; P + 1 holds none
    runner.step()
    # P drained (one pull brought its one update), P + 1 not at all; then each one's
    # ordinary pull (without the count: P, P + 1, P, P + 1)
    assert transport.pulls == [P, P, P + 1]
    assert leases.log[-2:] == [f"ready {P} after 1 updates", f"ready {P + 1} after 1 updates"]


def test_a_reconciles_catch_up_hands_over_what_the_stream_brought_since() -> None:
    """``Serve.ready`` is given a catch-up: an update published while the broker's positions
    were read (after the drain found none) is handed over by it, one pull that waits for it."""
    leases = MemoryLeases()
    transport = LocalTransport(ack_wait=60)

    class CatchingUp(FakeServe):
        def ready(self, partition: int, catch_up: Callable[[], object] | None = None) -> None:
            transport.publish_order_update(ACCOUNT, "m-late", b"late")  # on its way meanwhile
            assert catch_up is not None
            before = len(self.delivered)
            catch_up()
            self.log.append(f"caught up {len(self.delivered) - before}")

    serve = CatchingUp(leases.log)
    runner = Runner(leases, transport, owner="r1", partitions=[P], serve=serve,
                    claim_every=0.0, pull_budget=0.05)
    runner.step()
    assert leases.log == [f"start {P}", "caught up 1"] and serve.delivered == [b"late"]
    assert runner.delivered == 1  # stored, acked


def test_when_venue_serves_accounts_then_each_reads_only_its_own_books() -> None:
    now = T0 + timedelta(hours=5)
    venue = PaperVenue(LocalTransport(), ["a", "a-b"], clock=lambda: now, quantity=50)
    venue._enter(now)  # a's
    venue._enter(now)  # a-b's
    later = now + timedelta(seconds=1)
    venue.market.advance(later)
    venue.exchange.advance(later)
    entries = {o.client_id: o for o in venue.exchange.orders()}
    first = entries["E-a-1"]
    exit_no = venue.exchange.place_order(  # a's exit, known by its entry
        client_id=f"X-P{first.order_no}-1", instrument=first.instrument,
        txn_type=TxnType.SELL, quantity=20, product="I", now=later)
    venue.exchange.advance(later + timedelta(seconds=1))
    venue.fake.start()
    clients = {account: DhanRest(venue.fake.rest_url, account, TokenSource(token=TOKEN))
               for account in ("a", "a-b", "nobody")}
    try:
        orders = {account: sorted(o.order_id for o in rest.orders().value or [])
                  for account, rest in clients.items()}
        assert orders == {"a": sorted([first.order_no, exit_no]),
                          "a-b": [entries["E-a-b-2"].order_no], "nobody": []}
        nets = {account: {(p.instrument.security_id, p.net_qty)
                          for p in rest.positions().value or [] if p.net_qty}
                for account, rest in clients.items()}
        assert nets == {"a": {(first.instrument.security_id, 30)},
                        "a-b": {(entries["E-a-b-2"].instrument.security_id, 50)},
                        "nobody": set()}
        exit_id = f"X-P{first.order_no}-1"
        assert clients["a-b"].order_by_correlation(exit_id).value is None  # not its own
        found = clients["a"].order_by_correlation(exit_id).value
        assert found is not None and found.order_id == exit_no
    finally:
        for rest in clients.values():
            rest.close()
        venue.fake.stop()


def test_when_the_lease_is_lost_while_the_stream_drains_then_stopped_never_made_ready(
        rig: tuple[Runner, MemoryLeases, FakeServe, LocalTransport]) -> None:
    runner, leases, _, transport = rig

    class Refusing(FakeServe):
        def deliver(self, partition: int, deliveries: Sequence[Delivery]
                    ) -> list[bool | None]:
            raise LeaseLost(partition, 1)  # the store refused the write: a newer owner

    refusing = Refusing(leases.log)
    runner.serve = refusing
    transport.publish_order_update(ACCOUNT, "m-1", b"frame")
    runner.step()
    assert leases.log[:2] == [f"start {P}", f"stop {P} lost=True"]  # no "ready" between
    assert not any(line.startswith("ready") for line in leases.log)
    [again] = transport.pull_order_updates(P, timeout=0)
    assert again.msg_id == "m-1"  # not acked: the next owner gets it


class Frames:
    """What ``AccountSystems`` asks of a System to store updates (``System.store_frames``)."""

    def __init__(self, account: str, answer: bool = True) -> None:
        self.account, self.answer = account, answer
        self.writes: list[list[str]] = []

    def start(self) -> None:
        pass

    def store_frames(self, raws: Sequence[str], timeout: float) -> bool:
        self.writes.append(list(raws))
        return self.answer


def test_a_pulls_updates_are_stored_in_one_write_per_account_in_order() -> None:
    from app.serving import AccountSystems, Served

    one, other, stranger = "acct-0", "acct-20", "acct-572"  # one partition
    partition = partition_of(one)
    assert partition_of(other) == partition_of(stranger) == partition
    systems = {one: Frames(one), other: Frames(other, answer=False)}
    serving = AccountSystems([one, other], lambda account, lease: Served(
        systems[account]),  # type: ignore[arg-type]
        LocalTransport(), clock=lambda: datetime.now(UTC))
    lease = Lease(partition=partition, owner="r1", epoch=1, expires_at=T0, claimed_at=T0,
                  deadline=1e12)
    serving.start(partition, PartitionLease(lease))
    transport = LocalTransport(ack_wait=60)
    for n, account in enumerate([one, other, one, stranger, one]):
        transport.publish_order_update(account, f"m-{n}", f"frame-{n}".encode())
    pulled = transport.pull_order_updates(partition, timeout=0)
    # m-1 not stored (no ack: it comes again); m-3's account is not served here (left)
    assert serving.deliver(partition, pulled) == [True, False, True, None, True]
    assert systems[one].writes == [["frame-0", "frame-2", "frame-4"]]  # one write, in order
    assert systems[other].writes == [["frame-1"]]


def test_when_the_store_refuses_the_waiting_updates_the_partition_is_made_ready_at_once() -> None:
    leases = MemoryLeases()
    serve = FakeServe(leases.log)
    serve.answers = [False] * 20  # the store refuses: every update comes again
    transport = LocalTransport(ack_wait=60)
    runner = Runner(leases, transport, owner="r1", partitions=[P], serve=serve,
                    claim_every=0.0, pull_budget=0.05, batch=2)
    for n in range(5):
        transport.publish_order_update(ACCOUNT, f"m-{n}", f"frame-{n}".encode())
    runner.step()
    # one pull handed over, then made ready: no pulling the same refused updates again
    assert leases.log[:2] == [f"start {P}", f"ready {P} after 2 updates"]


class Holding(Frames):
    """A System holding open positions, for the runner's price and circuit steps."""

    def __init__(self, account: str, *instruments: Instrument) -> None:
        super().__init__(account)
        self.instruments = instruments

    def open_positions(self) -> list[Any]:
        return [SimpleNamespace(segment=i.segment, security_id=i.security_id)
                for i in self.instruments]

    def status(self) -> dict[str, Any]:
        return {"account": self.account, "positions": {"ACTIVE": len(self.instruments)}}


class Reading:
    """A ``CircuitReader`` stand-in: what it was asked, and how many it knows."""

    def __init__(self, *, failing: bool = False) -> None:
        self.asked: list[set[Instrument]] = []
        self.failing = failing

    def read(self, instruments: Iterable[Instrument]) -> int:
        self.asked.append(set(instruments))
        if self.failing:
            raise RuntimeError("the quote endpoint answered garbage")
        return len(self.asked[-1])

    def known(self) -> int:
        return 0 if self.failing else len(set().union(*self.asked)) if self.asked else 0


def test_a_served_account_reads_the_circuit_limits_of_what_it_holds_once_ready() -> None:
    from app.serving import AccountSystems, Served

    fut = Instrument(segment=Segment.NSE_FNO, security_id="49081")
    eq = Instrument(segment=Segment.NSE_EQ, security_id="1333")
    one, other = "acct-0", "acct-20"  # one partition
    partition = partition_of(one)
    systems = {one: Holding(one, fut, eq), other: Holding(other, eq)}
    readers = {one: Reading(), other: Reading(failing=True)}
    transport = LocalTransport()
    serving = AccountSystems([one, other], lambda account, lease: Served(
        systems[account], circuits=readers[account]),  # type: ignore[arg-type]
        transport, clock=lambda: datetime.now(UTC))
    lease = Lease(partition=partition, owner="r1", epoch=1, expires_at=T0, claimed_at=T0,
                  deadline=1e12)
    serving.start(partition, PartitionLease(lease))
    serving.step()
    assert readers[one].asked == [] and serving.subscribed() == set()  # not ready: nothing
    serving.ready(partition)  # reconciled (no books here), then a step
    assert serving.subscribed() == {fut, eq}  # the step did not wait for the reads
    deadline = time.monotonic() + 5
    while serving.circuit_reads.done < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert readers[one].asked == [{fut, eq}]  # on the reads' own thread
    assert readers[other].asked == [{eq}]  # its reader failed: logged, nothing else
    report = serving.report()
    assert report[one]["circuits_known"] == 2 and report[other]["circuits_known"] == 0
    serving.step()  # each account asked once per step at most, again only for the unknown
    deadline = time.monotonic() + 5
    while serving.circuit_reads.done < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(readers[one].asked) == 2  # the reader itself skips what it knows
    serving.close()


class Books:
    """A ``BookReader`` stand-in: a takeover that agrees, and the rechecks it was asked for."""

    def __init__(self) -> None:
        self.rechecks = 0

    def takeover(self, catch_up: Any = None) -> bool:
        return True

    def recheck(self) -> bool:
        self.rechecks += 1
        return False


def test_each_step_asks_a_ready_accounts_books_for_a_recheck_that_is_due() -> None:
    """A difference a takeover's reconcile left is compared again from the runner's steps
    (``BookReader.recheck``, which knows whether one is due), once the account is ready."""
    from app.serving import AccountSystems, Served

    account = "acct-0"
    partition = partition_of(account)
    books = Books()
    serving = AccountSystems([account], lambda acct, lease: Served(
        Holding(acct), books=books),  # type: ignore[arg-type]
        LocalTransport(), clock=lambda: datetime.now(UTC))
    lease = Lease(partition=partition, owner="r1", epoch=1, expires_at=T0, claimed_at=T0,
                  deadline=1e12)
    serving.start(partition, PartitionLease(lease))
    serving.step()
    assert books.rechecks == 0  # not ready yet: its reconcile has not run
    serving.ready(partition)
    serving.step()
    assert books.rechecks == 2  # the ready's own step, then this one
    serving.close()
