"""Batched reaping: a batch reaps what every primary agreed on, keeps the rest on every
primary, and a cluster with a member that cannot read the batch keeps reaping per key.

Real nodes (5, ring 16, n=3, tombstone grace 20 s) on the simulated network, without
periodic anti-entropy, so that only the reaps these tests start happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from common.ring import partition_of
from dynd.features import BATCHED_REAP, SUPPORTED
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, settled_cluster, until
from tests.sim.network import LinkFaults

SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), tombstone_grace=20.0,
                    antientropy=False)
KEYS = 6


def _keys_of_partition_0(count: int) -> list[bytes]:
    keys = [key for i in range(10_000)
            if partition_of(BUCKET, key := f"k{i}".encode(), SCENARIO.ring_size) == 0]
    return keys[:count]


def _record_ops(node: Node, monkeypatch: pytest.MonkeyPatch,
                before: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None
                ) -> list[tuple[str, str]]:
    """(op, peer) of every call the reaper ``node`` makes from now on; ``before`` runs
    before each is sent."""
    sent: list[tuple[str, str]] = []
    call = node.antientropy.call

    async def recording(peer: str, op: str, fields: dict[str, Any], *args: Any) -> Any:
        sent.append((op, peer))
        if before is not None:
            await before(peer, op, fields)
        return await call(peer, op, fields, *args)

    monkeypatch.setattr(node.antientropy, "call", recording)
    return sent


async def _put_and_delete(cluster: SimCluster, addr: str, keys: list[bytes]) -> None:
    for key in keys:
        await cluster.client_call("c", addr, "put", bucket=BUCKET, key=key, value=b"OLD", w=3)
        await cluster.delete_what_is_read(addr, BUCKET, key)


def _held_by(nodes: list[Node], partition: int, key: bytes) -> list[str]:
    return [n.id for n in nodes if n.replica.get(partition, BUCKET, key) is not None]


async def test_a_batch_keeps_what_changed_or_was_refused_and_reaps_the_rest(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-reap-batch-") as (
            cluster, sims):
        nodes = {s.id: s.node for s in sims if s.node is not None}
        await until("batched reaping active", lambda: all(
            BATCHED_REAP in n.view.state.features for n in nodes.values()))
        some = nodes["n0"]
        partition, keys = 0, _keys_of_partition_0(KEYS)
        primaries = [nodes[p] for p in some.view.routing().primaries(partition)]
        reaper, skewed = primaries[0], next(s for s in sims if s.id == primaries[2].id)
        changed, refused, rest = keys[0], keys[1], keys[2:]
        await _put_and_delete(cluster, reaper.addr, [changed, *rest])
        await trio.sleep(10)
        await _put_and_delete(cluster, reaper.addr, [refused])  # 10 s younger than the rest
        await trio.sleep(SCENARIO.tombstone_grace + 2)
        skewed.skew = -5.0  # its clock finds `refused` within the grace, the rest past it

        overwritten = trio.Event()

        async def overwrite_changed(peer: str, op: str, fields: dict[str, Any]) -> None:
            """Between the phases: every primary agreed on `changed`, none deleted it."""
            if op == "p_reap" and not overwritten.is_set():
                overwritten.set()
                await cluster.client_call("c", reaper.addr, "put", bucket=BUCKET,
                                          key=changed, value=b"NEW", w=3)

        ops = _record_ops(reaper, monkeypatch, overwrite_changed)
        reaped = await reaper.antientropy.reap_tombstones(partition)

        assert {op for op, _ in ops} - {"hints"} == {"p_digests", "p_reap"}
        assert reaped == len(rest)
        for key in rest:
            assert _held_by(primaries, partition, key) == [], key
        assert _held_by(primaries, partition, refused) == [p.id for p in primaries]
        assert _held_by(primaries, partition, changed) == [p.id for p in primaries]
        assert await cluster.read_values(reaper.addr, BUCKET, changed) == [b"NEW"]


async def test_a_member_without_batched_reaping_gets_one_key_per_call_until_upgraded(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-reap-mixed-",
                               settle=0) as (cluster, sims):
        some = sims[0].node
        assert some is not None
        partition, keys = 0, _keys_of_partition_0(2 * KEYS)
        primary_ids = some.view.routing().primaries(partition)
        old = next(s for s in sims if s.id == primary_ids[1])
        await old.stop()
        old.features = SUPPORTED - {BATCHED_REAP}  # restarted as a node without the batch
        await old.start()
        await trio.sleep(10)

        def nodes() -> list[Node]:
            return [s.node for s in sims if s.node is not None]

        def primaries() -> list[Node]:
            return [next(n for n in nodes() if n.id == p) for p in primary_ids]

        assert not any(BATCHED_REAP in n.view.state.features for n in nodes())
        await _put_and_delete(cluster, sims[0].addr, keys[:KEYS])
        await trio.sleep(SCENARIO.tombstone_grace + 2)
        reaper = primaries()[0]
        ops = _record_ops(reaper, monkeypatch)
        assert await reaper.antientropy.reap_tombstones(partition) == KEYS
        # one p_reap per key and other primary (their copies read by p_get, not counted)
        assert [op for op, _ in ops if op != "hints"] == ["p_reap"] * (2 * KEYS)
        assert all(_held_by(primaries(), partition, key) == [] for key in keys[:KEYS])

        await old.stop()
        old.features = SUPPORTED  # upgraded
        await old.start()
        await until("batched reaping active", lambda: all(
            BATCHED_REAP in n.view.state.features for n in nodes()))
        await _put_and_delete(cluster, sims[0].addr, keys[KEYS:])
        await trio.sleep(SCENARIO.tombstone_grace + 2)
        reaper = primaries()[0]
        ops = _record_ops(reaper, monkeypatch)
        assert await reaper.antientropy.reap_tombstones(partition) == KEYS
        assert [op for op, _ in ops if op != "hints"] == ["p_digests"] * 2 + ["p_reap"] * 2
        assert all(_held_by(primaries(), partition, key) == [] for key in keys[KEYS:])
