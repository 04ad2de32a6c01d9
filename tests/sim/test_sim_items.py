"""Items (bucket, key, sort key) on a simulated 5-node cluster (N=3, R=2, W=2).

- The gate: while one member reports no sort keys (a node of an older version), a
  request with a sort key is refused naming it, and plain keys are served; once it runs
  this version too, sort keys turn on by themselves after gossip.
- Under a crash and a partition: the items of one key live on that key's replicas only;
  a fallback holds hints per item and hands them back; concurrent writes to one item
  from both sides of a partition become siblings of that item alone; a get read-repairs
  every primary to the same copy of each item.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import DynError, Rejected
from tests.sim.harness import (
    BUCKET,
    Scenario,
    SimNode,
    item_call,
    primaries_of,
    settled_cluster,
    sort_keys_active,
    stored_items,
    until,
)
from tests.sim.network import LinkFaults

SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), antientropy=False)
PK = b"USER#alice"


_call = partial(item_call, key=PK)
_primaries = partial(primaries_of, key=PK)
_stored_items = partial(stored_items, key=PK)
SKS = [b"ORDER#1", b"ORDER#2", b"\x00", b"\xff\xff", b"PROFILE"]





def _hinted_items(sim: SimNode) -> set[bytes | None]:
    assert sim.node is not None
    return {sk for _, _, bucket, key, sk, _ in sim.node.storage.scan_hints()
            if (bucket, key) == (BUCKET, PK)}


def _run(main: Any) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock, clock=clock)


def test_sort_keys_wait_for_every_member_then_turn_on_by_themselves() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(SCENARIO, clock, "dyn-items-gate",
                                   settle=0) as (cluster, sims):
            old = sims[4]
            await old.stop()
            old.features = frozenset()  # restarted as a node without sort keys
            await old.start()
            await trio.sleep(30)
            assert not any(s.node is not None and s.node.view.state.features for s in sims)
            with pytest.raises(Rejected, match=f"sort keys need every member.*not yet: {old.id}"):
                await _call(cluster, sims[0], "put", sk=b"S", value=b"v")
            with pytest.raises(Rejected, match=old.id):
                await _call(cluster, sims[1], "get", sk=b"S")
            await _call(cluster, sims[0], "put", value=b"plain")  # plain keys still served
            shown = await cluster.client_call("client", sims[0].addr, "cluster_features")
            assert {"feature": "sk", "active": False, "lacking": [old.id]} in shown["features"]
            await old.stop()
            old.features = sims[0].features  # upgraded
            await old.start()
            await until("every node records sort keys as active", lambda: sort_keys_active(sims))
            shown = await cluster.client_call("client", sims[0].addr, "cluster_features")
            assert {"feature": "sk", "active": True, "lacking": []} in shown["features"]
            await _call(cluster, sims[0], "put", sk=b"S", value=b"v")
            got = await _call(cluster, sims[4], "get", sk=b"S")
            assert [v["value"] for v in got["values"]] == [b"v"]

    _run(main)


def test_items_hints_siblings_and_read_repair_per_item_under_faults() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(SCENARIO, clock, "dyn-items-faults") as (
                cluster, sims):
            await until("sort keys active", lambda: sort_keys_active(sims))
            primaries = _primaries(sims)
            others = [s for s in sims if s not in primaries]
            for i, sk in enumerate(SKS):
                await _call(cluster, primaries[0], "put", sk=sk, value=b"v%d" % i)
            await _call(cluster, primaries[0], "put", value=b"plain")
            for sim in sims:  # every item of PK on PK's replicas, and only there
                expected = {*SKS, None} if sim in primaries else set()
                assert set(_stored_items(sim)) == expected, sim.id

            # A crashed primary: the writes meanwhile go to a fallback's hints, per item.
            down = primaries[2]
            await down.crash()
            await until("the others see it down", lambda: all(
                s.node is not None and not s.node.liveness.is_up(down.id)
                for s in sims if s is not down))
            for sk in SKS[:2]:
                seen = (await _call(cluster, primaries[0], "get", sk=sk))["context"]
                await _call(cluster, primaries[0], "put", sk=sk, value=b"during crash",
                            context=seen)
            assert any(set(SKS[:2]) <= _hinted_items(s) for s in others)

            # A partition: both sides write the same item; only that item gets siblings.
            side_a = [primaries[0].addr]
            side_b = [s.addr for s in sims if s is not primaries[0] and s is not down]
            cluster.network.partition([side_a, side_b])
            item = SKS[2]
            ctx = (await _call(cluster, primaries[0], "get", sk=item, r=1))["context"]
            await _call(cluster, primaries[0], "put", sk=item, value=b"side a", context=ctx,
                        w=1)
            await until("side b sees the partition", lambda: all(
                s.node is not None and not s.node.liveness.is_up(primaries[0].id)
                for s in sims if s.addr in side_b))
            await _call(cluster, primaries[1], "put", sk=item, value=b"side b", context=ctx)
            cluster.network.heal()
            await down.start()
            await until("hints handed back", lambda: not any(
                _hinted_items(s) for s in sims if s.node is not None), limit=200)

            got = await _call(cluster, primaries[1], "get", sk=item, r=3)
            assert sorted(v["value"] for v in got["values"]) == [b"side a", b"side b"]
            for sk in SKS:
                if sk != item:
                    await _call(cluster, primaries[0], "get", sk=sk, r=3)
            await _call(cluster, primaries[0], "get", r=3)
            await trio.sleep(5)  # read repair runs once every reply is in

            copies = [_stored_items(p) for p in primaries]
            assert set(copies[0]) == {*SKS, None}
            for sk in copies[0]:
                assert all(dvvset.equal(copies[0][sk], c[sk]) for c in copies[1:]), sk
            for sk, clock in copies[0].items():
                live = [s.value for s in dvvset.live_values(clock)]
                assert len(live) == (2 if sk == item else 1), (sk, live)
            assert [s.value for s in dvvset.live_values(copies[0][SKS[0]])] == [
                b"during crash"]

    _run(main)


def test_a_replica_refuses_a_malformed_sort_key() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(SCENARIO, clock, "dyn-items-bad") as (
                cluster, sims):
            await until("sort keys active", lambda: sort_keys_active(sims))
            with pytest.raises(DynError, match="1..1024"):
                await _call(cluster, sims[0], "put", sk=b"s" * 1025, value=b"v")

    _run(main)
