"""A reaped tombstone must not let a copy held outside the reap agreement bring its value back.

Real nodes (5 nodes, ring of 16, n=3, tombstone grace 20 s) on the simulated network; the
design audit's sequences, built directly:

- a pending transfer: a partition's future primary Y got the value (writes reach future
  owners too) but missed the delete, which is neither counted nor retried nor hinted for
  it; if the current primaries reap before Y's pull, Y becomes a primary still holding
  the value and anti-entropy spreads it back;
- a hand-over: a leaving node is removed once its transfers are done but keeps its old
  copies until its hand-over exchange with the new primaries succeeds; if that comes
  after the primaries reaped (a link down, or the node shut down before its drop and
  restarted after the grace), the exchange must not push the value back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from common.ring import partition_of
from dynd import membership
from dynd.node import Node
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), tombstone_grace=20.0,
                    antientropy_period=30.0)
LEAVER = "n4"


def _nodes(sims: list[SimNode]) -> dict[str, Node]:
    return {s.id: s.node for s in sims if s.node is not None}


async def _leave(cluster: SimCluster, admin: SimNode, nodes: dict[str, Node],
                 before_commit: Callable[[], Awaitable[None]] | None = None) -> None:
    """Stage LEAVER's leave, run ``before_commit``, commit; return once every node of
    ``nodes`` is in the new epoch."""
    await cluster.client_call("admin", admin.addr, "cluster_leave", node=LEAVER)
    if before_commit is not None:
        await before_commit()
    epoch = int((await cluster.client_call("admin", admin.addr, "cluster_commit"))["epoch"])
    await until("every node in the new epoch",
                 lambda: all(n.view.state.epoch == epoch for n in nodes.values()))


async def _put(cluster: SimCluster, addr: str, key: bytes) -> None:
    await cluster.client_call("c", addr, "put", bucket=BUCKET, key=key, value=b"OLD")


async def test_no_reap_while_a_future_primary_may_miss_the_tombstone(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-reap-pending-") as (
            cluster, sims):
        nodes = _nodes(sims)
        released = trio.Event()
        for node in nodes.values():  # every pull held back: a slow transfer
            pull_all = node.transfers._pull_all

            async def gated(*args: Any, pull_all: Any = pull_all) -> None:
                await released.wait()
                await pull_all(*args)

            monkeypatch.setattr(node.transfers, "_pull_all", gated)
        some = nodes["n0"]
        await _leave(cluster, sims[0], nodes)
        key, partition, now, gainer = next(
            (key, p, now, gain[0]) for i in range(10_000)
            if (p := partition_of(BUCKET, key := f"k{i}".encode(), SCENARIO.ring_size),
                now := some.view.routing().primaries(p))
            and (gain := [y for y in some.view.routing().primaries(
                p, owners=some.view.state.next_owners) if y not in now and y != LEAVER]))
        coordinator, y = nodes[now[1]], nodes[gainer]
        await _put(cluster, coordinator.addr, key)
        await trio.sleep(1)
        assert y.replica.get(partition, BUCKET, key) is not None  # the future owner's copy
        cluster.network.block(coordinator.addr, y.addr)  # the delete's write to Y is lost
        await cluster.delete_what_is_read(coordinator.addr, BUCKET, key)
        await trio.sleep(2)
        cluster.network.heal()
        await trio.sleep(SCENARIO.tombstone_grace + 5)
        await nodes[now[0]].antientropy.reap_tombstones(partition)
        released.set()
        await until("transfers done", lambda: not membership.pending_transfers(some.view.state))
        await trio.sleep(3 * SCENARIO.antientropy_period)
        values = await cluster.read_values(sims[0].addr, BUCKET, key)
    assert values == [], values


async def _handed_over_after_reap(
        clock: trio.testing.MockClock,
        away: Callable[[SimCluster, SimNode, list[Node]], Awaitable[None]],
        back: Callable[[SimCluster, SimNode], Awaitable[None]]) -> tuple[list[bytes], bool]:
    """Put, LEAVER leaves while ``away`` keeps it from handing over, delete, reap after the
    grace, ``back``: (values read after the hand-over, LEAVER dropped its copy)."""
    async with settled_cluster(SCENARIO, clock, "dynd-reap-handover-") as (cluster, sims):
        nodes = _nodes(sims)
        admin, leaver = sims[0], next(s for s in sims if s.id == LEAVER)
        some = nodes["n0"]
        key = next(key for i in range(10_000) if LEAVER in some.view.routing().primaries(
            partition_of(BUCKET, key := f"k{i}".encode(), SCENARIO.ring_size)))
        partition = partition_of(BUCKET, key, SCENARIO.ring_size)
        await _put(cluster, admin.addr, key)
        await trio.sleep(1)
        assert nodes[LEAVER].replica.get(partition, BUCKET, key) is not None

        async def keep_away() -> None:
            planned = membership.plan(some.view.state, 3).next_owners
            await away(cluster, leaver, [nodes[p] for p in some.view.routing().primaries(
                partition, owners=planned)])

        await _leave(cluster, admin, {k: v for k, v in nodes.items() if k != LEAVER},
                     keep_away)
        await until("transfers done", lambda: not membership.pending_transfers(some.view.state))
        assert membership.member_status(some.view.state, LEAVER) == "removed"
        await cluster.delete_what_is_read(admin.addr, BUCKET, key)
        await trio.sleep(SCENARIO.tombstone_grace + 5)
        primaries = [nodes[p] for p in some.view.routing().primaries(partition)]
        assert await primaries[0].antientropy.reap_tombstones(partition) == 1
        await back(cluster, leaver)
        await until("the leaver dropped its copy", lambda: leaver.node is not None and (
            leaver.node.replica.get(partition, BUCKET, key) is None))
        await trio.sleep(5)
        values = await cluster.read_values(admin.addr, BUCKET, key)
        return values, all(p.replica.get(partition, BUCKET, key) is None
                           for p in primaries)


async def test_a_blocked_hand_over_pushes_no_reaped_value_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async def block(cluster: SimCluster, leaver: SimNode, new_primaries: list[Node]) -> None:
        for primary in new_primaries:  # one way: LEAVER cannot reach them
            cluster.network.block(leaver.addr, primary.addr)

    async def heal(cluster: SimCluster, leaver: SimNode) -> None:
        cluster.network.heal()

    values, gone = await _handed_over_after_reap(autojump_clock, block, heal)
    assert values == [] and gone, values


async def test_a_leaver_restarted_after_the_grace_pushes_no_reaped_value_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async def stop(cluster: SimCluster, leaver: SimNode, new_primaries: list[Node]) -> None:
        await leaver.crash()

    async def restart(cluster: SimCluster, leaver: SimNode) -> None:
        await leaver.start()

    values, gone = await _handed_over_after_reap(autojump_clock, stop, restart)
    assert values == [] and gone, values


async def test_a_value_overwritten_by_a_short_ttl_is_not_reaped_within_the_grace(
        autojump_clock: trio.testing.MockClock) -> None:
    """OLD lives on a leaver whose hand-over is blocked; NEW (ttl 1 s) supersedes it on
    the new primaries and expires. Reaping NEW as soon as it expired would let the
    hand-over, healed while OLD is younger than the grace, push OLD back (without the
    grace condition this test reads [b"OLD"]); the grace keeps NEW until OLD is past the
    grace too, when the hand-over no longer pushes it."""
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-reap-ttl-") as (cluster, sims):
        nodes = _nodes(sims)
        admin, leaver = sims[0], next(s for s in sims if s.id == LEAVER)
        some = nodes["n0"]
        await until("expiry active", lambda: all("ttl" in n.view.state.features
                                                 for n in nodes.values()))
        key = next(key for i in range(10_000) if LEAVER in some.view.routing().primaries(
            partition_of(BUCKET, key := f"k{i}".encode(), SCENARIO.ring_size)))
        partition = partition_of(BUCKET, key, SCENARIO.ring_size)
        await _put(cluster, admin.addr, key)
        await trio.sleep(1)

        async def block() -> None:
            planned = membership.plan(some.view.state, 3).next_owners
            for primary in some.view.routing().primaries(partition, owners=planned):
                cluster.network.block(leaver.addr, nodes[primary].addr)

        await _leave(cluster, admin, {k: v for k, v in nodes.items() if k != LEAVER}, block)
        await until("transfers done", lambda: not membership.pending_transfers(some.view.state))
        read = await cluster.client_call("c", admin.addr, "get", bucket=BUCKET, key=key)
        await cluster.client_call("c", admin.addr, "put", bucket=BUCKET, key=key, value=b"NEW",
                                  context=read["context"], ttl=1)
        await trio.sleep(3)
        primaries = [nodes[p] for p in some.view.routing().primaries(partition)]
        await primaries[0].antientropy.reap_tombstones(partition)  # expired, within grace
        cluster.network.heal()
        await until("the leaver dropped its copy", lambda: leaver.node is not None and (
            leaver.node.replica.get(partition, BUCKET, key) is None))
        await trio.sleep(5)
        assert await cluster.read_values(admin.addr, BUCKET, key) == []
        await until("reaped on every primary past the grace (the periodic reaper)",
                    lambda: all(p.replica.get(partition, BUCKET, key) is None
                                for p in primaries))
        await trio.sleep(2 * SCENARIO.antientropy_period)
        assert await cluster.read_values(admin.addr, BUCKET, key) == []
        assert all(p.replica.get(partition, BUCKET, key) is None for p in primaries)
