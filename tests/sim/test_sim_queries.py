"""Queries under faults: a threads workload (partition key = thread, sort key = post) on a
simulated 5-node cluster (N=3, R=2, W=2) whose wall clocks disagree by up to 2 s, with
crashes, partitions and hand-overs (a node leaves a third of the way in, a new one joins
at two thirds).

Writers read a post and overwrite it (some with TTLs of seconds) or delete it, with the
read's context. Readers query a thread through a random node, forward or reverse, with
or without a sort-key condition, in pages of 1 to 5 items (refills) or of 100, following
every token as ``dynctl query --all`` does.

Checked during the faults (a sloppy quorum's query may miss the replicas of a write, so a
value an acknowledged write superseded may still be read; what must hold anyway):

- pages in strict sort-key order (descending when reverse) within the condition, with no
  item twice across the pages of one query;
- no value past its expires_at by the coordinator's clock;
- no value that was gone, held by no node in its data or hints for 10 s while every node
  was up (superseded or deleted and reaped everywhere), ever comes back: neither in a
  query started after that nor in any node's storage.

Checked after healing, once every replica of every post is equal: through every node,
forward and reverse, paged and unpaged, with and without a condition, the query is the
visible items of the converged clocks; no value an acknowledged write superseded is in
it; every acknowledged write without a TTL that no later write read is in it; and the
replicas are still equal. Fixed seeds in `make test`, many with `make sim` (``-k many``).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import DynError
from common.ring import partition_of
from common.skrange import condition_range
from dynd import membership
from dynd.querymerge import before, in_range
from tests.sim import checkers
from tests.sim.harness import (
    BASE_WALL,
    BUCKET,
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

# Hints handed back slowly: a replica back from a partition stays stale for a while, so
# queries meet it and refill.
SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(drop=0.01, max_delay=0.02),
                    handoff_interval=10.0, antientropy_period=30.0, tombstone_grace=20.0)
THREADS = [b"thread-%d" % i for i in range(3)]
POSTS = [b"post-%02d" % i for i in range(8)]
ITEMS = [(pk, sk) for pk in THREADS for sk in POSTS]
TTLS = (None, None, None, 1, 3)  # seconds; None: never expires
CONDITIONS: list[list[Any] | None] = [
    None, ["ge", b"post-04"], ["lt", b"post-06"], ["between", b"post-02", b"post-05"],
    ["prefix", b"post-0"], ["eq", b"post-03"], ["gt", b"post-07"]]
PAGE_LIMITS = (1, 1, 2, 3, 100)
READ_QUORUMS = (None, 3)  # the bucket's R (2), or every replica: a stale one makes refills
# After healing, through every node: forward and reverse, paged and unpaged, with and
# without a condition.
HEALED_QUERIES: list[tuple[list[Any] | None, bool, int]] = [
    (None, False, 2), (None, True, 1000), (["between", b"post-02", b"post-05"], True, 1),
    (["prefix", b"post-0"], False, 1000), (["ge", b"post-03"], True, 3)]
WORKLOAD_SECONDS = 40.0
GONE_AFTER = 10.0  # s held nowhere (every node up) before a value counts as gone
LEAVER = "n4"


def _wall_ms(sim: SimNode) -> int:
    """What ``sim``'s clock says now (as SimNode.start hands it to the node)."""
    return int((BASE_WALL + trio.current_time() + sim.skew) * 1000)


@dataclass
class Checks:
    """What the clients did and saw, and what went wrong."""

    acked: dict[bytes, float] = field(default_factory=dict)  # value -> acknowledged at
    expiring: set[bytes] = field(default_factory=set)  # values written with a TTL
    read_by_a_write: set[bytes] = field(default_factory=set)  # a later write's read saw it
    superseded: dict[bytes, float] = field(default_factory=dict)  # by an acknowledged write
    absent_since: dict[bytes, float] = field(default_factory=dict)
    gone: dict[bytes, float] = field(default_factory=dict)  # value -> gone since
    violations: list[str] = field(default_factory=list)
    pages: int = 0
    refilled_pages: int = 0
    writes: int = 0


