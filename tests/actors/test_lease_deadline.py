"""An exit is never sent once the partition's lease ends within the margin (SPEC §13): the
gateway refuses it before it leaves, the position stays protected, and the exit goes out on the
retry once the lease is renewed."""

from __future__ import annotations

from datetime import timedelta

import pykka

from broker.leased import leased
from models.orders import OrderStatus
from models.position import PositionStatus
from tests.actors.test_exit_resolution import Rig
from tests.actors.test_tracker_flow import T0


class Lease:
    """The runner's view of its lease on a monotonic clock it controls."""

    def __init__(self) -> None:
        self.now, self.deadline = 1000.0, 1000.5  # ends within the 1 s margin

    def clock(self) -> float:
        return self.now


def test_when_lease_ends_within_margin_then_exit_not_sent_until_renewed() -> None:
    lease = Lease()
    rig = Rig(wrap=lambda exchange: leased(exchange, lambda: lease.deadline, margin=1.0,
                                           clock=lease.clock))
    try:
        pid = rig.enter("E1")
        rig.at(T0 + timedelta(seconds=1), "170")  # stop loss: the exit is decided ...
        rig.at(T0 + timedelta(seconds=2), "170")
        assert rig.exits() == []  # ... and never reached the exchange
        assert rig.store.positions[pid].status is not PositionStatus.EXITED
        refused = [a.outcome or "" for a in rig.store.exit_attempts(pid)]
        assert refused and all(o.startswith("FAILED") and "lease" in o for o in refused)
        lease.deadline = lease.now + 6  # renewed
        for second in range(3, 40):
            rig.at(T0 + timedelta(seconds=second), "170")
            if rig.exits():
                break
        assert [status for _, status in rig.exits()] == [OrderStatus.TRADED]
        assert rig.store.positions[pid].status is PositionStatus.EXITED
        assert rig.system.books().agree
    finally:
        rig.system.stop()
        pykka.ActorRegistry.stop_all()
