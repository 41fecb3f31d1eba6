"""Order updates end to end: raw frame → parse → position state → store commit.

The actors: every frame told to ``System.order_frame`` (what the broker gateway calls), timed
until ``settle`` says every mailbox is empty. Baselines in the same run, each on its own fresh
store of the same kind: the *floor with the same I/O* (a plain loop that parses, applies the
update with the same pure functions and makes the store calls the actors make at best: the raw
frames stored in batches of the order-update actor's size, as it does when frames queue up, as
they do here, then each position the batch changed written once with its fills, as a tracker
does with the updates that queue up in its mailbox) and the *floor* (parse and apply only, no
I/O). ``commit_ms`` is one durable single-row INSERT (its own transaction, WAL flushed) on the
same server: the I/O unit every state change pays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.orders.actor import OrderUpdateActor
from actors.system import Parts, System
from app.clocks import ManualClock
from bench.common import depth, fresh_pg, fresh_store, wait_until
from bench.report import at_least, figure
from bench.workload import T0
from broker.paper.exchange import PaperExchange
from broker.paper.market import TapeMarket
from models import lifecycle
from models.common import Segment, TxnType, position_id_for
from models.orders import OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.position import Fill, OrderRole, Position, new_position
from models.wire import Rejection, parse_order_update, to_dhan_frame
from store.pnl_cache import InMemoryPnLCache
from store.ports import FrameBatches, Store
from store.records import ReceivedFrame

TARGET = 2_000


def frames(total: int, per_order: int = 10) -> list[str]:
    """Orders filling in ``per_order`` partial fills each (cumulative TradedQty)."""
    out = []
    for order in range(total // per_order):
        for part in range(1, per_order + 1):
            out.append(to_dhan_frame(OrderUpdate(
                order_no=f"T{order}", status=OrderStatus.TRADED if part == per_order
                else OrderStatus.PENDING, segment=Segment.NSE_FNO,
                security_id=str(70000 + order % 50), txn_type=TxnType.BUY, product="I",
                quantity=per_order * 10, traded_qty=part * 10,
                avg_traded_price=Decimal(100) + Decimal(part) / 100,
                updated_at=T0 + timedelta(seconds=part))))
    return out


def order_updates(store: Store, total: int) -> dict[str, Any]:
    clock = ManualClock(T0)
    system = System(Parts(store=store, cache=InMemoryPnLCache(),
                          gateway=PaperExchange(TapeMarket([]), latency=timedelta(0)),
                          quotes=None, config=RiskConfig(), clock=clock)).start(ticker=False)
    batch = frames(total)
    queries = store.queries
    began = time.perf_counter()
    for raw in batch:
        system.order_frame(raw)
    # settle() asks with a 10 s timeout: first let the order-update inbox drain.
    wait_until(lambda: depth(system.orders) == 0, timeout=600, poll=0.005)
    system.settle()
    elapsed = time.perf_counter() - began
    queries = store.queries - queries
    fills = sum(len(store.fills(p.position_id)) for p in store.list_positions())
    system.stop()
    return {"benchmark": f"order updates end to end ({len(batch)} frames, "
                         f"{type(store).__name__})",
            "updates_per_s": len(batch) / elapsed, "seconds": elapsed,
            "fills_committed": fills, "queries_per_update": queries / len(batch),
            "target_updates_per_s": TARGET}


def plain_loop(batch: list[str], store: Store | None) -> float:
    """Updates per second of a loop doing the same work without actors (and, with ``store``
    None, without I/O)."""
    book: dict[str, Position] = {}
    size = OrderUpdateActor.batch_limit
    began = time.perf_counter()
    for start in range(0, len(batch), size):
        updates = [parse_order_update(raw) for raw in batch[start:start + size]]
        if store is not None:
            _record(store, batch[start:start + size], updates)
        changed: dict[str, list[Fill]] = {}
        for update in updates:
            assert isinstance(update, OrderUpdate) and update.txn_type is not None
            position = book.get(update.order_no) or new_position(
                update, position_id=position_id_for(update.order_no),
                side=update.txn_type.opens, created_at=update.updated_at or T0)
            applied = lifecycle.apply_update(position, update, OrderRole.ENTRY, at=T0)
            book[update.order_no] = applied.position
            changed.setdefault(update.order_no, []).extend(applied.fills)
        if store is not None:  # each position once per batch, with its fills: one commit
            for order_no, fills in changed.items():
                store.save_position(book[order_no], fills)
    return len(batch) / (time.perf_counter() - began)


def _record(store: Store, raws: list[str], updates: list[OrderUpdate | Rejection]) -> None:
    """The raw frames as the order-update actor stores a batch of them."""
    rows = [ReceivedFrame(raw=raw, received_at=T0, order_no=update.order_no, accepted=True)
            for raw, update in zip(raws, updates, strict=True)]
    if len(rows) > 1 and isinstance(store, FrameBatches):
        store.record_order_updates(rows)
        return
    for row in rows:
        store.record_order_update(row.raw, T0, order_no=row.order_no, accepted=True)


def commit_ms(pg: str | None, count: int = 300) -> float | None:
    """Median time of one single-row INSERT and COMMIT on the same server (the I/O floor).

    On an ordinary table: a TEMP table is not WAL-logged, so its commit flushes nothing and
    measures the round trip only (0.02-0.03 ms here, against 0.2-0.4 ms for a durable one)."""
    if pg is None:
        return None
    import statistics

    import psycopg

    with psycopg.connect(fresh_pg(pg), autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_commit (n int)")
        times = []
        for n in range(count):
            began = time.perf_counter()
            conn.execute("INSERT INTO bench_commit VALUES (%s)", (n,))
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def run(pg: str | None, scratch: Path, total: int) -> dict[str, Any]:
    def on_fresh(work: Callable[[Store], Any]) -> Any:
        store, _ = fresh_store(pg, scratch)
        try:
            return work(store)
        finally:
            store.close()

    row: dict[str, Any] = on_fresh(lambda store: order_updates(store, total))
    batch = frames(total)
    with_io = on_fresh(lambda store: plain_loop(batch, store))
    pure = plain_loop(batch, None)
    rate = row["updates_per_s"]
    commit = commit_ms(pg)
    row.update(floor_same_io_per_s=with_io, floor_per_s=pure, commit_ms=commit)
    row["figures"] = [
        at_least("order updates per second", rate, TARGET, "/s",
                 baseline=f"floor+I/O {with_io:,.0f}/s; floor {pure:,.0f}/s",
                 ratio=f"{rate / with_io:.2f}x floor+I/O; {rate / pure:.3f}x floor"),
        figure("store statements per update", row["queries_per_update"], "",
               ratio=f"{row['fills_committed']:,} fills committed"),
    ]
    if commit is not None:
        row["figures"].append(figure(
            "one durable INSERT + COMMIT on the same server", commit, "ms",
            ratio=f"1 commit per update caps a serial writer at {1000 / commit:,.0f}/s"))
    return row
