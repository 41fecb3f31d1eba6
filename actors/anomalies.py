"""Broker input that contradicts itself (issue 15 "Bad input", SPEC §11.1, §11.8): an exit
fill on a position already closed, quantities that do not add up, a status nobody knows.

Such input is never dropped and never stops an actor: the caller reads it the safe way (the
fill is kept, the order is taken as live) and reports it here, once, where an operator sees
it: logged as an ALARM, kept for the status line and the report's ``alarms``, counted (metric
``anomalies``), traced (a record of kind ``anomaly``); the caller stores its reason with what
it concerns (the frame's row, or a dead letter of the position).
"""

from __future__ import annotations

from datetime import datetime
from time import perf_counter_ns

from loguru import logger

from actors.runtime.metrics import Metrics
from actors.tracing.recorder import current_actor, tracer


def report_anomaly(metrics: Metrics, at: datetime, reason: str, *,
                   position_id: str | None = None, order_no: str | None = None) -> None:
    where = " ".join(f"{name} {value}" for name, value in
                     (("position", position_id), ("order", order_no)) if value is not None)
    text = f"{at.isoformat()} ANOMALY{' (' + where + ')' if where else ''}: {reason}"
    logger.bind(position_id=position_id, order_no=order_no).error("ALARM: {}", text)
    metrics.incr("anomalies")
    metrics.alarm(text)
    active = tracer()
    if active is not None:
        actor = current_actor()
        active.record(actor, {"kind": "anomaly", "receiver": actor, "start_ns": perf_counter_ns(),
                              "reason": reason, "position_id": position_id,
                              "order_no": order_no})
