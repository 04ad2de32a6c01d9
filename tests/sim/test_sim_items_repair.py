"""Items (bucket, key, sort key) through the mechanisms that move and reclaim data, on a
simulated cluster (ring of 16, N=3, R=2, W=2):

- Merkle anti-entropy alone (hint delivery disabled) repairs a primary that was
  partitioned away while items were written, deleted and written concurrently on
  both sides: every primary ends with the same copy of every item, siblings per item.
- A join and a leave move a key's items with its partition (transfer pages of two
  items, so a page ends between the items of one key): every item is readable with
  R=3 and held by each new primary; the leaver's hand-over drop merges an item only it
  held into the primaries before deleting it.
- A deleted item's tombstone is reaped only under the reap agreement (not while a
  primary is partitioned away and a fallback holds its hint), then from every node,
  and the item does not come back.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from common import dvvset
from common.config import HandoffConfig
from common.dvvset import DVVSet
from common.ring import partition_of
from dynd import membership
from tests.sim.harness import (
    BUCKET,
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

PK = b"USER#alice"


_call = partial(item_call, key=PK)
_primaries = partial(primaries_of, key=PK)
_stored_items = partial(stored_items, key=PK)
SKS = [b"ORDER#1", b"ORDER#2", b"\x00", b"\xff\xff"]



def _up(sims: list[SimNode]) -> list[SimNode]:
    return [s for s in sims if s.node is not None]




def _hinted_items(sim: SimNode, key: bytes = PK) -> set[bytes | None]:
    assert sim.node is not None
    return {sk for _, _, bucket, k, sk, _ in sim.node.storage.scan_hints()
            if (bucket, k) == (BUCKET, key)}


def _live(clock: DVVSet) -> list[bytes]:
    return sorted(s.value for s in dvvset.live_values(clock) if s.value is not None)


def _identical(copies: list[dict[bytes | None, DVVSet]]) -> bool:
    return all(set(c) == set(copies[0]) and all(dvvset.equal(c[sk], copies[0][sk]) for sk in c)
               for c in copies[1:])


async def _seen_down(sims: list[SimNode], away: list[SimNode]) -> None:
    await until("the others see it down", lambda: all(
        s.node is not None and not s.node.liveness.is_up(a.id)
        for s in sims if s not in away for a in away))


def _run(main: Any) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock, clock=clock)


def test_anti_entropy_alone_repairs_every_item_of_a_partitioned_primary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), antientropy_period=30.0)

    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(scenario, clock, "dyn-items-aae") as (cluster, sims):
            await until("sort keys active", lambda: sort_keys_active(sims))
            for sim in sims:  # hints never handed back: only anti-entropy can repair
                assert sim.node is not None

                async def no_delivery(target: str) -> None:
                    return None

                monkeypatch.setattr(sim.node.hints, "deliver_hints", no_delivery)
            primaries = _primaries(sims)
            first, away = primaries[0], primaries[2]
            for i, sk in enumerate(SKS):
                await _call(cluster, first, "put", sk=sk, value=b"v%d" % i)
            await _call(cluster, first, "put", value=b"plain")
            before = (await _call(cluster, first, "get", sk=SKS[1]))["context"]

            cluster.network.partition([[away.addr], [s.addr for s in sims if s is not away]])
            await _seen_down(sims, [away])
            seen = (await _call(cluster, first, "get", sk=SKS[0]))["context"]
            await _call(cluster, first, "put", sk=SKS[0], value=b"new0", context=seen)
            await _call(cluster, first, "put", sk=SKS[1], value=b"side b", context=before)
            seen = (await _call(cluster, first, "get", sk=SKS[2]))["context"]
            await _call(cluster, first, "delete", sk=SKS[2], context=seen)
            await _call(cluster, first, "put", sk=b"NEW", value=b"new")
            await _call(cluster, away, "put", sk=SKS[1], value=b"side a", context=before, w=1)
            await _call(cluster, away, "put", sk=b"AWAY", value=b"away only", w=1)
            assert not _identical([_stored_items(p) for p in primaries])
            cluster.network.heal()

            await until("every primary holds the same copy of every item", lambda: _identical(
                [_stored_items(p) for p in primaries]), limit=4 * scenario.antientropy_period)
            assert any(_hinted_items(s) for s in sims)  # the hints did not do it
            copy = _stored_items(first)
            assert set(copy) == {*SKS, None, b"NEW", b"AWAY"}
            assert {sk: _live(clock) for sk, clock in copy.items()} == {
                None: [b"plain"], SKS[0]: [b"new0"], SKS[1]: [b"side a", b"side b"],
                SKS[2]: [], SKS[3]: [b"v3"], b"NEW": [b"new"], b"AWAY": [b"away only"]}
            assert dvvset.is_tombstone(copy[SKS[2]])

    _run(main)


def _items_of(index: int) -> dict[bytes | None, bytes]:
    """sort key -> value of the items of key pk-<index> (None: its plain value)."""
    return {sk: b"pk-%d/%r" % (index, sk) for sk in (None, b"a", b"a\x00", b"b", b"\xff")}


KEYS = [b"pk-%d" % i for i in range(12)]


def _foreign(sim: SimNode) -> set[int]:
    """Partitions ``sim`` holds data of without being one of their primaries."""
    assert sim.node is not None
    node = sim.node
    owned = node.view.routing().owned_partitions(node.id)
    return {p for p in range(node.view.state.ring_size)
            if p not in owned and node.storage.scan_partition(p, limit=1)}


def _settled(sims: list[SimNode], epoch: int) -> bool:
    up = _up(sims)
    return all(s.node is not None and s.node.view.state.epoch >= epoch
               and not membership.pending_transfers(s.node.view.state)
               and not _foreign(s) for s in up)


def _small_pages(config: HandoffConfig) -> HandoffConfig:
    """Transfer pages of two items: a page ends between the items of one key."""
    return dataclasses.replace(config, batch_keys=2)


async def _check_items(cluster: SimCluster, sims: list[SimNode], extra: dict[bytes, bytes]
                       ) -> None:
    """Every item of KEYS readable with R=3 and held by each of its key's primaries."""
    reader = _up(sims)[0]
    for index, key in enumerate(KEYS):
        expected = dict(_items_of(index))
        if key == KEYS[0]:
            expected.update(extra)
        for sk, value in expected.items():
            fields = {} if sk is None else {"sk": sk}
            got = await _call(cluster, reader, "get", key=key, r=3, **fields)
            assert [v["value"] for v in got["values"]] == [value], (key, sk)
        for primary in _primaries(sims, key=key):
            copy = _stored_items(primary, key=key)
            assert {sk: _live(c) for sk, c in copy.items()} == {
                sk: [v] for sk, v in expected.items()}, (primary.id, key)


