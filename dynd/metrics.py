"""Request counters and latency histograms of one node.

Two views of the same measurements: HDR histograms for `dynctl stats`
(exact percentiles, including p99.9) and a prometheus-client registry for the
`metrics_listen` endpoint. The registry is per node, not the global default,
so the simulator can run many nodes in one process.

Counters are bumped where things happen (`Stats.observe`, `Stats.count`) as
plain ints that the registry reads at scrape time; live state (hints pending,
members, phi, epoch, storage size, free space) is read from the node at scrape time by
`NodeCollector`, so nothing has to remember to update a gauge. `HintAgeWatch`
turns hint counts into ages, since storage keeps no hint timestamps.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from common.errors import Unavailable
from dynd import membership
from dynd.cluster import ClusterView
from dynd.liveness import Liveness
from dynd.storage import Storage

log = logging.getLogger("dynd.metrics")

_MAX_MICROS = 120_000_000  # latencies above two minutes are clamped

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
SIBLING_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)

# Coordinated client ops: an `unavailable` answer to one of them is a quorum failure (quorum
# not met, deadline passed, or no replica reachable; the client sees the same exit code 4).
QUORUM_OPS = frozenset({"get", "put", "delete"})

# Events exported from the first scrape on (at 0), so that rate() works before the first one.
KNOWN_EVENTS = ("quorum_failure", "read_repair", "hint_stored", "hint_delivered",
                "transfer_keys", "transfer_completed", "transfer_stalled",
                "antientropy_compared", "antientropy_repaired", "tombstones_reaped")


class Buckets:
    """A Prometheus histogram kept as plain counts: an observation is a bisect and two
    additions, where prometheus_client takes a lock and walks every bucket (and the
    label lookup in front of it cost more than that). Exported at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a bound >= value
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) per bound and +Inf, as the exposition format has them."""
        running = 0
        exported = []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts,
                                strict=True):
            running += count
            exported.append((bound, running))
        return exported


@dataclass(slots=True)
class _OpStats:
    """What one operation's requests add up to: exact percentiles (HDR) for `dynctl stats`,
    Prometheus buckets for the scrape."""

    histogram: HdrHistogram
    buckets: Buckets
    errors: int = 0


class Stats:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        self._ops: dict[str, _OpStats] = {}
        self._outcomes: Tally[tuple[str, str]] = Tally()
        self.events: Tally[str] = Tally()
        self.siblings = Buckets(SIBLING_BUCKETS)
        self.hint_ages = HintAgeWatch()
        self._collector: NodeCollector | None = None
        self.registry.register(_RequestCollector(self))

    def observe(self, op: str, outcome: str, seconds: float) -> None:
        """Record one served request (`outcome` is "ok" or an error code)."""
        stats = self._ops.get(op)
        if stats is None:
            stats = self._ops[op] = _OpStats(HdrHistogram(1, _MAX_MICROS, 3),
                                             Buckets(LATENCY_BUCKETS))
        stats.histogram.record_value(min(max(int(seconds * 1e6), 1), _MAX_MICROS))
        stats.buckets.observe(seconds)
        self._outcomes[op, outcome] += 1
        if outcome != "ok":
            stats.errors += 1
            if outcome == Unavailable.code and op in QUORUM_OPS:
                self.count("quorum_failure")

    def count(self, event: str, amount: int = 1) -> None:
        """Bump an internal event counter (see KNOWN_EVENTS for the usual names)."""
        self.events[event] += amount

    def watch_node(self, collector: NodeCollector) -> None:
        """Export the node's live state with the counters (once per Stats)."""
        if self._collector is not None:
            raise ValueError(f"node {self.node_id} is already watched")
        self.registry.register(collector)
        self._collector = collector

    def summary(self) -> dict[str, Any]:
        """Per-operation counts and latency percentiles in milliseconds."""
        ops = {}
        for op, stats in sorted(self._ops.items()):
            h = stats.histogram
            ops[op] = {
                "count": h.get_total_count(),
                "errors": stats.errors,
                **{
                    name: h.get_value_at_percentile(pct) / 1000
                    for name, pct in (("p50", 50), ("p95", 95), ("p99", 99), ("p999", 99.9))
                },
                "max": h.get_max_value() / 1000,
            }
        summary: dict[str, Any] = {"ops": ops, "events": dict(self.events)}
        if self._collector is not None:
            summary["gauges"] = self._collector.read().totals()
        return summary


