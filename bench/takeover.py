"""What a new owner's start of one account costs (SPEC §13, graceful hand-over p99 ≤ 1 s), phase
by phase, on PostgreSQL with a realistic account.

``python -m bench.takeover [--open 300] [--closed 200] [--starts 5] [--unmarked]``

The account is seeded once, in a fresh schema, as a runner's previous owner leaves it: ``--open``
open positions (long and short, on a third as many instruments), ``--closed`` positions exited
today, and a day of frames (each entry order's TRANSIT, PENDING and TRADED; each closed
position's exit order the same), marked applied as an orderly stop marks them
(``System.mark_frames``). Then, ``--starts`` times, a runner's start is timed as
``app/serving.py`` does it: the partition's lease claimed, the fenced store opened
(``make``), ``System.start`` (its phases: ``System.startup``), and an orderly stop under the
lease (not timed). ``--unmarked``: the previous owner died before marking anything (a kill -9
early in the day's frames), and each start ends the same way (``System.abandon``): every start
reads the whole day's frames. Prints the median and the worst of each phase and one JSON row
last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.common import PG, ClockedGateway, drop_schemas, fresh_pg, session_clock
from bench.workload import T0, instruments, positions
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models.common import Side, TxnType, exit_client_id
from models.orders import OrderProgress, OrderStatus, OrderUpdate
from models.partitions import partition_of
from models.position import ExitReason, OrderRole, Position, PositionStatus, TrackedOrder
from models.wire import to_dhan_frame
from store.pnl_cache import InMemoryPnLCache
from store.records import ReceivedFrame

ACCOUNT = "desk-bench"


def _entry(position: Position, txn: TxnType, at: datetime) -> tuple[Position, list[str]]:
    """The frames of the position's entry order (TRANSIT, PENDING, TRADED), and the position
    as the previous owner stored it once it had applied them all."""
    qty = position.orders[0].progress.traded_qty
    updates = [OrderUpdate(order_no=position.entry_order_no, status=status,
                           segment=position.segment, security_id=position.security_id,
                           txn_type=txn, product=position.product, order_type="MARKET",
                           quantity=qty, traded_qty=qty if status is OrderStatus.TRADED else 0,
                           avg_traded_price=Decimal(100) if status is OrderStatus.TRADED
                           else None, updated_at=at + timedelta(seconds=n))
               for n, status in enumerate((OrderStatus.TRANSIT, OrderStatus.PENDING,
                                           OrderStatus.TRADED))]
    progress = OrderProgress.empty(position.entry_order_no)
    for update in updates:
        progress = progress.merge(update)
    stored = position.model_copy(update={
        "orders": (TrackedOrder(role=OrderRole.ENTRY, progress=progress),),
        "opened_at": updates[-1].updated_at, "created_at": at})
    return stored, [to_dhan_frame(update) for update in updates]


def _exited(position: Position, at: datetime) -> tuple[Position, list[str]]:
    """The position closed by its exit order, as a day's closed positions are: the exit
    order's frames (TRANSIT, PENDING, TRADED) and the position as stored once it applied
    them."""
    qty = position.orders[0].progress.traded_qty
    number = f"X{position.entry_order_no}"
    txn = position.side.exit_txn
    updates = [OrderUpdate(order_no=number, status=status, segment=position.segment,
                           security_id=position.security_id, txn_type=txn,
                           product=position.product, order_type="LIMIT", quantity=qty,
                           traded_qty=qty if status is OrderStatus.TRADED else 0,
                           avg_traded_price=Decimal(99) if status is OrderStatus.TRADED
                           else None, updated_at=at + timedelta(seconds=n),
                           correlation_id=exit_client_id(position.position_id, 1))
               for n, status in enumerate((OrderStatus.TRANSIT, OrderStatus.PENDING,
                                           OrderStatus.TRADED))]
    progress = OrderProgress.empty(number)
    for update in updates:
        progress = progress.merge(update)
    stored = position.model_copy(update={
        "orders": (*position.orders,
                   TrackedOrder(role=OrderRole.EXIT, progress=progress, attempt=1)),
        "status": PositionStatus.EXITED, "exit_reason": ExitReason.STOP_LOSS,
        "exit_attempt": 1, "exit_requested_at": at, "exited_at": updates[-1].updated_at})
    return stored, [to_dhan_frame(update) for update in updates]


def seed(url: str, open_count: int, closed_count: int, *, marked: bool = True) -> int:
    """The account as its previous owner left it; how many frames were stored."""
    from store.postgres import PostgresStore

    store = PostgresStore(url, account=ACCOUNT)
    try:
        store.migrate()
        book = positions(open_count + closed_count, instruments(max(1, open_count // 3)))
        stored: list[Position] = []
        frames: list[ReceivedFrame] = []
        for n, position in enumerate(book):
            at = T0 - timedelta(minutes=30) + timedelta(seconds=n)
            entry = TxnType.BUY if position.side is Side.LONG else TxnType.SELL
            applied, raws = _entry(position, entry, at)
            if n >= open_count:
                applied, exit_raws = _exited(applied, at + timedelta(minutes=5))
                raws += exit_raws
            stored.append(applied)
            frames += [ReceivedFrame(raw=raw, received_at=at, order_no=None, accepted=True)
                       for raw in raws]
        store.save_positions(stored)
        seqs = store.record_order_updates(frames)
        if marked and seqs:
            store.mark_frames(seqs[-1])
        return len(frames)
    finally:
        store.close()


def start_once(url: str, *, marked: bool = True) -> dict[str, float]:
    from actors.system import Parts, System
    from app.runner import PartitionLease
    from models.policy import RiskConfig
    from store.leases import PostgresLeases
    from store.postgres import PostgresStore

    leases = PostgresLeases(url)
    leases.migrate()
    clock = session_clock()
    try:
        lease = leases.claim(partition_of(ACCOUNT), "bench")
        assert lease is not None
        shared = PartitionLease(lease)
        began = time.perf_counter()
        store = PostgresStore(url, account=ACCOUNT, lease=shared)
        made = time.perf_counter() - began
        gateway: Any = ClockedGateway(PaperExchange(TapeMarket([]), latency=timedelta(0)), clock)
        system = System(Parts(store=store, cache=InMemoryPnLCache(), gateway=gateway,
                              quotes=None, config=RiskConfig(), clock=clock, account=ACCOUNT))
        system.start(ticker=False)
        took = time.perf_counter() - began
        phases = {"make": made, **system.startup, "total": took,
                  "routed": float(system.recovered)}
        if marked:
            system.stop()
        else:
            system.abandon()
        store.close()
        leases.release(lease)
        return phases
    finally:
        leases.close()


def main(argv: list[str] | None = None) -> int:
    from loguru import logger

    parser = argparse.ArgumentParser(prog="python -m bench.takeover")
    parser.add_argument("--open", type=int, default=300)
    parser.add_argument("--closed", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--unmarked", action="store_true",
                        help="no mark of applied frames: every start reads the whole day's")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    url = fresh_pg(PG)
    try:
        frames = seed(url, args.open, args.closed, marked=not args.unmarked)
        runs = [start_once(url, marked=not args.unmarked) for _ in range(args.starts)]
    finally:
        drop_schemas()
    cpu = time.process_time()
    summary = {name: {"median": round(statistics.median(r[name] for r in runs), 4),
                      "max": round(max(r[name] for r in runs), 4)} for name in runs[0]}
    for name, row in summary.items():
        print(f"{name:12} median {row['median']:.4f} s  max {row['max']:.4f} s",
              file=sys.stderr)
    print(json.dumps({"benchmark": "takeover", "open": args.open, "closed": args.closed,
                      "frames": frames, "marked": not args.unmarked, "starts": runs,
                      "phases": summary,
                      "cpu_s": round(cpu, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