def _member_ids(cluster: SimCluster) -> set[str]:
    founder = cluster.nodes[0].node
    if founder is None:
        return {s.id for s in cluster.nodes}
    return {m for m, member in founder.view.state.members.items() if member.status == "valid"}


async def _writer(cluster: SimCluster, index: int, rng: random.Random, checks: Checks,
                  stop: trio.Event) -> None:
    """Read a post, then overwrite it (maybe with a TTL) or delete it with that context."""
    serial = 0
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.1, 0.6))
        via = rng.choice(cluster.nodes)
        pk, sk = rng.choice(ITEMS)
        address = {"bucket": BUCKET, "key": pk, "sk": sk}
        try:
            read = await cluster.client_call(f"w{index}", via.addr, "get", **address)
        except DynError:
            continue
        seen = [v["value"] for v in read["values"]]
        checks.read_by_a_write.update(seen)
        serial += 1
        value = b"w%d/%d" % (index, serial)
        ttl = rng.choice(TTLS)
        fields: dict[str, Any] = {**address, "context": read["context"]}
        op = "delete" if seen and rng.random() < 0.4 else "put"
        if op == "put":
            fields["value"] = value
            if ttl is not None:
                fields["ttl"] = ttl
                checks.expiring.add(value)
        try:
            await cluster.client_call(f"w{index}", via.addr, op, **fields)
        except DynError:
            continue
        checks.writes += 1
        now = trio.current_time()
        if op == "put":
            checks.acked[value] = now
        for old in seen:
            checks.superseded.setdefault(old, now)


def _check_page(page: dict[str, Any], query: str, cond: list[Any] | None, reverse: bool,
                previous: bytes | None, clock_then: int, started: float, checks: Checks
                ) -> bytes | None:
    """The violations of one page (order, range, expiry, gone values); its last sk."""
    lo, hi = condition_range(cond)
    for item in page["items"]:
        sk = item["sk"]
        if not in_range(sk, lo, hi):
            checks.violations.append(f"{query}: {sk!r} outside the condition")
        if previous is not None and not before(previous, sk, reverse):
            checks.violations.append(f"{query}: {sk!r} after {previous!r}: out of order or "
                                     "twice")
        previous = sk
        for value in item["values"]:
            if "expires_at" in value and value["expires_at"] <= clock_then:
                checks.violations.append(
                    f"{query}: {sk!r}={value['value']!r} shown {clock_then - value['expires_at']}"
                    " ms past its expires_at by the coordinator's clock")
            gone = checks.gone.get(value["value"])
            if gone is not None and gone < started:
                checks.violations.append(f"{query}: {sk!r}={value['value']!r} came back, "
                                         f"gone since {gone:.1f}")
    return previous


async def _query_all(cluster: SimCluster, client: str, via: SimNode, pk: bytes,
                     cond: list[Any] | None, reverse: bool, limit: int,
                     checks: Checks, r: int | None = None) -> list[dict[str, Any]]:
    """Every page of one query through ``via``, each checked; DynError if one fails."""
    query = f"query {pk!r} {cond} reverse={reverse} limit={limit} r={r} via {via.id}"
    fields: dict[str, Any] = {"bucket": BUCKET, "key": pk, "limit": limit, "reverse": reverse}
    if r is not None:
        fields["r"] = r
    if cond is not None:
        fields["cond"] = cond
    items: list[dict[str, Any]] = []
    previous = None
    while True:
        clock_then, started = _wall_ms(via), trio.current_time()
        page = await cluster.client_call(client, via.addr, "query", **fields)
        checks.pages += 1
        checks.refilled_pages += page["rounds"] > 0
        previous = _check_page(page, query, cond, reverse, previous, clock_then, started,
                               checks)
        items += page["items"]
        if "next" not in page:
            return items
        fields["after"] = page["next"]


async def _reader(cluster: SimCluster, index: int, rng: random.Random, checks: Checks,
                  stop: trio.Event) -> None:
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.2, 0.8))
        try:
            await _query_all(cluster, f"r{index}", rng.choice(cluster.nodes),
                             rng.choice(THREADS), rng.choice(CONDITIONS),
                             rng.random() < 0.5, rng.choice(PAGE_LIMITS), checks,
                             r=rng.choice(READ_QUORUMS))
        except DynError:
            continue


