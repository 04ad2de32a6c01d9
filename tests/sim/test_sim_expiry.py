"""Expiry on the simulated cluster: a cache workload with TTLs of seconds on nodes whose
wall clocks disagree, under crashes, partitions and a hand-over (a node leaves).

Checked while it runs: no value is read through a node whose clock is past its
expires_at. (A superseded value may still be read during faults: a sloppy quorum's read
can miss the replicas of the write.) Checked after healing, once every expired value is
past its grace and the reaper has run, and again after more exchanges: no value
superseded by an acknowledged write is read through any node (the writes that never
expire, overwritten by short-TTL ones that expired and were reaped, are what would come
back), and no replica, hint or hash tree holds a dead object any more. Fixed seeds in
`make test`, many with `make sim` (its ``-k many`` runs this workload too).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import DynError, Rejected
from dynd.features import SUPPORTED
from dynd.merkle import PartitionTree
from dynd.replica import key_id
from tests.sim.harness import (
    BASE_WALL,
    Scenario,
    SimCluster,
    SimNode,
    crash_one,
    leave,
    run_seeds,
    seeded_run,
    settled_cluster,
    until,
)
from tests.sim.network import LinkFaults

CACHE = "cache"
GRACE = 120  # s: the least a bucket may have with anti-entropy every 30 s
SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(drop=0.01, max_delay=0.02),
                    antientropy_period=30.0, tombstone_grace=20.0)
KEYS = [f"c{i}".encode() for i in range(8)]
TTLS = (None, 0, 1, 2, 4, 60)  # None: the bucket's default (3 s); 0: never expires
WORKLOAD_SECONDS = 90.0
LEAVER = "n4"


def _wall_ms(sim: SimNode) -> int:
    """What ``sim``'s clock says now (as SimNode.start hands it to the node)."""
    return int((BASE_WALL + trio.current_time() + sim.skew) * 1000)


@dataclass
class Checks:
    """Values (unique per write) an acknowledged write superseded, since when, and what
    went wrong."""

    superseded: dict[bytes, float] = field(default_factory=dict)  # value -> since (sim s)
    violations: list[str] = field(default_factory=list)
    reads: int = 0
    writes: int = 0


async def _client(cluster: SimCluster, index: int, rng: random.Random, checks: Checks,
                  stop: trio.Event) -> None:
    """Read a key through a random node, check what it shows, overwrite it with the read's
    context and a random TTL: on ack, every value that read showed is superseded."""
    serial = 0
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.05, 0.5))
        via = rng.choice(cluster.nodes)
        key = rng.choice(KEYS)
        clock_then = _wall_ms(via)
        try:
            read = await cluster.client_call(f"c{index}", via.addr, "get", bucket=CACHE, key=key)
        except DynError:
            continue
        checks.reads += 1
        for value in read["values"]:
            if "expires_at" in value and value["expires_at"] <= clock_then:
                checks.violations.append(f"{key!r}: {value['value']!r} read through {via.id} "
                                         f"whose clock was {clock_then - value['expires_at']}"
                                         f" ms past its expires_at")
        serial += 1
        ttl = rng.choice(TTLS)
        try:
            await cluster.client_call(
                f"c{index}", via.addr, "put", bucket=CACHE, key=key,
                value=f"{index}/{serial}".encode(), context=read["context"],
                **({} if ttl is None else {"ttl": ttl}))
        except DynError:
            continue
        checks.writes += 1
        for value in read["values"]:
            checks.superseded.setdefault(value["value"], trio.current_time())


async def _faults(cluster: SimCluster, rng: random.Random, stop: trio.Event) -> None:
    """Crash and restart one node at a time, cut links for a while, and make LEAVER leave
    (its copies handed over) a third of the way in."""
    left = False
    while not stop.is_set():
        await trio.sleep(rng.uniform(3, 8))
        if not left and trio.current_time() > WORKLOAD_SECONDS / 3:
            left = await leave(cluster, LEAVER)
            continue
        if rng.random() < 0.5:
            await crash_one(cluster, rng, LEAVER, 15)
        else:
            a, b = rng.sample(cluster.nodes, 2)
            cluster.network.block(a.addr, b.addr)
            cluster.network.block(b.addr, a.addr)
            await trio.sleep(rng.uniform(1, 10))
            cluster.network.heal()


def _leftovers(sims: list[SimNode]) -> list[str]:
    """Every dead copy (all its values expired by its node's clock) or hint still held
    anywhere, and every tree that does not match its node's copies."""
    found = []
    for sim in sims:
        node = sim.node
        assert node is not None
        now_ms = _wall_ms(sim)
        for partition in range(node.view.state.ring_size):
            rows = list(node.storage.scan_partition(partition))
            found += [f"{sim.id}: p{partition} {key!r} dead" for bucket, key, _, raw in rows
                      if bucket == CACHE and dvvset.is_dead(dvvset.decode(raw), now_ms)]
            tree = node.replica.trees.get(partition)
            expected = PartitionTree.build(
                ((key_id(bucket, key, sk), dvvset.digest_encoded(raw))
                 for bucket, key, sk, raw in rows), segments=node.replica.segments)
            if tree is not None and tree.root() != expected.root():
                found.append(f"{sim.id}: p{partition} tree holds what storage does not")
        found += [f"{sim.id}: hint {key!r} for {target}" for target, _, bucket, key, _, _
                  in node.storage.scan_hints() if bucket == CACHE]
    return found


