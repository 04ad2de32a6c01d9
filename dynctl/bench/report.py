"""The report of a benchmark: the client processes' measurements merged, shown and plotted.

Latencies go into one HDR histogram per operation (microseconds, 1 us..60 s, 3 significant
digits), merged across processes; the report gives them in milliseconds.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

from common.errors import UsageError
from dynctl.output import Output

LATENCY_MAX_US = 60_000_000
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))
PLOT_PERCENTILES = (0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
OPERATIONS = ("read", "update", "insert", "read_modify_write", "scan")
CLIENT_BOUND_SHARE = 0.85  # a process busier than this share of one core is the bottleneck
LATENCY_COLUMNS = ("p50", "p95", "p99", "p999", "max")


def latency_histogram() -> HdrHistogram:
    """An empty histogram of one operation's latencies, the same in every process."""
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def summarize(phase: str, results: list[dict[str, Any]],
              timeline: list[tuple[float, int]]) -> dict[str, Any]:
    """Merge the client processes' measurements into the phase's report (latencies in ms)."""
    merged: dict[str, HdrHistogram] = {}
    errors: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    scans: Counter[str] = Counter()
    for result in results:
        for op, encoded in result["histograms"].items():
            merged.setdefault(op, latency_histogram()).decode_and_add(encoded)
        errors.update(result["errors"])
        outcomes.update(result["outcomes"])
        scans.update(result.get("scans", {}))
    starts = [r["measure_start"] for r in results if r["measure_end"]]
    ends = [r["measure_end"] for r in results if r["measure_end"]]
    seconds = max(ends) - min(starts) if ends else 0.0
    measured = sum(h.get_total_count() for h in merged.values()) + sum(errors.values())
    completed = sum(r["completed"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    busiest = max((r["cpu"] / r["wall"] for r in results if r["wall"] > 0), default=0.0)
    operations = {op: _latencies(merged[op], seconds) for op in OPERATIONS if op in merged}
    scan_summary = _scans(operations["scan"]["count"], scans, seconds) \
        if "scan" in operations else None
    return {
        "phase": phase, "ops": measured, "seconds": round(seconds, 3),
        "throughput": round(measured / seconds, 1) if seconds > 0 else 0.0,
        "operations": operations, "errors": dict(errors), "outcomes": dict(outcomes),
        **({"scans": scan_summary} if scan_summary else {}),
        "client_cpu_us_per_op": round(cpu / completed * 1e6, 1) if completed else None,
        "client_cpu_cores": round(cpu / max(r["wall"] for r in results), 2),
        "client_bound": busiest >= CLIENT_BOUND_SHARE,
        "timeline": _per_second(timeline),
        "percentiles": {op: [[pct, round(merged[op].get_value_at_percentile(pct) / 1000, 3)]
                             for pct in PLOT_PERCENTILES] for op in operations},
    }


def _scans(queries: int, totals: Counter[str], seconds: float) -> dict[str, Any]:
    """Workload E's measured scans: items moved, and the coordinators' refill rounds."""
    return {"queries": queries,
            "queries_per_s": round(queries / seconds, 1) if seconds else 0.0,
            "items": totals["items"],
            "items_per_s": round(totals["items"] / seconds, 1) if seconds else 0.0,
            "items_per_query": round(totals["items"] / queries, 2) if queries else 0.0,
            "rounds_per_query": round(totals["rounds"] / queries, 4) if queries else 0.0,
            "refilled_share": round(totals["refilled"] / queries, 4) if queries else 0.0}


def _latencies(histogram: HdrHistogram, seconds: float) -> dict[str, Any]:
    count = histogram.get_total_count()
    numbers: dict[str, Any] = {"count": count,
                               "throughput": round(count / seconds, 1) if seconds else 0.0}
    for name, pct in PERCENTILES:
        numbers[name] = round(histogram.get_value_at_percentile(pct) / 1000, 3)
    numbers["max"] = round(histogram.get_max_value() / 1000, 3)
    numbers["mean"] = round(histogram.get_mean_value() / 1000, 3)
    return numbers


def _per_second(timeline: list[tuple[float, int]]) -> list[list[float]]:
    """[elapsed, ops/s] at about one-second steps, for the plot."""
    points, (last_time, last_count) = [], timeline[0]
    for when, count in timeline[1:]:
        if when - last_time >= 1.0:
            points.append([round(when, 2), round((count - last_count) / (when - last_time), 1)])
            last_time, last_count = when, count
    return points


def machine() -> dict[str, Any]:
    """Where the numbers were taken: cores and date."""
    return {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def render_report(out: Output, report: dict[str, Any]) -> None:
    """The final tables: per phase, throughput and latency percentiles per operation."""
    for phase in report["phases"]:
        rows = [[op, numbers["count"], numbers["throughput"],
                 *(numbers[column] for column in LATENCY_COLUMNS)]
                for op, numbers in phase["operations"].items()]
        title = (f"{report['target']} {phase['phase']} "
                 f"(workload {report['config']['workload']}): {phase['throughput']:,.0f} ops/s "
                 f"over {phase['seconds']:.1f} s, client CPU {phase['client_cpu_us_per_op']} "
                 f"us/op on {phase['client_cpu_cores']} cores"
                 + (" (client-bound)" if phase["client_bound"] else ""))
        unit = " ms" if out.terminal else "_ms"  # piped: one word per column (col=value)
        out.table("latency", ["op", "count", "ops/s", *(c + unit for c in LATENCY_COLUMNS)],
                  rows, title=title)
        if "scans" in phase:
            out.fields(phase["scans"], title="scans: queries, items and refill rounds")
        if phase["errors"]:
            out.table("error", ["op:kind", "count"], sorted(phase["errors"].items()),
                      title="errors by kind")
        if phase["outcomes"]:
            out.fields(phase["outcomes"], title="notable outcomes (reads that did not find "
                                                "exactly one value, short scans, ...)")


def plot(report: dict[str, Any], path: str) -> None:
    """Throughput over time and the latency percentile spectrum of each operation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'dynd[plot]'") from None
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for phase in report["phases"]:
        points = phase["timeline"]
        rate_axis.plot([p[0] for p in points], [p[1] for p in points], label=phase["phase"])
        for op, pairs in phase["percentiles"].items():
            # x: 1/(1 - percentile), the usual HDR percentile-spectrum axis
            xs = [1 / (1 - min(pct, 99.999) / 100) for pct, _ in pairs]
            latency_axis.plot(xs, [ms for _, ms in pairs], marker=".",
                              label=f"{phase['phase']} {op}")
    rate_axis.set(title=f"throughput ({report['target']}, workload "
                        f"{report['config']['workload']})", xlabel="seconds",
                  ylabel="ops/s")
    latency_axis.set(title="latency by percentile", xscale="log", xlabel="percentile",
                     ylabel="ms")
    ticks = [1, 2, 10, 100, 1000, 10000]
    latency_axis.set_xticks(ticks, ["0", "50", "90", "99", "99.9", "99.99"])
    for axis in (rate_axis, latency_axis):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
