"""Request and response shapes of the wire protocol, and the validation of requests.

Requests are ``{"v": 1, "id": int, "op": str, ...fields}``; responses are
``{"id": int, "ok": true, ...}`` or ``{"id": int, "ok": false, "error": {code, message},
...partial}``. Every op's fields live in one table, ``SCHEMA``, so the node, the client and
the tests agree on a single definition; ``validate_request`` checks a decoded map against
it and against the size limits before any handler sees it.

Types are checked exactly as cbor2 decodes them: a bool is not an int. Nested protocol
objects (a clock, a cluster state, a forwarded request, a member) are only checked to be a
map or an array here; the module that owns their format validates their content.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.dvvset import DIGEST_BYTES
from common.errors import DynError, ProtocolError, Rejected, error_from_wire
from common.limits import MAX_N, MAX_SORT_KEY_BYTES, MAX_TTL_SECONDS, Limits
from common.skrange import BadCondition, check_condition

PROTOCOL_VERSION = 1
MAX_REQUEST_ID = 2**63 - 1
MAX_NODE_ID_BYTES = 64
MAX_FETCH_LIMIT = 10_000  # items per p_fetch page
MAX_TOKENS = 2**20  # a tokens count, far above any ring size
MAX_TREE_LEVEL = 64  # Merkle tree level in p_tree
# A put travels at most this many p_forward hops: a node outside the key's preference list
# in its own view forwards it on only while hops remain (views differ for a moment).
MAX_FORWARD_HOPS = 2
MAX_PATH_CHARS = 4096  # a backup directory on the node's host (Linux's PATH_MAX)
MAX_QUERY_LIMIT = 1000  # items per query page
MAX_QUERY_TOKEN_CHARS = 4 * MAX_SORT_KEY_BYTES  # a continuation token: base64 around one sort key
QUERY_SELECTS = ("items", "keys", "count")
MAX_REAP_ITEMS = 256  # items per p_digests or batched p_reap
MAX_SEED_CHARS = 261  # "host:port": a 253-character DNS name, ':' and a 5-digit port; brackets
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")

_Type = type | tuple[type, ...]
_BUCKET = (str, True)
_KEY = (bytes, True)
_SK = (bytes, False)  # an item's sort key; absent for a plain key
_PARTITION = (int, True)
# role_grant and role_revoke: ``bucket`` may also be "*" (every bucket).
_GRANT: dict[str, tuple[_Type, bool]] = {"name": (str, True), "perms": (list, True),
                                         "bucket": (str, True), "prefix": (bytes, False)}
MAX_ROLE_NAME_BYTES = 64
MAX_PERMS = 16  # permission names in one grant or revoke
MAX_USER_CHARS = 128  # a user is a certificate CN

SCHEMA: dict[str, dict[str, tuple[_Type, bool]]] = {
    # Client ops.
    "ping": {},
    "get": {"bucket": _BUCKET, "key": _KEY, "sk": _SK, "r": (int, False), "pr": (int, False)},
    "put": {"bucket": _BUCKET, "key": _KEY, "sk": _SK, "value": (bytes, True),
            "context": (str, False), "w": (int, False), "pw": (int, False),
            "ttl": (int, False), "expire_at": (int, False)},
    "delete": {"bucket": _BUCKET, "key": _KEY, "sk": _SK, "context": (str, False),
               "w": (int, False), "pw": (int, False)},
    "bucket_set": {"name": (str, True), "n": (int, False), "r": (int, False), "w": (int, False),
                   "pr": (int, False), "pw": (int, False), "ttl": (int, False),
                   "grace": (int, False)},
    "bucket_get": {"name": (str, True)},
    "bucket_list": {},
    "replicas": {"bucket": _BUCKET, "key": _KEY, "sk": _SK},
    "query": {"bucket": _BUCKET, "key": _KEY, "cond": (list, False), "limit": (int, False),
              "reverse": (bool, False), "after": (str, False), "r": (int, False),
              "select": (str, False)},
    "cluster_join": {"seed": (str, True)},
    "cluster_leave": {"node": (str, False)},
    "cluster_remove": {"node": (str, True)},
    "cluster_replace": {"old": (str, True), "new": (str, True)},
    "tokens": {"node": (str, True), "count": (int, False)},
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
    "repair": {"bucket": (str, False), "partition": (int, False)},
    "stats": {},
    "backup": {"dir": (str, True)},
    # Access control (dynd/auth_admin.py).
    "role_create": {"name": (str, True)},
    "role_delete": {"name": (str, True)},
    "role_list": {},
    "role_get": {"name": (str, True)},
    "role_grant": _GRANT,
    "role_revoke": _GRANT,
    "user_list": {},
    "user_get": {"user": (str, True)},
    "user_grant_role": {"user": (str, True), "role": (str, True)},
    "user_revoke_role": {"user": (str, True), "role": (str, True)},
    "auth_set": {"enabled": (bool, True)},
    "auth_status": {},
    "auth_whoami": {},
    "auth_check": {"check_op": (str, True), "bucket": (str, True), "key": _KEY, "sk": _SK,
                   "user": (str, False)},
    # Peer ops.
    "p_get": {"bucket": _BUCKET, "key": _KEY, "sk": _SK, "partition": _PARTITION,
              "hint_for": (str, False)},
    "p_put": {"bucket": _BUCKET, "key": _KEY, "sk": _SK, "partition": _PARTITION,
              "clock": (bytes, True), "hint_for": (str, False)},
    "p_forward": {"req": (dict, True), "via": (list, True)},
    "p_gossip": {"state": (dict, False), "heartbeats": (dict, False), "digest": (bytes, False)},
    "p_join": {"member": (dict, True)},
    "p_fetch": {"partition": _PARTITION, "after": (list, False), "limit": (int, True)},
    "p_tree": {"partition": _PARTITION, "level": (int, True), "indices": (list, True)},
    "p_segments": {"partition": _PARTITION, "segments": (list, True)},
    "p_status": {},
    "p_query": {"bucket": _BUCKET, "key": _KEY, "partition": _PARTITION, "lo": (bytes, True),
                "hi": (bytes, False), "reverse": (bool, True), "want": (int, True),
                "now": (int, True), "max_bytes": (int, True), "hint_for": (str, False),
                "skeleton": (bool, False)},
    # One key (the form nodes without batched reaping send) or a batch: see _SHAPES.
    "p_reap": {"bucket": (str, False), "key": (bytes, False), "sk": _SK,
               "partition": _PARTITION, "clock": (bytes, False), "items": (list, False)},
    "p_digests": {"partition": _PARTITION, "items": (list, True)},
}

PEER_OPS = frozenset(op for op in SCHEMA if op.startswith("p_"))
CLIENT_OPS = frozenset(SCHEMA) - PEER_OPS
# Admin commands (cluster, tokens, bucket set, repair; docs/security.md): every cluster command,
# `cluster status` and `cluster wait` included.
ADMIN_OPS = frozenset(op for op in CLIENT_OPS if op.startswith("cluster_")) | {
    "tokens", "bucket_set", "repair", "backup"}
# Access-control admin commands: every change, and reading who holds what. `auth_check`
# with a `user` other than the caller is admin too (dynd/security.py).
AUTH_ADMIN_OPS = frozenset({"role_create", "role_delete", "role_list", "role_get",
                            "role_grant", "role_revoke", "user_list", "user_get",
                            "user_grant_role", "user_revoke_role", "auth_set"})


@dataclass(frozen=True, slots=True)
class Request:
    """A request that passed ``validate_request``: its fields match ``SCHEMA[op]``."""

    op: str
    id: int
    fields: dict[str, Any]


def request(op: str, rid: int, **fields: Any) -> dict[str, Any]:
    """Build a request map (not validated: the receiver validates)."""
    _refuse_envelope_fields(fields, ("v", "id", "op"))
    return {"v": PROTOCOL_VERSION, "id": rid, "op": op, **fields}


def ok(rid: int, **fields: Any) -> dict[str, Any]:
    """Build a success response carrying the op's result fields."""
    _refuse_envelope_fields(fields, ("id", "ok", "error"))
    return {"id": rid, "ok": True, **fields}


