"""Request counters and latency histograms of one node.

Two views of the same measurements: HDR histograms for `dynctl stats`
(exact percentiles, including p99.9) and a prometheus-client registry for the
`metrics_listen` endpoint. The registry is per node, not the global default,
so the simulator can run many nodes in one process.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_MAX_MICROS = 120_000_000  # latencies above two minutes are clamped

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Stats:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        self._histograms: dict[str, HdrHistogram] = {}
        self._errors: Tally[str] = Tally()
        self.events: Tally[str] = Tally()
        self.requests = Counter(
            "dynd_requests", "Requests served, by operation and outcome",
            ["op", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "dynd_request_seconds", "Request latency by operation", ["op"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.event_counter = Counter(
            "dynd_events", "Internal events: read repairs, hints stored and delivered, "
            "quorum failures, keys transferred, anti-entropy keys compared and repaired",
            ["event"], registry=self.registry,
        )
        self.siblings = Histogram(
            "dynd_get_siblings", "Live siblings returned per get",
            buckets=(1, 2, 3, 5, 10, 20, 50, 100), registry=self.registry,
        )

    def observe(self, op: str, outcome: str, seconds: float) -> None:
        """Record one served request (`outcome` is "ok" or an error code)."""
        histogram = self._histograms.get(op)
        if histogram is None:
            histogram = self._histograms[op] = HdrHistogram(1, _MAX_MICROS, 3)
        histogram.record_value(min(max(int(seconds * 1e6), 1), _MAX_MICROS))
        if outcome != "ok":
            self._errors[op] += 1
        self.requests.labels(op, outcome).inc()
        self.latency.labels(op).observe(seconds)

    def count(self, event: str, amount: int = 1) -> None:
        self.events[event] += amount
        self.event_counter.labels(event).inc(amount)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose a live value (hints pending, storage bytes, ...) read at scrape time."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def summary(self) -> dict[str, Any]:
        """Per-operation counts and latency percentiles in milliseconds."""
        ops = {}
        for op, h in sorted(self._histograms.items()):
            ops[op] = {
                "count": h.get_total_count(),
                "errors": self._errors[op],
                **{
                    name: h.get_value_at_percentile(pct) / 1000
                    for name, pct in (("p50", 50), ("p95", 95), ("p99", 99), ("p999", 99.9))
                },
                "max": h.get_max_value() / 1000,
            }
        return {"ops": ops, "events": dict(self.events)}
