"""Tests of dynd.merkle: incremental tictac-style trees and their comparison."""

from __future__ import annotations

import hashlib
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.merkle import (
    HASH_BYTES,
    MAX_SEGMENTS,
    MerkleError,
    PartitionTree,
    TreeComparison,
    compare,
    diff_keys,
    key_segment,
    leaf_hash,
)

SMALL = {"segments": 64, "fanout": 4}  # depth 3: segments are shared by many keys

keys = st.binary(min_size=1, max_size=12)
digests = st.binary(min_size=1, max_size=8)
key_sets = st.dictionaries(keys, digests, max_size=40)


def remote_of(tree: PartitionTree):
    """A fetch_remote over an in-memory tree, as the remote node would answer."""
    return tree.hashes


def apply_state(tree: PartitionTree, before: dict[bytes, bytes], after: dict[bytes, bytes]) -> None:
    """Update ``tree`` from the key set ``before`` to ``after``."""
    for key in before.keys() | after.keys():
        tree.update(key, before.get(key), after.get(key))


def test_errors_are_value_errors() -> None:
    assert issubclass(MerkleError, ValueError)


# -- hashing ------------------------------------------------------------------


def test_key_segment_is_stable_and_in_range() -> None:
    assert key_segment(b"k", 1024) == key_segment(b"k", 1024)
    assert {key_segment(bytes([i]), 16) for i in range(256)} == set(range(16))
    with pytest.raises(ValueError):
        key_segment(b"k", 0)


def test_leaf_hash_binds_key_and_version() -> None:
    assert leaf_hash(b"k", b"v1") != leaf_hash(b"k", b"v2")
    assert leaf_hash(b"k1", b"v") != leaf_hash(b"k2", b"v")
    # length prefix: moving bytes between key and digest changes the hash
    assert leaf_hash(b"ab", b"c") != leaf_hash(b"a", b"bc")
    assert 0 <= leaf_hash(b"k", b"v") < 2 ** (8 * HASH_BYTES)


# -- shape --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "fanout", "depth"),
    [(1024, 32, 2), (64, 4, 3), (2, 2, 1), (1000, 10, 3), (MAX_SEGMENTS, 1024, 2)],
)
def test_shape(segments: int, fanout: int, depth: int) -> None:
    tree = PartitionTree(segments, fanout)
    assert (tree.segments, tree.fanout, tree.depth, tree.levels) == (
        segments, fanout, depth, depth + 1)
    assert len(tree.hashes(depth, range(segments))) == segments
    assert tree.children(0, 0) == range(fanout)
    assert tree.children(depth - 1, fanout ** (depth - 1) - 1) == range(segments - fanout, segments)


@pytest.mark.parametrize(
    ("segments", "fanout"),
    [(1000, 32), (1, 2), (32, 1), (0, 32), (2048, 2048), (MAX_SEGMENTS * 2, 2), (8, 16)],
)
def test_invalid_shape_rejected(segments: int, fanout: int) -> None:
    with pytest.raises(ValueError):
        PartitionTree(segments, fanout)


def test_bad_levels_and_indices_rejected() -> None:
    tree = PartitionTree(**SMALL)
    for level, indices in [(-1, [0]), (4, [0]), (0, [1]), (3, [64]), (1, [-1]), (2, ["0"])]:
        with pytest.raises(ValueError):
            tree.hashes(level, indices)
    for level, index in [(3, 0), (0, 1), (4, 0), (2, 16)]:
        with pytest.raises(ValueError):
            tree.children(level, index)


# -- incremental updates ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(st.tuples(keys, st.none() | digests), max_size=60),
    data=st.data(),
)
def test_incremental_updates_equal_a_fresh_build(history, data) -> None:
    """Any sequence of writes and reaps ends in the tree a scan of the final keys builds."""
    tree = PartitionTree(**SMALL)
    state: dict[bytes, bytes] = {}
    for key, digest in history:
        tree.update(key, state.get(key), digest)
        if digest is None:
            state.pop(key, None)
        else:
            state[key] = digest
    built = PartitionTree.build(state.items(), **SMALL)
    assert tree == built
    assert tree.root() == built.root()
    for level in range(tree.levels):
        indices = list(range(tree.fanout**level))
        assert tree.hashes(level, indices) == built.hashes(level, indices)
    # insertion order does not matter either
    order = data.draw(st.permutations(list(state.items())))
    reordered = PartitionTree(**SMALL)
    for key, digest in order:
        reordered.update(key, None, digest)
    assert reordered == built


@settings(max_examples=40, deadline=None)
@given(state=key_sets.filter(bool))
def test_insert_then_remove_returns_to_the_empty_root(state) -> None:
    tree = PartitionTree(**SMALL)
    apply_state(tree, {}, state)
    assert tree.root() != bytes(HASH_BYTES)
    apply_state(tree, state, {})
    assert tree.root() == bytes(HASH_BYTES)
    assert tree == PartitionTree(**SMALL)