def test_a_join_and_a_leave_move_every_item_with_its_partition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(nodes=4, ring_size=16, faults=LinkFaults(), antientropy=False)

    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(scenario, clock, "dyn-items-move") as (cluster, sims):
            await until("sort keys active", lambda: sort_keys_active(sims))
            for sim in sims:
                assert sim.node is not None
                sim.node.transfers.config = _small_pages(sim.node.transfers.config)
            admin = sims[0]
            for index, key in enumerate(KEYS):
                for sk, value in _items_of(index).items():
                    await _call(cluster, admin, "put", key=key, value=value,
                                **({} if sk is None else {"sk": sk}))

            # A join: the new node pulls its partitions, the old owners drop theirs.
            joiner = cluster.add_node(4)
            joiner.config = dataclasses.replace(
                joiner.config, handoff=_small_pages(joiner.config.handoff))
            await joiner.start()
            sims.append(joiner)
            await cluster.client_call("admin", joiner.addr, "cluster_join", seed=admin.addr)
            await until("the join is known", lambda: admin.node is not None and
                        joiner.id in admin.node.view.state.members)
            epoch = int((await cluster.client_call("admin", admin.addr,
                                                   "cluster_commit"))["epoch"])
            await until("the join settled", lambda: _settled(sims, epoch))
            assert any(joiner in _primaries(sims, key=key) for key in KEYS)
            await _check_items(cluster, sims, {})

            # A leave: hold back the leaver's hand-over, give it an item nobody else has.
            leaver = next(s for s in sims if s in _primaries(sims, key=KEYS[0]))
            assert leaver.node is not None
            released = trio.Event()
            handed_over = leaver.node.handover._handed_over

            async def held(partition: int) -> bool:
                await released.wait()
                return await handed_over(partition)

            monkeypatch.setattr(leaver.node.handover, "_handed_over", held)
            await cluster.client_call("admin", admin.addr, "cluster_leave", node=leaver.id)
            epoch = int((await cluster.client_call("admin", admin.addr,
                                                   "cluster_commit"))["epoch"])
            await until("the leave's transfers done", lambda: admin.node is not None and
                        admin.node.view.state.epoch >= epoch and
                        not membership.pending_transfers(admin.node.view.state))
            assert membership.member_status(admin.node.view.state, leaver.id) == "removed"
            node = leaver.node
            partition = partition_of(BUCKET, KEYS[0], node.view.state.ring_size)
            _, _, ticket = node.replica.coordinate(
                partition, BUCKET, KEYS[0], b"only the leaver", {}, node.identity.actor,
                int(node.wall() * 1000), sk=b"LEAVER")
            await ticket.wait()
            assert not any(b"LEAVER" in _stored_items(p, key=KEYS[0])
                           for p in _primaries(sims, key=KEYS[0]))
            released.set()
            await until("the leaver dropped its copies", lambda: not _foreign(leaver))
            remaining = [s for s in sims if s is not leaver]
            assert leaver not in _primaries(remaining, key=KEYS[0])
            await _check_items(cluster, remaining, {b"LEAVER": b"only the leaver"})

    _run(main)


