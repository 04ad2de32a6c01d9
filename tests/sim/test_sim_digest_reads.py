"""Digest reads: a coordinator that holds the key reads its own copy and asks the other
replicas for a digest of theirs; a replica whose digest differs (or that holds nothing)
is read in full, merged into the answer and read-repaired. Before the cluster has the
"digest" feature (a member runs an older version), every replica is read in full.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from common import dvvset
from common.ring import partition_of
from dynd.features import DIGEST_READS, SUPPORTED
from tests.sim.harness import BUCKET, Scenario, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

# Three nodes, n=3: every node is a primary of every key. No anti-entropy: only read
# repair can mend a stale copy here.
SCENARIO = Scenario(nodes=3, faults=LinkFaults(), antientropy_period=1e9)
KEY = b"k"


def _record_reads(sim: SimNode) -> list[bool]:
    """Whether each p_get the node sends from now on asks for a digest."""
    assert sim.node is not None
    peers, asked = sim.node.peers, []
    submit = peers.submit

    def recording(node: str, op: str, fields: dict[str, Any], *args: Any) -> Any:
        if op == "p_get":
            asked.append(fields.get("digest") is True)
        return submit(node, op, fields, *args)

    peers.submit = recording  # type: ignore[method-assign]
    return asked


def _stored(sim: SimNode) -> list[bytes]:
    """The live values of ``sim``'s own copy of KEY."""
    assert sim.node is not None
    clock = sim.node.replica.get(partition_of(BUCKET, KEY, SCENARIO.ring_size), BUCKET, KEY)
    return [] if clock is None else sorted(s.value for s in dvvset.live_values(clock)
                                           if s.value is not None)


async def _put_without(cluster: Any, sims: list[SimNode], stale: SimNode, value: bytes) -> None:
    """Put ``value`` through sims[0] while ``stale`` hears nothing of it (W=2 of the others)."""
    for sim in sims:
        if sim is not stale:
            cluster.network.block(sim.addr, stale.addr)
    await cluster.client_call("c", sims[0].addr, "put", bucket=BUCKET, key=KEY, value=value,
                              context=(await cluster.client_call(
                                  "c", sims[0].addr, "get", bucket=BUCKET, key=KEY))["context"])
    cluster.network.heal()


async def test_replicas_in_sync_answer_with_digests_and_a_stale_one_is_read_and_repaired(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-digest-") as (cluster, sims):
        await until("the cluster has digest reads", lambda: all(
            s.node is not None and DIGEST_READS in s.node.view.state.features for s in sims))
        first, _, stale = sims
        await _put_without(cluster, sims, stale, b"v1")  # stale holds nothing
        asked = _record_reads(first)

        reply = await cluster.client_call("c", first.addr, "get", bucket=BUCKET, key=KEY)
        assert [v["value"] for v in reply["values"]] == [b"v1"]
        await until("read repair gave the empty replica the value",
                    lambda: _stored(stale) == [b"v1"])
        assert asked.count(True) == 2 and asked.count(False) == 1  # the empty one in full
        assert first.node is not None and first.node.stats.events["digest_mismatch"] == 1

        asked.clear()  # in sync now: digests only
        await cluster.client_call("c", first.addr, "get", bucket=BUCKET, key=KEY)
        assert asked == [True, True]

        # A stale coordinator: its own copy is the data, both digests differ.
        await _put_without(cluster, sims, stale, b"v2")
        reply = await cluster.client_call("c", stale.addr, "get", bucket=BUCKET, key=KEY)
        assert [v["value"] for v in reply["values"]] == [b"v2"]
        await until("read repair mended the coordinator's own copy",
                    lambda: _stored(stale) == [b"v2"])


async def test_until_every_member_has_digest_reads_every_replica_is_read_in_full(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-digest-old-",
                               settle=0) as (cluster, sims):
        old = sims[2]
        await old.stop()
        old.features = SUPPORTED - {DIGEST_READS}  # restarted as an older version
        await old.start()
        await trio.sleep(5)
        assert not any(s.node is not None and DIGEST_READS in s.node.view.state.features
                       for s in sims)
        await cluster.client_call("c", sims[0].addr, "put", bucket=BUCKET, key=KEY, value=b"v")
        asked = _record_reads(sims[0])
        reply = await cluster.client_call("c", sims[0].addr, "get", bucket=BUCKET, key=KEY,
                                          r=3)
        assert [v["value"] for v in reply["values"]] == [b"v"]
        assert asked == [False, False]
