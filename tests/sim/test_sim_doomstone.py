"""A client that holds a context across a delete, the tombstone grace and the reap, then
writes with it: the write is kept, alone, on every replica, and nothing deleted comes back.

Real nodes (5 nodes, ring of 16, n=3, tombstone grace 20 s) on the simulated network. The
client reads v1, another client deletes the key, the grace passes and the tombstone is
reaped, then the first client writes with its old context at the coordinator that minted
v1 (so the context names that node's actor at a counter the reaped tombstone covers).
Reaped everywhere, or only on the coordinator while another primary still holds the
tombstone (the grace passed on one node only): before the fix the write took the
tombstone's dot again, and the primaries that still held the tombstone dropped the write
for good (each copy descended the other, so repair never mended it). A value written by
another client after the reap stays, a sibling of the held-context write, which never saw
it.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from common import dvvset
from common.ring import partition_of
from tests.sim.harness import BUCKET, Scenario, settled_cluster, until
from tests.sim.network import LinkFaults

# Anti-entropy (repair and reaping) runs only where the test calls it.
SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), tombstone_grace=20.0,
                    antientropy_period=100_000.0)
KEY = b"doomstone"


@pytest.mark.parametrize(("reaped_on", "written_since"), [
    pytest.param("every primary", [], id="reaped-everywhere"),
    pytest.param("the coordinator only", [], id="reaped-on-the-coordinator-only"),
    pytest.param("every primary", [b"v2"], id="written-again-after-the-reap")])
async def test_a_write_with_a_context_held_across_a_reaped_delete_is_kept(
        autojump_clock: trio.testing.MockClock, reaped_on: str, written_since: list[bytes]
        ) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-doomstone-") as (
            cluster, sims):
        nodes = {s.id: s.node for s in sims if s.node is not None}
        partition = partition_of(BUCKET, KEY, SCENARIO.ring_size)
        primaries = [nodes[p] for p in nodes["n0"].view.routing().primaries(partition)]
        coordinator = primaries[0]

        await cluster.client_call("c1", coordinator.addr, "put", bucket=BUCKET, key=KEY,
                                  value=b"v1")
        held = (await cluster.client_call("c1", coordinator.addr, "get", bucket=BUCKET,
                                          key=KEY))["context"]
        read = await cluster.client_call("c2", coordinator.addr, "get", bucket=BUCKET, key=KEY)
        await cluster.client_call("c2", coordinator.addr, "delete", bucket=BUCKET, key=KEY,
                                  context=read["context"])
        await until("the tombstone on every primary", lambda: all(
            (c := p.replica.get(partition, BUCKET, KEY)) is not None
            and dvvset.is_tombstone(c) for p in primaries))
        tombstone = coordinator.replica.get(partition, BUCKET, KEY)
        assert tombstone is not None and all(
            dvvset.equal(p.replica.get(partition, BUCKET, KEY), tombstone) for p in primaries)
        await trio.sleep(SCENARIO.tombstone_grace + 1)
        if reaped_on == "every primary":
            assert await coordinator.antientropy.reap_tombstones(partition) == 1
            assert all(p.replica.get(partition, BUCKET, KEY) is None for p in primaries)
        else:  # agreed, but the others' p_reap has not arrived yet
            ticket = coordinator.replica.reap(partition, BUCKET, KEY, tombstone)
            assert ticket is not None
            await ticket.wait()
        for value in written_since:  # another client writes the key again, blind
            await cluster.client_call("c4", coordinator.addr, "put", bucket=BUCKET, key=KEY,
                                      value=value)

        await cluster.client_call("c1", coordinator.addr, "put", bucket=BUCKET, key=KEY,
                                  value=b"new", context=held)

        expected = sorted([b"new", *written_since])  # siblings: it saw none of them

        def copies() -> list[list[bytes | None]]:
            return [sorted(s.value for s in dvvset.live_values(c)) if (
                c := p.replica.get(partition, BUCKET, KEY)) is not None else []
                for p in primaries]

        await until("every primary holds the write", lambda: copies() == [expected] * 3)
        for primary in primaries:  # repair (and reaping) change nothing
            await primary.antientropy.repair_partition(partition)
        assert copies() == [expected] * 3
        for sim in sims:
            read = await cluster.client_call("c3", sim.addr, "get", bucket=BUCKET, key=KEY)
            assert sorted(v["value"] for v in read["values"]) == expected
