"""Frames on the wire: a 4-byte big-endian length, then one CBOR map, or a batch: a CBOR
array of 1..MAX_BATCH_MESSAGES maps, messages that were ready together for one connection
(one frame to read, validate and decode instead of one each).

Sans-IO in the h11 style: the connection code feeds whatever bytes it read to
``FrameDecoder.receive_data`` and pulls complete messages with
``next_message``; nothing here touches a socket or a clock, so the same code
serves the node, the client and the simulated network, and is tested on
arbitrary byte chunkings.

Bytes from the network are hostile. Before cbor2 sees a body, a linear
validator walks its CBOR structure and accepts only the small subset the
protocol uses (ints, byte and text strings, arrays, maps, booleans, null,
floats), so tags (bignums, shared references, ...), indefinite lengths, deep
nesting and length headers that claim more items than bytes remain are refused
before anything is allocated for them.
"""

from __future__ import annotations

from collections import deque
from struct import Struct
from typing import Any

import cbor2

from common.errors import ProtocolError

_LENGTH = Struct(">I")
_HEADER_BYTES = _LENGTH.size
MAX_WIRE_FRAME_BYTES = 2**32 - 1  # the largest body a 4-byte length prefix can describe
MAX_BATCH_MESSAGES = 64  # messages in one batch frame; the frame size limit holds as well

# Argument of a CBOR initial byte whose additional info is 24..27: 1, 2, 4 or 8 bytes.
_ARGUMENT = {24: Struct(">B"), 25: Struct(">H"), 26: Struct(">I"), 27: Struct(">Q")}
_MAJOR_NAMES = ("unsigned int", "negative int", "byte string", "text string", "array", "map",
                "tag", "simple value or float")
_SCALAR, _STRING, _ARRAY, _MAP = 0, 1, 2, 3


def _refusal(initial: int) -> str | None:
    """Why an item starting with this byte is outside the protocol's subset, or None."""
    major, info = initial >> 5, initial & 0x1F
    if major == 6:
        return "CBOR tags are not accepted"
    if info == 31:
        return "indefinite-length CBOR items (and break codes) are not accepted"
    if info >= 28:
        return f"reserved CBOR additional info {info}"
    if major == 7 and (info == 24 or (info < 24 and info not in (20, 21, 22))):
        return "CBOR simple values other than false/true/null are not accepted"
    return None


def _head(initial: int) -> tuple[int, Struct | None, int, bool] | None:
    """What the validator needs to know about an initial byte: (kind, argument struct,
    inline argument, may be a map key), or None for a refused byte."""
    if _refusal(initial) is not None:
        return None
    major, info = initial >> 5, initial & 0x1F
    kind = (_SCALAR, _SCALAR, _STRING, _STRING, _ARRAY, _MAP, _SCALAR, _SCALAR)[major]
    return kind, _ARGUMENT.get(info), info if info < 24 else 0, major in (0, 1, 3)


_HEADS = tuple(_head(initial) for initial in range(256))

# Buffered bytes already consumed are dropped once they exceed this and half the buffer, so
# compaction costs amortised O(1) per byte instead of one copy per frame.
_COMPACT_AFTER_BYTES = 64 * 1024


