"""How gossip scales: rounds for a state change to reach every node, bytes per node."""

from __future__ import annotations

import math
import os

import pytest

from tests.sim.harness import measure_gossip


def test_small_cluster_change_spreads_in_few_rounds() -> None:
    measure = measure_gossip(10, ring_size=64)
    assert measure.rounds_all <= 3 * math.log2(10)


@pytest.mark.slow
@pytest.mark.timeout(0)  # 200 simulated nodes take minutes
def test_scale_table() -> None:
    """Prints the gossip table of docs/benchmarks.md; SIZES overrides the cluster sizes."""
    sizes = [int(s) for s in os.environ.get("SIZES", "10,25,50,100,200").split(",")]
    rows = ["| nodes | rounds to all | rounds to half | log2(S) | gossip bytes/node/s |",
            "|---:|---:|---:|---:|---:|"]
    for size in sizes:
        m = measure_gossip(size)
        rows.append(f"| {m.nodes} | {m.rounds_all:.1f} | {m.rounds_half:.1f} | "
                    f"{math.log2(size):.1f} | {m.bytes_per_node_second:.0f} |")
        print(rows[-1], flush=True)
        assert m.rounds_all <= 4 * math.log2(size)
    print("\n".join(rows))
