"""A paper session in process, watched from the broker's side, and the checks every fault ends
with: the books agree (the system's own check, and the store's open positions against every
fill the paper exchange made), and no exit was doubled (at most one live exit order per
position at any time, no client id placed twice, at most one unfinished exit attempt per
position in the store)."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import pykka

from actors.system import Parts, System
from app.clocks import SessionClock, paper_session_start
from broker.paper import PaperBroker, PaperConfig
from broker.paper.exchange import PaperExchange
from broker.ports import OrderView
from models.books import BookKey, BooksReport, ours
from models.common import IST, Instrument, TxnType, parse_exit_client_id
from models.policy import RiskConfig
from models.position import OrderRole
from store.ports import PnLCache, Store


class WatchedExchange:
    """The paper exchange as the system's ``OrderGateway``, noting every placement: a client id
    placed a second time, or an exit placed while another exit of the same position is live at
    the exchange, is a doubled exit."""

    def __init__(self, exchange: PaperExchange) -> None:
        self.exchange = exchange
        self.placed: Counter[str] = Counter()
        self.doubled: list[str] = []
        self._lock = threading.Lock()

    def place_order(self, *, client_id: str, instrument: Instrument, txn_type: TxnType,
                    quantity: int, product: str | None) -> str:
        with self._lock:
            self.placed[client_id] += 1
            if self.placed[client_id] > 1:
                self.doubled.append(f"{client_id} placed {self.placed[client_id]} times")
            mine = parse_exit_client_id(client_id)
            if mine is not None:
                for order in self.exchange.orders():
                    other = parse_exit_client_id(order.client_id)
                    if other is not None and other[0] == mine[0] and \
                            order.client_id != client_id and not order.status.terminal:
                        self.doubled.append(f"{client_id} placed while {order.client_id} "
                                            f"({order.order_no}) is {order.status}")
        return self.exchange.place_order(client_id=client_id, instrument=instrument,
                                         txn_type=txn_type, quantity=quantity, product=product)

    def cancel_order(self, order_no: str) -> None:
        self.exchange.cancel_order(order_no)

    def find_order(self, client_id: str) -> OrderView | None:
        return self.exchange.find_order(client_id)

    def subscribe(self, sink: Callable[[str], None]) -> None:
        self.exchange.subscribe(sink)


@dataclass
class PaperRun:
    system: System
    broker: PaperBroker
    gateway: WatchedExchange
    store: Store
    clock: Callable[[], datetime]


@contextmanager
def paper_session(store: Store, cache: PnLCache, *, positions: int, seed: int,
                  config: RiskConfig | None = None,
                  interval_ms: int = 100) -> Iterator[PaperRun]:
    """A started paper session (wall-clock exchange time) on ``store`` and ``cache``; stopped
    in order on the way out, every actor gone."""
    config = config or RiskConfig()
    clock = SessionClock(paper_session_start(datetime.now(IST), config.calendar))
    broker = PaperBroker(PaperConfig(positions=positions, instruments=40, seed=seed,
                                     interval_ms=interval_ms, volatility=0.01), start=clock())
    gateway = WatchedExchange(broker.exchange)
    system = System(Parts(store=store, cache=cache, gateway=gateway, quotes=broker.quotes,
                          config=config, clock=clock))

    def step(now: datetime) -> None:
        for instrument, ltp, at in broker.advance(now):
            system.tick(instrument, ltp, at)

    system.start(on_step=step)
    try:
        yield PaperRun(system=system, broker=broker, gateway=gateway, store=store, clock=clock)
    finally:
        try:
            system.stop()
        finally:
            pykka.ActorRegistry.stop_all()


def exchange_book(exchange: PaperExchange) -> dict[BookKey, int]:
    """The net of every fill the paper exchange made, per (segment, security, product)."""
    net: dict[BookKey, int] = defaultdict(int)
    for order in exchange.orders():
        if order.filled_qty:
            sign = 1 if order.txn_type is TxnType.BUY else -1
            net[(order.instrument.segment, order.instrument.security_id, order.product)] += \
                sign * order.filled_qty
    return net


def book_differences(broker: dict[BookKey, int], store: Store) -> dict[BookKey, tuple[int, int]]:
    """Where the broker's net and the store's open positions differ: key → (broker, store)."""
    mine = ours(store.load_open_positions())
    return {key: (broker.get(key, 0), mine.get(key, 0)) for key in set(broker) | set(mine)
            if broker.get(key, 0) != mine.get(key, 0)}


def unfinished_attempts(store: Store) -> dict[str, list[str]]:
    """Positions with more than one exit attempt the store holds as unfinished (no outcome, or
    placed without a terminal one): what a restart would resume twice."""
    live: dict[str, list[str]] = defaultdict(list)
    for attempt in store.exit_attempts():
        if attempt.outcome is None or attempt.outcome == "PLACED":
            live[attempt.position_id].append(attempt.client_id)
    return {pid: ids for pid, ids in live.items() if len(ids) > 1}


def settled_books(run: PaperRun) -> BooksReport:
    """Stop the feeds, let every mailbox drain, and ask the system for its books check."""
    run.system.quiesce()
    return run.system.books()


def assert_nothing_lost_or_doubled(run: PaperRun, books: BooksReport, store: Store) -> None:
    """After the session has stopped (its state checkpointed): the system's own books check,
    what ``store`` (opened afresh on the session's database) holds against every fill of the
    paper exchange, no exit doubled."""
    assert books.agree, books.line()
    assert book_differences(exchange_book(run.broker.exchange), store) == {}
    assert run.gateway.doubled == []
    attempts = store.exit_attempts()
    assert len({a.client_id for a in attempts}) == len(attempts)
    positions = store.list_positions()
    live = {p.position_id: [o.progress.order_no for o in p.orders
                            if o.role is OrderRole.EXIT and not o.progress.status.terminal]
            for p in positions}
    assert {pid: orders for pid, orders in live.items() if len(orders) > 1} == {}
    ids = [p.position_id for p in positions]
    assert len(ids) == len(set(ids))
