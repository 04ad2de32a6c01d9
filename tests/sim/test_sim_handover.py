"""A node drops a partition it no longer owns only after handing its copy over.

Found by tests/sim seed 10: a joining node pulled a partition from one replica that
lacked an acknowledged write; the old owner, the only node still holding it (its other
copy had gone with a wiped disk), then dropped its copy. Here the same situation is
built directly: a key held only by a node that is not among its partition's primaries.
"""

from __future__ import annotations

import trio
import trio.testing

from common.ring import partition_of
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, settled_cluster
from tests.sim.network import LinkFaults

KEY = b"only-here"


def _holder_and_primaries(cluster: SimCluster) -> tuple[Node, int, list[Node]]:
    """A node that is not a primary of KEY's partition, the partition, its primaries."""
    nodes = [n.node for n in cluster.nodes if n.node is not None]
    some = nodes[0]
    partition = partition_of(BUCKET, KEY, some.view.state.ring_size)
    primaries = set(some.view.routing().primaries(partition))
    holder = next(n for n in nodes if n.id not in primaries)
    return holder, partition, [n for n in nodes if n.id in primaries]


async def _hand_over(block_primary: bool, clock: trio.testing.MockClock) -> tuple[bool, bool]:
    """(holder still has the key, every primary has it) after drop_foreign_partitions."""
    scenario = Scenario(nodes=4, faults=LinkFaults())
    async with settled_cluster(scenario, clock, "dynd-handover-") as (cluster, _):
        holder, partition, primaries = _holder_and_primaries(cluster)
        _, _, ticket = holder.replica.coordinate(
            partition, BUCKET, KEY, b"v", {}, holder.identity.actor, int(holder.wall() * 1000))
        await ticket.wait()
        if block_primary:
            cluster.network.block(holder.addr, primaries[0].addr)
        with trio.move_on_after(60):
            await holder.handover.drop_foreign_partitions(holder.view.state.epoch)
        kept = holder.replica.get(partition, BUCKET, KEY) is not None
        everywhere = all(p.replica.get(partition, BUCKET, KEY) is not None
                         for p in primaries)
    return kept, everywhere


async def test_a_dropped_partition_is_merged_into_every_primary_first(
        autojump_clock: trio.testing.MockClock) -> None:
    kept, everywhere = await _hand_over(False, autojump_clock)
    assert everywhere and not kept


async def test_a_partition_is_kept_while_a_primary_cannot_take_it(
        autojump_clock: trio.testing.MockClock) -> None:
    kept, _ = await _hand_over(True, autojump_clock)
    assert kept
