"""Frame codec: round trips over any chunking, and hostile bytes that must only ever
raise ProtocolError without the decoder holding more than one frame's worth of data."""

from __future__ import annotations

import itertools
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import FrameDecoder, decode_body, encode_frame
from common.errors import ProtocolError
from common.limits import Limits

LIMIT = Limits().max_frame_bytes


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def depth(value: object) -> int:
    """Container levels of a decoded value, counted as FrameDecoder's max_nesting does."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[dict]:
    """Feed ``data`` split at ``cuts``, draining after each chunk as a connection would."""
    messages = []
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        decoder.receive_data(data[start:end])
        while (msg := decoder.next_message()) is not None:
            messages.append(msg)
    return messages


scalars = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=16)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
wire_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63), inner, max_size=4),
    max_leaves=12,
)
wire_maps = st.dictionaries(st.text(max_size=10), wire_values, max_size=6)


# --- encode_frame -------------------------------------------------------------------------


def test_encode_frame_is_length_prefix_then_cbor_body() -> None:
    msg = {"v": 1, "id": 7, "op": "ping"}
    body = cbor2.dumps(msg)
    assert encode_frame(msg) == len(body).to_bytes(4, "big") + body


def test_encode_frame_refuses_a_body_over_the_given_limit() -> None:
    msg = {"value": b"x" * 100}
    size = len(cbor2.dumps(msg))
    assert encode_frame(msg, max_frame_bytes=size)
    with pytest.raises(ProtocolError, match=f"frame of {size} bytes exceeds limit {size - 1}"):
        encode_frame(msg, max_frame_bytes=size - 1)


def test_encode_frame_turns_unencodable_values_into_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode_frame({"x": object()})


# --- decode_body: what the validator accepts and refuses ----------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"\xa0", {}),
        (b"\xa1\x61a\xf9\x3c\x00", {"a": 1.0}),  # half float
        (b"\xa1\x61a\xfa\x3f\xc0\x00\x00", {"a": 1.5}),  # single float
        (b"\xa1\x61a\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00", {"a": 1.5}),  # double float
        (b"\xa3\x61a\xf4\x61b\xf5\x61c\xf6", {"a": False, "b": True, "c": None}),
        (b"\xa1\x61a\x1b" + b"\xff" * 8, {"a": 2**64 - 1}),
        (b"\xa1\x61a\x3b" + b"\xff" * 8, {"a": -(2**64)}),
        (b"\xa1\x01\x42hi", {1: b"hi"}),  # int keys are allowed
        (b"\xa1\x20\x80", {-1: []}),
        (b"\xa1\x61a\x82\xa0\x80", {"a": [{}, []]}),
    ],
)
def test_decode_body_accepts_the_protocol_subset(body: bytes, expected: dict) -> None:
    assert decode_body(body, max_nesting=16) == expected


HOSTILE_BODIES = [
    ("tag 2 bignum", b"\xa1\x61a\xc2\x49" + b"\x01" * 9, "tags are not accepted"),
    ("tag on the top level", b"\xd9\xd9\xf7\xa0", "must be a CBOR map"),
    ("indefinite-length string", b"\xa1\x61a\x5f\x41a\xff", "indefinite-length"),
    ("indefinite-length map", b"\xbf\xff", "indefinite-length"),
    ("array claiming 2**32 items", b"\xa1\x61a\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
     "container of 4294967296 entries exceeds"),
    ("map claiming 2**63 entries", b"\xa1\x61a\xbb\x80" + b"\x00" * 7, "exceeds"),
    ("string claiming 4 GiB", b"\xa1\x61a\x5a\xff\xff\xff\xff", "string of 4294967295 bytes"),
    ("10000-deep arrays", b"\xa1\x61a" + b"\x81" * 9999 + b"\x80", "nesting exceeds limit 16"),
    ("10000-deep maps", b"\xa1\x61a" * 10000 + b"\x01", "nesting exceeds limit 16"),
    ("array at top level", b"\x82\x01\x02", "must be a CBOR map, not a array"),
    ("int at top level", b"\x01", "must be a CBOR map, not a unsigned int"),
    ("text at top level", b"\x62hi", "must be a CBOR map"),
    ("empty body", b"", "empty"),
    ("duplicate map keys", b"\xa2\x61a\x01\x61a\x02", "Duplicate map key"),
    ("undefined", b"\xa1\x61a\xf7", "simple values"),
    ("simple value 16", b"\xa1\x61a\xf0", "simple values"),
    ("one-byte simple value", b"\xa1\x61a\xf8\x20", "simple values"),
    ("stray break", b"\xa1\x61a\xff", "break"),
    ("reserved additional info", b"\xa1\x61a\x1c", "reserved"),
    ("byte string key", b"\xa1\x41a\x01", "map key must be a text string or int"),
    ("float key", b"\xa1\xf9\x3c\x00\x01", "map key"),
    ("array key", b"\xa1\x80\x01", "map key"),
    ("trailing bytes", b"\xa0\x00", "1 trailing bytes"),
    ("truncated string", b"\xa1\x61a\x63ab", "string of 3 bytes exceeds the 2 bytes left"),
    ("truncated map", b"\xa2\x61a\x01", "exceeds"),
    ("truncated argument", b"\xa1\x61a\x1a\x00", "truncated"),
    ("invalid UTF-8", b"\xa1\x61\xff\x01", "invalid CBOR"),
]


@pytest.mark.parametrize("body, match", [(b, m) for _, b, m in HOSTILE_BODIES],
                         ids=[name for name, _, _ in HOSTILE_BODIES])
def test_decode_body_refuses_hostile_input(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_body(body, max_nesting=16)


@pytest.mark.parametrize("max_nesting", [1, 2, 16])
def test_nesting_limit_counts_the_top_level_map(max_nesting: int) -> None:
    def nested(levels: int) -> bytes:  # a map holding levels - 1 arrays, each in the last
        return b"\xa1\x61a" + b"\x81" * (levels - 2) + b"\x80" if levels > 1 else b"\xa0"

    assert depth(decode_body(nested(max_nesting), max_nesting)) == max_nesting
    with pytest.raises(ProtocolError, match=f"nesting exceeds limit {max_nesting}"):
        decode_body(nested(max_nesting + 1), max_nesting)


@settings(max_examples=200, deadline=None)
@given(msg=wire_maps)
def test_decode_body_accepts_what_cbor2_encodes_and_honours_the_exact_depth(msg: dict) -> None:
    body = cbor2.dumps(msg)
    levels = depth(msg)
    assert decode_body(body, max_nesting=levels) == msg
    if levels > 1:
        with pytest.raises(ProtocolError, match="nesting"):
            decode_body(body, max_nesting=levels - 1)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200))
def test_decode_body_on_arbitrary_bytes_returns_a_dict_or_raises_protocol_error(
        body: bytes) -> None:
    try:
        assert isinstance(decode_body(body, max_nesting=8), dict)
    except ProtocolError:
        pass


# --- FrameDecoder ---------------------------------------------------------------------------


def test_oversized_length_prefix_fails_at_once_and_for_good() -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError, match=f"frame of 2147483648 bytes exceeds limit {LIMIT}"):
        decoder.receive_data(b"\x80\x00\x00\x00")
    assert decoder.failed
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError, match="unusable"):
        decoder.next_message()
    with pytest.raises(ProtocolError, match="unusable"):
        decoder.receive_data(frame_of(b"\xa0"))


def test_oversized_length_prefix_split_over_chunks_fails_on_its_fourth_byte() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    for byte in (b"\x00", b"\x00", b"\x00"):
        decoder.receive_data(byte)
        assert decoder.next_message() is None
    with pytest.raises(ProtocolError, match="frame of 101 bytes exceeds limit 100"):
        decoder.receive_data(b"\x65")


def test_zero_length_frame_is_a_framing_error() -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError, match="frame of 0 bytes"):
        decoder.receive_data(b"\x00\x00\x00\x00")
    assert decoder.failed


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    body = cbor2.dumps({"value": b"x" * 90})
    decoder = FrameDecoder(max_frame_bytes=len(body))
    decoder.receive_data(frame_of(body))
    assert decoder.next_message() == {"value": b"x" * 90}
    with pytest.raises(ProtocolError, match="exceeds limit"):
        FrameDecoder(max_frame_bytes=len(body) - 1).receive_data(frame_of(body))


def test_truncated_frame_waits_for_the_rest() -> None:
    frame = encode_frame({"op": "ping"})
    decoder = FrameDecoder(LIMIT)
    decoder.receive_data(frame[:-1])
    assert decoder.next_message() is None
    assert decoder.buffered == len(frame) - 1
    decoder.receive_data(frame[-1:])
    assert decoder.next_message() == {"op": "ping"}
    assert decoder.buffered == 0


def test_bad_body_is_reported_but_the_stream_stays_in_sync() -> None:
    decoder = FrameDecoder(LIMIT)
    decoder.receive_data(frame_of(b"garbage!") + encode_frame({"id": 2}))
    with pytest.raises(ProtocolError):
        decoder.next_message()
    assert not decoder.failed
    assert decoder.next_message() == {"id": 2}


def test_frames_before_an_oversized_prefix_are_still_delivered() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    decoder.receive_data(encode_frame({"id": 1}) + b"\x7f\xff\xff\xff" + b"x" * 50)
    assert decoder.next_message() == {"id": 1}
    with pytest.raises(ProtocolError, match="frame of 2147483647 bytes exceeds limit 100"):
        decoder.next_message()


def test_many_frames_in_one_chunk_are_all_decoded_and_released() -> None:
    frames = [encode_frame({"id": i, "value": b"v" * (i % 50)}) for i in range(20_000)]
    decoder = FrameDecoder(LIMIT)
    decoder.receive_data(b"".join(frames))
    ids = []
    while (msg := decoder.next_message()) is not None:
        ids.append(msg["id"])
    assert ids == list(range(20_000))
    assert decoder.buffered == 0


@pytest.mark.parametrize("max_frame_bytes, max_nesting", [(0, 16), (2**32, 16), (100, 0)])
def test_decoder_refuses_meaningless_limits(max_frame_bytes: int, max_nesting: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes, max_nesting)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(wire_maps, min_size=1, max_size=5),
       cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_round_trip_over_any_chunking(messages: list[dict], cuts: list[int]) -> None:
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder(LIMIT, max_nesting=max(depth(m) for m in messages))
    assert feed_in_chunks(decoder, data, cuts) == messages
    assert decoder.buffered == 0


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 overwrites, 1 inserts, 2 deletes a byte."""
    buffer = bytearray(data)
    for kind, position, byte in edits:
        at = position % (len(buffer) + 1)
        if kind == 0 and at < len(buffer):
            buffer[at] = byte
        elif kind == 1:
            buffer.insert(at, byte)
        elif kind == 2 and at < len(buffer):
            del buffer[at]
    return bytes(buffer)


