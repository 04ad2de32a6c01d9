"""A node that dropped a partition and is made one of its primaries again before its copy
is back must not mint its old dots for those keys again.

The sequence, with real nodes (5 nodes, ring of 16, n=3; claim is deterministic):

- epoch 1: n4 is a primary of key partition 0 and coordinates a put of KEY (dot n4.1:1,
  also held by the other primaries);
- epoch 2 (n1 leaves): n4 is no primary of partition 0 any more; once the epoch's
  transfers are done it hands its copy over and drops it;
- epoch 3 (n2 leaves): a key partition's primaries are the first n distinct owners
  walking the ring, and as soon as n0's transfer of ring partition 2 completes that walk
  reaches n4 for partition 0, while n4's own pull (ring partition 6) is still pending.
  So n4 coordinates a blind put of KEY with no local copy of it, while n0 and n3 hold
  n4's dot 1 for it.

Both acknowledged values must stay readable. Before the fix, n4 minted n4.1:1 again and
one of the two values vanished wherever the copies met.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.ring import partition_of
from dynd import membership
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

PARTITION = 0
REGAINER = "n4"


def _key(ring_size: int) -> bytes:
    """The first key of PARTITION (deterministic)."""
    return next(key for i in range(10_000)
                if partition_of(BUCKET, key := f"k{i}".encode(), ring_size) == PARTITION)


def _live(node: Node, key: bytes) -> set[bytes]:
    """The live values of ``node``'s own data copy of ``key``."""
    clock = node.replica.get(PARTITION, BUCKET, key)
    return set() if clock is None else {s.value for s in dvvset.live_values(clock)
                                        if s.value is not None}


class _Gate:
    """Holds a node's transfer pulls until released: a pull that is slow or stalled."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
        self.released = trio.Event()
        pull_all = node.transfers._pull_all

        async def gated(*args: Any) -> None:
            await self.released.wait()
            await pull_all(*args)

        monkeypatch.setattr(node.transfers, "_pull_all", gated)


async def _commit_leave(cluster: SimCluster, admin: SimNode, leaver: str) -> int:
    await cluster.client_call("admin", admin.addr, "cluster_leave", node=leaver)
    reply = await cluster.client_call("admin", admin.addr, "cluster_commit")
    return int(reply["epoch"])


async def test_a_regained_partition_mints_no_dot_twice(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(nodes=5, ring_size=16, faults=LinkFaults())
    key = _key(scenario.ring_size)
    async with settled_cluster(scenario, autojump_clock, "dynd-regain-") as (cluster, sims):
        nodes = {s.id: s.node for s in sims if s.node is not None}
        admin, x = sims[0], nodes[REGAINER]
        actor = x.identity.actor

        # Epoch 1: x coordinates a write of the key under its own actor.
        assert REGAINER in x.view.routing().primaries(PARTITION)
        await cluster.client_call("c", x.addr, "put", bucket=BUCKET, key=key, value=b"v1")
        assert _live(x, key) == {b"v1"}

        # Epoch 2: x hands its copy over and drops it.
        epoch2 = await _commit_leave(cluster, admin, "n1")
        await until("x dropped its copy of the key", lambda: (
            x.transfers.settled_epoch == epoch2 and x.replica.get(PARTITION, BUCKET, key)
            is None))
        assert REGAINER not in x.view.routing().primaries(PARTITION)

        # Epoch 3: x is a primary again while its own pull is held back.
        gate = _Gate(x, monkeypatch)
        await _commit_leave(cluster, admin, "n2")
        await until("x is a primary of the partition again, only its pull pending",
                     lambda: REGAINER in x.view.routing().primaries(PARTITION) and {
                         t.target for t in membership.pending_transfers(x.view.state)} == {
                         REGAINER})
        # The dangerous precondition: same actor, no local copy, and another primary
        # holding this actor's dot for the key.
        assert x.identity.actor == actor
        assert x.replica.get(PARTITION, BUCKET, key) is None
        others = [nodes[p] for p in x.view.routing().primaries(PARTITION) if p != REGAINER]
        held = [dvvset.join(c).get(actor, 0) for o in others
                if (c := o.replica.get(PARTITION, BUCKET, key)) is not None]
        assert held and max(held) >= 1, held

        # A blind write coordinated by x, minted on its (empty) data copy.
        await cluster.client_call("c", x.addr, "put", bucket=BUCKET, key=key, value=b"v2")
        assert _live(x, key) == {b"v2"}

        # Let x pull, then let repair do its work.
        gate.released.set()
        primaries = [nodes[p] for p in x.view.routing().primaries(PARTITION)]
        with trio.move_on_after(200):
            while not all(_live(p, key) == _live(x, key) for p in primaries):
                await trio.sleep(1)
        read = await cluster.client_call("c", admin.addr, "get", bucket=BUCKET, key=key)
        copies = {p.id: sorted(_live(p, key)) for p in primaries}
    acknowledged = [b"v1", b"v2"]
    assert sorted(v["value"] for v in read["values"]) == acknowledged, read
    assert all(values == acknowledged for values in copies.values()), copies