class _RequestCollector(Collector):
    """The request counters, latencies, events and sibling counts, read from Stats."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        requests = CounterMetricFamily("dynd_requests", "Requests served, by operation and "
                                       "outcome", labels=["op", "outcome"])
        for (op, outcome), count in sorted(stats._outcomes.items()):
            requests.add_metric([op, outcome], count)
        yield requests
        latency = HistogramMetricFamily("dynd_request_seconds", "Request latency by operation",
                                        labels=["op"])
        for op, op_stats in sorted(stats._ops.items()):
            latency.add_metric([op], op_stats.buckets.cumulative(),
                               sum_value=op_stats.buckets.total)
        yield latency
        events = CounterMetricFamily(
            "dynd_events", "Internal events: read repairs, hints stored and delivered, "
            "quorum failures, keys transferred, anti-entropy keys compared and repaired",
            labels=["event"])
        for event in sorted(stats.events.keys() | set(KNOWN_EVENTS)):
            events.add_metric([event], stats.events[event])
        yield events
        siblings = HistogramMetricFamily("dynd_get_siblings", "Live siblings returned per get")
        siblings.add_metric([], stats.siblings.cumulative(), sum_value=stats.siblings.total)
        yield siblings


class HintAgeWatch:
    """How long each target has had hints pending without a break, as seen by this node.

    Storage keeps no hint timestamps, so the age of a target's hints is measured from the
    first check that saw any for it; it resets once the target has none. `check` logs one
    warning when the age crosses `warn_after`, and again every `warn_after` seconds while
    the hints stay (one line per event, not one per check).
    """

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._warned: dict[str, float] = {}
        self.ages: dict[str, float] = {}  # as of the last check

    def status_fields(self) -> dict[str, Any]:
        """What the hint ages add to ``status`` (Admin's status provider)."""
        return {"oldest_hint_seconds": round(max(self.ages.values(), default=0.0), 1)}

    def check(self, node_id: str, counts: Mapping[str, int], now: float,
              warn_after: float) -> list[str]:
        """Update the ages from the hint counts per target; return the targets warned about."""
        if warn_after <= 0:
            raise ValueError(f"warn_after must be positive, got {warn_after!r}")
        pending = {target for target, count in counts.items() if count > 0}
        for gone in set(self._since) - pending:
            del self._since[gone]
            self._warned.pop(gone, None)
        warned = []
        for target in sorted(pending):
            since = self._since.setdefault(target, now)
            age = now - since
            last_warning = self._warned.get(target)
            if age >= warn_after and (last_warning is None or now - last_warning >= warn_after):
                self._warned[target] = now
                warned.append(target)
                log.warning("event=hints_old node=%s target=%s hints=%d pending_seconds=%.0f "
                            "warn_after=%g", node_id, target, counts[target], age, warn_after)
        self.ages = {target: now - since for target, since in self._since.items()}
        return warned


@dataclass(frozen=True)
class NodeReadings:
    """One consistent read of a node's live state, for a scrape or `dynctl stats`."""

    node: str
    epoch: int
    ring_balance: float
    partitions_owned: int
    members: dict[str, tuple[str, bool]]  # id -> (status, reachable)
    phi: dict[str, float]  # peer -> phi (inf once it is silent for long)
    hints: dict[str, int]
    hint_ages: dict[str, float]
    transfers_pending: int
    storage_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    gossip_rounds: int
    gossip_bytes_sent: int
    last_antientropy: float | None  # wall-clock seconds of the newest exchange
    clock_offsets: Mapping[str, float] = field(default_factory=dict)  # peer -> ms

    def totals(self) -> dict[str, Any]:
        """The scalars of `dynctl stats`: what the labelled families add up to."""
        up = sum(1 for status, reachable in self.members.values()
                 if reachable and status != "removed")
        down = sum(1 for status, reachable in self.members.values()
                   if not reachable and status != "removed")
        return {"epoch": self.epoch, "members_up": up, "members_down": down,
                "hints_pending": sum(self.hints.values()),
                "oldest_hints_seconds": round(max(self.hint_ages.values(), default=0.0), 1),
                "transfers_pending": self.transfers_pending, "storage_bytes": self.storage_bytes,
                "disk_free_bytes": self.disk_free_bytes,
                "gossip_rounds": self.gossip_rounds, "last_antientropy": self.last_antientropy}


class NodeCollector(Collector):
    """Reads a node's live state at scrape time (clock: the node's monotonic clock)."""

    def __init__(self, view: ClusterView, liveness: Liveness, storage: Storage, stats: Stats,
                 *, gossip_totals: Callable[[], tuple[int, int]],
                 last_exchange: Callable[[], float | None],
                 clock_offsets: Callable[[], Mapping[str, float]] = dict,
                 clock: Callable[[], float] = trio.current_time) -> None:
        """``gossip_totals()``: (rounds, bytes sent) of gossip; ``last_exchange()``: the
        wall-clock time of the newest anti-entropy exchange; ``clock_offsets()``: each
        peer's wall-clock offset in ms (dynd.clocks)."""
        self.view = view
        self.liveness = liveness
        self.storage = storage
        self.stats = stats
        self.gossip_totals = gossip_totals
        self.last_exchange = last_exchange
        self.clock_offsets = clock_offsets
        self.clock = clock

    def read(self) -> NodeReadings:
        state = self.view.state
        ring = self.view.routing().ring
        detector = self.liveness.detector.snapshot(self.clock())
        rounds, bytes_sent = self.gossip_totals()
        disk_free, disk_total = self.storage.disk_space()
        return NodeReadings(
            node=self.stats.node_id, epoch=state.epoch, ring_balance=ring.balance(),
            partitions_owned=ring.counts().get(self.stats.node_id, 0),
            members={m: (membership.member_status(state, m), self.liveness.is_up(m))
                     for m in sorted(state.members)},
            phi={peer: float(info["phi"]) for peer, info in detector.items()},
            hints=self.storage.hint_counts(), hint_ages=dict(self.stats.hint_ages.ages),
            transfers_pending=len(membership.pending_transfers(state)),
            storage_bytes=self.storage.approximate_size(),
            disk_free_bytes=disk_free, disk_total_bytes=disk_total,
            gossip_rounds=rounds, gossip_bytes_sent=bytes_sent,
            last_antientropy=self.last_exchange(),
            clock_offsets=dict(self.clock_offsets()),
        )

    def collect(self) -> Iterator[Metric]:
        r = self.read()
        yield _gauge("dynd_node_info", "This node's id (value 1)", {"node": {r.node: 1}})
        yield _gauge("dynd_ring_epoch", "Ring epoch this node has adopted", r.epoch)
        yield _gauge("dynd_ring_balance", "Partitions of the largest owner / mean", r.ring_balance)
        yield _gauge("dynd_ring_partitions_owned", "Partitions this node owns",
                     r.partitions_owned)
        yield _gauge("dynd_member_up", "1 if this node sees the member as reachable",
                     {"member": {m: int(reachable) for m, (_, reachable) in r.members.items()}})
        statuses = Tally(status for status, _ in r.members.values())
        yield _gauge("dynd_members", "Members per status", {"status": dict(statuses)})
        yield _gauge("dynd_detector_phi", "Phi-accrual suspicion per peer (+Inf: silent)",
                     {"peer": r.phi})
        yield _gauge("dynd_hints_pending", "Hints held for each target node",
                     {"target": r.hints})
        yield _gauge("dynd_hints_pending_seconds",
                     "How long each target has had hints pending, as seen by this node",
                     {"target": r.hint_ages})
        yield _gauge("dynd_transfers_pending", "Partition transfers of this epoch not done yet",
                     r.transfers_pending)
        yield _gauge("dynd_storage_bytes", "Bytes of the RocksDB directory", r.storage_bytes)
        yield _gauge("dynd_data_dir_free_bytes",
                     "Bytes free for dynd on the data dir's file system", r.disk_free_bytes)
        yield _gauge("dynd_data_dir_size_bytes", "Bytes in all of the data dir's file system",
                     r.disk_total_bytes)
        yield _gauge("dynd_antientropy_last_exchange_timestamp_seconds",
                     "Wall-clock time of the newest anti-entropy exchange (NaN: none yet)",
                     math.nan if r.last_antientropy is None else r.last_antientropy)
        yield _gauge("dynd_clock_offset_seconds",
                     "Each peer's wall clock minus this node's, measured by gossip",
                     {"peer": {peer: ms / 1000 for peer, ms in r.clock_offsets.items()}})
        yield CounterMetricFamily("dynd_gossip_rounds", "Gossip exchanges completed",
                                  value=r.gossip_rounds)
        yield CounterMetricFamily("dynd_gossip_sent_bytes", "Bytes of gossip sent",
                                  value=r.gossip_bytes_sent)


def _gauge(name: str, doc: str,
           value: float | Mapping[str, Mapping[str, float]]) -> GaugeMetricFamily:
    """A gauge family: one value, or `{label: {label_value: value}}` for one label."""
    if not isinstance(value, Mapping):
        return GaugeMetricFamily(name, doc, value=value)
    ((label, values),) = value.items()
    family = GaugeMetricFamily(name, doc, labels=[label])
    for label_value, number in sorted(values.items()):
        family.add_metric([label_value], number)
    return family

