"""The performance targets of issues 16 and 19 as data, and the one table `make bench` ends with.

Pure: the harness (tests/bench/compare.py --all) measures every store in interleaved rounds
and hands each round's raw figures here; ``round_figures`` turns one round into one value per
target (a ratio of two stores is taken within the round, so both sides saw the same machine),
and ``evaluate`` takes the median over the rounds and says met or missed, and by how much.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Node CPU per YCSB-A operation on 3 nodes (sync=batch), summed over the nodes, before issue
# 19's work (docs/benchmarks.md, "Where the time goes"); the target is half of it.
CPU_BASELINE_US_PER_OP = 470.0

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Goal:
    """One target: a figure measured each round, compared with ``threshold`` by ``compare``."""

    key: str
    label: str
    compare: str
    threshold: float
    unit: str

    def met(self, measured: float) -> bool:
        return COMPARISONS[self.compare](measured, self.threshold)


GOALS: tuple[Goal, ...] = (
    Goal("a3_vs_etcd", "3 nodes YCSB-A ops/s vs etcd (3 members)", ">=", 2.0, "x"),
    Goal("a3_p999", "3 nodes YCSB-A p99.9, worst operation", "<=", 30.0, " ms"),
    Goal("a1_vs_redis", "1 node YCSB-A ops/s vs Redis appendfsync always", ">=", 0.8, "x"),
    Goal("single_put", "one at a time, 3 nodes: put p50 vs etcd update p50", "<=", 0.5, "x"),
    Goal("single_get", "one at a time, 3 nodes: get p50 vs etcd read p50", "<=", 0.5, "x"),
    Goal("cpu_us_per_op", "node CPU per YCSB-A op, 3 nodes summed", "<=",
         CPU_BASELINE_US_PER_OP / 2, " us"),
    Goal("e_items_vs_gets", "YCSB-E items/s vs YCSB-C gets/s", ">=", 5.0, "x"),
    Goal("e_query_vs_gets", "50-item query vs 50 gets: rate and CPU, the lesser", ">=", 10.0,
         "x"),
    Goal("e_refilled_pct", "YCSB-E queries refilled", "<", 1.0, "%"),
    Goal("e_reverse_off_pct", "YCSB-E reverse items/s off forward", "<=", 10.0, "%"),
    Goal("e_down_share", "YCSB-E one node down vs healthy queries/s", ">=", 0.6, "x"),
    Goal("e_down_errors", "YCSB-E one node down: errors", "<=", 0.0, ""),
)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def round_figures(measured: dict[str, Any]) -> dict[str, float]:
    """One round's value for every goal its measurements allow (a missing store, e.g. etcd
    not installed, leaves its goals out).

    ``measured`` holds what the harness got in that round, each part optional:
    "a3" {"dynd": {"throughput", "p999", "cpu_us_per_op"}, "etcd": {"throughput"}},
    "a1" {"dynd": {"throughput"}, "redis": {"throughput"}},
    "single" {"dynd"|"etcd": {"update_p50", "read_p50"}},
    "e" {variant name: the variant's row (per_s, items_per_s, server_ms_per_op, ...)},
    "e_down" (E forward with one node stopped: per_s, errors).
    """
    figures: dict[str, float | None] = {}
    a3, a1, single = measured.get("a3", {}), measured.get("a1", {}), measured.get("single", {})
    if "dynd" in a3:
        figures["a3_p999"] = a3["dynd"]["p999"]
        figures["cpu_us_per_op"] = a3["dynd"]["cpu_us_per_op"]
        if "etcd" in a3:
            figures["a3_vs_etcd"] = _ratio(a3["dynd"]["throughput"], a3["etcd"]["throughput"])
    if "dynd" in a1 and "redis" in a1:
        figures["a1_vs_redis"] = _ratio(a1["dynd"]["throughput"], a1["redis"]["throughput"])
    if "dynd" in single and "etcd" in single:
        figures["single_put"] = _ratio(single["dynd"]["update_p50"],
                                       single["etcd"]["update_p50"])
        figures["single_get"] = _ratio(single["dynd"]["read_p50"], single["etcd"]["read_p50"])
    e = measured.get("e", {})
    if e:
        forward = e["E forward"]
        figures["e_items_vs_gets"] = _ratio(forward["items_per_s"], e["C: gets"]["per_s"])
        rate = _ratio(e["E L=50 query"]["per_s"], e["E L=50 as gets"]["per_s"])
        cpu = _ratio(e["E L=50 as gets"]["server_ms_per_op"],
                     e["E L=50 query"]["server_ms_per_op"])
        figures["e_query_vs_gets"] = None if rate is None or cpu is None else min(rate, cpu)
        figures["e_refilled_pct"] = forward["refilled_pct"]
        reverse = _ratio(e["E reverse"]["items_per_s"], forward["items_per_s"])
        figures["e_reverse_off_pct"] = None if reverse is None else 100 * abs(reverse - 1)
        if "e_down" in measured:
            figures["e_down_share"] = _ratio(measured["e_down"]["per_s"], forward["per_s"])
            figures["e_down_errors"] = measured["e_down"]["errors"]
    return {key: value for key, value in figures.items() if value is not None}


def margin(goal: Goal, measured: float) -> str:
    """How far ``measured`` is from the threshold: a factor when both are positive, else the
    difference in the goal's unit."""
    if measured > 0 and goal.threshold > 0:
        factor = max(measured / goal.threshold, goal.threshold / measured)
        return f"{factor:.2f}x"
    return f"{abs(measured - goal.threshold):g}{goal.unit}"


def evaluate(rounds: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Every goal with its per-round values, their median, met or missed and the margin; a
    goal no round measured is "not measured"."""
    rows = []
    for goal in GOALS:
        values = [figures[goal.key] for figures in rounds if goal.key in figures]
        row: dict[str, Any] = {"key": goal.key, "target": goal.label,
                               "threshold": f"{goal.compare} {goal.threshold:g}{goal.unit}",
                               "rounds": values}
        if values:
            median = statistics.median(values)
            row |= {"median": median, "met": goal.met(median), "margin": margin(goal, median)}
        else:
            row |= {"median": None, "met": None, "margin": None}
        rows.append(row)
    return rows


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
    """The evaluated goals as one Markdown table."""
    lines = ["| target | median | rounds | threshold | verdict | by |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        goal = next(g for g in GOALS if g.key == row["key"])
        if row["median"] is None:
            lines.append(f"| {row['target']} | - | - | {row['threshold']} | not measured | - |")
            continue
        each = " / ".join(_number(value) for value in row["rounds"])
        verdict = "met" if row["met"] else "MISSED"
        lines.append(f"| {row['target']} | {_number(row['median'])}{goal.unit} | {each} | "
                     f"{row['threshold']} | {verdict} | {row['margin']} |")
    return "\n".join(lines)
