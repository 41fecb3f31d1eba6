"""A hand-written recorded session: one position per exit reason, with exact prices."""

from __future__ import annotations

import json
from pathlib import Path

DAY = "2026-11-23"  # a Monday

POLICY = """
[policy]
max_hold_minutes = 4
exit_at = "10:07"
[policy.square_off]
NSE_EQ = "10:05"
"""


def frame(order_no: str, txn: str, security: str, qty: int, price: str, at: str, *,
          segment: str = "D", status: str = "TRADED") -> str:
    return json.dumps({"Type": "order_alert", "Data": {
        "OrderNo": order_no, "Status": status, "TxnType": txn, "Quantity": qty,
        "TradedQty": qty, "AvgTradedPrice": price, "SecurityId": security, "Exchange": "NSE",
        "Segment": segment, "Product": "I", "OrderType": "MKT",
        "LastUpdatedTime": f"{DAY} {at}"}})


ORDERS = [
    frame("E1", "B", "50001", 100, "100", "10:00:00"),
    frame("E2", "S", "50002", 50, "200", "10:00:00"),
    frame("E3", "B", "50003", 10, "100", "10:00:00"),
    frame("E4", "B", "50004", 20, "100", "10:00:00"),
    frame("E6", "B", "50006", 10, "100", "10:00:00"),
    frame("E5", "B", "11001", 5, "100", "10:02:00", segment="E"),
    frame("S1", "S", "50004", 20, "101", "10:03:00"),
    frame("E7", "B", "50007", 3, "100", "10:05:30"),
]

TICKS = f"""ts,segment,security_id,ltp
{DAY}T10:00:01+05:30,NSE_FNO,50004,100
{DAY}T10:00:01+05:30,NSE_FNO,50006,100.5
{DAY}T10:00:05+05:30,NSE_FNO,50001,87.9
{DAY}T10:01:00+05:30,NSE_FNO,50002,99.5
{DAY}T10:02:00+05:30,NSE_FNO,50003,106
{DAY}T10:02:01+05:30,NSE_EQ,11001,100
{DAY}T10:02:30+05:30,NSE_FNO,50003,103.3
{DAY}T10:05:31+05:30,NSE_FNO,50007,100
{DAY}T10:07:10+05:30,NSE_FNO,50007,100
"""

EXPECTED = {  # position: (reason, exit price, realized)
    "PE1": ("STOP_LOSS", "87.90", "-1210.00"),
    "PE2": ("TAKE_PROFIT", "99.50", "5025.00"),
    "PE3": ("TRAILING_STOP", "103.30", "33.00"),
    "PE4": ("BROKER_EXIT", "101.00", "20.00"),
    "PE5": ("SESSION_END", "100.00", "0.00"),
    "PE6": ("TIME_STOP", "100.50", "5.00"),
    "PE7": ("TIME_EXIT", "100.00", "0.00"),
}


def write_session(folder: Path) -> tuple[Path, Path, Path]:
    orders, ticks, policy = folder / "orders.jsonl", folder / "ticks.csv", folder / "policy.toml"
    orders.write_text("\n".join(ORDERS) + "\n", encoding="utf-8")
    ticks.write_text(TICKS, encoding="utf-8")
    policy.write_text(POLICY, encoding="utf-8")
    return orders, ticks, policy
