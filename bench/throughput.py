"""Order updates end to end: raw frame → parse → position state → store commit."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from actors.system import Parts, System
from app.clocks import ManualClock
from bench.workload import T0
from broker.exchange import PaperExchange
from broker.market import TapeMarket
from models.common import Segment, TxnType
from models.orders import OrderStatus, OrderUpdate
from models.policy import RiskConfig
from models.wire import to_dhan_frame
from store.pnl_cache import InMemoryPnLCache
from store.ports import Store


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
    began = time.perf_counter()
    for raw in batch:
        system.order_frame(raw)
    system.settle()
    elapsed = time.perf_counter() - began
    fills = sum(len(store.fills(p.position_id)) for p in store.list_positions())
    system.stop()
    return {"benchmark": f"order updates end to end ({len(batch)} frames, "
                         f"{type(store).__name__})",
            "updates_per_s": len(batch) / elapsed, "seconds": elapsed,
            "fills_committed": fills, "target_updates_per_s": 2000}