def test_update_with_equal_versions_is_a_no_op() -> None:
    tree = PartitionTree(**SMALL)
    tree.update(b"k", b"v", b"v")
    tree.update(b"k", None, None)
    assert tree == PartitionTree(**SMALL)


def test_upper_levels_are_xor_of_children() -> None:
    tree = PartitionTree(**SMALL)
    for i in range(200):
        tree.update(b"key%d" % i, None, b"v%d" % i)
    for level in range(tree.depth):
        for index in range(tree.fanout**level):
            folded = 0
            for child in tree.hashes(level + 1, tree.children(level, index)):
                folded ^= int.from_bytes(child, "big")
            assert tree.hashes(level, [index]) == [folded.to_bytes(HASH_BYTES, "big")]


def test_clear_empties_the_tree() -> None:
    tree = PartitionTree(**SMALL)
    tree.update(b"k", None, b"v")
    tree.clear()
    assert tree == PartitionTree(**SMALL)
    assert tree.root() == bytes(HASH_BYTES)


# -- comparison ---------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(state=key_sets)
def test_identical_trees_need_one_round(state) -> None:
    local = PartitionTree.build(state.items())
    remote = PartitionTree.build(state.items())
    comparison = TreeComparison(local)
    assert comparison.next_request() == (0, [0])
    comparison.receive(remote.hashes(0, [0]))
    assert comparison.done and comparison.next_request() is None
    assert comparison.differing_segments == []
    assert (comparison.rounds, comparison.hashes_exchanged) == (1, 1)


@st.composite
def diverged_replicas(draw):
    """Two key sets sharing a base, each with its own writes and removals."""
    base = draw(key_sets)

    def diverge():
        changed = draw(st.dictionaries(keys, st.none() | digests, max_size=15))
        result = dict(base)
        for key, digest in changed.items():
            if digest is None:
                result.pop(key, None)
            else:
                result[key] = digest
        return result

    return diverge(), diverge()


@pytest.mark.parametrize("shape", [SMALL, {"segments": 1024, "fanout": 32}])
@settings(max_examples=60, deadline=None)
@given(replicas=diverged_replicas())
def test_compare_finds_exactly_the_differing_segments(shape, replicas) -> None:
    local_state, remote_state = replicas
    local = PartitionTree.build(local_state.items(), **shape)
    remote = PartitionTree.build(remote_state.items(), **shape)
    differing_keys = {key for key in local_state.keys() | remote_state.keys()
                      if local_state.get(key) != remote_state.get(key)}
    expected = sorted({key_segment(key, local.segments) for key in differing_keys})

    comparison = TreeComparison(local)
    while (request := comparison.next_request()) is not None:
        comparison.receive(remote.hashes(*request))
    assert comparison.differing_segments == expected
    assert comparison.rounds == (1 if not expected else local.depth + 1)
    k = len(expected)
    assert comparison.hashes_exchanged <= 1 + k * local.fanout * local.depth
    # the synchronous driver agrees, and the comparison is symmetric
    assert compare(local, remote_of(remote)) == expected
    assert compare(remote, remote_of(local)) == expected


def test_cost_of_one_differing_segment() -> None:
    local = PartitionTree(1024, 32)
    remote = PartitionTree(1024, 32)
    remote.update(b"only-remote", None, b"v")
    comparison = TreeComparison(local)
    while (request := comparison.next_request()) is not None:
        comparison.receive(remote.hashes(*request))
    assert comparison.differing_segments == [key_segment(b"only-remote", 1024)]
    assert comparison.rounds == 3
    assert comparison.hashes_exchanged == 1 + 32 + 32


def test_many_differing_segments_still_take_depth_plus_one_rounds() -> None:
    local = PartitionTree(1024, 32)
    remote_keys = [b"k%d" % i for i in range(5000)]
    remote = PartitionTree.build(((key, b"v") for key in remote_keys), 1024, 32)
    comparison = TreeComparison(local)
    requests = []
    while (request := comparison.next_request()) is not None:
        requests.append(request)
        comparison.receive(remote.hashes(*request))
    assert [level for level, _ in requests] == [0, 1, 2]
    occupied = sorted({key_segment(key, 1024) for key in remote_keys})
    assert len(occupied) > 1000
    assert comparison.differing_segments == occupied
    assert comparison.hashes_exchanged == 1 + 32 + 1024


def test_next_request_repeats_until_answered() -> None:
    comparison = TreeComparison(PartitionTree(**SMALL))
    assert comparison.next_request() == comparison.next_request() == (0, [0])
    assert comparison.rounds == 0


