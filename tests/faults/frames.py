"""The broker's side of a session as its stored raw frames tell it (for a run in another
process): every order's fills and life, and the net of all fills per (segment, security,
product)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from models.books import BookKey
from models.common import TxnType, parse_exit_client_id
from models.orders import OrderUpdate
from models.wire import parse_order_update
from store.ports import Store


@dataclass
class OrderLife:
    key: BookKey
    sign: int
    client_id: str | None
    first_seq: int
    traded: int = 0
    ended_seq: int | None = None
    instruments: set[BookKey] = field(default_factory=set)


def order_lives(store: Store) -> dict[str, OrderLife]:
    """Every order the stored frames mention, by order number, in the order they came."""
    lives: dict[str, OrderLife] = {}
    for frame in store.order_updates():
        update = parse_order_update(frame.raw)
        if not isinstance(update, OrderUpdate) or update.txn_type is None or \
                update.segment is None or update.security_id is None:
            continue
        key: BookKey = (update.segment, update.security_id, update.product)
        life = lives.get(update.order_no)
        if life is None:
            life = lives[update.order_no] = OrderLife(
                key=key, sign=1 if update.txn_type is TxnType.BUY else -1,
                client_id=update.correlation_id, first_seq=frame.seq)
        life.instruments.add(key)
        life.traded = max(life.traded, update.traded_qty or 0)
        if update.status.terminal and life.ended_seq is None:
            life.ended_seq = frame.seq
    return lives


def broker_net(lives: dict[str, OrderLife]) -> dict[BookKey, int]:
    net: dict[BookKey, int] = defaultdict(int)
    for life in lives.values():
        net[life.key] += life.sign * life.traded
    return net


def exchange_of(order_no: str) -> str:
    """The run whose paper exchange numbered the order: ``RX<run>-<n>`` after the first run on
    a database; the first run's ``RX<n>`` share a group with the day's recorded orders, which
    are no exits of ours."""
    head, dash, _ = order_no.rpartition("-")
    return head if dash else "recorded"


def overlapping_exits(lives: dict[str, OrderLife]) -> list[str]:
    """Exit orders placed at an exchange while another exit order of the same position was live
    there (placed, not ended) as far as the frames tell. A run killed takes its paper exchange
    with it: what was live there ends with it, so orders of different runs never overlap."""
    found = []
    exits = [(parse_exit_client_id(life.client_id), number, life)
             for number, life in lives.items()]
    for mine, number, life in exits:
        if mine is None:
            continue
        for other, other_number, other_life in exits:
            if other is None or other[0] != mine[0] or other_number == number or \
                    exchange_of(other_number) != exchange_of(number):
                continue
            if other_life.first_seq < life.first_seq and \
                    (other_life.ended_seq is None or other_life.ended_seq > life.first_seq):
                found.append(f"{number} ({life.client_id}) placed while {other_number} "
                             f"({other_life.client_id}) was live")
    return found


def placed_twice(lives: dict[str, OrderLife]) -> dict[str, set[str]]:
    """Exit client ids one exchange gave more than one order number (it must return the first
    order for the same client id). A run started again after a kill has a new paper exchange,
    which knows nothing of the earlier one's orders: there the same client id is a new order,
    as the attempt it resumes may never have reached the dead exchange."""
    numbers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for number, life in lives.items():
        if parse_exit_client_id(life.client_id) is not None and life.client_id is not None:
            numbers[(exchange_of(number), life.client_id)].add(number)
    return {client_id: found for (_, client_id), found in numbers.items() if len(found) > 1}