def failure(rid: int, exc: DynError, **partial: Any) -> dict[str, Any]:
    """Build an error response; ``partial`` carries what the op did achieve, if anything."""
    _refuse_envelope_fields(partial, ("id", "ok", "error"))
    return {"id": rid, "ok": False, "error": exc.to_wire(), **partial}


def reply_id(msg: Any) -> int:
    """The id to answer ``msg`` with even when it is invalid: its id if readable, else 0."""
    if isinstance(msg, dict):
        rid = msg.get("id")
        if type(rid) is int and 0 <= rid <= MAX_REQUEST_ID:
            return rid
    return 0


def check_response(msg: Any) -> dict[str, Any]:
    """Return a success response, or raise the DynError a failure response reports.

    The fields of a failure other than id/ok/error (partial results) are put in the
    exception's ``details``.
    """
    if not isinstance(msg, dict) or type(msg.get("ok")) is not bool:
        raise ProtocolError(f"malformed response: {msg!r:.100}")
    if msg["ok"]:
        return msg
    exc = error_from_wire(msg.get("error"))
    exc.details.update((k, v) for k, v in msg.items() if k not in ("id", "ok", "error"))
    raise exc


def validate_request(msg: Any, limits: Limits) -> Request:
    """Check a decoded map against the envelope, ``SCHEMA`` and ``limits``.

    Raises ProtocolError for a malformed message (version, id, unknown op or field, missing
    field, wrong type) and Rejected for a well-formed one whose values break a limit or a
    naming rule (key too long, bad bucket name, r out of range, ...).
    """
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a map, not {type(msg).__name__}")
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r:.20}; "
                            f"this node speaks {PROTOCOL_VERSION}")
    rid = msg.get("id")
    if type(rid) is not int or not 0 <= rid <= MAX_REQUEST_ID:
        raise ProtocolError(f"request id must be an int in 0..{MAX_REQUEST_ID}")
    op: Any = msg.get("op")
    schema = SCHEMA.get(op) if type(op) is str else None
    if schema is None:
        raise ProtocolError(f"unknown op {op!r:.70}")
    fields = {name: value for name, value in msg.items() if name not in ("v", "id", "op")}
    for name, value in fields.items():
        spec = schema.get(name) if type(name) is str else None
        if spec is None:
            raise ProtocolError(f"unknown field {name!r:.70} for op {op!r}")
        expected = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        if type(value) not in expected:
            wanted = " or ".join(t.__name__ for t in expected)
            raise ProtocolError(f"field {name!r} of op {op!r} must be {wanted}, "
                                f"not {type(value).__name__}")
        check = _OP_VALUE_CHECKS.get((op, name)) or _VALUE_CHECKS.get(name)
        if check is not None:
            check(name, value, limits)
    for name, (_, required) in schema.items():
        if required and name not in fields:
            raise ProtocolError(f"op {op!r} needs field {name!r}")
    _check_shape(op, fields)
    for exclusive in _EXCLUSIVE_FIELDS.get(op, ()):
        if set(exclusive) <= set(fields):
            raise Rejected(f"op {op!r} takes {' or '.join(exclusive)}, not both")
    return Request(op=op, id=rid, fields=fields)


