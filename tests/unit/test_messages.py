"""Message builders and request validation: every op of the protocol, every limit, and
arbitrary maps that must only ever raise DynError subclasses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import (
    Conflict,
    DynError,
    NotFound,
    ProtocolError,
    Rejected,
    Unavailable,
)
from common.limits import Limits
from common.messages import (
    ADMIN_OPS,
    CLIENT_OPS,
    MAX_REAP_ITEMS,
    MAX_REQUEST_ID,
    PEER_OPS,
    PROTOCOL_VERSION,
    SCHEMA,
    Request,
    check_response,
    failure,
    ok,
    reply_id,
    request,
    validate_request,
)

LIMITS = Limits()

# One valid request per op, with every optional field set where the op has one.
VALID = {
    "ping": {},
    "get": {"bucket": "default", "key": b"k", "r": 2, "pr": 1},
    "put": {"bucket": "default", "key": b"k", "value": b"v", "context": "Y3R4", "w": 3,
            "pw": 2},
    "delete": {"bucket": "b-1.x_y", "key": b"k", "context": "", "w": 1, "pw": 0},
    "bucket_set": {"name": "carts", "n": 3, "r": 2, "w": 2, "pr": 2, "pw": 1},
    "bucket_get": {"name": "carts"},
    "bucket_list": {},
    "replicas": {"bucket": "default", "key": b"k"},
    "cluster_join": {"seed": "127.0.0.1:7070"},
    "cluster_leave": {"node": "n1"},
    "cluster_remove": {"node": "n1"},
    "cluster_replace": {"old": "n1", "new": "n2"},
    "tokens": {"node": "n1", "count": 16},
    "cluster_plan": {},
    "cluster_commit": {},
    "cluster_clear": {},
    "cluster_status": {},
    "cluster_check": {},
    "cluster_features": {},
    "ring": {},
    "status": {},
    "hints": {},
    "transfers": {},
    "repair": {"bucket": "default", "partition": 7},
    "stats": {},
    "backup": {"dir": "/var/lib/dynd-backups/2024-06-01"},
    "role_create": {"name": "self-service"},
    "role_delete": {"name": "self-service"},
    "role_list": {},
    "role_get": {"name": "self-service"},
    "role_grant": {"name": "r", "perms": ["read"], "bucket": "*", "prefix": b"USER#${cn}#"},
    "role_revoke": {"name": "r", "perms": ["get", "put"], "bucket": "app", "prefix": b""},
    "user_list": {},
    "user_get": {"user": "Priya Shah"},
    "user_grant_role": {"user": "all", "role": "r"},
    "user_revoke_role": {"user": "priya", "role": "r"},
    "auth_set": {"enabled": True},
    "auth_status": {},
    "auth_whoami": {},
    "auth_check": {"check_op": "get", "bucket": "app", "key": b"k", "sk": b"s", "user": "bob"},
    "p_get": {"bucket": "default", "key": b"k", "partition": 0, "hint_for": "n2"},
    "p_put": {"bucket": "default", "key": b"k", "partition": 3, "clock": b"", "hint_for": "n2"},
    "p_forward": {"req": {"v": 1, "id": 1, "op": "put"}, "via": ["n1", "n2"]},
    "p_gossip": {"state": {"epoch": 1}, "heartbeats": {"n1": [1, 2]}, "digest": b"d"},
    "p_join": {"member": {"id": "n3"}},
    "p_fetch": {"partition": 1, "after": ["default", b"k"], "limit": 10_000},
    "p_tree": {"partition": 1, "level": 2, "indices": [0, 5]},
    "p_segments": {"partition": 1, "segments": []},
    "p_status": {},
    "p_reap": {"bucket": "default", "key": b"k", "partition": 2, "clock": b""},
    "p_digests": {"partition": 2, "items": [["default", b"k", None], ["app", b"u", b"s"]]},
    "query": {"bucket": "app", "key": b"USER#a", "cond": ["between", b"A", b"B"], "limit": 50,
              "reverse": True, "after": "oQ", "r": 2, "select": "keys"},
    "p_query": {"bucket": "app", "key": b"k", "partition": 1, "lo": b"a", "hi": b"b\x00",
                "reverse": False, "want": 1000, "now": 0, "max_bytes": 1, "hint_for": "n2",
                "skeleton": True},
}


def test_schema_covers_exactly_the_ops_of_the_protocol() -> None:
    assert set(SCHEMA) == set(VALID)
    assert PEER_OPS == {op for op in VALID if op.startswith("p_")}
    assert CLIENT_OPS == set(VALID) - PEER_OPS
    assert ADMIN_OPS == {
        "cluster_join", "cluster_leave", "cluster_remove", "cluster_replace", "cluster_plan",
        "cluster_commit", "cluster_clear", "cluster_status", "cluster_check",
        "cluster_features", "tokens", "bucket_set", "repair", "backup"}


@pytest.mark.parametrize("op", sorted(VALID))
def test_valid_request_of_every_op_passes(op: str) -> None:
    assert validate_request(request(op, 42, **VALID[op]), LIMITS) == Request(
        op=op, id=42, fields=VALID[op])


# p_reap's single-key fields are required by its shape, not by SCHEMA (see the tests below).
SHAPE_REQUIRED = {"p_reap": {"bucket", "key", "clock"}}


@pytest.mark.parametrize("op", sorted(op for op in VALID if VALID[op]))
def test_optional_fields_may_be_left_out(op: str) -> None:
    required = {name: value for name, value in VALID[op].items()
                if SCHEMA[op][name][1] or name in SHAPE_REQUIRED.get(op, ())}
    assert validate_request(request(op, 1, **required), LIMITS).fields == required


@pytest.mark.parametrize("op", sorted(op for op in VALID if VALID[op]))
def test_every_required_field_is_required(op: str) -> None:
    for name, (_, required) in SCHEMA[op].items():
        if required:
            fields = {k: v for k, v in VALID[op].items() if k != name}
            with pytest.raises(ProtocolError, match=f"needs field '{name}'"):
                validate_request(request(op, 1, **fields), LIMITS)


def get(**changes: Any) -> dict[str, Any]:
    return {**request("get", 1, bucket="default", key=b"k"), **changes}


def put(**changes: Any) -> dict[str, Any]:
    return {**request("put", 1, bucket="default", key=b"k", value=b"v"), **changes}


KB = 1024
SHAPE_ERRORS = [
    ("not a map", ["v", 1], "must be a map"),
    ("no version", {"id": 1, "op": "ping"}, "unsupported protocol version"),
    ("version 2", {**request("ping", 1), "v": 2}, "unsupported protocol version 2"),
    ("version true", {**request("ping", 1), "v": True}, "unsupported protocol version"),
    ("version float", {**request("ping", 1), "v": 1.0}, "unsupported protocol version"),
    ("negative id", request("ping", -1), "request id"),
    ("id too big", request("ping", MAX_REQUEST_ID + 1), "request id"),
    ("id as text", {**request("ping", 1), "id": "1"}, "request id"),
    ("id as bool", {**request("ping", 1), "id": True}, "request id"),
    ("unknown op", request("fly", 1), "unknown op 'fly'"),
    ("op as bytes", {**request("ping", 1), "op": b"ping"}, "unknown op"),
    ("unknown field", get(colour="red"), "unknown field 'colour' for op 'get'"),
    ("int field name", {**get(), 7: 1}, "unknown field 7"),
    ("key as text", get(key="k"), "field 'key' of op 'get' must be bytes, not str"),
    ("r as bool", get(r=True), "must be int, not bool"),
    ("r as float", get(r=2.0), "must be int, not float"),
    ("bucket as bytes", get(bucket=b"default"), "must be str"),
    ("clock as text", request("p_put", 1, **{**VALID["p_put"], "clock": "x"}),
     "must be bytes"),
    ("req as list", request("p_forward", 1, req=[], via=["n1"]), "must be dict"),
    ("via of ints", request("p_forward", 1, req={}, via=[1]), "via must hold node ids"),
    ("indices of text", request("p_tree", 1, partition=1, level=0, indices=["1"]),
     "non-negative ints"),
    ("negative segment", request("p_segments", 1, partition=1, segments=[-1]),
     "non-negative ints"),
    ("after of one item", request("p_fetch", 1, partition=1, limit=1, after=["b"]),
     r"\[bucket: str, key: bytes\]"),
]

LIMIT_ERRORS = [
    ("key too long", get(key=b"k" * 2000), "key of 2000 bytes exceeds limit 1024"),
    ("empty key", get(key=b""), "key must not be empty"),
    ("value too big", put(value=b"v" * (KB * KB + 1)),
     f"value of {KB * KB + 1} bytes exceeds limit {KB * KB}"),
    ("bucket too long", get(bucket="b" * 65), "bucket name of 65 bytes exceeds limit 64"),
    ("empty bucket", get(bucket=""), "bucket name '' must be 1..64"),
    ("bucket with space", get(bucket="my bucket"), "bucket name 'my bucket' must be"),
    ("bucket with slash", get(bucket="a/b"), "must be 1..64 characters"),
    ("non-ascii bucket", get(bucket="caf\u00e9"), "must be 1..64 characters"),
    ("bucket name too long", request("bucket_get", 1, name="n" * 100), "100 bytes"),
    ("backup dir empty", request("backup", 1, dir=""), "path of 1..4096 characters"),
    ("backup dir with NUL", request("backup", 1, dir="/a\0b"), "no NUL"),
    ("node id too long", request("cluster_remove", 1, node="n" * 65),
     "node id in 'node' of 65 bytes exceeds limit 64"),
    ("node id with colon", request("cluster_replace", 1, old="a", new="b:1"),
     "node id in 'new'"),
    ("bad hint_for", request("p_put", 1, **{**VALID["p_put"], "hint_for": ""}), "hint_for"),
    ("context too long", put(context="c" * (16 * KB + 1)),
     f"context of {16 * KB + 1} bytes exceeds limit {16 * KB}"),
    ("r of 0", get(r=0), "r must be in 1..16, not 0"),
    ("w of 17", put(w=17), "w must be in 1..16, not 17"),
    ("negative pr", get(pr=-1), "pr must be in 0..16, not -1"),
    ("pw of 17", put(pw=17), "pw must be in 0..16, not 17"),
    ("n negative", request("bucket_set", 1, name="b", n=-3), "n must be in 1..16"),
    ("negative partition", request("p_get", 1, bucket="b", key=b"k", partition=-1),
     "partition must be at least 0"),
    ("limit of 0", request("p_fetch", 1, partition=1, limit=0), "limit must be in 1..10000"),
    ("limit too big", request("p_fetch", 1, partition=1, limit=10_001), "limit"),
    ("negative token count", request("tokens", 1, node="n1", count=-1), "count"),
    ("empty seed", request("cluster_join", 1, seed=""), "seed must be a host:port"),
    ("bad bucket in after", request("p_fetch", 1, partition=1, limit=1, after=["", b"k"]),
     "bucket name"),
    ("long key in after", request("p_fetch", 1, partition=1, limit=1,
                                  after=["b", b"k" * 1025]), "1025 bytes"),
    ("no hop in via", request("p_forward", 1, req={}, via=[]), r"via must name 1\.\.2 nodes"),
    ("too many hops", request("p_forward", 1, req={}, via=["a", "b", "c"]), "not 3"),
    ("bad node in via", request("p_forward", 1, req={}, via=["a:b"]), "node id in 'via'"),
    ("unknown condition", request("query", 1, bucket="b", key=b"k", cond=["like", b"a"]),
     "unknown condition"),
    ("between backwards", request("query", 1, bucket="b", key=b"k", cond=["between", b"b", b"a"]),
     "low <= high"),
    ("condition sort key too long", request("query", 1, bucket="b", key=b"k",
                                            cond=["eq", b"x" * 1025]), "1..1024"),
    ("empty token", request("query", 1, bucket="b", key=b"k", after=""), "continuation token"),
    ("bad select", request("query", 1, bucket="b", key=b"k", select="values"), "select"),
    ("want of 0", request("p_query", 1, **{**VALID["p_query"], "want": 0}), "want"),
    ("scan bound too long", request("p_query", 1, **{**VALID["p_query"], "lo": b"x" * 1026}),
     "lo must be 1..1025"),
]


@pytest.mark.parametrize("msg, match", [(m, e) for _, m, e in SHAPE_ERRORS],
                         ids=[name for name, _, _ in SHAPE_ERRORS])
def test_malformed_requests_are_protocol_errors(msg: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        validate_request(msg, LIMITS)


@pytest.mark.parametrize("msg, match", [(m, e) for _, m, e in LIMIT_ERRORS],
                         ids=[name for name, _, _ in LIMIT_ERRORS])
def test_values_breaking_a_limit_are_rejected_not_protocol_errors(msg: Any, match: str) -> None:
    with pytest.raises(Rejected, match=match) as caught:
        validate_request(msg, LIMITS)
    assert not isinstance(caught.value, ProtocolError)


DIGEST = b"d" * 16
BATCH_REAP = {"partition": 2, "items": [["default", b"k", None, DIGEST],
                                        ["app", b"u", b"s", DIGEST]]}


def test_p_reap_takes_one_key_or_a_batch() -> None:
    assert validate_request(request("p_reap", 1, **BATCH_REAP), LIMITS).fields == BATCH_REAP
    single = VALID["p_reap"]
    assert validate_request(request("p_reap", 1, **single), LIMITS).fields == single


@pytest.mark.parametrize("fields, match", [
    ({"partition": 2}, "takes one of bucket\\+clock\\+key or items"),
    ({**VALID["p_reap"], "items": BATCH_REAP["items"]}, "takes one of"),
    ({"partition": 2, "bucket": "b", "key": b"k"}, "needs field 'clock'"),
    ({**BATCH_REAP, "sk": b"s"}, "with items takes no field 'sk'"),
    ({"partition": 2, "items": [["b", b"k", None]]}, "sk or null, digest"),
    ({"partition": 2, "items": [("b", b"k", None, DIGEST)]}, "items"),
    ({"partition": 2, "items": [["b", "k", None, DIGEST]]}, "items"),
    ({"partition": 2, "items": [["b", b"k", 1, DIGEST]]}, "items"),
])
def test_a_p_reap_of_no_one_shape_is_a_protocol_error(fields: dict[str, Any], match: str
                                                      ) -> None:
    with pytest.raises(ProtocolError, match=match):
        validate_request(request("p_reap", 1, **fields), LIMITS)


@pytest.mark.parametrize("op, item, match", [
    ("p_digests", ["bad bucket", b"k", None], "bucket name"),
    ("p_digests", ["b", b"", None], "key must not be empty"),
    ("p_digests", ["b", b"k", b""], "sort key"),
    ("p_reap", ["b", b"k", None, b"short"], "digest must be 16 bytes"),
])
def test_batch_items_break_limits_like_single_fields(op: str, item: list[Any], match: str
                                                      ) -> None:
    with pytest.raises(Rejected, match=match):
        validate_request(request(op, 1, partition=1, items=[item]), LIMITS)


@pytest.mark.parametrize("count", [0, MAX_REAP_ITEMS + 1])
def test_a_batch_holds_1_to_max_items(count: int) -> None:
    with pytest.raises(Rejected, match=f"1..{MAX_REAP_ITEMS} items"):
        validate_request(request("p_digests", 1, partition=1,
                                 items=[["b", b"k", None]] * count), LIMITS)
    validate_request(request("p_digests", 1, partition=1,
                             items=[["b", b"k", None]] * MAX_REAP_ITEMS), LIMITS)


def test_limits_come_from_the_given_limits_object() -> None:
    small = Limits(max_key_bytes=4, max_value_bytes=8, max_bucket_name_bytes=3,
                   max_context_bytes=2)
    validate_request(put(key=b"kkkk", value=b"v" * 8, bucket="abc", context="cc"), small)
    for changes in ({"key": b"k" * 5}, {"value": b"v" * 9}, {"bucket": "abcd"},
                    {"context": "ccc"}):
        with pytest.raises(Rejected, match="exceeds limit"):
            validate_request(put(**changes), small)


# --- builders and responses -----------------------------------------------------------------


def test_builders_produce_the_wire_shapes() -> None:
    assert request("get", 9, bucket="b", key=b"k") == {
        "v": PROTOCOL_VERSION, "id": 9, "op": "get", "bucket": "b", "key": b"k"}
    assert ok(9, context="c") == {"id": 9, "ok": True, "context": "c"}
    assert failure(9, Unavailable("2 of 3 replies"), context="c") == {
        "id": 9, "ok": False, "error": {"code": "unavailable", "message": "2 of 3 replies"},
        "context": "c"}


@pytest.mark.parametrize("build", [
    lambda: request("get", 1, id=2),
    lambda: request("get", 1, v=2),
    lambda: ok(1, ok=False),
    lambda: ok(1, error={}),
    lambda: failure(1, NotFound("x"), id=3),
])
def test_builders_refuse_fields_that_would_overwrite_the_envelope(build: Any) -> None:
    with pytest.raises(ValueError, match="reserved"):
        build()


def test_check_response_returns_a_success() -> None:
    assert check_response(ok(3, found=False)) == {"id": 3, "ok": True, "found": False}


@pytest.mark.parametrize("exc", [NotFound("gone"), Conflict("2 siblings"), Rejected("big"),
                                 ProtocolError("bad"), Unavailable("quorum"), DynError("boom")])
def test_check_response_raises_the_reported_error_with_partial_fields(exc: DynError) -> None:
    with pytest.raises(type(exc)) as caught:
        check_response(failure(5, exc, context="ctx"))
    assert type(caught.value) is type(exc)
    assert caught.value.message == exc.message
    assert caught.value.details == {"context": "ctx"}


@pytest.mark.parametrize("msg", [None, [], {"id": 1}, {"id": 1, "ok": 1}, {"ok": "yes"}])
def test_check_response_refuses_malformed_responses(msg: Any) -> None:
    with pytest.raises(ProtocolError, match="malformed response"):
        check_response(msg)


def test_check_response_with_a_malformed_error_object_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed error"):
        check_response({"id": 1, "ok": False, "error": "oops"})


@pytest.mark.parametrize("msg, expected", [
    (request("ping", 17), 17),
    ({"id": MAX_REQUEST_ID}, MAX_REQUEST_ID),
    ({"id": -1}, 0),
    ({"id": True}, 0),
    ({"id": "5"}, 0),
    ([1, 2], 0),
    ({}, 0),
])
def test_reply_id_falls_back_to_zero_when_the_id_is_unreadable(msg: Any, expected: int) -> None:
    assert reply_id(msg) == expected


# --- property tests -------------------------------------------------------------------------

values = st.recursive(
    st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=40) | st.booleans() | st.none() | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from(sorted({f for schema in SCHEMA.values() for f in schema}
                                     | {"v", "id", "op"})) | st.text(max_size=6) | st.integers()


@settings(max_examples=300, deadline=None)
@given(msg=st.dictionaries(field_names, values | st.sampled_from(sorted(SCHEMA)), max_size=8))
def test_arbitrary_maps_raise_only_dyn_errors(msg: dict) -> None:
    try:
        validated = validate_request(msg, LIMITS)
    except DynError:
        return
    assert validated.op in SCHEMA
    assert set(validated.fields) <= set(SCHEMA[validated.op])


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(sorted(VALID)), data=st.data())
def test_mutated_valid_requests_raise_only_dyn_errors(op: str, data: st.DataObject) -> None:
    msg = request(op, 1, **VALID[op])
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        name = data.draw(st.sampled_from(sorted(msg, key=str)) | field_names, label="field")
        if data.draw(st.booleans(), label="delete") and name in msg:
            del msg[name]
        else:
            msg[name] = data.draw(values, label="value")
    try:
        validated = validate_request(msg, LIMITS)
    except DynError:
        return
    for name, value in validated.fields.items():
        expected = SCHEMA[validated.op][name][0]
        assert type(value) in (expected if isinstance(expected, tuple) else (expected,))
