"""A partition's tree is rebuilt with checkpoints (a hand-over rebuilt a 50k-key partition in
one synchronous pass, about 80 ms), and comes out exact however writes interleave."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from common import dvvset
from dynd.merkle import PartitionTree
from dynd.replica import Replica, key_id
from dynd.storage import SCAN_PAGE, Storage

PARTITION = 7
ACTOR = "n1.1"


def _write(replica: Replica, key: bytes, value: bytes) -> None:
    stored = replica.get(PARTITION, "b", key)
    seen = {} if stored is None else dvvset.join(stored)
    replica.coordinate(PARTITION, "b", key, value, seen, ACTOR, 0)


def _tree_of_storage(storage: Storage) -> PartitionTree:
    """The tree a rebuild with nothing going on would give: every stored row, as it is now."""
    return PartitionTree.build(
        [(key_id(b, k, sk), dvvset.digest_encoded(raw))
         for b, k, sk, raw in storage.scan_partition(PARTITION)], segments=1024)


async def test_a_rebuild_yields_and_folds_in_the_writes_made_meanwhile(tmp_path: Path) -> None:
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100)
    rng = random.Random(5)
    keys = [f"k{i:05}".encode() for i in range(4 * SCAN_PAGE + 17)]
    try:
        for key in keys:
            _write(replica, key, b"v0")
        replica.trees.clear()  # as after a start that did not own the partition
        rebuilt = trio.Event()
        writer_turns = 0

        async def write_meanwhile() -> None:
            """At every checkpoint: overwrite keys read and unread, add some, reap some."""
            nonlocal writer_turns
            while not rebuilt.is_set():
                writer_turns += 1
                for _ in range(20):
                    _write(replica, rng.choice(keys), f"v{writer_turns}".encode())
                fresh = f"new{writer_turns:03}-{rng.randrange(10**6)}".encode()
                _write(replica, fresh, b"fresh")
                keys.append(fresh)
                gone = rng.choice(keys)
                stored = replica.get(PARTITION, "b", gone)
                if stored is not None:
                    replica.reap(PARTITION, "b", gone, stored)
                await trio.sleep(0)

        async def rebuild() -> None:
            await replica.rebuild_tree(PARTITION)
            rebuilt.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rebuild)
            nursery.start_soon(write_meanwhile)
        assert writer_turns >= 4  # the rebuild let the writer run between its pages
        assert replica.trees[PARTITION] == _tree_of_storage(storage)
        assert replica.trees[PARTITION].root() != PartitionTree(1024).root()
    finally:
        storage.close()


async def test_a_write_to_a_partition_without_a_tree_leaves_its_stored_keys_in_the_tree(
        tmp_path: Path) -> None:
    """A node that did not own a partition at start, holding a copy of it (one not dropped
    yet), takes writes there (a ring change made it a primary again): its tree, once
    built, holds the copy's keys too, not only those written since."""
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100)
    try:
        for i in range(50):
            _write(replica, f"old{i}".encode(), b"v0")
        replica.trees.clear()  # as after a start that did not own the partition
        _write(replica, b"old7", b"v1")
        _write(replica, b"new", b"v1")
        await replica.ensure_tree(PARTITION)
        assert replica.trees[PARTITION] == _tree_of_storage(storage)
    finally:
        storage.close()


async def test_a_drop_of_a_handed_over_copy_keeps_the_tree_equal_to_what_stays(
        tmp_path: Path) -> None:
    """The hand-over drop deletes a copy page by page and stops half-way when the ring
    moves on (the partition is this node's again): the tree, and a rebuild running
    meanwhile, hold exactly what is still stored."""
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100)
    try:
        for i in range(3 * SCAN_PAGE):
            _write(replica, f"k{i:05}".encode(), b"v0")
        replica.trees.clear()
        rebuilding = trio.Event()

        async def rebuild() -> None:
            rebuilding.set()
            await replica.rebuild_tree(PARTITION)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rebuild)
            await rebuilding.wait()
            await trio.sleep(0)  # the rebuild has read its first page
            replica.drop_copies(PARTITION, storage.scan_partition(PARTITION, limit=SCAN_PAGE + 5))
        assert replica.trees[PARTITION] == _tree_of_storage(storage)
        replica.drop_copies(PARTITION, storage.scan_partition(PARTITION, limit=10))
        assert replica.trees[PARTITION] == _tree_of_storage(storage)
    finally:
        storage.close()