def _check_shape(op: str, fields: dict[str, Any]) -> None:
    """An op of ``_SHAPES`` carries exactly one of its shapes, whole."""
    shapes = _SHAPES.get(op)
    if shapes is None:
        return
    chosen = [(required, optional) for required, optional in shapes if fields.keys() & required]
    if len(chosen) != 1:
        either = " or ".join("+".join(sorted(required)) for required, _ in shapes)
        raise ProtocolError(f"op {op!r} takes one of {either}")
    required, optional = chosen[0]
    missing = sorted(required.difference(fields))
    if missing:
        raise ProtocolError(f"op {op!r} needs field {missing[0]!r}")
    others = set().union(*(r | o for r, o in shapes)) - required - optional
    stray = sorted(others & fields.keys())
    if stray:
        raise ProtocolError(f"op {op!r} with {'+'.join(sorted(required))} takes no "
                            f"field {stray[0]!r}")


def _refuse_envelope_fields(fields: dict[str, Any], reserved: tuple[str, ...]) -> None:
    clash = [name for name in reserved if name in fields]
    if clash:
        raise ValueError(f"fields {clash} are reserved for the message envelope")


def _check_key(name: str, key: bytes, limits: Limits) -> None:
    if not key:
        raise Rejected(f"{name} must not be empty")
    if len(key) > limits.max_key_bytes:
        raise Rejected(f"{name} of {len(key)} bytes exceeds limit {limits.max_key_bytes}")