def _held_values(sims: list[SimNode]) -> set[bytes]:
    """Every value of the threads any node holds, in its data or its hints."""
    held: set[bytes] = set()
    for sim in sims:
        assert sim.node is not None
        storage = sim.node.storage
        partitions = {partition_of(BUCKET, pk, SCENARIO.ring_size) for pk in THREADS}
        raws = [raw for p in partitions for bucket, key, _, raw in storage.scan_partition(p)
                if bucket == BUCKET and key in THREADS]
        raws += [raw for _, _, bucket, key, _, raw in storage.scan_hints()
                 if bucket == BUCKET and key in THREADS]
        held.update(s.value for raw in raws for s in dvvset.values(dvvset.decode(raw))
                    if s.value is not None)
    return held


def _watch_gone(sims: list[SimNode], checks: Checks) -> None:
    """One look at every node (all up): which acknowledged values are held nowhere, which
    count as gone, and whether a gone one is held again."""
    now = trio.current_time()
    held = _held_values(sims)
    for value in held & set(checks.gone):
        checks.violations.append(f"{value!r} held again, gone since {checks.gone[value]:.1f}")
        del checks.gone[value]
    for value in checks.acked:
        if value in held:
            checks.absent_since.pop(value, None)
        elif value not in checks.gone:
            since = checks.absent_since.setdefault(value, now)
            if now - since >= GONE_AFTER:
                checks.gone[value] = since


async def _monitor(sims: list[SimNode], checks: Checks, stop: trio.Event) -> None:
    while not stop.is_set():
        await trio.sleep(2.0)
        if all(s.up for s in sims):
            _watch_gone(sims, checks)
        else:
            checks.absent_since.clear()  # a node down may hold what the others lack


async def _faults(cluster: SimCluster, rng: random.Random, checks: Checks,
                  stop: trio.Event) -> None:
    """Crash and restart one node at a time, cut links for a while, and make LEAVER leave
    (its copies handed over) a third of the way in. Once the nodes see each other again
    after a partition, query every thread from every replica (R=3) in pages of one: the
    side that was cut off is stale until hints or repairs reach it, so pages refill."""
    left = False
    while not stop.is_set():
        await trio.sleep(rng.uniform(3, 8))
        if not left and trio.current_time() > WORKLOAD_SECONDS / 3:
            left = await leave(cluster, LEAVER)
            continue
        if rng.random() < 0.4:
            await crash_one(cluster, rng, LEAVER, 12)
        elif rng.random() < 0.7:
            addrs = [s.addr for s in cluster.nodes]
            rng.shuffle(addrs)
            cut = rng.randint(1, 2)
            cluster.network.partition([addrs[:cut], addrs[cut:]])
            await trio.sleep(rng.uniform(1, 10))
            cluster.network.heal()
            await trio.sleep(3)  # the detectors see the cut-off side up again
            for pk in THREADS:
                with contextlib.suppress(DynError):
                    await _query_all(cluster, "after-heal", rng.choice(cluster.nodes), pk,
                                     None, rng.random() < 0.5, 1, checks, r=3)
        else:
            a, b = rng.sample(cluster.nodes, 2)
            cluster.network.block(a.addr, b.addr)  # one way
            await trio.sleep(rng.uniform(1, 10))
            cluster.network.heal()


def _expected(finals: dict[tuple[bytes, bytes | None], Any], pk: bytes,
              cond: list[Any] | None, reverse: bool, now_ms: int
              ) -> list[tuple[bytes, list[bytes]]]:
    """The visible items of ``pk`` in the converged clocks, as a query shows them."""
    lo, hi = condition_range(cond)
    items = []
    for sk in sorted(POSTS, reverse=reverse):
        clock = finals[(pk, sk)]
        visible = [] if clock is None else dvvset.visible_values(clock, now_ms)
        if visible and in_range(sk, lo, hi):
            items.append((sk, sorted(s.value for s in visible if s.value is not None)))
    return items


