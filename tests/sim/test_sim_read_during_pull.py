"""A node made a primary of a key partition before its pull of it is in does not answer
reads alone from the copy it has.

A key partition's primaries are the first n distinct owners walking the ring, so another
node's completed transfer can make a node a primary before its own pull is done. With real
nodes (5 nodes, ring of 16, n=3; claim is deterministic), n4 leaves: once every transfer
but n1's is done, the walk from key partition 12 reaches n1, whose pull of it is held back
here. Before the fix, a get with R=1 took n1's empty copy as the answer ("not found" for a
value written before the leave) when n1 answered first: from the coordinator's own copy
(n1 coordinates) or over the network (n0 coordinates, the other primaries slower).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from common.ring import partition_of
from dynd import membership
from tests.sim.harness import BUCKET, Scenario, settled_cluster, until
from tests.sim.network import LinkFaults

PENDING, LEAVER, OTHER = "n1", "n4", "n0"  # OTHER: no primary of PARTITION after the leave
PARTITION = 12
SLOW = LinkFaults(min_delay=1.0, max_delay=1.0)


def _keys(ring_size: int, count: int) -> list[bytes]:
    """The first ``count`` keys of PARTITION (deterministic)."""
    return list(itertools.islice(
        (key for i in itertools.count() if partition_of(
            BUCKET, key := f"k{i}".encode(), ring_size) == PARTITION), count))


@pytest.mark.parametrize("coordinator", [PENDING, OTHER])
async def test_a_primary_whose_pull_is_pending_makes_no_read_alone(
        coordinator: str, autojump_clock: trio.testing.MockClock) -> None:
    # Anti-entropy's period is far beyond the test: it fills no copy here.
    scenario = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), antientropy_period=1e9)
    [key] = _keys(scenario.ring_size, 1)
    async with settled_cluster(scenario, autojump_clock, "dynd-pending-") as (cluster, sims):
        by_id = {s.id: s for s in sims}
        nodes = {s.id: s.node for s in sims if s.node is not None}
        admin, pending = nodes[OTHER], nodes[PENDING]
        await cluster.client_call("c", admin.addr, "put", bucket=BUCKET, key=key, value=b"v")
        await until("every primary holds the key", lambda: all(
            nodes[p].replica.get(PARTITION, BUCKET, key) is not None
            for p in admin.view.routing().primaries(PARTITION)))
        assert PENDING not in admin.view.routing().primaries(PARTITION)

        # n1's pulls of the epoch never start.
        async def held_back(*args: Any) -> None:
            await trio.sleep_forever()

        pending.transfers._pull_partition = held_back  # type: ignore[method-assign]
        await cluster.client_call("admin", admin.addr, "cluster_leave", node=LEAVER)
        await cluster.client_call("admin", admin.addr, "cluster_commit")
        await until("every transfer but n1's is done, on n0 and n1", lambda: all(
            {t.target for t in membership.pending_transfers(node.view.state)} == {PENDING}
            for node in (admin, pending)))

        # The case: n1 is a primary of the partition now, with an empty copy.
        primaries = admin.view.routing().primaries(PARTITION)
        assert PENDING in primaries and OTHER not in primaries
        assert pending.view.routing().primaries(PARTITION) == primaries
        assert pending.replica.get(PARTITION, BUCKET, key) is None
        # n1 answers first: the other primaries' replies to n0 are slow.
        for primary in primaries:
            if primary != PENDING:
                cluster.network.link_faults[(by_id[primary].addr, admin.addr)] = SLOW

        reply = await cluster.client_call("c", by_id[coordinator].addr, "get",
                                          bucket=BUCKET, key=key, r=1)
    assert reply["found"], "a get answered from a copy whose pull is pending"
    assert [v["value"] for v in reply["values"]] == [b"v"]
