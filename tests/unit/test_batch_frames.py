"""Batch frames: messages ready together for one connection, one CBOR array in one frame.

Each message of a batch is held to a lone frame's rules; anything wrong refuses the whole
frame, as a lone frame that is not valid CBOR is, and the stream stays in sync.
"""

from __future__ import annotations

import cbor2
import pytest

from common.codec import (
    MAX_BATCH_MESSAGES,
    FrameDecoder,
    FrameSizes,
    batch_frames,
    decode_batch,
    encode_frame,
)
from common.errors import ProtocolError
from common.messages import request

MAX_FRAME_BYTES = 64 * 1024


def _frames(count: int, value_bytes: int = 8) -> list[bytes]:
    return [encode_frame(request("put", rid, bucket="b", key=b"k%d" % rid,
                                 value=b"v" * value_bytes)) for rid in range(1, count + 1)]


def _decode_all(wire: bytes, sizes: FrameSizes | None = None) -> list[dict]:
    decoder = FrameDecoder(MAX_FRAME_BYTES, 16, sizes)
    decoder.receive_data(wire)
    messages = []
    while (message := decoder.next_message()) is not None:
        messages.append(message)
    assert not decoder.pending
    return messages


def _batch_frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("count", [2, 23, 24, MAX_BATCH_MESSAGES])  # both array headers
def test_a_batch_decodes_to_its_messages_in_order(count: int) -> None:
    frames = _frames(count)
    wire = batch_frames(frames, MAX_FRAME_BYTES)
    assert [messages for _, messages in wire] == [count]
    sizes = FrameSizes()
    decoded = _decode_all(wire[0][0], sizes)
    assert decoded == [cbor2.loads(frame[4:]) for frame in frames]
    assert sizes.counts[count] == 1 and sizes.messages == count


def test_one_frame_goes_alone_unchanged() -> None:
    (frame,) = _frames(1)
    assert batch_frames([frame], MAX_FRAME_BYTES) == [(frame, 1)]


def test_more_than_the_message_limit_is_split() -> None:
    frames = _frames(2 * MAX_BATCH_MESSAGES + 1)
    wire = batch_frames(frames, MAX_FRAME_BYTES)
    assert [messages for _, messages in wire] == [MAX_BATCH_MESSAGES, MAX_BATCH_MESSAGES, 1]
    assert wire[2][0] == frames[-1]
    assert _decode_all(b"".join(frame for frame, _ in wire)) == [
        cbor2.loads(frame[4:]) for frame in frames]


def test_a_batch_never_exceeds_the_frame_limit_and_a_large_frame_goes_alone() -> None:
    small = _frames(6, value_bytes=300)
    large = encode_frame(request("put", 99, bucket="b", key=b"big", value=b"x" * 2000))
    limit = 1000
    wire = batch_frames([*small[:3], large, *small[3:]], limit)
    assert all(len(frame) - 4 <= limit for frame, messages in wire if messages > 1)
    assert (large, 1) in wire
    assert sum(messages for _, messages in wire) == 7


@pytest.mark.parametrize("body, match", [
    (b"\x80", "1..64"),  # an empty batch
    (cbor2.dumps([{"op": "ping", "id": 1}] * (MAX_BATCH_MESSAGES + 1)), "1..64"),
    (cbor2.dumps([{"op": "ping", "id": 1}, [1, 2]]), "must be a CBOR map"),
    (cbor2.dumps([{"op": "ping", "id": 1}, 7]), "must be a CBOR map"),
    (b"\x82\xa1\x62op\x64ping\xc1\x00", "tags"),  # a tag inside the second message
    (b"\x82\xa1\x62op\x64ping", "truncated"),  # the second message is missing
    (b"\x81\xa2\x62op\x64ping\x62op\x64ping", "duplicate|invalid"),  # a duplicate key
    (b"\x9f\xa0\xff", "1..64"),  # indefinite length
])
def test_a_malformed_batch_is_refused_whole(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_batch(body, 16)


def test_each_message_of_a_batch_has_the_lone_frames_nesting_limit() -> None:
    def nested(depth: int) -> dict:
        message: dict = {"op": "ping"}
        for _ in range(depth - 1):
            message = {"n": message}
        return message

    assert decode_batch(cbor2.dumps([nested(4), nested(3)]), 4) == [nested(4), nested(3)]
    with pytest.raises(ProtocolError, match="nesting"):
        decode_batch(cbor2.dumps([nested(3), nested(5)]), 4)


def test_a_refused_batch_is_consumed_and_the_stream_stays_in_sync() -> None:
    bad = _batch_frame(cbor2.dumps([{"op": "ping", "id": 1}, "not a message"]))
    (good,) = _frames(1)
    decoder = FrameDecoder(MAX_FRAME_BYTES, 16)
    decoder.receive_data(bad + good)
    with pytest.raises(ProtocolError, match="must be a CBOR map"):
        decoder.next_message()
    assert not decoder.failed
    assert decoder.next_message() == cbor2.loads(good[4:])
    assert decoder.batches == 0  # no batch was read: the other end is not known to read them


def test_a_batch_split_over_chunks_is_decoded_once_complete() -> None:
    frames = _frames(5)
    ((wire, _),) = batch_frames(frames, MAX_FRAME_BYTES)
    decoder = FrameDecoder(MAX_FRAME_BYTES, 16)
    decoded = []
    for byte in wire:
        decoder.receive_data(bytes([byte]))
        while (message := decoder.next_message()) is not None:
            decoded.append(message)
    assert decoded == [cbor2.loads(frame[4:]) for frame in frames]
    assert decoder.batches == 1
