"""With two of three replicas up, a W=2/R=2 request succeeds: in the seconds after a node
crashes (before the detectors agree it is down, while the survivors' gossip rounds go to
it) and after it restarts (before it heard a single heartbeat), through every node that
is up, as a client that sends each request straight to a primary does."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from common.errors import DynError, Rejected
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster
from tests.sim.network import LinkFaults

KEYS_PER_BURST = 4
SECONDS = 10.0  # after a crash or a restart: longer than the detectors take to settle


async def _burst(cluster: SimCluster, vias: list[SimNode], tag: str) -> list[str]:
    """A put and then a get of a few new keys through every node of ``vias``, all at once:
    the failures, one line each."""
    failures: list[str] = []

    async def put_then_get(via: SimNode, key: bytes) -> None:
        for op, fields in (("put", {"value": b"v", "context": ""}), ("get", {})):
            try:
                await cluster.client_call("c", via.addr, op, bucket=BUCKET, key=key, **fields)
            except DynError as exc:
                failures.append(f"{op} {key!r} via {via.id}: {exc.message}")

    async with trio.open_nursery() as nursery:
        for via in vias:
            for i in range(KEYS_PER_BURST):
                nursery.start_soon(put_then_get, via, f"{tag}/{via.id}/{i}".encode())
    return failures


async def _bursts(cluster: SimCluster, vias: list[SimNode], tag: str) -> list[str]:
    """A burst every quarter second for the next SECONDS (simulated): the failures."""
    failures: list[str] = []
    started = trio.current_time()
    while (now := trio.current_time()) < started + SECONDS:
        failures += await _burst(cluster, vias, f"{tag}@{now - started:.2f}")
        await trio.sleep(0.25)
    return failures


async def test_two_of_three_replicas_up_answer_right_after_a_crash_and_a_restart(
        autojump_clock: trio.testing.MockClock) -> None:
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-quorum-crash-") as (
            cluster, sims):
        for victim in sims:  # the later victims' survivors include a node just restarted
            survivors = [sim for sim in sims if sim is not victim]
            await victim.crash()
            crashed = await _bursts(cluster, survivors, f"without-{victim.id}")
            await victim.start()
            assert victim.node is not None
            await victim.node.dispatch.ready.wait()
            restarted = await _bursts(cluster, sims, f"back-{victim.id}")
            assert (crashed, restarted) == ([], []), victim.id


async def test_a_quorum_failure_names_why_each_replica_did_not_count(
        autojump_clock: trio.testing.MockClock) -> None:
    """One replica crashed, another never answers (its link is cut): the error names both,
    the silent one included, whose reply never came before the deadline."""
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-quorum-why-") as (
            cluster, sims):
        coordinator, crashed, silent = sims
        await crashed.crash()
        cluster.network.block(coordinator.addr, silent.addr)
        errors = []
        for op, fields in (("put", {"value": b"v", "context": ""}), ("get", {})):
            try:
                await cluster.client_call("c", coordinator.addr, op, bucket=BUCKET, key=b"k",
                                          **fields)
            except DynError as exc:
                errors.append(exc.message)
        assert len(errors) == 2, errors
        for error in errors:
            assert f"{crashed.id}: connection to {crashed.addr} refused" in error, error
            assert f"{silent.id}: " in error, error


async def test_a_replica_that_answers_with_an_error_is_not_judged_down(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal is an answer: the replica is up. Judging it down would move later requests
    to fallbacks (and, with none spare, to fewer replicas) for nothing."""
    scenario = Scenario(nodes=3, ring_size=16, faults=LinkFaults())
    async with settled_cluster(scenario, autojump_clock, "dynd-quorum-refusal-") as (
            cluster, sims):
        coordinator, refusing, _ = sims
        assert coordinator.node is not None and refusing.node is not None

        def refuse(*args: object, **kwargs: object) -> None:
            raise Rejected("refused by the test")

        monkeypatch.setattr(refusing.node.coordinator.access, "stage", refuse)
        for i in range(4):
            await cluster.client_call("c", coordinator.addr, "put", bucket=BUCKET,
                                      key=b"k%d" % i, value=b"v", context="")
        assert refusing.id in coordinator.node.liveness.up_nodes()
