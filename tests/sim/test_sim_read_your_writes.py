"""A client's read just after its own acknowledged write, where the sloppy quorum's write
set and read set do not overlap.

The hand-made case (5 nodes, N=3 R=2 W=2, one key with primaries p1 p2 p3): p1 and p2
are cut off from the rest; the client writes through p3, so p3 and two fallbacks (hints
for p1 and p2) take the write. The cut heals, but the fallbacks still cannot reach p1
and p2 (their hints stay put) and p3's answers to p1 are slow; the client now reads
through p1, whose R=2 are p1 and p2: neither holds the write. Without primary quorums and
without the client's read-your-writes that read misses the write (the first test shows
it, so the others can fail); with PR=PW=2 the write is refused instead (exit 4); with the
client's guarantee the read is asked again of every replica (R=N) and finds it.

Under the fault mix (crashes, partitions, loss, clock jumps; no lost disks, see
test_with_pr_plus_pw_over_n_no_read_misses_the_clients_write), clients alone on their
keys put and then get through random nodes: at PR=PW=2 no successful get misses the
client's acknowledged put, at PR=PW=0 some do.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from common.dvvset import decode_context
from common.errors import DynError, Unavailable
from common.ring import partition_of
from dynctl.client import Client, descends
from tests.sim.harness import (
    BUCKET,
    CLIENT_TIMEOUT,
    Scenario,
    SimCluster,
    SimNode,
    seeded_run,
    settled_cluster,
    until,
)
from tests.sim.network import LinkFaults

KEY = b"own-write"
# No anti-entropy: only the read itself may bring the write to p1.
SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), antientropy=False)


class SimConnection:
    """dynctl's Client over the simulated network: the Connection surface it uses. The
    node it talks to is ``addr``, which the test moves (as a load balancer would)."""

    closed = False

    def __init__(self, cluster: SimCluster, name: str, addr: str) -> None:
        self.cluster, self.name, self.addr = cluster, name, addr

    async def call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.cluster.network.call(self.name, self.addr, op, fields,
                                               CLIENT_TIMEOUT)


def roles(sims: list[SimNode]) -> tuple[list[SimNode], list[SimNode]]:
    """The key's primaries (in preference order) and the other nodes."""
    some = sims[0].node
    assert some is not None
    by_id = {s.id: s for s in sims}
    primaries = [by_id[p] for p in some.view.routing().primaries(partition_of(BUCKET, KEY,
                                                               some.view.state.ring_size))]
    return primaries, [s for s in sims if s not in primaries]


async def cut_off(primaries: list[SimNode], others: list[SimNode]) -> None:
    """p1 and p2 stop (their disks kept); p3 knows, and sees the other nodes up."""
    p1, p2, p3 = primaries
    await p1.crash()
    await p2.crash()
    await until("p3 sees p1 and p2 down, the others up", lambda: p3.node is not None and (
        not p3.node.liveness.is_up(p1.id) and not p3.node.liveness.is_up(p2.id)
        and all(p3.node.liveness.is_up(o.id) for o in others)))


async def come_back_without_the_hints(cluster: SimCluster, primaries: list[SimNode],
                                      others: list[SimNode]) -> None:
    """p1 and p2 restart, but the fallbacks cannot reach them (their hints stay where
    they are) and p3's frames to p1 are slow (p2 answers p1 first)."""
    p1, p2, p3 = primaries
    for fallback in others:
        for primary in (p1, p2):
            cluster.network.block(fallback.addr, primary.addr)
    slow = LinkFaults(min_delay=1.0, max_delay=1.0)
    cluster.network.link_faults[(p3.addr, p1.addr)] = slow
    cluster.network.link_faults[(p1.addr, p3.addr)] = slow
    await p1.start()
    await p2.start()
    await until("p1 sees p2 and p3 up", lambda: p1.node is not None
                and p1.node.liveness.is_up(p2.id) and p1.node.liveness.is_up(p3.id))


async def write_then_read(cluster: SimCluster, sims: list[SimNode], *,
                          remembered_writes: int) -> tuple[str, bool]:
    """The hand-made case: the context the write answered, and whether the read saw it."""
    primaries, others = roles(sims)
    p1, _, p3 = primaries
    connection = SimConnection(cluster, "client", p3.addr)
    client = Client.over(connection, CLIENT_TIMEOUT,  # type: ignore[arg-type]
                         remembered_writes=remembered_writes)
    await cut_off(primaries, others)
    written = await client.put(KEY, b"mine", bucket=BUCKET)
    await come_back_without_the_hints(cluster, primaries, others)
    connection.addr = p1.addr
    read = await client.get(KEY, bucket=BUCKET)
    return written, [v.value for v in read.values] == [b"mine"]


