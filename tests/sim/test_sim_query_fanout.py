"""``[limits] query_fanout = "r"`` on a simulated 3-node cluster (N=3, R=2): a query scans
the coordinator's own copy and asks one other replica only, and when that replica is
gone it asks the third one instead, still answering every item."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
import trio.testing

from common.config import Config
from common.ring import partition_of
from tests.sim import harness
from tests.sim.harness import BUCKET, Scenario, SimCluster, SimNode, settled_cluster, until

PK = b"USER#fanout"
SKS = [b"ORDER#%d" % i for i in range(5)]


@pytest.fixture
def fanout_r(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every simulated node starts with query_fanout = "r"."""
    plain = harness.node_config

    def with_fanout_r(*args: Any) -> Config:
        config = plain(*args)
        return dataclasses.replace(
            config, limits=dataclasses.replace(config.limits, query_fanout="r"))
    monkeypatch.setattr(harness, "node_config", with_fanout_r)


def _scanned(sim: SimNode) -> int:
    """Items this node scanned for other coordinators' queries (p_query)."""
    return sim.node.stats.events["query_scanned_items"] if sim.node else 0


async def _query(cluster: SimCluster, coordinator: SimNode) -> list[bytes]:
    result = await cluster.client_call("client", coordinator.addr, "query", bucket=BUCKET,
                                       key=PK, limit=100)
    return [item["sk"] for item in result["items"]]


async def _stored_everywhere(sims: list[SimNode]) -> None:
    def everywhere() -> bool:
        return all(sim.node is not None
                   and len(sim.node.storage.scan_items(
                       _partition(sims[0]), BUCKET, PK, b"\x00", None, reverse=False,
                       limit=None)) == len(SKS) for sim in sims)
    await until("every replica holds every item", everywhere)


def _partition(sim: SimNode) -> int:
    assert sim.node is not None
    return partition_of(BUCKET, PK, sim.node.view.state.ring_size)


def test_fanout_r_asks_one_peer_and_falls_back_to_the_third_when_it_is_gone(
        fanout_r: None) -> None:
    async def main(clock: trio.testing.MockClock) -> None:
        scenario = Scenario(nodes=3, antientropy=False, faults=harness.LinkFaults())
        async with settled_cluster(scenario, clock, "dynd-qfanout-") as (cluster, sims):
            await until("sort keys active", lambda: all(
                s.node is not None and "sk" in s.node.view.state.features for s in sims))
            for sk in SKS:
                await cluster.client_call("client", sims[0].addr, "put", bucket=BUCKET, key=PK,
                                          sk=sk, value=b"v")
            await _stored_everywhere(sims)
            coordinator, others = sims[0], sims[1:]
            before = [_scanned(s) for s in others]
            assert await _query(cluster, coordinator) == SKS
            asked = [s for s, n in zip(others, before, strict=True) if _scanned(s) > n]
            assert len(asked) == 1  # own copy + one peer make R=2; the third is not asked
            spare = next(s for s in others if s is not asked[0])
            spare_before = _scanned(spare)
            await asked[0].crash()
            assert await _query(cluster, coordinator) == SKS
            assert _scanned(spare) > spare_before

    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock, clock=clock)
