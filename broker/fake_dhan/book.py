"""The fake DhanHQ's books: REST rows of the paper exchange's orders, and the trades and
positions it derives from the order-update frames (every positive change of traded quantity is
one trade at that frame's traded price), shaped as DhanHQ's REST API answers them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from broker.paper.exchange import PaperOrder
from models.common import IST, Instrument, TxnType
from models.orders import OrderStatus, OrderUpdate

PRODUCT_CODES = {"CNC": "C", "INTRADAY": "I", "MARGIN": "M", "MTF": "F", "CO": "V", "BO": "B"}
PRODUCT_NAMES = {code: name for name, code in PRODUCT_CODES.items()}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Trade:
    order_no: str
    trade_no: int
    instrument: Instrument
    txn_type: TxnType
    product: str | None
    quantity: int
    price: Decimal
    time: str


def order_row(order: PaperOrder, client_id: str) -> dict[str, Any]:
    """One order-book row as DhanHQ's REST API writes it."""
    status = order.status.value
    if order.status is OrderStatus.PENDING and 0 < order.filled_qty < order.quantity:
        status = OrderStatus.PART_TRADED.value
    return {
        "dhanClientId": client_id, "orderId": order.order_no,
        "exchangeOrderId": order.exch_order_no, "correlationId": order.client_id,
        "orderStatus": status, "transactionType": order.txn_type.value,
        "exchangeSegment": order.instrument.segment.value,
        "productType": PRODUCT_NAMES.get(order.product or "", order.product or "INTRADAY"),
        "orderType": "LIMIT" if order.order_type == "LMT" else "MARKET", "validity": "DAY",
        "securityId": order.instrument.security_id, "quantity": order.quantity,
        "remainingQuantity": order.remaining, "filledQty": order.filled_qty,
        "price": float(order.price) if order.price is not None else 0.0,
        "averageTradedPrice": float(order.avg_price) if order.avg_price is not None else 0.0,
        "createTime": order.placed_at.astimezone(IST).strftime(TIME_FORMAT),
        "omsErrorDescription": order.reason or "",
    }


class TradeBook:
    """Trades derived from the frames the exchange sent; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._trades: list[Trade] = []

    def record(self, update: OrderUpdate) -> None:
        with self._lock:
            before = self._seen.get(update.order_no, 0)
            delta = update.traded_qty - before
            if delta <= 0 or update.txn_type is None or update.segment is None \
                    or update.security_id is None:
                return
            self._seen[update.order_no] = update.traded_qty
            price = update.traded_price or update.avg_traded_price or Decimal(0)
            at = update.updated_at.strftime(TIME_FORMAT) if update.updated_at else ""
            self._trades.append(Trade(
                order_no=update.order_no, trade_no=len(self._trades) + 1,
                instrument=Instrument(segment=update.segment, security_id=update.security_id),
                txn_type=update.txn_type, product=update.product, quantity=delta, price=price,
                time=at))

    def trades(self) -> list[Trade]:
        with self._lock:
            return list(self._trades)


def trade_rows(trades: Iterable[Trade], client_id: str) -> list[dict[str, Any]]:
    return [{"dhanClientId": client_id, "orderId": t.order_no,
             "exchangeOrderId": t.order_no, "exchangeTradeId": str(t.trade_no),
             "transactionType": t.txn_type.value,
             "exchangeSegment": t.instrument.segment.value,
             "productType": PRODUCT_NAMES.get(t.product or "", t.product or "INTRADAY"),
             "securityId": t.instrument.security_id, "tradedQuantity": t.quantity,
             "tradedPrice": float(t.price), "exchangeTime": t.time} for t in trades]


def position_rows(trades: Iterable[Trade], client_id: str) -> list[dict[str, Any]]:
    """Net quantity and average prices per (segment, security, product)."""
    books: dict[tuple[Instrument, str], list[Decimal]] = {}
    for t in trades:
        product = PRODUCT_NAMES.get(t.product or "", t.product or "INTRADAY")
        qty_buy, value_buy, qty_sell, value_sell = books.setdefault(
            (t.instrument, product), [Decimal(0)] * 4)
        if t.txn_type is TxnType.BUY:
            qty_buy, value_buy = qty_buy + t.quantity, value_buy + t.price * t.quantity
        else:
            qty_sell, value_sell = qty_sell + t.quantity, value_sell + t.price * t.quantity
        books[(t.instrument, product)] = [qty_buy, value_buy, qty_sell, value_sell]
    rows = []
    for (instrument, product), (qb, vb, qs, vs) in books.items():
        net = int(qb - qs)
        rows.append({
            "dhanClientId": client_id, "exchangeSegment": instrument.segment.value,
            "securityId": instrument.security_id, "productType": product,
            "positionType": "LONG" if net > 0 else "SHORT" if net < 0 else "CLOSED",
            "netQty": net, "buyQty": int(qb), "sellQty": int(qs),
            "buyAvg": float(vb / qb) if qb else 0.0, "sellAvg": float(vs / qs) if qs else 0.0})
    return rows