@pytest.mark.parametrize(
    "answer",
    [[], [bytes(HASH_BYTES)] * 2, [bytes(HASH_BYTES - 1)], [bytes(HASH_BYTES + 1)],
     ["0" * HASH_BYTES], [None], [0]],
)
def test_malformed_remote_answers_rejected(answer) -> None:
    comparison = TreeComparison(PartitionTree(**SMALL))
    with pytest.raises(MerkleError):
        comparison.receive(answer)
    assert comparison.rounds == 0 and comparison.next_request() == (0, [0])


@pytest.mark.parametrize(
    "bad_answer",
    [lambda indices: [bytes(HASH_BYTES)] * (len(indices) - 1),
     lambda indices: [bytes(HASH_BYTES + 1)] * len(indices)],
)
def test_malformed_answer_at_a_lower_level_rejected(bad_answer) -> None:
    local = PartitionTree(**SMALL)
    local.update(b"k", None, b"v")

    def fetch(level: int, indices: list[int]) -> list[bytes]:
        return [bytes(HASH_BYTES)] if level == 0 else bad_answer(indices)

    with pytest.raises(MerkleError):
        compare(local, fetch)


def test_receive_after_done_rejected() -> None:
    comparison = TreeComparison(PartitionTree(**SMALL))
    comparison.receive([bytes(HASH_BYTES)])
    assert comparison.done
    with pytest.raises(ValueError):
        comparison.receive([bytes(HASH_BYTES)])


# -- diff_keys ----------------------------------------------------------------


def test_diff_keys_table() -> None:
    local = {b"a": b"1", b"b": b"2", b"c": b"3"}
    remote = {b"b": b"2", b"c": b"X", b"d": b"4"}
    assert diff_keys(local, remote) == ([b"a"], [b"d"], [b"c"])
    assert diff_keys({}, {}) == ([], [], [])


@settings(max_examples=100, deadline=None)
@given(local=key_sets, remote=key_sets)
def test_diff_keys_is_exact(local, remote) -> None:
    only_local, only_remote, different = diff_keys(local, remote)
    assert set(only_local) == local.keys() - remote.keys()
    assert set(only_remote) == remote.keys() - local.keys()
    assert set(different) == {k for k in local.keys() & remote.keys() if local[k] != remote[k]}
    assert only_local == sorted(only_local) and different == sorted(different)
    # swapping sides swaps the answer
    assert diff_keys(remote, local) == (only_remote, only_local, different)


# -- persistence --------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(state=key_sets)
def test_round_trip(state) -> None:
    tree = PartitionTree.build(state.items(), **SMALL)
    loaded = PartitionTree.from_bytes(tree.to_bytes())
    assert loaded == tree
    assert loaded.root() == tree.root()
    assert loaded.hashes(1, range(4)) == tree.hashes(1, range(4))
    # a loaded tree keeps taking incremental updates
    loaded.update(b"new", None, b"v")
    tree.update(b"new", None, b"v")
    assert loaded == tree


def _reseal(body: bytes) -> bytes:
    """A well-checksummed file around an arbitrary body (to reach the shape checks)."""
    checksum = hashlib.blake2b(body, digest_size=HASH_BYTES, person=b"dynd-tree-file").digest()
    return body + checksum


def test_corrupt_persisted_trees_rejected() -> None:
    tree = PartitionTree(**SMALL)
    tree.update(b"k", None, b"v")
    good = tree.to_bytes()
    header = struct.Struct("<4sBHB")
    leaves = good[header.size:-HASH_BYTES]
    corrupt = [
        b"",
        good[:10],
        good[:-1],
        good + b"\0",
        b"XXXX" + good[4:],
        _reseal(header.pack(b"DYMT", 2, 4, 3) + leaves),  # unknown version
        _reseal(header.pack(b"DYMT", 1, 1, 3) + leaves),  # fanout too small
        _reseal(header.pack(b"DYMT", 1, 4, 0) + leaves),  # depth 0
        _reseal(header.pack(b"DYMT", 1, 4, 2) + leaves),  # shape disagrees with length
        _reseal(header.pack(b"DYMT", 1, 1024, 3) + leaves),  # over MAX_SEGMENTS
    ]
    corrupt += [good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:] for i in range(len(good))]
    for data in corrupt:
        with pytest.raises(ValueError):
            PartitionTree.from_bytes(data)


# -- cost ---------------------------------------------------------------------


@pytest.mark.slow
def test_update_cost(capsys) -> None:
    tree = PartitionTree()
    keys_ = [b"bucket/key-%d" % i for i in range(20000)]
    start = time.perf_counter()
    for key in keys_:
        tree.update(key, b"old-version-digest", b"new-version-digest")
    per_update = (time.perf_counter() - start) / len(keys_)
    with capsys.disabled():
        print(f"\nPartitionTree.update: {per_update * 1e6:.2f} us")
    assert per_update < 50e-6
