"""The vnode: apply replica operations to local storage, keeping Merkle trees current.

Every read-modify-write here is synchronous from `storage.get` to
`storage.stage` (no await in between), and storage makes staged writes visible
at once, so two concurrent writes to one key can never both merge into the
same old value. The caller awaits the returned ticket for durability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import dvvset
from common.dvvset import DVVSet, Sibling
from common.errors import Rejected
from common.limits import Limits
from dynd.merkle import PartitionTree
from dynd.storage import Batch, Row, Storage, Ticket, data_key

_SORT_KEY_FLAG = 0x80  # bucket names are at most 64 bytes: their length byte is below it


def key_id(bucket: str, key: bytes, sk: bytes | None = None) -> bytes:
    """The identity of an item inside one partition's hash tree: ``len(bucket) | bucket |
    key`` for a plain key (the ids, hence the trees, of nodes that predate sort keys),
    ``0x80 | len(bucket) | bucket | len(key) (2) | key | sk`` for an item with one."""
    raw = bucket.encode()
    if sk is None:
        return bytes([len(raw)]) + raw + key
    return b"".join((bytes([_SORT_KEY_FLAG | len(raw)]), raw, len(key).to_bytes(2, "big"),
                     key, sk))


def split_key_id(kid: bytes) -> tuple[str, bytes, bytes | None]:
    """(bucket, key, sort key or None) of a key_id."""
    size = kid[0] & ~_SORT_KEY_FLAG
    bucket = kid[1 : 1 + size].decode()
    if not kid[0] & _SORT_KEY_FLAG:
        return bucket, kid[1 + size :], None
    key_end = 3 + size + int.from_bytes(kid[1 + size : 3 + size], "big")
    return bucket, kid[3 + size : key_end], kid[key_end:]


@dataclass
class _TreeRebuild:
    """A tree being rebuilt from storage, and the data key of the last row it read."""

    tree: PartitionTree
    read_up_to: bytes = b""


class Replica:
    """Local copies of objects: coordinated puts, replica merges, hints, trees."""

    def __init__(self, storage: Storage, *, max_siblings: int,
                 max_object_bytes: int = Limits().max_object_bytes, segments: int = 1024
                 ) -> None:
        self.storage = storage
        self.max_siblings = max_siblings
        self.max_object_bytes = max_object_bytes
        self.segments = segments
        self.trees: dict[int, PartitionTree] = {}
        # The node's actor (set once it is known) and the highest counter it reached in a
        # tombstone this node has reaped: a key reaped here may still be a tombstone on a
        # replica that has not reaped it yet, so a new dot for the key must not repeat one
        # of its dots (tests/sim seed 139: a value minted at counter 1 under a tombstone at
        # 2 vanished on merge). Kept across a clean restart with the actor (actor_state).
        self.own_actor: str | None = None
        self.dot_floor = 0
        # Partitions whose copy this node dropped after handing it over -> the renewal its
        # own dots there are minted under since (see forget_partition). Kept with the
        # actor, as dot_floor.
        self._renewals: dict[int, int] = {}
        self._rebuilds: dict[int, list[_TreeRebuild]] = {}  # partition -> running rebuilds

    def take_actor(self, actor: str, saved: dict[str, Any] | None = None) -> None:
        """Mint this node's own dots under ``actor`` from now on: a new actor starts with
        no floor and no renewals; a kept one (a clean restart, Identity.resume_actor)
        resumes ``saved``, what ``actor_state`` returned when the node stopped."""
        self.own_actor = actor
        saved = saved or {}
        self.dot_floor = int(saved.get("dot_floor", 0))
        self._renewals = {int(p): int(r) for p, r in saved.get("renewals", {}).items()}

    def actor_state(self) -> dict[str, Any]:
        """What a kept actor needs to mint no dot twice besides the stored objects."""
        return {"dot_floor": self.dot_floor, "renewals": dict(self._renewals)}

    async def rebuild_tree(self, partition: int) -> PartitionTree:
        """Recompute one partition's tree from storage (startup, or a hand-over of a
        partition this node did not own at start), with a checkpoint every page.

        Writes go on during the checkpoints. A write to a key the scan has already read
        is folded into the new tree as a delta; a write to a key it has not read yet is
        left out, the scan reads its new version later. The delta of a key read in the
        current page starts from the version that page holds (writes come only at the
        checkpoints, after the whole page is handed out), so XOR makes both exact.
        """
        rebuild = _TreeRebuild(PartitionTree(self.segments))
        self._rebuilds.setdefault(partition, []).append(rebuild)
        try:
            async for bucket, key, sk, raw in self.storage.iter_partition(partition):
                rebuild.tree.update(key_id(bucket, key, sk), None, dvvset.digest_encoded(raw))
                rebuild.read_up_to = data_key(partition, bucket, key, sk)
        finally:
            self._rebuilds[partition].remove(rebuild)
            if not self._rebuilds[partition]:
                del self._rebuilds[partition]
        self.trees[partition] = rebuild.tree
        return rebuild.tree

    async def ensure_tree(self, partition: int) -> PartitionTree:
        """The partition's tree, built from storage unless one is kept already.

        Trees are built at start for the partitions a node owns; any other partition gets
        its tree here, on first use, never from the writes it took meanwhile: a node can
        hold a copy of a partition it did not own at start (a hand-over copy not dropped
        yet), and a tree started empty at the next write would lack that copy's keys.
        """
        tree = self.trees.get(partition)
        return tree if tree is not None else await self.rebuild_tree(partition)

    def drop_tree(self, partition: int) -> None:
        """Forget the tree of a partition whose copy was deleted."""
        self.trees.pop(partition, None)

    def _update_trees(self, partition: int, bucket: str, key: bytes, sk: bytes | None,
                      old_digest: bytes | None, new_digest: bytes | None) -> None:
        """Fold one write into the partition's tree and into every rebuild of it that has
        read the key already (see rebuild_tree)."""
        kid = key_id(bucket, key, sk)
        tree = self.trees.get(partition)
        if tree is not None:  # else built from storage when first needed (ensure_tree)
            tree.update(kid, old_digest, new_digest)
        for rebuild in self._rebuilds.get(partition, ()):
            if data_key(partition, bucket, key, sk) <= rebuild.read_up_to:
                rebuild.tree.update(kid, old_digest, new_digest)

    def own_actor_in(self, partition: int) -> str:
        """The actor this node's own dots in ``partition`` are minted under: its
        incarnation, renewed for a partition whose copy it has dropped."""
        renewal = self._renewals.get(partition)
        own = self.own_actor or ""
        return own if renewal is None else f"{own}.d{renewal}"

    def forget_partition(self, partition: int) -> None:
        """Call before deleting this node's copy of a partition it handed over.

        The copy's values are live on the other replicas, dots of this node's actor
        among them, and a later ring change can make this node a primary of the
        partition again before its copy is back (its pull pending, or the walk for a
        key partition's primaries reaching it when another node's transfer completes).
        A dot minted then from the missing copy repeats one of them, and a floor
        (dot_floor) would not do either: the new dot's history would cover those live
        values and drop them on merge. So later dots there get a fresh actor (Riak's
        remedy for the same loss, kv679, is a fresh actor epoch too).
        """
        self._renewals[partition] = max(self._renewals.values(), default=0) + 1

    def get(
        self, partition: int, bucket: str, key: bytes, hint_for: str | None = None,
        sk: bytes | None = None,
    ) -> DVVSet | None:
        """Our copy: the data copy, or with `hint_for` the hint held for that primary."""
        raw = self.get_encoded(partition, bucket, key, hint_for, sk)
        return None if raw is None else dvvset.decode_stored(raw)

    def get_encoded(
        self, partition: int, bucket: str, key: bytes, hint_for: str | None = None,
        sk: bytes | None = None,
    ) -> bytes | None:
        """Our copy as stored (``dvvset.encode`` form): what a peer's p_get is sent as is."""
        if hint_for is None:
            return self.storage.get(partition, bucket, key, sk)
        return self.storage.get_hint(hint_for, partition, bucket, key, sk)

    def coordinate(
        self, partition: int, bucket: str, key: bytes, value: bytes | None,
        client_context: dict[str, int], actor: str, written_at: int,
        hint_for: str | None = None, sk: bytes | None = None, *,
        expires_at: int | None = None,
    ) -> tuple[DVVSet, bytes, Ticket]:
        """Mint a new dot for a client write on this node (the coordinating replica): the
        new clock, encoded once (stored here and sent to the other replicas as it is), and
        the ticket of the local write.

        A coordinator that is itself a fallback keeps its copy as a hint. This node's
        own ``actor`` is minted as ``own_actor_in(partition)``.
        """
        stored_raw = self.get_encoded(partition, bucket, key, hint_for, sk)
        stored = None if stored_raw is None else dvvset.decode_stored(stored_raw)
        client = dvvset.new(Sibling(value, written_at, expires_at), client_context)
        floor = 0
        if actor == self.own_actor:
            actor, floor = self.own_actor_in(partition), self.dot_floor
        try:
            result = dvvset.update(client, stored, actor, floor)
        except dvvset.InvalidContext as exc:
            raise Rejected(f"bad context: {exc}") from None
        encoded = dvvset.encode(result)
        self._refuse_unreplicable(result, encoded)
        if hint_for is not None:  # minted on the hint copy as stored: nothing to merge
            batch = Batch().put_hint(hint_for, partition, bucket, key, encoded, sk)
            return result, encoded, self.storage.stage(batch)
        return result, encoded, self._store(partition, bucket, key, sk, stored_raw, encoded)

    def _refuse_unreplicable(self, result: DVVSet, encoded: bytes) -> None:
        """Refuse a write, before anything is stored, that would leave an object the
        writer must resolve first: more siblings than the limit, or more bytes than one
        replica frame carries (every sibling goes in it, so such an object would stay on
        this node only, beyond replication and repair). Merges are never refused (see
        replica_access.clock_from_peer): only the write that would grow the object."""
        count = dvvset.sibling_count(result)
        if count > self.max_siblings:
            problem = f"would have {count} siblings, limit is {self.max_siblings}"
        elif len(encoded) > self.max_object_bytes:
            problem = (f"would be {len(encoded)} bytes with its {count} siblings, a replica "
                       f"takes at most {self.max_object_bytes}")
        else:
            return
        raise Rejected(f"key {problem}: resolve its siblings (dynctl resolve) before "
                       f"writing more")

    def merge(
        self, partition: int, bucket: str, key: bytes, incoming: DVVSet,
        sk: bytes | None = None,
    ) -> tuple[DVVSet, Ticket | None]:
        """Sync a replica's copy into ours; no write when it brings nothing new."""
        stored_raw = self.get_encoded(partition, bucket, key, None, sk)
        stored = None if stored_raw is None else dvvset.decode_stored(stored_raw)
        merged = incoming if stored is None else dvvset.sync(stored, incoming)
        if stored is not None and dvvset.equal(stored, merged):
            return stored, None
        return merged, self._store(partition, bucket, key, sk, stored_raw,
                                   dvvset.encode(merged))

    def _store(
        self, partition: int, bucket: str, key: bytes, sk: bytes | None,
        old_raw: bytes | None, encoded: bytes,
    ) -> Ticket:
        """Stage ``encoded`` over the copy stored as ``old_raw``; digests hash the stored
        bytes (``encode`` is canonical, so they are ``dvvset.digest`` of the clocks)."""
        batch = Batch()
        batch.put(partition, bucket, key, encoded, sk)
        ticket = self.storage.stage(batch)
        self._update_trees(partition, bucket, key, sk,
                           None if old_raw is None else dvvset.digest_encoded(old_raw),
                           dvvset.digest_encoded(encoded))
        return ticket

    def reap(self, partition: int, bucket: str, key: bytes, expected: DVVSet,
             sk: bytes | None = None) -> Ticket | None:
        """Delete a tombstone, but only if it is still exactly what was agreed to be reaped."""
        stored = self.get(partition, bucket, key, None, sk)
        if stored is None or not dvvset.equal(stored, expected):
            return None
        self.dot_floor = max(self.dot_floor,
                             dvvset.join(stored).get(self.own_actor_in(partition), 0))
        batch = Batch()
        batch.delete(partition, bucket, key, sk)
        ticket = self.storage.stage(batch)
        self._update_trees(partition, bucket, key, sk, dvvset.digest(stored), None)
        return ticket

    def drop_copies(self, partition: int, rows: list[Row]) -> Ticket:
        """Delete rows of this node's copy of a partition it handed over (as scanned, with
        no await since), taking them out of the tree and of any rebuild of it: the drop
        goes page by page and stops half-way when the ring moves on, and what stays
        stored must be what the tree holds."""
        batch = Batch()
        for bucket, key, sk, _ in rows:
            batch.delete(partition, bucket, key, sk)
        ticket = self.storage.stage(batch)
        for bucket, key, sk, raw in rows:
            self._update_trees(partition, bucket, key, sk, dvvset.digest_encoded(raw), None)
        return ticket

    def store_hint(
        self, target: str, partition: int, bucket: str, key: bytes, incoming: DVVSet,
        sk: bytes | None = None,
    ) -> Ticket:
        """Keep a replica for an unreachable primary until it can be handed back."""
        raw = self.storage.get_hint(target, partition, bucket, key, sk)
        merged = incoming if raw is None else dvvset.sync(dvvset.decode_stored(raw), incoming)
        batch = Batch()
        batch.put_hint(target, partition, bucket, key, dvvset.encode(merged), sk)
        return self.storage.stage(batch)
