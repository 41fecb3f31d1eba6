"""The broker's book against ours (SPEC §11.1): for every (segment, security, product) the net
quantity of all fills the broker reported, ours and external, equals the signed open quantity
of our positions, once the system has settled.

Pure: the order-update actor keeps what it needs (every order's cumulative fill, and what the
tracking policy deliberately left untracked) and calls ``compare``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from models.common import Segment
from models.position import Position

BookKey = tuple[Segment, str, str | None]
"""(segment, security id, product): positions net per product, as the broker's book does."""


def key_text(key: BookKey) -> str:
    segment, security_id, product = key
    return f"{segment}:{security_id}/{product or '-'}"


@dataclass(frozen=True)
class BooksReport:
    """What ``compare`` found; ``differences`` maps a key to (broker's net, ours)."""

    differences: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    untracked: Mapping[str, int] = field(default_factory=dict)
    """Net fills the tracking policy left untracked on purpose (entries without the prefix)."""

    @property
    def agree(self) -> bool:
        return not self.differences

    def line(self) -> str:
        """One line for a status display: ``books: agree`` or what differs."""
        if self.agree:
            return "books: agree"
        shown = "; ".join(f"{key} broker {broker:+d} ours {ours:+d}"
                          for key, (broker, ours) in sorted(self.differences.items())[:5])
        more = len(self.differences) - 5
        return f"books: DIFFER {shown}" + (f" (+{more} more)" if more > 0 else "")

    def as_dict(self) -> dict[str, object]:
        return {"agree": self.agree,
                "differences": {k: {"broker": b, "ours": o}
                                for k, (b, o) in sorted(self.differences.items())},
                "untracked": dict(sorted(self.untracked.items()))}


def ours(positions: Iterable[Position]) -> dict[BookKey, int]:
    """The signed open quantity of our open positions per key."""
    net: dict[BookKey, int] = defaultdict(int)
    for position in positions:
        if position.open:
            net[(position.segment, position.security_id, position.product)] += \
                position.side.sign * position.quantity
    return net


def compare(broker: Mapping[BookKey, int], positions: Iterable[Position],
            untracked: Mapping[BookKey, int] | None = None) -> BooksReport:
    """``broker``: the net of every fill the broker reported per key (BUY +, SELL -);
    ``untracked``: the part of it the tracking policy left untracked on purpose."""
    left_out = untracked or {}
    mine = ours(positions)
    differences: dict[str, tuple[int, int]] = {}
    for key in set(broker) | set(mine) | set(left_out):
        tracked = broker.get(key, 0) - left_out.get(key, 0)
        if tracked != mine.get(key, 0):
            differences[key_text(key)] = (tracked, mine.get(key, 0))
    return BooksReport(differences=differences,
                       untracked={key_text(k): v for k, v in left_out.items() if v})