def encode_frame(msg: dict[str, Any], max_frame_bytes: int = MAX_WIRE_FRAME_BYTES) -> bytes:
    """Return ``msg`` as one frame, refusing a body the receiver would reject anyway.

    ``max_frame_bytes`` (body bytes, prefix excluded) defaults to what the prefix can express;
    pass the peer's limit to fail here, with a clear error, instead of on the other side.
    """
    try:
        body = cbor2.dumps(msg)
    except cbor2.CBOREncodeError as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc
    limit = min(max_frame_bytes, MAX_WIRE_FRAME_BYTES)
    if len(body) > limit:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds limit {limit}")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes, max_nesting: int) -> dict[Any, Any]:
    """Decode one frame body into a dict, accepting only the protocol's CBOR subset.

    ``max_nesting`` counts container levels, the top-level map being level 1. Every
    failure is a ProtocolError; cbor2 runs only on bytes the validator accepted, with its
    own depth, indefinite-length and duplicate-key checks as a second line of defence
    (its ``max_depth`` counts the containers around an item, so the same number is a
    slightly looser bound there: ``{"a": []}`` is 2 levels here, depth 1 for cbor2).
    """
    _validate_cbor(body, max_nesting)
    try:
        msg = cbor2.loads(body, max_depth=max_nesting, allow_indefinite=False,
                          allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid CBOR: {exc}") from exc
    return msg


def is_batch(body: bytes) -> bool:
    """Whether a (non-empty) frame body is a batch: a CBOR array, where a message is a map."""
    return body[0] >> 5 == 4


def decode_batch(body: bytes, max_nesting: int) -> list[dict[Any, Any]]:
    """Decode a batch frame body into its messages, each held to a lone frame's rules.

    The array adds one level, so ``max_nesting + 1`` bounds every message by ``max_nesting``.
    Anything wrong refuses the whole frame (a ProtocolError, as for a lone frame that is
    not valid CBOR): no message of a batch that is not well formed is served.
    """
    info = body[0] & 0x1F
    count = info if info < 24 else body[1] if info == 24 and len(body) > 1 else None
    if count is None or not 1 <= count <= MAX_BATCH_MESSAGES:
        raise ProtocolError(f"a batch frame holds 1..{MAX_BATCH_MESSAGES} messages")
    _validate_cbor(body, max_nesting + 1, top_major=4)
    try:
        messages = cbor2.loads(body, max_depth=max_nesting + 1, allow_indefinite=False,
                               allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid CBOR: {exc}") from exc
    if not all(isinstance(message, dict) for message in messages):
        raise ProtocolError("every message of a batch frame must be a CBOR map")
    return messages


def batch_frames(frames: list[bytes], max_frame_bytes: int) -> list[tuple[bytes, int]]:
    """Encoded frames as they go on the wire: consecutive ones joined into batch frames of
    at most MAX_BATCH_MESSAGES messages and ``max_frame_bytes`` body bytes (a frame too
    large to join any goes alone). Each wire frame with how many messages it carries.

    A CBOR array is its header followed by its items, so the bodies are reused as they are.
    """
    wire: list[tuple[bytes, int]] = []
    group: list[bytes] = []
    size = 0  # body bytes of the group, array header excluded

    def close_group() -> None:
        if len(group) == 1:
            wire.append((_LENGTH.pack(len(group[0])) + group[0], 1))
        elif group:
            header = bytes([0x80 | len(group)]) if len(group) < 24 else bytes(
                [0x98, len(group)])
            body_length = len(header) + size
            wire.append((b"".join((_LENGTH.pack(body_length), header, *group)), len(group)))
        group.clear()

    for frame in frames:
        body = frame[_HEADER_BYTES:]
        if len(group) == MAX_BATCH_MESSAGES or (
                group and size + len(body) + _MAX_BATCH_HEADER_BYTES > max_frame_bytes):
            close_group()
            size = 0
        group.append(body)
        size += len(body)
    close_group()
    return wire


_MAX_BATCH_HEADER_BYTES = 2  # a CBOR array header for up to 255 items


class FrameSizes:
    """How many messages each frame carried (1: a lone frame), in one direction: a
    histogram over 1..MAX_BATCH_MESSAGES, for the metrics."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * (MAX_BATCH_MESSAGES + 1)  # index: messages in the frame

    def observe(self, messages: int) -> None:
        self.counts[messages] += 1

    @property
    def frames(self) -> int:
        return sum(self.counts)

    @property
    def messages(self) -> int:
        return sum(size * count for size, count in enumerate(self.counts))


def _validate_cbor(body: bytes, max_nesting: int, top_major: int = 5) -> None:
    """Walk the CBOR item in ``body`` once, without recursion and without copying strings.

    ``left`` counts the items the innermost open container still expects, negated for a map
    (two items per entry, so an even count left means a key comes next); ``stack`` saves the
    counts of the enclosing containers. The walk starts as if inside a one-item array that
    holds the top-level map. A table of the 256 initial bytes keeps the loop short: it is
    the price every frame pays, a couple of microseconds for a put.
    """
    end = len(body)
    if end == 0:
        raise ProtocolError("empty frame body")
    if body[0] >> 5 != top_major:
        raise ProtocolError(f"message must be a CBOR map, not a {_MAJOR_NAMES[body[0] >> 5]}")
    stack: list[int] = []
    left = 1
    pos = 0
    while True:
        while not left:
            if not stack:
                if pos != end:
                    raise ProtocolError(f"{end - pos} trailing bytes after the CBOR map")
                return
            left = stack.pop()
        if pos >= end:
            raise ProtocolError("truncated CBOR item")
        head = _HEADS[body[pos]]
        if head is None:
            raise ProtocolError(_refusal(body[pos]) or "refused CBOR item")
        kind, unpack, argument, key_ok = head
        if left < 0:
            if not left & 1 and not key_ok:
                raise ProtocolError(f"map key must be a text string or int, "
                                    f"not a {_MAJOR_NAMES[body[pos] >> 5]}")
            left += 1
        else:
            left -= 1
        pos += 1
        if unpack is not None:
            if pos + unpack.size > end:
                raise ProtocolError("truncated CBOR item")
            if kind != _SCALAR:  # ints and floats need no value, only skipping
                (argument,) = unpack.unpack_from(body, pos)
            pos += unpack.size
        if kind == _STRING:
            if argument > end - pos:
                raise ProtocolError(f"string of {argument} bytes exceeds the "
                                    f"{end - pos} bytes left in the frame")
            pos += argument
        elif kind != _SCALAR:
            if len(stack) >= max_nesting:
                raise ProtocolError(f"CBOR nesting exceeds limit {max_nesting}")
            items = 2 * argument if kind == _MAP else argument
            if items > end - pos:  # every item takes at least one byte
                raise ProtocolError(f"container of {argument} entries exceeds the "
                                    f"{end - pos} bytes left in the frame")
            stack.append(left)
            left = -items if kind == _MAP else items


class FrameDecoder:
    """Incremental frame parser for one byte stream (one connection direction).

    Call ``receive_data`` with each chunk read, then ``next_message`` until it returns None.
    Used that way the decoder holds at most ``max_frame_bytes + 4 + len(chunk)`` bytes: a
    length prefix over ``max_frame_bytes`` (body bytes) is refused as soon as its four bytes
    are in, before the body is waited for.

    A framing error (oversized or zero length) leaves the stream impossible to resynchronise,
    so the decoder becomes ``failed`` and every later call raises. A body that is framed
    correctly but is not an acceptable CBOR map raises too, yet the frame is consumed and the
    decoder stays usable: the caller may answer with an error and carry on.
    """

    def __init__(self, max_frame_bytes: int, max_nesting: int = 16,
                 sizes: FrameSizes | None = None) -> None:
        if not 1 <= max_frame_bytes <= MAX_WIRE_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be in 1..{MAX_WIRE_FRAME_BYTES}")
        if max_nesting < 1:
            raise ValueError("max_nesting must be at least 1 (the top-level map)")
        self._max_frame_bytes = max_frame_bytes
        self._max_nesting = max_nesting
        self._buffer = bytearray()
        self._start = 0  # offset of the first unconsumed byte in _buffer
        self._body_length: int | None = None  # length prefix of the frame at _start, once read
        self._error: ProtocolError | None = None
        self._batched: deque[dict[Any, Any]] = deque()  # the rest of the last batch frame
        self.batches = 0  # batch frames read: the other end reads them too
        self.sizes = sizes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message (a partial frame, or more)."""
        return len(self._buffer) - self._start

    @property
    def pending(self) -> bool:
        """Whether more may be ready without reading: messages of a batch, or bytes."""
        return bool(self._batched) or len(self._buffer) > self._start

    @property
    def failed(self) -> bool:
        """True once a framing error made the rest of the stream unreadable."""
        return self._error is not None

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream; raises at once on an oversized length prefix."""
        self._raise_if_failed()
        self._buffer += data
        self._read_length_prefix()

    def next_message(self) -> dict[Any, Any] | None:
        """Return the next complete message, or None if more data is needed."""
        self._raise_if_failed()
        if self._batched:
            return self._batched.popleft()
        length = self._read_length_prefix()
        if length is None:
            return None
        body_start = self._start + _HEADER_BYTES
        body_end = body_start + length
        if len(self._buffer) < body_end:
            return None
        with memoryview(self._buffer) as view:
            body = bytes(view[body_start:body_end])
        self._start = body_end
        self._body_length = None
        self._compact()
        if not is_batch(body):
            if self.sizes is not None:
                self.sizes.observe(1)
            return decode_body(body, self._max_nesting)
        messages = decode_batch(body, self._max_nesting)
        self.batches += 1
        if self.sizes is not None:
            self.sizes.observe(len(messages))
        self._batched.extend(messages[1:])
        return messages[0]

    def _read_length_prefix(self) -> int | None:
        if self._body_length is None and self.buffered >= _HEADER_BYTES:
            (length,) = _LENGTH.unpack_from(self._buffer, self._start)
            if length == 0:
                self._fail(ProtocolError("frame of 0 bytes: a frame must hold one CBOR map"))
            if length > self._max_frame_bytes:
                self._fail(ProtocolError(
                    f"frame of {length} bytes exceeds limit {self._max_frame_bytes}"))
            self._body_length = length
        return self._body_length

    def _compact(self) -> None:
        if self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        elif self._start > _COMPACT_AFTER_BYTES and 2 * self._start > len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        self._buffer = bytearray()
        self._start = 0
        raise error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"frame decoder unusable after an earlier error: "
                                f"{self._error.message}")
