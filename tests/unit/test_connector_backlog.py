"""The connector's backlog (``app/connector.py``): frames NATS refuses wait in memory in their
order and leave in it once NATS takes them; past the cap the oldest is logged in full and
dropped, never silently."""

from __future__ import annotations

from loguru import logger

from app.connector import AccountConnector
from broker.dhan import DhanRest, TokenSource
from broker.transport.ports import TransportError


class Nats:
    """Our transport port, down until ``up``: what it took, in order."""

    def __init__(self) -> None:
        self.up = False
        self.taken: list[bytes] = []

    def publish_order_update(self, account_id: str, msg_id: str, data: bytes) -> bool:
        if not self.up:
            raise TransportError("NATS: no servers available for connection")
        self.taken.append(data)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def connector(nats: Nats, clock: Clock, limit: int) -> AccountConnector:
    tokens = TokenSource(token="t")
    return AccountConnector("1100000001", DhanRest("http://127.0.0.1:9/v2", "1100000001",
                                                   tokens, timeout=0.1),
                            tokens, nats,  # type: ignore[arg-type]
                            order_ws_url="ws://127.0.0.1:9/order-update", retry_every=1.0,
                            backlog_limit=limit, clock=clock)


def test_refused_frames_wait_in_order_and_leave_in_it_once_nats_is_back() -> None:
    nats, clock = Nats(), Clock()
    link = connector(nats, clock, limit=10)
    for n in range(3):
        link._on_frame(f"frame {n}")
    assert link.status().backlog == 3 and nats.taken == []
    nats.up = True
    link._on_frame("frame 3")  # within the retry wait: queued, not sent
    assert nats.taken == [] and link.status().backlog == 4
    clock.now = 1.0
    link._flush()
    assert nats.taken == [f"frame {n}".encode() for n in range(4)]
    assert link.status().backlog == 0 and link.published == 4 and link.last_error is None


def test_past_the_cap_the_oldest_is_logged_in_full_and_dropped() -> None:
    nats, clock = Nats(), Clock()
    link = connector(nats, clock, limit=2)
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        for n in range(4):
            link._on_frame(f"frame {n}")
    finally:
        logger.remove(sink)
    assert link.dropped == 2 and link.status().backlog == 2
    assert any("frame 0" in line and "recorded only here" in line for line in lines)
    nats.up, clock.now = True, 5.0
    link._flush()
    assert nats.taken == [b"frame 2", b"frame 3"]