def _feed_hostile(data: bytes, chunk_sizes: list[int], max_frame_bytes: int) -> None:
    """Feed ``data`` like a server would, tolerating only ProtocolError, and check the
    decoder never holds more than one frame, its prefix and the chunk just received."""
    decoder = FrameDecoder(max_frame_bytes, max_nesting=8)
    sizes = itertools.cycle(chunk_sizes or [max(len(data), 1)])
    position = 0
    while position < len(data):
        chunk = data[position:position + next(sizes)]
        position += len(chunk)
        try:
            decoder.receive_data(chunk)
        except ProtocolError:
            assert decoder.failed
            return
        assert decoder.buffered <= max_frame_bytes + 4 + len(chunk)
        while True:
            try:
                if decoder.next_message() is None:
                    break
            except ProtocolError:
                if decoder.failed:
                    return


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300),
       chunk_sizes=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
       max_frame_bytes=st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_raise_protocol_error(
        data: bytes, chunk_sizes: list[int], max_frame_bytes: int) -> None:
    _feed_hostile(data, chunk_sizes, max_frame_bytes)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(wire_maps, min_size=1, max_size=3),
       edits=st.lists(st.tuples(st.integers(0, 2), st.integers(min_value=0),
                                st.integers(0, 255)), min_size=1, max_size=6),
       chunk_sizes=st.lists(st.integers(min_value=1, max_value=64), max_size=20),
       max_frame_bytes=st.integers(min_value=8, max_value=4096))
def test_mutated_frames_only_raise_protocol_error(
        messages: list[dict], edits: list[tuple[int, int, int]], chunk_sizes: list[int],
        max_frame_bytes: int) -> None:
    data = _mutate(b"".join(frame_of(cbor2.dumps(m)) for m in messages), edits)
    _feed_hostile(data, chunk_sizes, max_frame_bytes)