async def _superseded_reads(cluster: SimCluster, sims: list[SimNode], checks: Checks
                            ) -> list[str]:
    """Values an acknowledged write superseded that a get through some node shows."""
    found = []
    for key in KEYS:
        for sim in [s for s in sims if s.id != LEAVER]:  # removed: serves no data
            read = await cluster.client_call("check", sim.addr, "get", bucket=CACHE, key=key)
            found += [f"{key!r}: {value['value']!r} read through {sim.id}, superseded at "
                      f"{checks.superseded[value['value']]:.1f}" for value in read["values"]
                      if value["value"] in checks.superseded]
    return found


async def _cache_run(seed: int, clock: trio.testing.MockClock) -> Checks:
    rng = random.Random(f"{seed}/expiry")
    async with settled_cluster(SCENARIO, clock, f"dyn-expiry-{seed}-", seed=seed) as (
            cluster, sims):
        for sim in sims:  # within the 500 ms warning and beyond it
            sim.skew = rng.uniform(-2, 2)
        await until("expiry active", lambda: all(
            s.node is not None and "ttl" in s.node.view.state.features for s in sims))
        await cluster.call_until_answered("admin", sims[0].addr, "bucket_set", name=CACHE,
                                          ttl=3, grace=GRACE)
        checks = Checks()
        stop = trio.Event()
        async with trio.open_nursery() as work:
            for i in range(4):
                work.start_soon(_client, cluster, i, random.Random(f"{seed}/client{i}"),
                                checks, stop)
            work.start_soon(_faults, cluster, rng, stop)
            await trio.sleep(WORKLOAD_SECONDS)
            stop.set()
        await cluster.heal()  # links, lossy ones too, and every node up
        # Every value expires within 60 s of the last write; then the grace, then the
        # reaper's rounds (each primary's own clock, skew included).
        try:
            await until("every expired value reaped everywhere", lambda: not _leftovers(sims),
                        limit=60 + GRACE + 20 * SCENARIO.antientropy_period)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: " + "; ".join(_leftovers(sims)[:20])) from None
        checks.violations += await _superseded_reads(cluster, sims, checks)
        await trio.sleep(3 * SCENARIO.antientropy_period)  # exchanges, hand-overs
        checks.violations += [f"came back: {leftover}" for leftover in _leftovers(sims)]
        checks.violations += await _superseded_reads(cluster, sims, checks)
    return checks


def check_expiry(seed: int) -> Checks:
    checks = seeded_run(seed, _cache_run, seed)
    assert not checks.violations, f"seed={seed}: " + "\n  ".join(checks.violations[:30])
    return checks


# 83: a replica write from a coordinator with an older view stored a copy on a node after
# its hand-over drop for the epoch; the drop now runs again (transfers.RESWEEP_SECONDS).
@pytest.mark.parametrize("seed", [1, 2, 83, 119])
def test_expired_and_overwritten_values_never_come_back(seed: int) -> None:
    checks = check_expiry(seed)
    assert checks.writes > 100 and checks.reads > 100  # the workload ran


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_many_seeds() -> None:
    """`make sim SEEDS=...` runs seeds 1..SEEDS (or SEED_START..) of this workload too."""
    run_seeds("expiry", check_expiry)


def test_expiry_waits_for_every_member() -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(SCENARIO, clock, "dyn-expiry-gate-",
                                   settle=0) as (cluster, sims):
            old = sims[4]
            await old.stop()
            old.features = SUPPORTED - {"ttl"}  # restarted as a node without expiry
            await old.start()
            await trio.sleep(30)
            put: dict[str, Any] = {"bucket": CACHE, "key": b"k", "value": b"v"}
            with pytest.raises(Rejected, match=f"expiry .* need every member.*not yet: "
                                               f"{old.id}"):
                await cluster.client_call("c", sims[0].addr, "put", ttl=5, **put)
            with pytest.raises(Rejected, match=old.id):
                await cluster.client_call("admin", sims[1].addr, "bucket_set", name=CACHE,
                                          ttl=5)
            await cluster.client_call("c", sims[0].addr, "put", **put)  # still served
            await old.stop()
            old.features = SUPPORTED  # upgraded
            await old.start()
            await until("expiry active", lambda: all(
                s.node is not None and "ttl" in s.node.view.state.features for s in sims))
            await cluster.client_call("c", sims[0].addr, "put", ttl=5, **put)

    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock, clock=clock)
