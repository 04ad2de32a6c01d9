"""A put forwarded to a node whose own view leaves it outside the key's preference list is
forwarded on to a node of that list (a bounded number of hops, never back to a node it
came through) or refused as unavailable: never minted there as a hint.

Views differ when two nodes judge liveness differently (a detector's lag, a partition
one side sees first). Here the views are set by hand on real nodes (8 nodes, ring of 16,
n=3, the key's primaries n4, n6, n5; claim and fallback choice are deterministic): n2
believes every primary and n0 down, so its list is n1, n3, n7 and it forwards to n1 first.
Before the fix n1, outside its own list, coordinated the put as a hint, under a fallback
actor of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import Unavailable
from common.messages import MAX_FORWARD_HOPS, request
from common.ring import partition_of
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

KEY = b"cart"
PRIMARIES = ["n4", "n6", "n5"]
FORWARDER, OUTSIDER = "n2", "n1"
FORWARDER_SEES_UP = {"n1", "n2", "n3", "n7"}  # its list: n1, n3, n7
OUTSIDER_SEES_UP = {"n0", "n1", "n2", "n3"}  # its list: n0, n3, n2 (the loop's way back)
SCENARIO = Scenario(nodes=8, ring_size=16, faults=LinkFaults())


def _see_up(node: Node, up: set[str]) -> None:
    """``node`` judges exactly ``up`` available from now on, whatever its detector says."""
    node.liveness.up_nodes = lambda: frozenset(up)  # type: ignore[method-assign]


def _list_of(node: Node) -> list[str]:
    place = node.view.routing().placement(BUCKET, KEY, 3, node.liveness.up_nodes())
    return [t.node for t in place.targets]


def _actors(nodes: Iterable[Node]) -> set[str]:
    """Every actor in a copy of KEY held anywhere: data and hints."""
    found: set[str] = set()
    for node in nodes:
        partition = partition_of(BUCKET, KEY, node.view.state.ring_size)
        clocks = [node.replica.get(partition, BUCKET, KEY)] + [
            dvvset.decode(raw) for _, _, bucket, key, _, raw in node.storage.scan_hints()
            if (bucket, key) == (BUCKET, KEY)]
        found |= {actor for clock in clocks if clock is not None
                  for actor in dvvset.join(clock)}
    return found


def _nodes(sims: list[SimNode]) -> dict[str, Node]:
    return {s.id: s.node for s in sims if s.node is not None}


def _check_the_case(cluster: SimCluster, nodes: dict[str, Node]) -> None:
    forwarder = nodes[FORWARDER]
    partition = partition_of(BUCKET, KEY, SCENARIO.ring_size)
    assert list(forwarder.view.routing().primaries(partition)) == PRIMARIES
    assert _list_of(forwarder)[0] == OUTSIDER and FORWARDER not in _list_of(forwarder)


async def test_a_forward_outside_the_list_goes_on_to_a_primary(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-fwd-on-") as (cluster, sims):
        nodes = _nodes(sims)
        _see_up(nodes[FORWARDER], FORWARDER_SEES_UP)
        _check_the_case(cluster, nodes)
        await until("n1 has heard from every node",
                    lambda: nodes[OUTSIDER].liveness.up_nodes() == set(nodes))
        assert _list_of(nodes[OUTSIDER]) == PRIMARIES

        await cluster.client_call("c", nodes[FORWARDER].addr, "put", bucket=BUCKET, key=KEY,
                                  value=b"v")
        minted = _actors(nodes.values())
        primary_actors = {nodes[p].identity.actor for p in PRIMARIES}
    assert minted and minted <= primary_actors, f"minted by {minted}"


async def test_a_forward_loop_ends_in_a_refusal(autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-fwd-loop-") as (cluster, sims):
        nodes = _nodes(sims)
        _see_up(nodes[FORWARDER], FORWARDER_SEES_UP)
        _see_up(nodes[OUTSIDER], OUTSIDER_SEES_UP)
        _check_the_case(cluster, nodes)
        # n1's list leads back to n2; its other nodes, and n2's, are down.
        assert _list_of(nodes[OUTSIDER])[-1] == FORWARDER and OUTSIDER not in _list_of(
            nodes[OUTSIDER])
        for sim in sims:
            if sim.id in {"n0", "n3", "n7"}:
                await sim.crash()

        with pytest.raises(Unavailable, match="preference list"):
            await cluster.client_call("c", nodes[FORWARDER].addr, "put", bucket=BUCKET,
                                      key=KEY, value=b"v")
        forwarded_back = nodes[FORWARDER].stats.summary()["ops"].get("p_forward")
        minted = _actors(_nodes(sims).values())
    assert forwarded_back is None  # n1 did not send it back to n2, where it came from
    assert minted == set(), f"minted by {minted}"


async def test_a_forward_with_no_hop_left_is_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-fwd-hops-") as (cluster, sims):
        nodes = _nodes(sims)
        outsider = nodes[OUTSIDER]
        assert OUTSIDER not in _list_of(outsider)
        via = [f"n{i}" for i in range(MAX_FORWARD_HOPS)]  # as many hops as allowed, taken
        put = request("put", 1, bucket=BUCKET, key=KEY, value=b"v")

        with pytest.raises(Unavailable, match="preference list"):
            await cluster.client_call("n0", outsider.addr, "p_forward", req=put, via=via)
        minted = _actors(nodes.values())
    assert minted == set(), f"minted by {minted}"
