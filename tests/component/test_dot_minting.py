"""A dot is never minted twice for one key: not on two hint copies of it, not after a
reap that another replica has not done yet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cbor2

from common import dvvset
from dynd import backup, membership
from dynd.cluster import META_STATE
from dynd.identity import META_INCARNATION
from dynd.node import Node
from dynd.replica import Replica
from dynd.storage import Batch, Storage


def test_hint_copies_for_two_primaries_mint_distinct_dots(
        make_node: Callable[..., Node]) -> None:
    """tests/sim seed 20: the preference list moved between two fallback writes of a key,
    so the second landed on a fresh hint copy (for another primary) and minted the first
    one's dot again; merged, one of the two values vanished."""
    node = make_node("n5")
    clocks = []
    for primary, value in (("n2", b"first"), ("n4", b"second")):
        clock, _, _ = node.replica.coordinate(
            3, "default", b"cart", value, {}, node.identity.fallback_actor(primary),
            1000, hint_for=primary)
        clocks.append(clock)
    merged = dvvset.merge_all(clocks)  # what a primary holds once both are handed back
    assert sorted(s.value for s in dvvset.live_values(merged)) == [b"first", b"second"]


def test_a_key_reaped_here_but_not_everywhere_gets_fresh_dots(tmp_path: Path) -> None:
    """tests/sim seed 139: the tombstone was reaped on the coordinator but not yet on
    another primary; a new put minted counter 1 under the tombstone's 2 and vanished
    when the two copies merged."""
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100)
    replica.own_actor = "n3.2"
    try:
        put, _, _ = replica.coordinate(1, "b", b"k", b"v1", {}, "n3.2", 1)
        tombstone, _, _ = replica.coordinate(1, "b", b"k", None, dvvset.join(put), "n3.2", 2)
        unreaped = tombstone  # another primary still holds it
        assert replica.reap(1, "b", b"k", tombstone) is not None
        assert replica.get(1, "b", b"k") is None
        fresh, _, _ = replica.coordinate(1, "b", b"k", b"v2", {}, "n3.2", 3)
        merged = dvvset.sync(unreaped, fresh)
        assert [s.value for s in dvvset.live_values(merged)] == [b"v2"]
    finally:
        storage.close()


def test_a_restart_after_a_join_never_takes_an_incarnation_below_the_clusters_record(
        make_node: Callable[..., Node]) -> None:
    """A rejoining node adopts the cluster's higher incarnation and persists the joined
    state before its own incarnation: a crash in between left the state's record ahead,
    and the restart reused the old life's actor (n4.1 while the cluster knew n4.4)."""
    node = make_node("n4")
    assert node.identity.incarnation == 1
    state = membership.update_member(node.view.state, replace(
        node.view.state.members["n4"], incarnation=4))  # what the join adopted, persisted
    node.storage.stage(Batch().put_meta(META_STATE, cbor2.dumps(membership.to_wire(state)))
                       .put_meta(META_INCARNATION, b"1"))  # the crash came before the rest
    node.storage.close()
    assert make_node("n4").identity.actor == "n4.5"


async def test_a_clean_restart_keeps_the_actor_with_its_floor_renewals_and_hint_actor(
        make_node: Callable[..., Node]) -> None:
    """What the stored objects no longer show travels with a kept actor: the floor of a
    reaped tombstone (another replica may still hold it), the renewal of a dropped
    partition and the fallback generation (no hint copy released since)."""
    node = make_node("n3")
    await node.identity.persist(node.view)
    replica = node.replica
    put, _, _ = replica.coordinate(1, "b", b"k", b"v1", {}, node.identity.actor, 1)
    tombstone, _, _ = replica.coordinate(1, "b", b"k", None, dvvset.join(put),
                                         node.identity.actor, 2)
    unreaped = tombstone  # another primary still holds it
    assert replica.reap(1, "b", b"k", tombstone) is not None
    replica.forget_partition(5)
    hint_actor = node.identity.fallback_actor("n1")
    node.record_clean_stop()
    node.storage.close()

    restarted = make_node("n3")
    assert restarted.identity.actor == node.identity.actor
    assert restarted.replica.actor_state() == {"dot_floor": 2, "renewals": {5: 1}}
    assert restarted.identity.fallback_actor("n1") == hint_actor
    fresh, _, _ = restarted.replica.coordinate(1, "b", b"k", b"v2", {}, restarted.identity.actor, 3)
    merged = dvvset.sync(unreaped, fresh)
    assert [s.value for s in dvvset.live_values(merged)] == [b"v2"]


async def test_a_start_consumes_the_clean_stop_record(make_node: Callable[..., Node]) -> None:
    """Once a node serves, an exit may lose a dot: only a new clean stop keeps the actor."""
    actors = []
    for clean in (True, False, False):
        node = make_node("n3")
        await node.identity.persist(node.view)
        actors.append(node.identity.actor)
        if clean:
            node.record_clean_stop()
        node.storage.close()  # the last two lives end as a crash would: no record
    assert actors == ["n3.1", "n3.1", "n3.3"]


async def test_a_restored_backup_never_keeps_the_actor_of_a_clean_stop_record_in_it(
        make_node: Callable[..., Node], tmp_path: Path) -> None:
    """A copy of a cleanly stopped node's dir holds its clean-stop record, but the node may
    have run on (under that actor) after the copy: restored, the copy takes a new actor,
    and the marker goes once that new life is durable."""
    node = make_node("n3")
    await node.identity.persist(node.view)
    node.record_clean_stop()
    node.storage.close()
    (tmp_path / backup.MARKER).write_text("{}")  # what `dynctl backup` leaves beside the copy

    restored = make_node("n3")
    assert not restored.identity.actor_kept
    assert restored.identity.actor == "n3.2"
    await restored.identity.renew_after_restore(restored.view, restored.peers)  # no peers
    await restored.identity.persist(restored.view)
    backup.finish_restore(restored.storage.path)
    assert backup.restored_from(restored.storage.path) is None
    restored.record_clean_stop()
    restored.storage.close()
    assert make_node("n3").identity.actor == "n3.2"  # an ordinary clean restart again