async def _check_healed(cluster: SimCluster, serving: list[SimNode], checks: Checks) -> None:
    """Through every node: every query = the converged visible items; nothing superseded
    shows, nothing acknowledged and never read by a later write is missing."""
    finals = checkers.final_clocks(serving, ITEMS)
    for via in serving:
        for pk in THREADS:
            for cond, reverse, limit in HEALED_QUERIES:
                now_ms = _wall_ms(via)
                got = await _query_all(cluster, "check", via, pk, cond, reverse, limit, checks)
                shown = [(i["sk"], sorted(v["value"] for v in i["values"])) for i in got]
                expected = _expected(finals, pk, cond, reverse, now_ms)
                if shown != expected:
                    checks.violations.append(
                        f"healed query {pk!r} {cond} reverse={reverse} limit={limit} via "
                        f"{via.id}: {shown} != converged {expected}")
    live = {s.value for clock in finals.values() if clock is not None
            for s in dvvset.live_values(clock)}
    checks.violations += [f"{value!r} live after heal, superseded at {at:.1f}"
                          for value, at in checks.superseded.items() if value in live]
    checks.violations += [f"{value!r} acknowledged at {at:.1f} and lost" for value, at
                          in checks.acked.items() if value not in live
                          and value not in checks.expiring
                          and value not in checks.read_by_a_write]


async def _threads_run(seed: int, clock: trio.testing.MockClock) -> Checks:
    rng = random.Random(f"{seed}/queries")
    async with settled_cluster(SCENARIO, clock, f"dyn-queries-{seed}-", seed=seed) as (
            cluster, sims):
        for sim in sims:
            sim.skew = rng.uniform(-2, 2)
        await until("sort keys and expiry active", lambda: all(
            s.node is not None and {"sk", "ttl"} <= s.node.view.state.features for s in sims))
        checks = Checks()
        stop = trio.Event()
        async with trio.open_nursery() as work:
            for i in range(3):
                work.start_soon(_writer, cluster, i, random.Random(f"{seed}/writer{i}"),
                                checks, stop)
            for i in range(2):
                work.start_soon(_reader, cluster, i, random.Random(f"{seed}/reader{i}"),
                                checks, stop)
            work.start_soon(_faults, cluster, rng, checks, stop)
            work.start_soon(cluster.join_new_node, trio.current_time() + 2 * WORKLOAD_SECONDS / 3)
            work.start_soon(_monitor, cluster.nodes, checks, stop)
            await trio.sleep(WORKLOAD_SECONDS)
            stop.set()
        await cluster.heal()
        founder = sims[0].node
        assert founder is not None
        serving = [s for s in cluster.nodes if s.id in _member_ids(cluster)]
        await until("every replica of every post equal", lambda: not checkers.divergence(
            serving, ITEMS) and not membership.pending_transfers(founder.view.state),
            limit=10 * SCENARIO.antientropy_period)
        await trio.sleep(10)  # every TTL written has run out by every node's clock
        _watch_gone(cluster.nodes, checks)
        await _check_healed(cluster, serving, checks)
        try:  # a reap may be half done (phase two runs primary by primary)
            await until("every replica of every post still equal after the queries",
                        lambda: not checkers.divergence(serving, ITEMS),
                        limit=2 * SCENARIO.antientropy_period)
        except AssertionError:
            checks.violations += checkers.divergence(serving, ITEMS)
        _watch_gone(cluster.nodes, checks)
    return checks


def check_queries(seed: int) -> Checks:
    checks = seeded_run(seed, _threads_run, seed)
    assert not checks.violations, f"seed={seed}: " + "\n  ".join(checks.violations[:30])
    return checks


@pytest.mark.parametrize("seed", [1, 2])
def test_queries_under_faults_never_resurrect_and_match_the_converged_state(seed: int
                                                                          ) -> None:
    checks = check_queries(seed)
    # The workload ran: writes, pages, values gone (reaped or superseded). Refills depend
    # on a query meeting a stale replica: test_sim_query_faults makes them happen.
    assert checks.writes > 50 and checks.pages > 100 and checks.gone


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_many_seeds() -> None:
    """`make sim SEEDS=...` runs seeds 1..SEEDS (or SEED_START..) of this workload too."""
    checks = run_seeds("queries", check_queries)
    print(f"queries: {sum(c.pages for c in checks)} pages, "
          f"{sum(c.refilled_pages for c in checks)} refilled")
