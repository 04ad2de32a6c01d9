"""A node made a primary of a key partition without a transfer of its own still pulls it.

Transfers are planned per ring partition that changes owner, but a key partition's
primaries are the first n distinct owners walking the ring from it. With real nodes
(4 nodes, ring of 8, n=3; claim is deterministic), n3 leaves: the ring partitions that
move all go to n0 and n2, yet the walk from key partitions 5 and 6 now reaches n1, which
has no transfer. Before the fix n1 never pulled them: it served them from an empty copy
until anti-entropy (here: never within the test) or n3's hand-over before dropping its
copy (here: n3 cannot reach n1, and the test checks n3 still holds its copy) filled it.

A restart of n1 afterwards pulls nothing again.

n1 meets the epoch in two ways: up during the transfers, or down until the other nodes'
transfers are all done (it learns of the epoch late and must still pull, before its
clean-up forgets the pull cursors).
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from common.ring import partition_of
from dynd import membership
from tests.sim.harness import BUCKET, Scenario, settled_cluster, until
from tests.sim.network import LinkFaults

GAINER, LEAVER, ADMIN = "n1", "n3", "n0"
GAINED = [5, 6]  # key partitions whose primaries gain GAINER when LEAVER leaves
KEYS_PER_PARTITION = 4


def _keys(ring_size: int) -> dict[int, list[bytes]]:
    """The first KEYS_PER_PARTITION keys of each GAINED partition (deterministic)."""
    keys: dict[int, list[bytes]] = {p: [] for p in GAINED}
    for i in itertools.count():
        key = f"k{i}".encode()
        found = keys.get(partition_of(BUCKET, key, ring_size))
        if found is not None and len(found) < KEYS_PER_PARTITION:
            found.append(key)
        if all(len(found) == KEYS_PER_PARTITION for found in keys.values()):
            return keys
    raise AssertionError("unreachable")


@pytest.mark.parametrize("down_during_transfers", [False, True])
async def test_a_primary_without_a_transfer_pulls_what_it_gained(
        down_during_transfers: bool, autojump_clock: trio.testing.MockClock) -> None:
    # Anti-entropy's period is far beyond the test: it fills no copy here.
    scenario = Scenario(nodes=4, ring_size=8, faults=LinkFaults(), antientropy_period=1e9)
    keys = _keys(scenario.ring_size)
    async with settled_cluster(scenario, autojump_clock, "dynd-pull-") as (cluster, founders):
        sims = {s.id: s for s in founders}
        admin, gainer, leaver = sims[ADMIN], sims[GAINER], sims[LEAVER]
        assert admin.node is not None and leaver.node is not None
        nodes = {s.id: s.node for s in sims.values() if s.node is not None}
        for partition_keys in keys.values():
            for key in partition_keys:
                await cluster.client_call("c", admin.addr, "put", bucket=BUCKET, key=key,
                                          value=key)
        await until("every primary holds every key", lambda: all(
            nodes[p].replica.get(partition, BUCKET, key) is not None
            for partition, partition_keys in keys.items() for key in partition_keys
            for p in admin.node.view.routing().primaries(partition)))

        # n3's hand-over cannot reach n1 (frames from n3 to n1 are lost).
        cluster.network.block(leaver.addr, gainer.addr)
        if down_during_transfers:
            await gainer.crash()
        await cluster.client_call("admin", admin.addr, "cluster_leave", node=LEAVER)
        reply = await cluster.client_call("admin", admin.addr, "cluster_commit")
        epoch = int(reply["epoch"])

        # The case: n1 gains the key partitions without a transfer of its own.
        committed = admin.node.view.state
        assert GAINER not in {t.target for t in committed.transfers}
        assert [p for p in range(scenario.ring_size)
                if GAINER in admin.node.view.routing().primaries(p, owners=committed.next_owners)
                and GAINER not in admin.node.view.routing().primaries(p, owners=committed.owners)
                ] == GAINED

        if down_during_transfers:
            await until("the other nodes' transfers are all done",
                         lambda: not membership.pending_transfers(admin.node.view.state))
            await gainer.start()
        x = gainer.node
        assert x is not None
        await until("n1 saw every transfer of the epoch done and cleaned up", lambda: (
            x.view.state.epoch == epoch and not membership.pending_transfers(x.view.state)
            and x.transfers.settled_epoch == epoch))
        primary_of_gained = all(GAINER in x.view.routing().primaries(p) for p in GAINED)
        missing = {p: [k for k in partition_keys if x.replica.get(p, BUCKET, k) is None]
                   for p, partition_keys in keys.items()}
        leaver_kept_its_copy = all(
            leaver.node.replica.get(p, BUCKET, k) is not None
            for p, partition_keys in keys.items() for k in partition_keys)
        cursors = x.storage.meta_names("xfer:")
        # A restart does not pull the epoch's gained partitions again.
        await gainer.crash()
        await gainer.start()
        await trio.sleep(10)
        assert gainer.node is not None
        pulled_after_restart = sorted(gainer.node.transfers.progress)
    assert primary_of_gained  # n1 serves these partitions now
    assert leaver_kept_its_copy  # so no hand-over from n3 filled n1's copy
    assert missing == {p: [] for p in GAINED}, f"n1's copy lacks {missing}"
    assert cursors == []  # the pull's cursors were forgotten after it
    assert pulled_after_restart == []
