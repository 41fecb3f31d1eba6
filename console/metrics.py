"""``/metrics``: the system's state in the Prometheus text format (SPEC §12), through the
standard client library. A custom collector reads the system at scrape time (asks with
timeouts), so nothing on the price path pays for the export. Every sample carries an
``account`` label: the account the system serves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from actors.runtime.metrics import LATENCY_BUCKETS, Histogram
from actors.system import System
from models.position import PositionStatus

PREFIX = "tracker"
HISTOGRAMS = {
    "price_to_decision_seconds": "From a price's time to the exit decision it caused.",
    "decision_to_order_seconds": "From an exit decision to its order sent to the broker.",
}
LABELS = {"gateway_errors": "code"}
"""Counter families named ``family.label``, and the name of their label."""


def _name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


class SystemCollector(Collector):
    def __init__(self, system: System) -> None:
        self.system = system

    def collect(self) -> Iterator[Metric]:
        account = self.system.account
        for metric in self._collect():
            yield _labelled(metric, account)

    def _collect(self) -> Iterator[Metric]:
        status = self.system.status()
        yield from _status_metrics(status)
        yield from _counters(status["metrics"])
        depth = GaugeMetricFamily(f"{PREFIX}_mailbox_depth", "Messages waiting, per actor "
                                  "(trackers: all tracker mailboxes together).", labels=["actor"])
        for actor, value in sorted(self.system.mailbox_depths().items()):
            depth.add_metric([actor], value)
        yield depth
        histograms = self.system.parts.metrics.histograms()
        for name in HISTOGRAMS:  # present (empty) before the first sample, for dashboards
            histograms.setdefault(name, Histogram(bounds=LATENCY_BUCKETS,
                                                  counts=(0,) * (len(LATENCY_BUCKETS) + 1),
                                                  total=0.0, count=0))
        for name, histogram in sorted(histograms.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts,
                                    strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            yield HistogramMetricFamily(f"{PREFIX}_{_name(name)}",
                                        HISTOGRAMS.get(name, name), buckets=buckets,
                                        sum_value=histogram.total)
        yield from _gateway(self.system.gateway_status(), self.system.parts.clock())


def _labelled(metric: Metric, account: str) -> Metric:
    """The metric with every sample labelled by its account (SPEC §13): one label added
    here, at scrape time, rather than in every family."""
    metric.samples = [sample._replace(labels={"account": account, **sample.labels})
                      for sample in metric.samples]
    return metric


def _status_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    positions = GaugeMetricFamily(f"{PREFIX}_positions", "Positions by status (this process).",
                                  labels=["status"])
    counts = status.get("positions", {})
    for state in PositionStatus:
        positions.add_metric([state.value], counts.get(state.value, 0))
    yield positions
    exits = CounterMetricFamily(f"{PREFIX}_exits", "Exits by reason since start.",
                                labels=["reason"])
    for reason, count in sorted(status.get("exits_by_reason", {}).items()):
        exits.add_metric([str(reason)], count)
    yield exits
    yield GaugeMetricFamily(f"{PREFIX}_trading_halted", "1 while trading is HALTED.",
                            value=1 if status.get("trading_state") == "HALTED" else 0)
    yield GaugeMetricFamily(f"{PREFIX}_kill_switch_latched", "1 while the kill switch is "
                            "latched.", value=1 if status.get("kill_switch") else 0)
    yield GaugeMetricFamily(f"{PREFIX}_unprotected_positions", "Positions without a fresh "
                            "price for too long.", value=len(status.get("unprotected", [])))
    yield GaugeMetricFamily(f"{PREFIX}_quarantined_positions", "Positions whose tracker was "
                            "quarantined.", value=len(status.get("quarantined", [])))
    if "books" in status:  # the broker's book against ours (SPEC §11.1)
        yield GaugeMetricFamily(f"{PREFIX}_books_agree", "1 while the broker's net quantities "
                                "agree with our open positions.",
                                value=1 if status["books"] == "books: agree" else 0)
    net = status.get("day_net")
    if net is not None:
        yield GaugeMetricFamily(f"{PREFIX}_day_net_pnl_rupees", "Day net PnL, realised plus "
                                "unrealised.", value=float(net))
    age = status.get("max_price_age_s")
    if age is not None:
        yield GaugeMetricFamily(f"{PREFIX}_max_price_age_seconds", "Age of the oldest "
                                "watched price.", value=age)


def _counters(counts: dict[str, int]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for raw, value in sorted(counts.items()):
        family, _, label = raw.partition(".")
        name = f"{PREFIX}_{_name(family)}"
        if label and family in LABELS:
            metric = families.get(name)
            if metric is None:
                metric = families[name] = CounterMetricFamily(
                    name, f"{family} by {LABELS[family]}", labels=[LABELS[family]])
            metric.add_metric([label], value)
        elif not label:
            yield CounterMetricFamily(name, family.replace("_", " "), value=value)
    for family_name in LABELS:  # present (empty) before the first error, for dashboards
        name = f"{PREFIX}_{family_name}"
        yield families.get(name) or CounterMetricFamily(
            name, f"{family_name} by {LABELS[family_name]}", labels=[LABELS[family_name]])


def _gateway(gateway: dict[str, Any], now: datetime) -> Iterator[Metric]:
    up = GaugeMetricFamily(f"{PREFIX}_gateway_up", "1 while the broker gateway is usable.",
                           labels=["gateway"])
    up.add_metric([str(gateway.get("kind", "?"))], 1 if gateway.get("state") == "UP" else 0)
    yield up
    expires = gateway.get("token_expires_at")
    if isinstance(expires, datetime):
        yield GaugeMetricFamily(f"{PREFIX}_token_expiry_seconds", "Seconds until the broker "
                                "token expires.", value=(expires - now).total_seconds())


def render_metrics(system: System) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(system))
    return generate_latest(registry)
