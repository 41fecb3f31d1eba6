"""What a position's keeper and the shells around it share: where its messages go, the context
it runs in, and the back-off of exit retries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from actors.metrics import Metrics
from models.policy import RiskConfig
from models.position import ExitReason
from store.ports import Store

STICKY = frozenset({ExitReason.KILL_SWITCH, ExitReason.MANUAL, ExitReason.SESSION_END})
"""Reasons that keep retrying after a failed exit whatever the price does."""


class Target(Enum):
    SUPERVISOR = "supervisor"
    INDEX = "index"
    PNL = "pnl"
    BATCHER = "batcher"
    ORDERS = "orders"


Out = list[tuple[Target, object]]
ANNOUNCE = (Target.INDEX, Target.SUPERVISOR, Target.PNL, Target.ORDERS)


@dataclass(frozen=True)
class KeeperContext:
    store: Store
    config: RiskConfig
    clock: Callable[[], datetime]
    metrics: Metrics
    checkpoint_every: timedelta = timedelta(seconds=5)


def retry_delay(attempt: int) -> timedelta:
    """Back-off between exit attempts: 0.5 s, 1 s, 2 s, … capped at 30 s."""
    return timedelta(seconds=min(30.0, 0.5 * 2 ** max(0, attempt - 1)))
