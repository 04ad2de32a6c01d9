"""Per-partition hash trees for anti-entropy, in the style of Riak's tictac AAE.

Why this shape: a classic Merkle tree must be rebuilt (a full partition scan)
before every exchange, which is what made Riak's first AAE halve throughput.
Here a leaf is a *segment* of keys whose hash is the XOR of the per-key hashes
``leaf_hash(key, version)``. XOR is its own inverse and order-free, so every
write updates the tree in place (XOR out the old version, XOR in the new one)
and the tree is always current; an upper node is the XOR of its children, kept
eagerly by XOR-ing the same delta into each ancestor (``depth + 1`` word
operations per write).

Two replicas compare trees top-down and descend only into differing branches
(:class:`TreeComparison`), one batched request per level, so an exchange costs
``depth + 1`` round trips however many segments differ. The differing segments
are then reconciled key by key (:func:`diff_keys`).

Limits and caveats:

- Node hashes are ``HASH_BYTES`` = 8 bytes (64 bits). A real difference in a
  segment goes unnoticed with probability about 2**-64. Like tictac trees,
  these trees are for trusted peers only: XOR sums are not secure against a
  peer that chooses versions to forge collisions.
- ``segments`` must be ``fanout ** depth`` with ``depth >= 1``,
  ``MIN_FANOUT <= fanout <= MAX_FANOUT`` and ``segments <= MAX_SEGMENTS``.
- Both sides of an exchange must use the same ``segments`` and ``fanout``;
  the caller checks that before comparing (the hashes carry no shape).
- The tree trusts ``update``: passing an ``old_digest`` that is not the one
  folded in earlier corrupts the segment until the tree is rebuilt with
  :meth:`PartitionTree.build`.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence

HASH_BYTES = 8
MIN_FANOUT = 2
MAX_FANOUT = 1024
MAX_SEGMENTS = 1 << 20

_SEGMENT_PERSON = b"dynd-segment"
_LEAF_PERSON = b"dynd-leaf"
_CHECKSUM_PERSON = b"dynd-tree-file"

# Persistence format: header, leaf hashes (little-endian u64), blake2b checksum
# of everything before it. Upper levels are derived from the leaves on load.
_MAGIC = b"DYMT"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBHB")  # magic, format version, fanout, depth


class MerkleError(ValueError):
    """Bad tree shape, bad index, corrupt persisted tree or malformed remote answer."""


def _hash64(data: bytes, person: bytes) -> int:
    digest = hashlib.blake2b(data, digest_size=HASH_BYTES, person=person).digest()
    return int.from_bytes(digest, "big")


def key_segment(key_id: bytes, segments: int) -> int:
    """The segment ``key_id`` always falls in, in ``range(segments)``.

    Uses its own blake2b personalization so segments are independent of the
    ring hash that chose the partition (all keys of a partition share those bits).
    """
    if segments < 1:
        raise MerkleError(f"segments must be >= 1, got {segments}")
    return _hash64(key_id, _SEGMENT_PERSON) % segments


def leaf_hash(key_id: bytes, version_digest: bytes) -> int:
    """The 64-bit hash one key contributes to its segment.

    It binds the key to its version so that the same version under another key,
    or two keys swapping versions, still changes the segment hash. The key is
    length-prefixed so (key, digest) pairs cannot alias by shifting bytes.
    """
    prefix = len(key_id).to_bytes(4, "big")
    return _hash64(prefix + key_id + version_digest, _LEAF_PERSON)


def _depth_of(segments: int, fanout: int) -> int:
    if not MIN_FANOUT <= fanout <= MAX_FANOUT:
        raise MerkleError(f"fanout must be in [{MIN_FANOUT}, {MAX_FANOUT}], got {fanout}")
    if not fanout <= segments <= MAX_SEGMENTS:
        raise MerkleError(f"segments must be in [fanout, {MAX_SEGMENTS}], got {segments}")
    depth, width = 0, 1
    while width < segments:
        width *= fanout
        depth += 1
    if width != segments:
        raise MerkleError(f"segments ({segments}) must be a power of fanout ({fanout})")
    return depth


def _to_wire(value: int) -> bytes:
    return value.to_bytes(HASH_BYTES, "big")


class PartitionTree:
    """An incrementally maintained hash tree over the keys of one partition.

    Level 0 is the root (one node); level ``depth`` holds the ``segments``
    leaves; node ``i`` of level ``l`` has children ``i*fanout .. i*fanout+fanout-1``.
    """

    def __init__(self, segments: int = 1024, fanout: int = 32) -> None:
        self._depth = _depth_of(segments, fanout)
        self._fanout = fanout
        self._levels = [array("Q", bytes(HASH_BYTES * fanout**level))
                        for level in range(self._depth + 1)]

    @classmethod
    def build(cls, items: Iterable[tuple[bytes, bytes]], segments: int = 1024,
              fanout: int = 32) -> PartitionTree:
        """A tree from scratch over ``(key_id, version_digest)`` pairs (one per key).

        For a partition scan after the persisted tree was lost or distrusted.
        """
        tree = cls(segments, fanout)
        leaves = tree._levels[-1]
        for key_id, version_digest in items:
            leaves[key_segment(key_id, segments)] ^= leaf_hash(key_id, version_digest)
        tree._derive_upper_levels()
        return tree

    @property
    def segments(self) -> int:
        return len(self._levels[-1])

    @property
    def fanout(self) -> int:
        return self._fanout

    @property
    def depth(self) -> int:
        """Levels below the root: ``segments == fanout ** depth``."""
        return self._depth

    @property
    def levels(self) -> int:
        """Number of levels, root and leaves included: ``depth + 1``."""
        return self._depth + 1

    def update(self, key_id: bytes, old_digest: bytes | None, new_digest: bytes | None) -> None:
        """Fold one write into the tree: ``None`` means absent (before) or reaped (after)."""
        if old_digest == new_digest:
            return
        delta = 0
        if old_digest is not None:
            delta ^= leaf_hash(key_id, old_digest)
        if new_digest is not None:
            delta ^= leaf_hash(key_id, new_digest)
        index = key_segment(key_id, self.segments)
        fanout = self._fanout
        for level in reversed(self._levels):
            level[index] ^= delta
            index //= fanout

    def root(self) -> bytes:
        return _to_wire(self._levels[0][0])

    def hashes(self, level: int, indices: Sequence[int]) -> list[bytes]:
        """Node hashes of ``level`` at ``indices`` (level 0 = root, ``depth`` = segments).

        Serves a peer's request, so every index is checked.
        """
        nodes = self._level(level)
        for index in indices:
            if not isinstance(index, int) or not 0 <= index < len(nodes):
                raise MerkleError(f"index {index!r} out of range for level {level}")
        return [_to_wire(nodes[index]) for index in indices]

    def children(self, level: int, index: int) -> range:
        """Indices at ``level + 1`` of the children of node ``index`` of ``level``."""
        if level == self._depth:
            raise MerkleError(f"level {level} holds the segments; they have no children")
        nodes = self._level(level)
        if not 0 <= index < len(nodes):
            raise MerkleError(f"index {index} out of range for level {level}")
        first = index * self._fanout
        return range(first, first + self._fanout)

    def clear(self) -> None:
        """Forget every key: the tree of an empty partition."""
        for nodes in self._levels:
            nodes[:] = array("Q", bytes(HASH_BYTES * len(nodes)))

    def to_bytes(self) -> bytes:
        """Persistent form: header, the leaves, and a checksum ``from_bytes`` verifies."""
        leaves = self._levels[-1]
        body = _HEADER.pack(_MAGIC, _FORMAT_VERSION, self._fanout, self._depth)
        body += struct.pack(f"<{len(leaves)}Q", *leaves)
        return body + _checksum(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionTree:
        """Load a tree written by :meth:`to_bytes`; anything corrupt raises MerkleError."""
        if len(data) < _HEADER.size + HASH_BYTES:
            raise MerkleError(f"persisted tree too short ({len(data)} bytes)")
        magic, version, fanout, depth = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise MerkleError(f"not a persisted tree (magic {magic!r})")
        if version != _FORMAT_VERSION:
            raise MerkleError(f"unsupported tree format version {version}")
        if depth < 1 or not MIN_FANOUT <= fanout <= MAX_FANOUT or fanout**depth > MAX_SEGMENTS:
            raise MerkleError(f"invalid tree shape: fanout {fanout}, depth {depth}")
        segments = fanout**depth
        expected = _HEADER.size + segments * HASH_BYTES + HASH_BYTES
        if len(data) != expected:
            raise MerkleError(f"persisted tree is {len(data)} bytes, expected {expected}")
        body, checksum = data[:-HASH_BYTES], data[-HASH_BYTES:]
        if _checksum(body) != checksum:
            raise MerkleError("persisted tree checksum mismatch")
        tree = cls(segments, fanout)
        tree._levels[-1] = array("Q", struct.unpack_from(f"<{segments}Q", body, _HEADER.size))
        tree._derive_upper_levels()
        return tree

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionTree):
            return NotImplemented
        return self._fanout == other._fanout and self._levels[-1] == other._levels[-1]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"PartitionTree(segments={self.segments}, fanout={self._fanout}, "
                f"root={self.root().hex()})")

    def _level(self, level: int) -> array:
        if not isinstance(level, int) or not 0 <= level <= self._depth:
            raise MerkleError(f"level {level!r} out of range [0, {self._depth}]")
        return self._levels[level]

    def _derive_upper_levels(self) -> None:
        fanout = self._fanout
        for level in range(self._depth - 1, -1, -1):
            below = self._levels[level + 1]
            nodes = self._levels[level]
            for index in range(len(nodes)):
                folded = 0
                for child in below[index * fanout:(index + 1) * fanout]:
                    folded ^= child
                nodes[index] = folded


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=HASH_BYTES, person=_CHECKSUM_PERSON).digest()


class TreeComparison:
    """Sans-IO top-down comparison of a local tree with a remote one.

    The caller loops: ``next_request()`` gives ``(level, indices)`` to ask the
    remote for, ``receive()`` takes the remote's hashes for exactly those
    indices. Requests are batched per level (all children of every differing
    parent at once), so an exchange takes at most ``depth + 1`` rounds, and 1
    when the roots agree. With k differing segments, at most
    ``1 + k * fanout * depth`` hashes are exchanged.

    The local tree is read at each round; writes landing mid-exchange can add
    or hide a segment, which the next exchange settles.
    """

    def __init__(self, local: PartitionTree) -> None:
        self._local = local
        self._level = 0
        self._pending: list[int] | None = [0]
        self._differing: list[int] = []
        self.rounds = 0
        self.hashes_exchanged = 0

    def next_request(self) -> tuple[int, list[int]] | None:
        """The pending request (the same one until answered), or None when done."""
        if self._pending is None:
            return None
        return self._level, list(self._pending)

    def receive(self, hashes: Sequence[bytes]) -> None:
        """Take the remote's hashes for the last request; malformed answers raise MerkleError."""
        if self._pending is None:
            raise MerkleError("comparison is finished; no request is pending")
        if len(hashes) != len(self._pending):
            raise MerkleError(f"expected {len(self._pending)} hashes, got {len(hashes)}")
        for remote_hash in hashes:
            if not isinstance(remote_hash, bytes) or len(remote_hash) != HASH_BYTES:
                raise MerkleError(f"a remote hash must be {HASH_BYTES} bytes: {remote_hash!r:.40}")
        local = self._local.hashes(self._level, self._pending)
        differing = [index for index, mine, theirs in zip(self._pending, local, hashes, strict=True)
                     if mine != theirs]
        self.rounds += 1
        self.hashes_exchanged += len(hashes)
        if self._level == self._local.depth:
            self._differing = differing
            self._pending = None
        elif not differing:
            self._pending = None
        else:
            children = self._local.children
            self._pending = [child for parent in differing
                             for child in children(self._level, parent)]
            self._level += 1

    @property
    def done(self) -> bool:
        return self._pending is None

    @property
    def differing_segments(self) -> list[int]:
        """Segments whose hashes differ, ascending; empty until the leaf level is compared."""
        return list(self._differing)


def compare(local: PartitionTree,
            fetch_remote: Callable[[int, list[int]], Sequence[bytes]]) -> list[int]:
    """Drive a :class:`TreeComparison` synchronously; returns the differing segments."""
    comparison = TreeComparison(local)
    while (request := comparison.next_request()) is not None:
        comparison.receive(fetch_remote(*request))
    return comparison.differing_segments


def diff_keys(local: Mapping[bytes, bytes],
              remote: Mapping[bytes, bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Reconcile one segment: ``key_id -> version digest`` on each side.

    Returns sorted ``(only_local, only_remote, different)``; keys with equal
    digests on both sides need no repair and appear in none of them.
    """
    only_local = sorted(key for key in local if key not in remote)
    only_remote = sorted(key for key in remote if key not in local)
    different = sorted(key for key, digest in local.items()
                       if key in remote and remote[key] != digest)
    return only_local, only_remote, different
