"""Hints and membership changes: no tombstone is reaped while a hint that could bring its
value back is held, and no hint is held for good for a node that is gone.

Real nodes (5 nodes, ring of 16, n=3, tombstone grace 20 s) on the simulated network:

- a leaver holding a hint it cannot deliver (its link to the target is down) counted as
  removed once its transfers were done, so the reap went ahead; delivered afterwards, the
  hint brought the deleted value back. Now the leave is not done, `cluster wait` does not
  report it, and nothing is reaped until the hint is delivered;
- hints for a dead node that was replaced stayed on every member that held them, for good,
  and with them the reap of every tombstone in the cluster. Now they go to the keys'
  current primaries, and `hints` never names a node that takes no replicas.
"""

from __future__ import annotations

import trio
import trio.testing

from common.ring import partition_of
from dynd import membership
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), tombstone_grace=20.0,
                    antientropy_period=30.0)


def _nodes(sims: list[SimNode]) -> dict[str, Node]:
    return {s.id: s.node for s in sims if s.node is not None}


def _keys_on(node: Node, primary: str, count: int) -> list[bytes]:
    """``count`` keys whose partition has ``primary`` among its primaries."""
    return [key for i in range(10_000) if primary in node.view.routing().primaries(
        partition_of(BUCKET, key := f"k{i}".encode(), SCENARIO.ring_size))][:count]


async def test_a_leaver_holding_hints_has_not_left_and_stops_the_reap(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-leaver-hints-") as (
            cluster, sims):
        nodes = _nodes(sims)
        admin, some, leaver = sims[0], nodes["n0"], nodes["n4"]
        key = next(k for k in _keys_on(some, "n1", 100) if "n4" not in
                   some.view.routing().primaries(partition_of(BUCKET, k, SCENARIO.ring_size)))
        partition = partition_of(BUCKET, key, SCENARIO.ring_size)
        target = nodes["n1"]
        await cluster.client_call("c", admin.addr, "put", bucket=BUCKET, key=key, value=b"OLD")
        await trio.sleep(1)
        # The leaver took the value as a fallback for n1 and cannot hand it back: its link
        # to n1 is down (n1 itself is up: everyone else reaches it).
        clock = target.replica.get(partition, BUCKET, key)
        assert clock is not None
        await leaver.replica.store_hint("n1", partition, BUCKET, key, clock).wait()
        cluster.network.block(leaver.addr, target.addr)
        await until("the leaver said it holds hints", lambda: some.view.state.members["n4"].hints)

        await cluster.client_call("admin", admin.addr, "cluster_leave", node="n4")
        await cluster.client_call("admin", admin.addr, "cluster_commit")
        await until("transfers done", lambda: some.view.state.epoch == 2
                    and not membership.pending_transfers(some.view.state))
        await cluster.delete_what_is_read(admin.addr, BUCKET, key)
        primaries = [nodes[p] for p in some.view.routing().primaries(partition)]
        # Past the grace, and through two anti-entropy periods (each may reap).
        await trio.sleep(SCENARIO.tombstone_grace + 2 * SCENARIO.antientropy_period)
        await primaries[0].antientropy.reap_tombstones(partition)

        assert leaver.storage.hint_counts() == {"n1": 1}
        assert membership.member_status(some.view.state, "n4") == "leaving"
        check = await cluster.client_call("admin", admin.addr, "cluster_check")
        assert not check["converged"] and check["leavers_holding_hints"] == ["n4"]
        assert all(p.replica.get(partition, BUCKET, key) is not None for p in primaries)

        cluster.network.heal()
        await until("the hint delivered", lambda: not leaver.storage.hint_counts())
        await until("the leave done",
                    lambda: membership.member_status(some.view.state, "n4") == "removed")
        check = await cluster.client_call("admin", admin.addr, "cluster_check")
        assert check["converged"], check
        await until("the tombstone reaped", lambda: all(
            p.replica.get(partition, BUCKET, key) is None for p in primaries))
        assert await cluster.read_values(admin.addr, BUCKET, key) == []


async def test_hints_for_a_replaced_dead_node_go_to_the_current_primaries(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-replaced-hints-") as (
            cluster, sims):
        nodes = _nodes(sims)
        admin, some = sims[0], nodes["n0"]
        keys = _keys_on(some, "n3", 6)
        await next(s for s in sims if s.id == "n3").crash()
        await until("n3 seen down", lambda: not some.liveness.is_up("n3"))
        for key in keys:  # a fallback takes each write for n3 as a hint
            await cluster.client_call("c", admin.addr, "put", bucket=BUCKET, key=key,
                                      value=b"v-" + key)
        live = {i: n for i, n in nodes.items() if i != "n3"}
        assert any("n3" in n.storage.hint_counts() for n in live.values())

        new = cluster.add_node(5)
        await new.start()
        await cluster.client_call("admin", new.addr, "cluster_join", seed=admin.addr)
        await cluster.client_call("admin", admin.addr, "cluster_replace", old="n3", new="n5")
        await cluster.client_call("admin", admin.addr, "cluster_commit")
        assert new.node is not None
        live["n5"] = new.node
        await until("transfers done", lambda: some.view.state.epoch == 2
                    and not membership.pending_transfers(some.view.state))

        await until("no hint for n3 left", lambda: not any(
            "n3" in n.storage.hint_counts() for n in live.values()), limit=60)
        for node in live.values():
            shown = (await cluster.client_call("admin", node.addr, "hints"))["hints"]
            assert all(membership.takes_replicas(some.view.state, t) for t in shown), shown
        for key in keys:  # the hinted writes reached the current primaries
            partition = partition_of(BUCKET, key, SCENARIO.ring_size)
            for primary in some.view.routing().primaries(partition):
                await until(f"{primary} holds {key!r}", lambda p=primary, k=key, q=partition:
                            live[p].replica.get(q, BUCKET, k) is not None)

        key = keys[0]
        partition = partition_of(BUCKET, key, SCENARIO.ring_size)
        await cluster.delete_what_is_read(admin.addr, BUCKET, key)
        await trio.sleep(SCENARIO.tombstone_grace + 5)
        primaries = [live[p] for p in some.view.routing().primaries(partition)]
        await until("the tombstone reaped", lambda: all(
            p.replica.get(partition, BUCKET, key) is None for p in primaries))
        assert await cluster.read_values(admin.addr, BUCKET, key) == []
