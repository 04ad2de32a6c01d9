"""What the frame decoder and request validation must guarantee on any byte stream.

Shared by the atheris target (``fuzz_frames.py``, ``make fuzz``) and by ``test_corpus.py``,
which replays the kept corpus in ``make test``. An input is one byte choosing how the rest
is chunked (1..256 bytes per ``receive_data``, as a network would split it), then the byte
stream itself. The properties, the ones the server relies on:

- the decoder raises nothing but ProtocolError, and after a framing error it stays failed;
- it never buffers more than ``max_frame_bytes + 4 + chunk`` bytes;
- ``validate_request`` raises nothing but a DynError (ProtocolError or Rejected), and a
  request it accepts has a known op and every required field;
- an accepted message encodes back into a frame that decodes to the same CBOR, a message
  taken out of a batch frame too (so a batch holds each message to a lone frame's rules);
- an accepted ``query``'s condition is one sort-key range and its continuation token is
  either refused (Rejected: exit 5) or resumes strictly inside that range; an accepted
  ``p_query`` is a range a query merge can be driven over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2

from common.codec import FrameDecoder, batch_frames, decode_body, encode_frame
from common.errors import DynError, ProtocolError, Rejected
from common.limits import Limits
from common.messages import SCHEMA, request, validate_request
from common.skrange import condition_range
from dynd.querymerge import (
    QueryMerge,
    decode_token,
    encode_token,
    in_range,
    query_hash,
    resume_range,
)

LIMITS = Limits(max_frame_bytes=64 * 1024, max_key_bytes=64, max_value_bytes=1024,
                max_bucket_name_bytes=16, max_context_bytes=256)
MAX_STREAM_BYTES = 256 * 1024  # libFuzzer's -max_len is lower by default; a guard all the same

_SEED_CONDITION = ["between", b"post-1", b"post-5"]
_SEED_FIELDS = {
    "ping": {}, "get": {"bucket": "default", "key": b"k"},
    "put": {"bucket": "default", "key": b"k", "value": b"v", "context": "", "w": 2},
    "p_put": {"bucket": "b", "key": b"k", "partition": 3, "clock": [[["n1.1", 1, []]], []]},
    "p_gossip": {"state": {"members": {}}, "heartbeats": {"n1": [1, 2]}},
    "p_fetch": {"partition": 1, "after": ["b", b"k"], "limit": 10},
    "tokens": {"node": "n1", "count": 4},
    "role_grant": {"name": "self-service", "perms": ["readwrite"], "bucket": "*",
                   "prefix": b"USER#${cn}#"},
    "role_revoke": {"name": "analyst", "perms": ["read", "admin"], "bucket": "accounts"},
    "user_grant_role": {"user": "all", "role": "self-service"},
    "auth_set": {"enabled": True},
    "auth_check": {"check_op": "get", "bucket": "app", "key": b"USER#bob#", "user": "alice"},
    "p_gossip_auth": {"state": {"auth": {"enabled": [True, 1, "n1"], "roles": [
        ["r", True, 1, 1, "n1"]], "grants": [["r", 1, "get", "*", b"", True, 1, "n1"]],
        "members": [["all", "r", 1, True, 1, "n1"]]}}},
    "query": {"bucket": "default", "key": b"thread", "cond": _SEED_CONDITION, "limit": 2,
              "reverse": True, "after": encode_token(b"post-3", True, query_hash(
                  "default", b"thread", _SEED_CONDITION, True))},
    "p_query": {"bucket": "default", "key": b"thread", "partition": 3, "lo": b"post-1",
                "hi": b"post-5\x00", "reverse": False, "want": 2, "now": 1_700_000_000_000,
                "max_bytes": 65536, "hint_for": "n2", "skeleton": True},
}


def check_stream(data: bytes) -> None:
    """Feed one input through a decoder and the validator, asserting the properties."""
    if not data or len(data) > MAX_STREAM_BYTES:
        return
    chunk = data[0] + 1
    stream = data[1:]
    decoder = FrameDecoder(LIMITS.max_frame_bytes, LIMITS.max_nesting)
    for start in range(0, len(stream), chunk):
        try:
            decoder.receive_data(stream[start:start + chunk])
            assert decoder.buffered <= LIMITS.max_frame_bytes + 4 + chunk
            while (message := decoder.next_message()) is not None:
                check_message(message)
        except ProtocolError:
            if decoder.failed:
                try:
                    decoder.next_message()
                except ProtocolError:
                    return
                raise AssertionError("a failed decoder returned a message") from None


def check_message(message: object) -> None:
    try:
        accepted = validate_request(message, LIMITS)
    except DynError:
        return
    assert accepted.op in SCHEMA
    for name, (_, required) in SCHEMA[accepted.op].items():
        assert not required or name in accepted.fields
    frame = encode_frame(message)  # type: ignore[arg-type]
    again = decode_body(frame[4:], LIMITS.max_nesting)
    assert cbor2.dumps(again) == cbor2.dumps(message)
    if accepted.op == "query":
        check_query(accepted.fields)
    elif accepted.op == "p_query":
        fields = accepted.fields
        QueryMerge(fields["lo"], fields.get("hi"), reverse=fields["reverse"],
                   limit=fields["want"], now_ms=fields["now"])


def check_query(fields: dict[str, Any]) -> None:
    """What the coordinator does with a query before it asks any replica: the condition's
    range, then the token's resume point (refused only as Rejected), a part of that range
    that leaves out the sort key the previous page ended at."""
    cond, reverse = fields.get("cond"), fields.get("reverse", False)
    lo, hi = condition_range(cond)
    assert hi is None or lo <= hi
    if "after" not in fields:
        return
    try:
        after = decode_token(fields["after"], query_hash(fields["bucket"], fields["key"],
                                                         cond, reverse))
    except Rejected:
        return
    resumed_lo, resumed_hi = resume_range(lo, hi, reverse, after)
    assert lo <= resumed_lo and (hi is None or (resumed_hi is not None and resumed_hi <= hi))
    assert not in_range(after, resumed_lo, resumed_hi)


def seed(corpus: Path) -> None:
    """Into an empty corpus, write one input per seed op: chunk byte 0xff, then the frame."""
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for rid, name in enumerate(_SEED_FIELDS, start=1):
        (corpus / f"seed-{name}").write_bytes(seed_input(name, rid))
    (corpus / "seed-batch").write_bytes(batch_seed_input())


def seed_input(name: str, rid: int = 1) -> bytes:
    """The corpus input of seed ``name``: chunk byte 0xff, then its frame."""
    op = name.removesuffix("_auth")  # several seeds of one op: p_gossip with an auth state
    return b"\xff" + encode_frame(request(op, rid, **_SEED_FIELDS[name]))


def batch_seed_input() -> bytes:
    """The corpus input of a batch frame: chunk byte 0xff, then ping, get and put in one."""
    frames = [encode_frame(request(op, rid, **_SEED_FIELDS[op]))
              for rid, op in enumerate(("ping", "get", "put"), start=1)]
    ((frame, _),) = batch_frames(frames, LIMITS.max_frame_bytes)
    return b"\xff" + frame