async def test_without_either_guarantee_a_client_misses_its_own_write(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-ryw-stale-") as (cluster, sims):
        _, saw = await write_then_read(cluster, sims, remembered_writes=0)
    assert not saw  # the gap the other tests close: the acknowledged write was not read


async def test_the_client_reads_its_own_write_from_every_replica(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-ryw-client-") as (cluster, sims):
        _, saw = await write_then_read(cluster, sims, remembered_writes=10)
    assert saw


async def set_primary_quorums(cluster: SimCluster, sims: list[SimNode], pr: int,
                              pw: int) -> None:
    await cluster.client_call("admin", sims[0].addr, "bucket_set", name=BUCKET, pr=pr, pw=pw)
    await until("every node has the bucket's pr and pw", lambda: all(
        s.node is not None and (s.node.view.state.buckets[BUCKET].pr,
                                s.node.view.state.buckets[BUCKET].pw) == (pr, pw) for s in sims))


async def test_primary_quorums_refuse_what_fallbacks_alone_would_answer(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "dynd-ryw-pq-") as (cluster, sims):
        await set_primary_quorums(cluster, sims, pr=2, pw=2)
        primaries, others = roles(sims)
        p1, p2, p3 = primaries
        await cut_off(primaries, others)

        # One primary up: the write is refused, and nothing was stored anywhere.
        with pytest.raises(Unavailable, match="primary write quorum"):
            await cluster.client_call("c", p3.addr, "put", bucket=BUCKET, key=KEY,
                                      value=b"lost")
        partition = partition_of(BUCKET, KEY, SCENARIO.ring_size)
        assert all(s.node is not None and s.node.replica.get_encoded(
            partition, BUCKET, KEY, hint) is None
            for s in [p3, *others] for hint in (None, p1.id, p2.id))
        # ... and so is the read, which a request may lower (pr=0 answers from fallbacks).
        with pytest.raises(Unavailable, match="of 2 required from primaries"):
            await cluster.client_call("c", p3.addr, "get", bucket=BUCKET, key=KEY)
        assert (await cluster.client_call("c", p3.addr, "get", bucket=BUCKET, key=KEY,
                                          pr=0))["values"] == []

        # The same client's write through p1 and read through p3 now share a primary.
        await come_back_without_the_hints(cluster, primaries, others)
        written = (await cluster.client_call("c", p1.addr, "put", bucket=BUCKET, key=KEY,
                                             value=b"mine"))["context"]
        read = await cluster.client_call("c", p3.addr, "get", bucket=BUCKET, key=KEY)
    assert [v["value"] for v in read["values"]] == [b"mine"] and read["context"] == written


# ---- under the fault mix ---------------------------------------------------------------

FAULT_MIX = Scenario(nodes=5, chaos_seconds=90.0, wipes=0)


async def own_writes_then_reads(cluster: SimCluster, index: int, stop: trio.Event,
                                stale: list[str], outcomes: Counter[str]) -> None:
    """A client alone on its keys: put, then get through another random node; a get that
    succeeds must cover the client's last acknowledged put of the key."""
    rng = random.Random(f"{cluster.seed}/own/{index}")
    name = f"own-{index}"
    keys = [f"own-{index}-{k}".encode() for k in range(3)]
    acked: dict[bytes, str] = {}
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.05, 0.5))
        key = rng.choice(keys)
        try:
            reply = await cluster.client_call(name, rng.choice(cluster.nodes).addr, "put",
                                              bucket=BUCKET, key=key, value=b"v",
                                              context=acked.get(key, ""))
        except DynError as exc:
            outcomes[f"put_{exc.code}"] += 1
            continue
        acked[key] = reply["context"]
        outcomes["put_ok"] += 1
        try:
            read = await cluster.client_call(name, rng.choice(cluster.nodes).addr, "get",
                                             bucket=BUCKET, key=key)
        except DynError as exc:
            outcomes[f"get_{exc.code}"] += 1
            continue
        outcomes["get_ok"] += 1
        if not descends(decode_context(read["context"]), decode_context(acked[key])):
            stale.append(f"t={trio.current_time():.1f} {name} {key!r}: read "
                         f"{decode_context(read['context'])} after writing "
                         f"{decode_context(acked[key])}")


async def _fault_mix(seed: int, pr: int, pw: int, clock: trio.testing.MockClock
                     ) -> tuple[list[str], Counter[str]]:
    stale: list[str] = []
    outcomes: Counter[str] = Counter()
    async with settled_cluster(FAULT_MIX, clock, f"dynd-ryw-mix-{seed}-",
                               seed=seed) as (cluster, sims):
        await set_primary_quorums(cluster, sims, pr=pr, pw=pw)
        stop = trio.Event()
        async with trio.open_nursery() as work:
            for index in range(4):
                work.start_soon(own_writes_then_reads, cluster, index, stop, stale, outcomes)
            await cluster.chaos(trio.current_time() + FAULT_MIX.chaos_seconds)
            stop.set()
        await cluster.heal()
    return stale, outcomes


def fault_mix(seed: int, pr: int, pw: int) -> tuple[list[str], Counter[str]]:
    """One seeded run (trio's scheduler seeded too, as harness.run does)."""
    return seeded_run(seed, _fault_mix, seed, pr, pw)


@pytest.mark.parametrize("seed", [1, 2])
def test_with_pr_plus_pw_over_n_no_read_misses_the_clients_write(seed: int) -> None:
    stale, outcomes = fault_mix(seed, pr=2, pw=2)
    assert not stale, f"seed={seed}: {len(stale)} stale reads: {stale[:5]} {dict(outcomes)}"
    # Not vacuous: many reads answered (the count follows the seed's trajectory, which any
    # change to the node's scheduling moves; about 100 at the time of writing).
    assert outcomes["get_ok"] >= 50, dict(outcomes)


def test_without_primary_quorums_the_fault_mix_makes_reads_miss_the_clients_write() -> None:
    """The same workload and faults at PR=PW=0: the test above can fail. (Each of seeds 1
    to 3 found some with PYTHONHASHSEED=0; a few seeds make the test independent of it.)"""
    for seed in range(1, 9):
        stale, _ = fault_mix(seed, pr=0, pw=0)
        if stale:
            return
    raise AssertionError("no stale read in 8 seeds at PR=PW=0")
