"""Dots minted on a partition this node dropped (handoff) never repeat the dropped copy's.

tests/sim/test_sim_regained_partition.py builds the whole sequence with real nodes; these
pin the Replica rules it relies on.
"""

from __future__ import annotations

from pathlib import Path

from common import dvvset
from dynd.replica import Replica
from dynd.storage import Batch, Storage

ACTOR = "n4.1"


def _replica(path: Path) -> tuple[Storage, Replica]:
    storage = Storage.open(str(path), sync="none")
    replica = Replica(storage, max_siblings=100)
    replica.own_actor = ACTOR
    return storage, replica


def _drop(replica: Replica, partition: int, bucket: str, key: bytes) -> None:
    """What Handoff.drop_foreign_partitions does to one key of a handed-over partition."""
    replica.forget_partition(partition)
    replica.storage.stage(Batch().delete(partition, bucket, key))


def test_a_blind_write_after_a_drop_keeps_the_dropped_copys_values(tmp_path: Path) -> None:
    """Minted from counter 0, the new write repeated the dropped dot and one value vanished;
    with a floor above it, the new dot's history covered the old value and dropped it."""
    storage, replica = _replica(tmp_path)
    try:
        first, _, _ = replica.coordinate(0, "b", b"k", b"v1", {}, ACTOR, 1)
        handed_over = first  # the other primaries hold it
        _drop(replica, 0, "b", b"k")
        assert replica.get(0, "b", b"k") is None
        second, _, _ = replica.coordinate(0, "b", b"k", b"v2", {}, ACTOR, 2)
        for merged in (dvvset.sync(handed_over, second), dvvset.sync(second, handed_over)):
            assert sorted(s.value for s in dvvset.live_values(merged)) == [b"v1", b"v2"]
        # Other partitions keep minting under the incarnation itself.
        other, _, _ = replica.coordinate(1, "b", b"k", b"v3", {}, ACTOR, 3)
        assert list(dvvset.join(other)) == [ACTOR]
    finally:
        storage.close()


def test_a_write_that_read_the_dropped_value_supersedes_it(tmp_path: Path) -> None:
    storage, replica = _replica(tmp_path)
    try:
        first, _, _ = replica.coordinate(0, "b", b"k", b"v1", {}, ACTOR, 1)
        _drop(replica, 0, "b", b"k")
        second, _, _ = replica.coordinate(0, "b", b"k", b"v2", dvvset.join(first), ACTOR, 2)
        merged = dvvset.sync(first, second)
        assert [s.value for s in dvvset.live_values(merged)] == [b"v2"]
    finally:
        storage.close()


def test_a_reap_after_a_drop_raises_the_floor_of_the_renewed_actor(tmp_path: Path) -> None:
    """The reap rule of test_dot_minting.py, for dots minted under the renewed actor."""
    storage, replica = _replica(tmp_path)
    try:
        _drop(replica, 0, "b", b"k")
        put, _, _ = replica.coordinate(0, "b", b"k", b"v1", {}, ACTOR, 1)
        tombstone, _, _ = replica.coordinate(0, "b", b"k", None, dvvset.join(put), ACTOR, 2)
        assert replica.reap(0, "b", b"k", tombstone) is not None
        fresh, _, _ = replica.coordinate(0, "b", b"k", b"v2", {}, ACTOR, 3)
        merged = dvvset.sync(tombstone, fresh)  # another primary had not reaped it yet
        assert [s.value for s in dvvset.live_values(merged)] == [b"v2"]
    finally:
        storage.close()
