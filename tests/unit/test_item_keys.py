"""Storage keys and Merkle key ids of items (bucket, key, sort key; docs/architecture.md):
a plain key keeps the exact bytes it had before sort keys (no migration, same trees on
old and new nodes), and the items of one key sort by their sort key, bytewise."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ProtocolError, Rejected
from common.limits import MAX_SORT_KEY_BYTES, Limits
from common.messages import request, validate_request
from dynd.replica import key_id, split_key_id
from dynd.storage import _decode_data_key, _decode_hint_key, _prefix_end, data_key, hint_key


def _data_key_before_sort_keys(partition: int, bucket: str, key: bytes) -> bytes:
    """storage.data_key as of the release before sort keys (commit 8e8db23), verbatim."""
    raw_bucket = bucket.encode()
    return b"".join((partition.to_bytes(4, "big"), bytes((len(raw_bucket),)), raw_bucket,
                     len(key).to_bytes(2, "big"), key))


def _key_id_before_sort_keys(bucket: str, key: bytes) -> bytes:
    raw = bucket.encode()
    return bytes([len(raw)]) + raw + key


# Edges: empty-ish, all 0x00, all 0xff, mixed, at every length that matters.
EDGE_BYTES = st.one_of(
    st.binary(min_size=1, max_size=8),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(1, 300), st.sampled_from([0, 0xFF])),
    st.lists(st.sampled_from([0, 1, 0xFE, 0xFF]), min_size=1, max_size=6).map(bytes),
)
KEYS = st.one_of(EDGE_BYTES, st.binary(min_size=1, max_size=1024))
SORT_KEYS = st.one_of(EDGE_BYTES, st.binary(min_size=1, max_size=MAX_SORT_KEY_BYTES))
BUCKETS = st.sampled_from(["default", "b", "a" * 64, "bucket-é"])
PARTITIONS = st.sampled_from([0, 1, 255, 2**32 - 1])


@given(PARTITIONS, BUCKETS, KEYS)
def test_plain_keys_keep_the_bytes_written_before_sort_keys(partition: int, bucket: str,
                                                            key: bytes) -> None:
    assert data_key(partition, bucket, key) == _data_key_before_sort_keys(partition, bucket, key)
    assert key_id(bucket, key) == _key_id_before_sort_keys(bucket, key)
    assert _decode_data_key(data_key(partition, bucket, key)) == (partition, bucket, key, None)


def test_a_stored_plain_key_fixture_decodes_unchanged() -> None:
    """Bytes as written to RocksDB by the previous release (partition 7, 'default', 'k')."""
    stored = bytes.fromhex("00000007") + b"\x07default" + struct.pack(">H", 1) + b"k"
    assert data_key(7, "default", b"k") == stored
    assert _decode_data_key(stored) == (7, "default", b"k", None)


@given(PARTITIONS, BUCKETS, KEYS, SORT_KEYS)
def test_items_round_trip(partition: int, bucket: str, key: bytes, sk: bytes) -> None:
    raw = data_key(partition, bucket, key, sk)
    assert raw.startswith(data_key(partition, bucket, key))  # contiguous after the plain key
    assert _decode_data_key(raw) == (partition, bucket, key, sk)
    assert _decode_hint_key(hint_key("n1", partition, bucket, key, sk)) == (
        "n1", partition, bucket, key, sk)
    assert split_key_id(key_id(bucket, key, sk)) == (bucket, key, sk)
    assert split_key_id(key_id(bucket, key)) == (bucket, key, None)
    assert key_id(bucket, key, sk) != key_id(bucket, key + sk)  # never a plain key's id


@settings(max_examples=300)
@given(BUCKETS, KEYS, st.lists(SORT_KEYS, min_size=2, max_size=10))
def test_items_of_one_key_sort_by_sort_key_bytewise_after_the_plain_key(
        bucket: str, key: bytes, sks: list[bytes]) -> None:
    plain = data_key(3, bucket, key)
    encoded = {sk: data_key(3, bucket, key, sk) for sk in sks}
    assert sorted(encoded, key=encoded.__getitem__) == sorted(set(sks))
    end = _prefix_end(plain)
    for raw in encoded.values():
        assert plain < raw and (end is None or raw < end)  # one range: [P, prefix_end(P))


@given(BUCKETS, st.lists(KEYS, min_size=2, max_size=4, unique=True), SORT_KEYS)
def test_items_of_other_keys_stay_outside_a_keys_range(bucket: str, keys: list[bytes],
                                                       sk: bytes) -> None:
    """A key that extends another (b'a' and b'a\\x00') never has items inside its range."""
    first, *others = keys
    low = data_key(3, bucket, first)
    high = _prefix_end(low)
    for other in others:
        for raw in (data_key(3, bucket, other), data_key(3, bucket, other, sk)):
            assert not (low <= raw and (high is None or raw < high))


def test_an_empty_sort_key_is_refused_rather_than_taken_for_the_plain_key() -> None:
    with pytest.raises(ValueError, match="empty"):
        data_key(0, "b", b"k", b"")


def _sk_request(sk: object) -> dict:
    return request("get", 1, bucket="b", key=b"k", sk=sk)


def test_the_wire_sort_key_is_bytes_of_1_to_1024() -> None:
    limits = Limits()
    assert validate_request(_sk_request(b"s" * MAX_SORT_KEY_BYTES), limits).fields["sk"]
    for bad in (b"", b"s" * (MAX_SORT_KEY_BYTES + 1)):
        with pytest.raises(Rejected, match="1..1024"):
            validate_request(_sk_request(bad), limits)
    with pytest.raises(ProtocolError):
        validate_request(_sk_request("text"), limits)
    fetch = request("p_fetch", 1, partition=0, limit=10, after=["b", b"k", b"s"])
    assert validate_request(fetch, limits).fields["after"] == ["b", b"k", b"s"]
    with pytest.raises(Rejected):
        validate_request(request("p_fetch", 1, partition=0, limit=10, after=["b", b"k", b""]),
                         limits)