def test_an_item_tombstone_is_reaped_only_under_the_agreement_and_stays_gone() -> None:
    scenario = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), tombstone_grace=20.0,
                        antientropy_period=30.0)
    doomed = SKS[1]

    async def main(clock: trio.testing.MockClock) -> None:
        async with settled_cluster(scenario, clock, "dyn-items-reap") as (cluster, sims):
            await until("sort keys active", lambda: sort_keys_active(sims))
            primaries = _primaries(sims)
            first, away = primaries[0], primaries[2]
            for i, sk in enumerate(SKS):
                await _call(cluster, first, "put", sk=sk, value=b"v%d" % i)
            await _call(cluster, first, "put", value=b"plain")

            cluster.network.partition([[away.addr], [s.addr for s in sims if s is not away]])
            await _seen_down(sims, [away])
            seen = (await _call(cluster, first, "get", sk=doomed))["context"]
            await _call(cluster, first, "delete", sk=doomed, context=seen)
            assert any(doomed in _hinted_items(s) for s in sims)
            await trio.sleep(scenario.tombstone_grace + 3 * scenario.antientropy_period)
            # Past the grace, but a primary still holds the value: no reap anywhere.
            assert first.node is not None
            assert await first.node.antientropy.reap_tombstones(
                partition_of(BUCKET, PK, scenario.ring_size)) == 0
            for primary in primaries[:2]:
                assert dvvset.is_tombstone(_stored_items(primary)[doomed]), primary.id
            assert _live(_stored_items(away)[doomed]) == [b"v1"]

            cluster.network.heal()
            await until("the tombstone reaped on every node", lambda: not any(
                doomed in _stored_items(s) or doomed in _hinted_items(s) for s in sims),
                limit=6 * scenario.antientropy_period)
            await trio.sleep(3 * scenario.antientropy_period)
            for sim in sims:
                assert doomed not in _stored_items(sim), sim.id
            for sim in primaries:
                assert {sk: _live(c) for sk, c in _stored_items(sim).items()} == {
                    None: [b"plain"], SKS[0]: [b"v0"], SKS[2]: [b"v2"], SKS[3]: [b"v3"]}
            got = await _call(cluster, away, "get", sk=doomed, r=3)
            assert got["values"] == []

    _run(main)