def _check_sort_key(name: str, sk: bytes, limits: Limits) -> None:
    """1..MAX_SORT_KEY_BYTES: an empty one would be the plain key's storage key."""
    if not 1 <= len(sk) <= MAX_SORT_KEY_BYTES:
        raise Rejected(f"{name} (sort key) must be 1..{MAX_SORT_KEY_BYTES} bytes, "
                       f"not {len(sk)}")


def _check_value(name: str, value: bytes, limits: Limits) -> None:
    if len(value) > limits.max_value_bytes:
        raise Rejected(f"{name} of {len(value)} bytes exceeds limit {limits.max_value_bytes}")


def _check_name(label: str, text: str, max_bytes: int) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Rejected(f"{label} of {size} bytes exceeds limit {max_bytes}")
    if not _NAME_CHARS.fullmatch(text):
        raise Rejected(f"{label} {text!r} must be 1..{max_bytes} characters of A-Z a-z 0-9 _ . -")


def _check_bucket(name: str, bucket: str, limits: Limits) -> None:
    _check_name("bucket name", bucket, limits.max_bucket_name_bytes)


def _check_node_id(name: str, node: str, limits: Limits) -> None:
    _check_name(f"node id in {name!r}", node, MAX_NODE_ID_BYTES)


def _check_context(name: str, context: str, limits: Limits) -> None:
    size = len(context.encode("utf-8", "surrogatepass"))
    if size > limits.max_context_bytes:
        raise Rejected(f"{name} of {size} bytes exceeds limit {limits.max_context_bytes}")


def _check_seed(name: str, seed: str, limits: Limits) -> None:
    if not 0 < len(seed) <= MAX_SEED_CHARS:
        raise Rejected(f"{name} must be a host:port of 1..{MAX_SEED_CHARS} characters")


def _check_path(name: str, path: str, limits: Limits) -> None:
    if not 0 < len(path) <= MAX_PATH_CHARS or "\0" in path:
        raise Rejected(f"{name} must be a path of 1..{MAX_PATH_CHARS} characters, no NUL")


def _in_range(low: int, high: int | None) -> Callable[[str, int, Limits], None]:
    def check(name: str, number: int, limits: Limits) -> None:
        if number < low or (high is not None and number > high):
            bounds = f"in {low}..{high}" if high is not None else f"at least {low}"
            raise Rejected(f"{name} must be {bounds}, not {number}")
    return check


def _check_index_list(name: str, indices: list[Any], limits: Limits) -> None:
    for index in indices:
        if type(index) is not int or index < 0:
            raise ProtocolError(f"{name} must hold non-negative ints, not {index!r:.40}")


