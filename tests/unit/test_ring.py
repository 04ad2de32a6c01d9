"""Ring: key hashing, partitions, primaries and sloppy preference lists."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.ring import Ring, Target, check_ring_size, key_hash, partition_of
from dynd.claim import Claimant, claim


def claimed_ring(ring_size: int, nodes: list[str], n: int = 3, zones=None) -> Ring:
    members = [Claimant(node, zone=(zones or {}).get(node, "default")) for node in nodes]
    return Ring(ring_size, claim(ring_size, members, None, n))


@pytest.mark.parametrize("q", [8, 16, 64, 1024, 65536])
def test_check_ring_size_accepts_powers_of_two_in_range(q):
    check_ring_size(q)


@pytest.mark.parametrize("q", [0, 1, 4, 12, 100, 131072, -8, 8.0, "64", True])
def test_check_ring_size_rejects_others(q):
    with pytest.raises(ValueError):
        check_ring_size(q)


def test_key_hash_is_64_bit_and_stable():
    first = key_hash("users", b"alice")
    assert first == key_hash("users", b"alice")
    assert 0 <= first < 2**64
    assert first != key_hash("users", b"bob")
    assert key_hash("users", bytearray(b"alice")) == first


def test_key_hash_length_prefixes_the_bucket():
    assert key_hash("ab", b"c") != key_hash("a", b"bc")
    assert key_hash("", b"abc") != key_hash("a", b"bc")


@pytest.mark.parametrize("bucket, key", [(b"users", b"k"), ("users", "k"), (None, b"k")])
def test_key_hash_rejects_wrong_types(bucket, key):
    with pytest.raises(ValueError):
        key_hash(bucket, key)


@given(bucket=st.text(max_size=20), key=st.binary(max_size=64),
       bits=st.integers(min_value=3, max_value=16))
def test_partition_is_the_top_bits_of_the_hash(bucket, key, bits):
    ring_size = 1 << bits
    partition = partition_of(bucket, key, ring_size)
    assert 0 <= partition < ring_size
    assert partition == key_hash(bucket, key) >> (64 - bits)


def test_partitions_are_uniform():
    ring_size = 64
    counts = Counter(partition_of("b", f"key-{i}".encode(), ring_size) for i in range(64_000))
    assert len(counts) == ring_size
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000


def test_partition_of_checks_the_ring_size():
    with pytest.raises(ValueError):
        partition_of("b", b"k", 48)


@pytest.mark.parametrize(
    "ring_size, owners",
    [(8, ("a",) * 7), (8, ("a",) * 7 + ("",)), (8, ("a",) * 7 + (None,)), (6, ("a",) * 6)],
)
def test_ring_rejects_bad_owners(ring_size, owners):
    with pytest.raises(ValueError):
        Ring(ring_size, owners)


def test_ring_is_hashable_and_takes_a_list():
    ring = Ring(8, ["a", "b"] * 4)
    assert ring.owners == ("a", "b") * 4
    assert hash(ring) == hash(Ring(8, ("a", "b") * 4))


def test_primaries_walk_distinct_owners_and_wrap():
    ring = Ring(8, ("a", "b", "a", "c", "d", "d", "e", "f"))
    assert ring.primaries(0, 3) == ["a", "b", "c"]
    assert ring.primaries(4, 3) == ["d", "e", "f"]
    assert ring.primaries(7, 3) == ["f", "a", "b"]
    assert ring.primaries(5, 1) == ["d"]


def test_primaries_are_fewer_when_the_ring_has_fewer_nodes():
    ring = Ring(8, ("a", "b") * 4)
    assert ring.primaries(1, 3) == ["b", "a"]


@pytest.mark.parametrize("partition, n", [(-1, 3), (8, 3), (0, 0), (0, -1), ("0", 3)])
def test_primaries_reject_bad_arguments(partition, n):
    with pytest.raises(ValueError):
        Ring(8, ("a",) * 8).primaries(partition, n)


def test_zone_aware_walk_spreads_zones_where_the_ring_cannot():
    # Zones A A B C: the plain walk from 0 repeats zone A, the zone-aware one skips.
    ring = Ring(8, ("a1", "a2", "b1", "c1") * 2)
    zones = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    assert ring.primaries(0, 3) == ["a1", "a2", "b1"]
    assert ring.primaries(0, 3, zones) == ["a1", "b1", "c1"]
    # With fewer zones than n, zones are covered first and the rest filled in order.
    two_zones = {"a1": "A", "a2": "A", "b1": "A", "c1": "C"}
    assert ring.primaries(0, 3, two_zones) == ["a1", "a2", "c1"]


def test_every_preference_list_spans_three_zones_with_three_zones_of_three():
    nodes = [f"{zone}{i}" for zone in "xyz" for i in range(3)]
    zones = {node: node[0] for node in nodes}
    ring = claimed_ring(64, nodes, 3, zones)
    plain_differs = 0
    for partition in range(64):
        targets = ring.preference_list(partition, 3, nodes, zones)
        assert [t.role for t in targets] == ["primary"] * 3
        assert {zones[t.node] for t in targets} == {"x", "y", "z"}
        plain_differs += targets != ring.preference_list(partition, 3, nodes)
    # 3 zones cannot stripe a power-of-two ring: only the seam needs the zone-aware walk.
    assert plain_differs <= 4


def test_preference_list_all_up_is_the_primaries():
    ring = claimed_ring(64, [f"n{i}" for i in range(5)])
    for partition in range(64):
        expected = [Target(node, node, "primary") for node in ring.primaries(partition, 3)]
        assert ring.preference_list(partition, 3, set(ring.owners)) == expected


def test_preference_list_replaces_a_down_primary_with_a_fallback():
    nodes = [f"n{i}" for i in range(5)]
    ring = claimed_ring(64, nodes)
    primaries = ring.primaries(10, 3)
    down = primaries[1]
    targets = ring.preference_list(10, 3, set(nodes) - {down})
    assert [t.role for t in targets] == ["primary", "primary", "fallback"]
    assert [t.node for t in targets[:2]] == [primaries[0], primaries[2]]
    fallback = targets[2]
    assert fallback.primary == down and fallback.node not in primaries


RING_OF_8 = claimed_ring(64, [f"n{i}" for i in range(8)])


@settings(max_examples=60, deadline=None)
@given(down=st.sets(st.integers(min_value=0, max_value=7)),
       extra_up=st.booleans(), partition=st.integers(min_value=0, max_value=63),
       n=st.integers(min_value=1, max_value=5))
def test_preference_list_shape(down, extra_up, partition, n):
    nodes = [f"n{i}" for i in range(8)]
    ring = RING_OF_8
    up = {node for i, node in enumerate(nodes) if i not in down}
    if extra_up:
        up.add("spare")  # up but owning nothing: may serve as a fallback only
    targets = ring.preference_list(partition, n, up)
    chosen = [t.node for t in targets]
    assert len(chosen) == len(set(chosen)) == min(n, 8, len(up))
    assert set(chosen) <= up
    primaries = ring.primaries(partition, n)
    roles = [t.role for t in targets]
    assert roles == sorted(roles, key=lambda role: role != "primary")  # primaries first
    for target in targets:
        if target.role == "primary":
            assert target.node == target.primary and target.node in primaries
        else:
            assert target.primary in primaries and target.primary not in up
    assert targets == ring.preference_list(partition, n, sorted(up))  # deterministic


@pytest.mark.parametrize("down", [f"n{i}" for i in range(8)])
def test_fallbacks_spread_over_all_survivors(down):
    nodes = [f"n{i}" for i in range(8)]
    up = set(nodes) - {down}
    taken = Counter(
        target.node
        for partition in range(64)
        for target in RING_OF_8.preference_list(partition, 3, up)
        if target.primary == down and target.role == "fallback"
    )
    slots = sum(down in RING_OF_8.primaries(p, 3) for p in range(64))
    assert sum(taken.values()) == slots == 24
    fair = slots / len(up)
    assert max(taken.values()) <= 1.5 * fair
    assert len(taken) == len(up)


def test_fallback_prefers_a_zone_not_on_the_list():
    nodes = [f"{zone}{i}" for zone in "xyz" for i in range(3)]
    zones = {node: node[0] for node in nodes}
    ring = claimed_ring(64, nodes, 3, zones)
    for partition in range(64):
        down = ring.primaries(partition, 3, zones)[0]
        targets = ring.preference_list(partition, 3, set(nodes) - {down}, zones)
        assert {zones[t.node] for t in targets} == {"x", "y", "z"}
        assert targets[-1].primary == down and zones[targets[-1].node] == zones[down]


def test_counts_and_balance():
    ring = Ring(8, ("a", "b", "a", "c", "a", "b", "a", "c"))
    assert ring.counts() == {"a": 4, "b": 2, "c": 2}
    assert ring.balance() == pytest.approx(4 / (8 / 3))
    assert Ring(8, ("a", "b") * 4).balance() == 1.0
