"""A node keeps its actor across clean restarts, so a key's clock does not grow with them;
it takes a new one after any exit that may have lost a minted dot, and when its data dir
is a copy that the node has run on past."""

from __future__ import annotations

import shutil

import pytest
import trio
import trio.testing

from common import dvvset
from dynd.backup import write_backup
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

KEY = b"cart"


async def _write(cluster: SimCluster, via: SimNode, value: bytes) -> dict[str, int]:
    """Read, then write with the context read (a client's read-modify-write); the
    acknowledged write's context."""
    read = await cluster.client_call("c", via.addr, "get", bucket=BUCKET, key=KEY)
    reply = await cluster.client_call("c", via.addr, "put", bucket=BUCKET, key=KEY,
                                      value=value, context=read["context"])
    return dvvset.decode_context(reply["context"])


async def _start(sim: SimNode) -> str:
    """Start ``sim`` and wait until it serves data (its actor decided): that actor."""
    await sim.start()
    assert sim.node is not None
    await sim.node.dispatch.ready.wait()
    return sim.node.identity.actor


async def _all_up(sims: list[SimNode]) -> None:
    """Every node hears every other (so no write goes to a fallback)."""
    await until("every node sees every other up", lambda: all(
        s.node is not None and all(s.node.liveness.is_up(o.id) for o in sims) for s in sims))


async def test_ten_clean_restarts_of_one_node_leave_at_most_two_actors(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=1, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-one-") as (cluster, sims):
        node = sims[0]
        clock = await _write(cluster, node, b"v0")
        for i in range(1, 11):
            await node.stop()
            await node.start()
            clock = await _write(cluster, node, b"v%d" % i)
    assert len(clock) <= 2, clock


async def test_four_clean_restarts_of_each_of_three_nodes_leave_at_most_six_actors(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-three-") as (
            cluster, sims):
        clock = await _write(cluster, sims[0], b"first")
        for round_ in range(4):
            for sim in sims:
                await sim.stop()
                await sim.start()
                await _all_up(sims)
                for via in sims:  # each node coordinates (or forwards) one write
                    clock = await _write(cluster, via, f"{round_}/{sim.id}/{via.id}".encode())
    assert len(clock) <= 6, clock


async def test_a_crash_renews_the_actor_and_a_clean_restart_after_it_keeps_the_new_one(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=1, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-crash-") as (
            cluster, sims):
        sim = sims[0]
        assert sim.node is not None
        first = sim.node.identity.actor
        await _write(cluster, sim, b"v1")
        await sim.stop()
        assert await _start(sim) == first
        await sim.crash()  # may have lost a dot its replicas hold: never mint it again
        renewed = await _start(sim)
        assert renewed != first
        await sim.stop()  # the marker of one clean stop is good for one start only
        assert await _start(sim) == renewed
        await sim.crash()
        assert await _start(sim) not in (first, renewed)
        clock = await _write(cluster, sim, b"v2")
        assert sim.node.identity.actor in clock


async def test_a_copy_of_a_running_nodes_data_dir_restored_renews_the_actor(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=1, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-copy-") as (
            cluster, sims):
        sim = sims[0]
        assert sim.node is not None
        kept = sim.node.identity.actor
        await sim.stop()
        assert await _start(sim) == kept  # its clean-stop record is consumed by now
        await _write(cluster, sim, b"v1")
        backup = sim.path + ".backup"
        shutil.copytree(sim.path, backup)  # taken while the node runs
        await _write(cluster, sim, b"v2")  # dots of `kept` that the copy does not hold
        await sim.stop()
        shutil.rmtree(sim.path)
        shutil.move(backup, sim.path)
        assert await _start(sim) != kept


async def test_a_copy_of_a_stopped_nodes_dir_restored_after_it_ran_on_renews_the_actor(
        autojump_clock: trio.testing.MockClock) -> None:
    """That copy carries a clean-stop record: a peer's record of a later life refuses it."""
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-stopped-") as (
            cluster, sims):
        sim = sims[2]
        assert sim.node is not None
        kept = sim.node.identity.actor
        await sim.stop()
        backup = sim.path + ".backup"
        shutil.copytree(sim.path, backup)  # a copy of the stopped node's dir
        assert await _start(sim) == kept
        await _all_up(sims)
        await _write(cluster, sim, b"later")  # the node runs on, minting under `kept`
        await until("the peers know the later life", lambda: all(
            s.node is not None and s.node.view.state.members[sim.id].incarnation
            == sim.node.identity.incarnation for s in sims[:2]))
        await sim.stop()
        shutil.rmtree(sim.path)
        shutil.move(backup, sim.path)
        assert await _start(sim) != kept


@pytest.mark.parametrize("seed", range(1, 7))
async def test_a_backup_restored_right_after_a_crash_and_restart_never_takes_that_life(
        autojump_clock: trio.testing.MockClock, seed: int) -> None:
    """The node crashed after its backup, started under its next incarnation and wrote at
    once; the backup goes back in place before any gossip round. Every peer must know that
    life by then (the restart announces it before serving) and the restore asks them all:
    a copy that took the same life again would mint the same dots, and the peers would take
    its new value for the one they hold (a lost update)."""
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-actor-restore-", seed=seed
                               ) as (cluster, sims):
        sim = sims[2]
        assert sim.node is not None
        backup_dir = sim.path + ".backup"
        write_backup(sim.node.storage, backup_dir, sim.id, sim.node.identity.incarnation)
        await sim.crash()
        crashed_life = await _start(sim)
        assert sim.node is not None
        life = sim.node.identity.incarnation
        assert [s.node.view.state.members[sim.id].incarnation for s in sims[:2]
                if s.node is not None] == [life, life]  # announced before it served
        await cluster.client_call("c", sim.addr, "put", bucket=BUCKET, key=KEY,
                                  value=b"after the crash", w=3)
        await sim.stop()
        shutil.rmtree(sim.path)
        shutil.move(backup_dir, sim.path)
        assert await _start(sim) != crashed_life
        await cluster.client_call("c", sim.addr, "put", bucket=BUCKET, key=KEY,
                                  value=b"after the restore", w=3)
        read = await cluster.client_call("c", sims[0].addr, "get", bucket=BUCKET, key=KEY,
                                         r=3)
    assert sorted(v["value"] for v in read["values"]) == [b"after the crash",
                                                         b"after the restore"]