def _check_after(name: str, after: list[Any], limits: Limits) -> None:
    if (len(after) not in (2, 3) or type(after[0]) is not str
            or any(type(part) is not bytes for part in after[1:])):
        raise ProtocolError(f"{name} must be [bucket: str, key: bytes] or "
                            f"[bucket: str, key: bytes, sk: bytes]")
    _check_bucket(f"{name}[0]", after[0], limits)
    _check_key(f"{name}[1]", after[1], limits)
    if len(after) == 3:
        _check_sort_key(f"{name}[2]", after[2], limits)


def _check_position(name: str, after: list[Any] | str, limits: Limits) -> None:
    """Where a scan resumes: p_fetch's [bucket, key(, sk)], or a query's continuation token
    (its content is checked where it is decoded, against the query)."""
    if isinstance(after, str):
        if not 0 < len(after) <= MAX_QUERY_TOKEN_CHARS:
            raise Rejected(f"{name} (continuation token) must be 1..{MAX_QUERY_TOKEN_CHARS} "
                           f"characters")
        return
    _check_after(name, after, limits)


def _check_condition(name: str, cond: list[Any], limits: Limits) -> None:
    try:
        check_condition(cond)
    except BadCondition as exc:
        raise Rejected(f"{name}: {exc}") from None


def _check_select(name: str, select: str, limits: Limits) -> None:
    if select not in QUERY_SELECTS:
        raise Rejected(f"{name} must be one of {', '.join(QUERY_SELECTS)}, not {select!r:.20}")


def _check_scan_bound(name: str, bound: bytes, limits: Limits) -> None:
    """A replica scan's bound: a sort key, or one plus the byte that makes it exclusive."""
    if not 1 <= len(bound) <= MAX_SORT_KEY_BYTES + 1:
        raise Rejected(f"{name} must be 1..{MAX_SORT_KEY_BYTES + 1} bytes, not {len(bound)}")


def _check_via(name: str, via: list[Any], limits: Limits) -> None:
    """The nodes a forwarded put came through, in order: one per hop taken."""
    if not 1 <= len(via) <= MAX_FORWARD_HOPS:
        raise Rejected(f"{name} must name 1..{MAX_FORWARD_HOPS} nodes, not {len(via)}")
    for node in via:
        if type(node) is not str:
            raise ProtocolError(f"{name} must hold node ids, not {node!r:.40}")
        _check_node_id(name, node, limits)


def _check_grant_bucket(name: str, bucket: str, limits: Limits) -> None:
    if bucket != "*":
        _check_bucket(name, bucket, limits)


def _check_role(name: str, role: str, limits: Limits) -> None:
    _check_name("role name", role, MAX_ROLE_NAME_BYTES)


def _check_perms(name: str, perms: list[Any], limits: Limits) -> None:
    if not 1 <= len(perms) <= MAX_PERMS or any(type(perm) is not str for perm in perms):
        raise ProtocolError(f"{name} must be a list of 1..{MAX_PERMS} permission names")


def _check_user(name: str, user: str, limits: Limits) -> None:
    if not 1 <= len(user) <= MAX_USER_CHARS:
        raise Rejected(f"{name} must be 1..{MAX_USER_CHARS} characters")


