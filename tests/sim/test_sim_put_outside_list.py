"""A put that reaches a node outside the key's preference list is minted on a node of the
list, a fallback when every primary is down (docs/architecture.md), so that the dot's actor is
one of the nodes that hold the key (as a primary, or as a hint for one)."""

from __future__ import annotations

import trio
import trio.testing

from common import dvvset
from common.ring import partition_of
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, settled_cluster, until
from tests.sim.network import LinkFaults

KEY = b"cart"


def _targets(node: Node) -> list[str]:
    """The nodes of KEY's preference list, as ``node`` sees it now."""
    place = node.view.routing().placement(BUCKET, KEY, 3, node.liveness.up_nodes())
    return [t.node for t in place.targets]


async def test_a_put_outside_the_preference_list_is_minted_on_a_fallback(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=7, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-outside-") as (cluster, sims):
        by_id = {s.id: s for s in sims}
        some = sims[0].node
        assert some is not None
        partition = partition_of(BUCKET, KEY, some.view.state.ring_size)
        primaries = list(some.view.routing().primaries(partition))
        for primary in primaries:
            await by_id[primary].crash()
        up = [s.node for s in sims if s.id not in primaries and s.node is not None]
        await until("every live node sees every primary down", lambda: all(
            not node.liveness.is_up(p) for node in up for p in primaries))
        # Views of the other nodes' liveness settle too: the outsider must be one by its own.
        await until("every live node picks the same fallbacks", lambda: len({
            tuple(_targets(node)) for node in up}) == 1)
        fallbacks = _targets(up[0])
        assert len(fallbacks) == 3 and not set(fallbacks) & set(primaries)
        outsider = next(node for node in up if node.id not in fallbacks)

        await cluster.client_call("c", outsider.addr, "put", bucket=BUCKET, key=KEY, value=b"v")

        minted_by = {node.id: actors for node in up if (actors := {
            actor for _, _, bucket, key, _, raw in node.storage.scan_hints()
            if (bucket, key) == (BUCKET, KEY) for actor in dvvset.join(dvvset.decode(raw))})}
    assert outsider.id not in minted_by  # the outsider kept no copy of its own
    minters = {actor.split(".")[0] for actors in minted_by.values() for actor in actors}
    assert minters and minters <= set(fallbacks), minted_by
