"""A node whose disk fails under a write stops (dynd exits 1 with event=fatal), and the
cluster keeps taking writes without it: its failed copy is one replica's failure, which a
fallback makes up, and nothing acknowledged is lost (writes go on while disks fail)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import DynError
from common.ring import partition_of
from dynd.node import Node
from dynd.storage import Storage
from tests.sim.harness import BUCKET, Scenario, settled_cluster, until
from tests.sim.network import LinkFaults

BROKEN, COORDINATOR = "n1", "n2"
SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults())


def _values(node: Node, key: bytes) -> list[bytes]:
    clock = node.replica.get(partition_of(BUCKET, key, SCENARIO.ring_size), BUCKET, key)
    return [] if clock is None else [s.value for s in dvvset.live_values(clock)]


async def test_a_failing_disk_stops_its_node_and_writes_go_on(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-disk-") as (cluster, sims):
        by_id = {s.id: s for s in sims}
        nodes = {s.id: s.node for s in sims if s.node is not None}
        broken_storage = nodes[BROKEN].storage
        write_batch = Storage._write_batch

        def dying_disk(self: Storage, batch: object, options: object) -> None:
            if self is broken_storage:
                raise OSError(5, "Input/output error")
            write_batch(self, batch, options)

        monkeypatch.setattr(Storage, "_write_batch", dying_disk)
        first = next(key for i in range(1000) if BROKEN in nodes[BROKEN].view.routing().primaries(
            partition_of(BUCKET, key := f"first{i}".encode(), SCENARIO.ring_size)))
        try:  # the write that meets the failed disk: its outcome may be unknown
            await cluster.client_call("c", nodes[BROKEN].addr, "put", bucket=BUCKET,
                                      key=first, value=b"v")
        except DynError:
            pass
        await until("the broken node stopped", lambda: not by_id[BROKEN].up)
        acknowledged, refused = [], []
        for i in range(40):
            key, value = f"k{i}".encode(), f"v{i}".encode()
            try:
                await cluster.client_call("c", nodes[COORDINATOR].addr, "put", bucket=BUCKET,
                                          key=key, value=value)
            except DynError as exc:
                refused.append((key, exc.message))
            else:
                acknowledged.append((key, value))
        healthy = [node for node_id, node in nodes.items() if node_id != BROKEN]
        short = [(key, holders) for key, value in acknowledged
                 if len(holders := [n.id for n in healthy if value in _values(n, key)]) < 2]
    assert not refused, refused[:3]  # W=2 of 3 without the broken node's acknowledgement
    assert not short, short[:3]  # each on at least two healthy primaries