def _item_check(with_digest: bool) -> Callable[[str, list[Any], Limits], None]:
    """The items of p_digests (``[bucket, key, sk or null]``) or of a batched p_reap (the
    same and the digest the reaper agreed on): 1..MAX_REAP_ITEMS of them."""
    form = "[bucket, key, sk or null, digest]" if with_digest else "[bucket, key, sk or null]"

    def check(name: str, items: list[Any], limits: Limits) -> None:
        if not 1 <= len(items) <= MAX_REAP_ITEMS:
            raise Rejected(f"{name} must hold 1..{MAX_REAP_ITEMS} items, not {len(items)}")
        for item in items:
            if (type(item) is not list or len(item) != (4 if with_digest else 3)
                    or type(item[0]) is not str or type(item[1]) is not bytes
                    or (item[2] is not None and type(item[2]) is not bytes)
                    or (with_digest and type(item[3]) is not bytes)):
                raise ProtocolError(f"{name} must hold {form} items, not {item!r:.60}")
            _check_bucket(name, item[0], limits)
            _check_key(f"{name} key", item[1], limits)
            if item[2] is not None:
                _check_sort_key(f"{name} sk", item[2], limits)
            if with_digest and len(item[3]) != DIGEST_BYTES:
                raise Rejected(f"{name} digest must be {DIGEST_BYTES} bytes, not {len(item[3])}")
    return check


_check_replication = _in_range(1, MAX_N)
_check_primary_quorum = _in_range(0, MAX_N)
_check_non_negative = _in_range(0, None)

# Fields of one op that exclude each other: a put expires after ``ttl`` seconds or at
# ``expire_at`` (ms since the epoch), never both.
_EXCLUSIVE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {"put": (("ttl", "expire_at"),)}

# Ops with more than one shape: (required fields, optional fields) of each; a request
# carries exactly one, whole, besides the fields every shape shares. p_reap reaps one key
# (what nodes without batched reaping send and read) or a batch of items.
_SHAPES: dict[str, tuple[tuple[frozenset[str], frozenset[str]], ...]] = {
    "p_reap": ((frozenset({"bucket", "key", "clock"}), frozenset({"sk"})),
               (frozenset({"items"}), frozenset())),
}

# Limit and naming checks by field name; a field means the same thing in every op.
_VALUE_CHECKS: dict[str, Callable[[str, Any, Limits], None]] = {
    "key": _check_key,
    "sk": _check_sort_key,
    "value": _check_value,
    "bucket": _check_bucket,
    "name": _check_bucket,
    "node": _check_node_id,
    "old": _check_node_id,
    "new": _check_node_id,
    "hint_for": _check_node_id,
    "context": _check_context,
    "seed": _check_seed,
    "dir": _check_path,
    "n": _check_replication,
    "r": _check_replication,
    "w": _check_replication,
    "pr": _check_primary_quorum,
    "pw": _check_primary_quorum,
    "partition": _check_non_negative,
    "ttl": _in_range(0, MAX_TTL_SECONDS),  # 0: never expires, whatever the bucket's default
    "expire_at": _in_range(1, 2**63 - 1),  # how far ahead: the coordinator's clock decides
    "grace": _in_range(1, MAX_TTL_SECONDS),
    "limit": _in_range(1, MAX_FETCH_LIMIT),
    "count": _in_range(0, MAX_TOKENS),
    "level": _in_range(0, MAX_TREE_LEVEL),
    "indices": _check_index_list,
    "segments": _check_index_list,
    "after": _check_position,
    "cond": _check_condition,
    "select": _check_select,
    "lo": _check_scan_bound,
    "hi": _check_scan_bound,
    "want": _in_range(1, MAX_QUERY_LIMIT),
    "now": _check_non_negative,
    "max_bytes": _in_range(1, None),
    "via": _check_via,
    "role": _check_role,
    "perms": _check_perms,
    "user": _check_user,
    "prefix": _check_value,
}
# Where one op gives a field a wider meaning than the table above.
_OP_VALUE_CHECKS: dict[tuple[str, str], Callable[[str, Any, Limits], None]] = {
    ("role_grant", "bucket"): _check_grant_bucket,
    ("role_revoke", "bucket"): _check_grant_bucket,
    ("auth_check", "bucket"): _check_grant_bucket,
    ("p_digests", "items"): _item_check(with_digest=False),
    ("p_reap", "items"): _item_check(with_digest=True),
    **{(op, "name"): _check_role for op in ("role_create", "role_delete", "role_get",
                                            "role_grant", "role_revoke")},
}
