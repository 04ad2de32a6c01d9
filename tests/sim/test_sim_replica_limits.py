"""A key every replica acknowledged stays replicable, and the writer is told when a write
would make it otherwise.

- Sibling limit: two primaries, partitioned from each other, each take one blind write of
  a key at 99 siblings (100 each: allowed); healed, the merged copies hold 101. Peers
  refused those copies (``clock has 101 siblings``), so a get through a non-replica node
  failed and no repair could move the key. The limit is the writer's: the next blind write
  is refused, asking to resolve.
- Frame limit: an object goes to the other replicas whole, in one p_put frame. Five blind
  1 MB writes: the fifth made a 5 MB object that stayed on the coordinator only ("frame
  ... exceeds limit", answered Unavailable). It is refused before anything is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import Rejected
from common.ring import partition_of
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, settled_cluster
from tests.sim.network import LinkFaults

RING_SIZE = 16


@asynccontextmanager
async def _cluster(size: int, clock: trio.testing.MockClock
                   ) -> AsyncIterator[tuple[SimCluster, dict[str, Node]]]:
    """A settled cluster of ``size`` nodes (n=3) without link faults, every node up."""
    scenario = Scenario(nodes=size, ring_size=RING_SIZE, faults=LinkFaults())
    async with settled_cluster(scenario, clock, "dynd-limits-") as (cluster, sims):
        yield cluster, {s.id: s.node for s in sims if s.node is not None}


def _siblings(node: Node, key: bytes) -> int:
    clock = node.replica.get(partition_of(BUCKET, key, RING_SIZE), BUCKET, key)
    return 0 if clock is None else dvvset.sibling_count(clock)


async def test_copies_merged_past_the_sibling_limit_stay_readable_and_repairable(
        autojump_clock: trio.testing.MockClock) -> None:
    key = b"k"
    async with _cluster(4, autojump_clock) as (cluster, nodes):
        primaries = nodes["n0"].view.routing().primaries(partition_of(BUCKET, key, RING_SIZE))
        outsider = next(n for n in nodes if n not in primaries)
        a, b = nodes[primaries[0]], nodes[primaries[1]]
        for i in range(99):  # blind: one more sibling each
            await cluster.client_call("c", a.addr, "put", bucket=BUCKET, key=key,
                                      value=b"v%d" % i)
        await trio.sleep(1)
        cluster.network.partition([[a.addr], [b.addr]])
        for node, value in ((a, b"a"), (b, b"b")):  # each copy at 100: within the limit
            await cluster.client_call("c", node.addr, "put", bucket=BUCKET, key=key,
                                      value=value, w=1)
        cluster.network.heal()
        await trio.sleep(60)  # read repair, hints, anti-entropy

        assert {p: _siblings(nodes[p], key) for p in primaries} == dict.fromkeys(primaries, 101)
        read = await cluster.client_call("c", nodes[outsider].addr, "get", bucket=BUCKET,
                                         key=key)
        assert len(read["values"]) == 101
        with pytest.raises(Rejected, match=r"102 siblings, limit is 100: resolve"):
            await cluster.client_call("c", a.addr, "put", bucket=BUCKET, key=key, value=b"x")
        await cluster.client_call("c", nodes[outsider].addr, "put", bucket=BUCKET, key=key,
                                  value=b"resolved", context=read["context"])
        await trio.sleep(60)
        assert {p: _siblings(nodes[p], key) for p in primaries} == dict.fromkeys(primaries, 1)


async def test_a_write_whose_siblings_outgrow_a_replica_frame_is_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    key = b"big"
    async with _cluster(3, autojump_clock) as (cluster, nodes):
        coordinator = nodes["n0"]
        for i in range(4):  # 4 MB of siblings: still fits one 4 MiB frame
            await cluster.client_call("c", coordinator.addr, "put", bucket=BUCKET, key=key,
                                      value=bytes([65 + i]) * 1_000_000)
        with pytest.raises(Rejected, match=r"5 siblings, a replica takes at most \d+: "
                                           r"resolve its siblings"):
            await cluster.client_call("c", coordinator.addr, "put", bucket=BUCKET, key=key,
                                      value=b"E" * 1_000_000)
        await trio.sleep(30)
        assert {n: _siblings(node, key) for n, node in nodes.items()} == dict.fromkeys(nodes, 4)
