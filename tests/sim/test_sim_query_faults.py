"""Queries when replicas fail in the middle of one, on a simulated 5-node cluster (N=3,
R=2, hints never handed back and no anti-entropy, so the replicas stay as each case
builds them):

- a refill that fails leaves fewer than R replicas: the page ends at the horizon with a
  token (partial page) and emits nothing only one replica vouches for, so a stale live
  copy on the replica left cannot hide the other's newer tombstone; the token resumes
  the query once the network is back;
- fewer than R replicas answer at all: the query fails "unavailable" (dynctl's exit 4);
- read repair: a primary that lacks an item (written while it was cut off) gets it from
  the query that found it missing; a keys-only query repairs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import Unavailable
from dynd.query import Queries
from tests.sim.harness import (
    Scenario,
    SimCluster,
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
PK = b"THREAD#1"


_call = partial(item_call, key=PK)
_primaries = partial(primaries_of, key=PK)
_stored = partial(stored_items, key=PK)


def _live(sim: SimNode) -> dict[bytes | None, list[bytes]]:
    return {sk: [s.value for s in dvvset.live_values(c) if s.value is not None]
            for sk, c in _stored(sim).items()}


def _sees(sims: list[SimNode], target: SimNode, up: bool) -> bool:
    return all(s.node is not None and s.node.liveness.is_up(target.id) == up
               for s in sims if s is not target)


async def _cut_off(cluster: SimCluster, sims: list[SimNode], away: SimNode) -> None:
    cluster.network.partition([[away.addr], [s.addr for s in sims if s is not away]])
    await until(f"{away.id} seen down", lambda: _sees(sims, away, False))


async def _reconnect(cluster: SimCluster, sims: list[SimNode]) -> None:
    cluster.network.heal()
    await until("every node seen up", lambda: all(_sees(sims, s, True) for s in sims))


async def _delete(cluster: SimCluster, via: SimNode, sk: bytes) -> None:
    seen = await _call(cluster, via, "get", sk=sk)
    await _call(cluster, via, "delete", sk=sk, context=seen["context"])


def _keep_hints(sims: list[SimNode], monkeypatch: pytest.MonkeyPatch) -> None:
    """No hint is ever handed back: the replicas stay as the case built them."""
    async def no_delivery(target: str) -> None:
        return None

    for sim in sims:
        assert sim.node is not None
        monkeypatch.setattr(sim.node.hints, "deliver_hints", no_delivery)


@asynccontextmanager
async def _case(clock: trio.testing.MockClock, prefix: str, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[tuple[SimCluster, list[SimNode], list[SimNode], SimNode]]:
    """Every case's start: the settled cluster (sort keys active, hints kept), PK's three
    primaries, and a node that is none of them to coordinate from."""
    async with settled_cluster(SCENARIO, clock, prefix) as (cluster, sims):
        await until("sort keys active", lambda: sort_keys_active(sims))
        _keep_hints(sims, monkeypatch)
        primaries = _primaries(sims)
        yield cluster, sims, primaries, next(s for s in sims if s not in primaries)


def _run(main: Any) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock, clock=clock)


def test_a_failed_refill_below_r_ends_the_page_at_the_horizon_with_a_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with _case(clock, "dyn-query-refill", monkeypatch) as (
                cluster, sims, (a, b, c), via):
            for sk in (b"a", b"b", b"c"):
                await _call(cluster, a, "put", sk=sk, value=b"v-" + sk)
            # a keeps a and b live while b and c delete them; b keeps c live while a and
            # c delete it.
            await _cut_off(cluster, sims, a)
            for sk in (b"a", b"b"):
                await _delete(cluster, b, sk)
            await _reconnect(cluster, sims)
            await _cut_off(cluster, sims, b)
            await _delete(cluster, a, b"c")
            await _reconnect(cluster, sims)
            assert _live(a) == {b"a": [b"v-a"], b"b": [b"v-b"], b"c": []}
            assert _live(b) == {b"a": [], b"b": [], b"c": [b"v-c"]}

            # c does not answer this query; a answers its first request (a, b: two live
            # items, more), then its refill after b is lost.
            cluster.network.block(via.addr, c.addr)
            refill = Queries._refill

            async def lost_refill(queries: Queries, target: Any, fields: dict[str, Any],
                                  deadline: float, outcomes: dict[str, Any]) -> None:
                cluster.network.block(via.addr, a.addr)
                await refill(queries, target, fields, deadline, outcomes)

            monkeypatch.setattr(Queries, "_refill", lost_refill)
            page = await _call(cluster, via, "query", limit=2)
            # Only b vouches for c past the horizon (b): c, deleted on a, is not shown.
            assert page["items"] == [] and page["count"] == 0
            assert "next" in page

            monkeypatch.setattr(Queries, "_refill", refill)
            await _reconnect(cluster, sims)
            rest = await _call(cluster, via, "query", limit=2, after=page["next"])
            assert rest["items"] == [] and "next" not in rest

    _run(main)


def test_a_query_without_r_replies_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with _case(clock, "dyn-query-unavailable", monkeypatch) as (
                cluster, _, (a, b, _), via):
            await _call(cluster, a, "put", sk=b"post", value=b"v")
            cluster.network.block(via.addr, a.addr)  # not yet seen down: still asked
            cluster.network.block(via.addr, b.addr)
            with pytest.raises(Unavailable, match="read quorum not met"):
                await _call(cluster, via, "query", limit=2)

    _run(main)


def test_a_query_repairs_an_item_a_primary_lacks_and_keys_only_repairs_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        async with _case(clock, "dyn-query-repair", monkeypatch) as (
                cluster, sims, (a, _, c), _):
            await _call(cluster, a, "put", sk=b"first", value=b"1")
            await _cut_off(cluster, sims, c)
            await _call(cluster, a, "put", sk=b"missed", value=b"2")
            await _reconnect(cluster, sims)
            assert b"missed" not in _stored(c)

            keys = await _call(cluster, a, "query", select="keys", r=3)
            assert [item["sk"] for item in keys["items"]] == [b"first", b"missed"]
            await trio.sleep(5)  # a repair would be sent and applied by now
            assert b"missed" not in _stored(c)

            page = await _call(cluster, a, "query", r=3)
            assert [(i["sk"], [v["value"] for v in i["values"]]) for i in page["items"]] == [
                (b"first", [b"1"]), (b"missed", [b"2"])]
            await until("c repaired", lambda: _live(c).get(b"missed") == [b"2"])
            assert all(dvvset.equal(_stored(c)[sk], _stored(a)[sk]) for sk in _stored(a))

    _run(main)
