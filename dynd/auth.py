"""Role-based access control: the gossiped model, its merge, and the compiled check.

A caller (principal) is a certificate common name. A *role* holds grants of operations
(get, put, delete, query, admin) on a bucket (or ``*``) and a partition-key prefix that
may contain ``${cn}``, the caller's own CN (DynamoDB's leading-key condition). A *user*
(a CN, or ``all`` = every caller with a certificate) holds roles. Access is allow-only:
the union of the grants of the caller's roles.

The state lives in the gossiped cluster state, so it merges like the rest of it, as a
semilattice (commutative, associative, idempotent). Every role, grant and membership is
its own register, so two concurrent grants made on the two sides of a partition both
survive; a register is ordered by ``(version, not present, writer)``, so at equal
versions a revoke (or delete) wins: a lost revoke would be a hole. Deleting a role and
creating it again gives it a new *generation*; grants and memberships of older
generations are dropped, so a stale copy of the old role never brings its grants back.

Grants are compiled once per state (``Policy``): per caller, bucket -> [(op mask, prefix)]
with ``${cn}`` substituted, so a check is one dict look-up and a few prefix tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from common.perms import OPS, PERM_NAMES, SHORTHANDS

_BIT = {op: 1 << i for i, op in enumerate(OPS)}
ANY_BUCKET = "*"
ALL_USERS = "all"  # the user every authenticated caller is
CN_TEMPLATE = b"${cn}"
MAX_ROLES = 256
MAX_GRANTS = 4096
MAX_MEMBERSHIPS = 8192
MAX_WIRE_BYTES = 256 * 1024
MAX_PREFIX_BYTES = 1024
MAX_USER_CHARS = 128
MAX_COUNTER = 2**63 - 1
# Local changes keep the limits above; copies changed apart (a partition) may merge into
# more, so a state from a peer is accepted up to this many times the limits: refusing it
# would stop gossip everywhere. Further local changes are refused until some are deleted.
MERGE_SLACK = 4
MAX_POLICY_CACHE = 10_000  # compiled callers kept per state; cleared when full
_ROLE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_BUCKET_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TEMPLATE = re.compile(rb"\$\{([^}]*)\}?")


class AuthError(ValueError):
    """A bad name, permission, prefix or state, or a limit reached (exit 5)."""


class AuthNotFound(AuthError):
    """A role or user that does not exist, or a revoke that matches no grant (exit 1)."""


class AuthFull(AuthError):
    """The auth state would exceed one of its limits."""


@dataclass(frozen=True)
class Register:
    """One entry's value: ``present`` False is a revoke (or a deleted role)."""

    version: int
    present: bool
    writer: str

    def rank(self) -> tuple[int, bool, str]:
        """Merge order: a higher version wins; at equal versions absent (a revoke) wins."""
        return (self.version, not self.present, self.writer)


@dataclass(frozen=True)
class RoleRegister:
    """A role: a higher generation always wins (it was created after a delete)."""

    generation: int
    version: int
    exists: bool
    writer: str

    def rank(self) -> tuple[int, int, bool, str]:
        return (self.generation, self.version, not self.exists, self.writer)


GrantKey = tuple[str, int, str, str, bytes]  # role, generation, op, bucket, prefix
MemberKey = tuple[str, str, int]  # user, role, generation
NEVER = Register(0, False, "")


@dataclass(frozen=True)
class AuthState:
    enabled: Register = NEVER
    roles: Mapping[str, RoleRegister] = field(default_factory=dict)
    grants: Mapping[GrantKey, Register] = field(default_factory=dict)
    members: Mapping[MemberKey, Register] = field(default_factory=dict)

    def is_default(self) -> bool:
        return self == AuthState()

    def live_role(self, name: str) -> RoleRegister | None:
        role = self.roles.get(name)
        return role if role is not None and role.exists else None


EMPTY = AuthState()


@dataclass(frozen=True)
class Grant:
    """A grant as shown to users: ops on a bucket and a pk prefix (``${cn}`` unsubstituted)."""

    role: str
    ops: tuple[str, ...]
    bucket: str
    prefix: bytes


# ------------------------------------------------------------------ validation


def check_role_name(name: Any) -> str:
    if not isinstance(name, str) or not _ROLE_NAME.fullmatch(name):
        raise AuthError(f"role name must be 1..64 characters of A-Z a-z 0-9 _ . -, "
                        f"got {name!r:.80}")
    return name


def check_user(name: Any) -> str:
    """A certificate CN: printable, no surrounding whitespace, bounded."""
    if (not isinstance(name, str) or not 1 <= len(name) <= MAX_USER_CHARS
            or not name.isprintable() or name != name.strip()):
        raise AuthError(f"user must be 1..{MAX_USER_CHARS} printable characters, "
                        f"got {name!r:.80}")
    return name


def check_bucket(bucket: Any) -> str:
    if bucket == ANY_BUCKET:
        return bucket
    if not isinstance(bucket, str) or not _BUCKET_NAME.fullmatch(bucket):
        raise AuthError(f"bucket must be '*' or 1..64 characters of A-Z a-z 0-9 _ . -, "
                        f"got {bucket!r:.80}")
    return bucket


def check_prefix(prefix: Any) -> bytes:
    """At most MAX_PREFIX_BYTES, and no ``${...}`` template other than ``${cn}``."""
    if not isinstance(prefix, bytes) or len(prefix) > MAX_PREFIX_BYTES:
        raise AuthError(f"prefix must be at most {MAX_PREFIX_BYTES} bytes")
    for match in _TEMPLATE.finditer(prefix):
        if match.group(0) != CN_TEMPLATE:
            raise AuthError(f"prefix may only use the template ${{cn}}, "
                            f"not {match.group(0)!r:.80}")
    return prefix


def expand_perms(perms: Iterable[Any]) -> tuple[str, ...]:
    """Permission names and shorthands -> the ops they stand for, in OPS order."""
    ops: set[str] = set()
    for perm in perms:
        if perm in SHORTHANDS:
            ops.update(SHORTHANDS[perm])
        elif perm in _BIT:
            ops.add(perm)
        else:
            raise AuthError(f"unknown permission {perm!r:.40}; one of {', '.join(PERM_NAMES)}")
    if not ops:
        raise AuthError("no permission given")
    return tuple(op for op in OPS if op in ops)


def _check_grant(ops: tuple[str, ...], bucket: str, prefix: bytes) -> None:
    if "admin" in ops and (bucket != ANY_BUCKET or prefix):
        raise AuthError("admin can only be granted on bucket '*' with no prefix")


def _check_counter(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise AuthError(f"{what} must be an integer in [0, {MAX_COUNTER}], got {value!r:.40}")
    return value


# ------------------------------------------------------------------ changes


def _bump(register: Register | None, present: bool, writer: str) -> Register:
    version = 0 if register is None else register.version
    return Register(version + 1, present, writer)


def set_enabled(auth: AuthState, enabled: bool, writer: str) -> AuthState:
    if auth.enabled.present == enabled:
        return auth
    return _checked(replace(auth, enabled=_bump(auth.enabled, enabled, writer)), auth)


def create_role(auth: AuthState, name: str, writer: str) -> tuple[AuthState, bool]:
    """The state with role ``name``, and whether it was created (False: it existed)."""
    check_role_name(name)
    known = auth.roles.get(name)
    if known is not None and known.exists:
        return auth, False
    generation = 1 if known is None else known.generation + 1
    roles = {**auth.roles, name: RoleRegister(generation, 1, True, writer)}
    return _checked(normalize(replace(auth, roles=roles)), auth), True


def delete_role(auth: AuthState, name: str, writer: str) -> AuthState:
    role = _live(auth, name)
    roles = {**auth.roles, name: replace(role, version=role.version + 1, exists=False,
                                         writer=writer)}
    return _checked(normalize(replace(auth, roles=roles)), auth)


def _live(auth: AuthState, name: str) -> RoleRegister:
    role = auth.live_role(check_role_name(name))
    if role is None:
        raise AuthNotFound(f"no role {name!r}")
    return role


def grant(auth: AuthState, role: str, perms: Iterable[Any], bucket: str, prefix: bytes,
          writer: str) -> AuthState:
    ops, bucket, prefix = expand_perms(perms), check_bucket(bucket), check_prefix(prefix)
    _check_grant(ops, bucket, prefix)
    generation = _live(auth, role).generation
    grants = dict(auth.grants)
    for op in ops:
        key = (role, generation, op, bucket, prefix)
        if not (key in grants and grants[key].present):
            grants[key] = _bump(grants.get(key), True, writer)
    return _checked(replace(auth, grants=grants), auth)


def revoke(auth: AuthState, role: str, perms: Iterable[Any], bucket: str, prefix: bytes,
           writer: str) -> AuthState:
    """Revoke the ops; AuthNotFound (listing the role's grants) when none of them is
    granted there: a typo in a revoke must not pass silently while the real grant stays."""
    ops, bucket, prefix = expand_perms(perms), check_bucket(bucket), check_prefix(prefix)
    generation = _live(auth, role).generation
    grants = dict(auth.grants)
    matched = False
    for op in ops:
        key = (role, generation, op, bucket, prefix)
        if key in grants and grants[key].present:
            grants[key] = _bump(grants[key], False, writer)
            matched = True
    if not matched:
        shown = "; ".join(describe(g) for g in role_grants(auth, role)) or "none"
        raise AuthNotFound(f"role {role!r} has no such grant; its grants: {shown}")
    return _checked(replace(auth, grants=grants), auth)


def set_membership(auth: AuthState, user: str, role: str, present: bool,
                   writer: str) -> AuthState:
    """Give ``user`` the role (present) or take it away; taking a role the user does not
    hold is AuthNotFound."""
    check_user(user)
    key = (user, role, _live(auth, role).generation)
    known = auth.members.get(key)
    holds = known is not None and known.present
    if holds == present:
        if present:
            return auth
        raise AuthNotFound(f"user {user!r} does not hold role {role!r}")
    members = {**auth.members, key: _bump(known, present, writer)}
    return _checked(replace(auth, members=members), auth)


# ------------------------------------------------------------------ merge


def _newest(a: Mapping, b: Mapping) -> dict:
    merged = dict(a)
    for key, register in b.items():
        if key not in merged or register.rank() > merged[key].rank():
            merged[key] = register
    return merged


def merge(a: AuthState, b: AuthState) -> AuthState:
    """The join of two copies: the newest of every register, stale generations dropped."""
    if a == b:
        return a
    enabled = max(a.enabled, b.enabled, key=Register.rank)
    return normalize(AuthState(enabled, _newest(a.roles, b.roles),
                               _newest(a.grants, b.grants), _newest(a.members, b.members)))


def _current(auth: AuthState, role: str, generation: int) -> bool:
    """Entries of a role's current, not deleted generation are kept; others can never
    count again (a deleted generation is final), so they are dropped."""
    known = auth.roles.get(role)
    return known is not None and known.generation == generation and known.exists


def normalize(auth: AuthState) -> AuthState:
    grants = {k: v for k, v in auth.grants.items() if _current(auth, k[0], k[1])}
    members = {k: v for k, v in auth.members.items() if _current(auth, k[1], k[2])}
    if len(grants) == len(auth.grants) and len(members) == len(auth.members):
        return auth
    return replace(auth, grants=grants, members=members)


# ------------------------------------------------------------------ views


def _present_ops(auth: AuthState) -> dict[tuple[str, str, bytes], set[str]]:
    """(role, bucket, prefix) -> the ops granted there, over every live role, in one pass
    (``normalize`` already dropped the entries of old or deleted generations)."""
    ops: dict[tuple[str, str, bytes], set[str]] = {}
    for (role, _, op, bucket, prefix), register in auth.grants.items():
        if register.present:
            ops.setdefault((role, bucket, prefix), set()).add(op)
    return ops


def role_grants(auth: AuthState, role: str) -> list[Grant]:
    """The role's present grants, one per (bucket, prefix), ops in OPS order."""
    _live(auth, role)
    found = {(bucket, prefix): ops for (name, bucket, prefix), ops in _present_ops(auth).items()
             if name == role}
    return [Grant(role, tuple(op for op in OPS if op in ops), bucket, prefix)
            for (bucket, prefix), ops in sorted(found.items())]


def describe(grant: Grant) -> str:
    prefix = grant.prefix.decode("utf-8", "backslashreplace")
    return f"{','.join(grant.ops)} on {grant.bucket} prefix {prefix!r}"


def roles_of(auth: AuthState, user: str, *, with_all: bool = False) -> list[str]:
    """The live roles ``user`` holds (and, with_all, those of the user ``all``)."""
    users = {user, ALL_USERS} if with_all else {user}
    return sorted({role for (who, role, generation), register in auth.members.items()
                   if who in users and register.present and _current(auth, role, generation)})


def users(auth: AuthState) -> list[str]:
    """Every user holding at least one live role."""
    return sorted({who for (who, role, generation), register in auth.members.items()
                   if register.present and _current(auth, role, generation)})


def live_roles(auth: AuthState) -> list[str]:
    return sorted(name for name, role in auth.roles.items() if role.exists)


# ------------------------------------------------------------------ the check


class Policy:
    """The grants of one auth state, compiled; ``allows`` is the per-request check."""

    def __init__(self, auth: AuthState) -> None:
        self.auth = auth
        self.enabled = auth.enabled.present
        self._grants: dict[str, list[tuple[str, int, bytes, Grant]]] = {}
        for (role, bucket, prefix), ops in sorted(_present_ops(auth).items()):
            grant_ = Grant(role, tuple(op for op in OPS if op in ops), bucket, prefix)
            mask = sum(_BIT[op] for op in ops)
            self._grants.setdefault(role, []).append((bucket, mask, prefix, grant_))
        self._roles: dict[str, list[str]] = {}
        for (who, role, generation), register in auth.members.items():
            if register.present and _current(auth, role, generation):
                self._roles.setdefault(who, []).append(role)
        self._compiled: dict[str, dict[str, list[tuple[int, bytes, Grant]]]] = {}

    def _table(self, principal: str) -> dict[str, list[tuple[int, bytes, Grant]]]:
        table = self._compiled.get(principal)
        if table is not None:
            return table
        if len(self._compiled) >= MAX_POLICY_CACHE:
            self._compiled.clear()
        table = {}
        cn = principal.encode("utf-8", "surrogatepass")
        roles = {*self._roles.get(principal, ()), *self._roles.get(ALL_USERS, ())}
        for role in sorted(roles):
            for bucket, mask, prefix, grant_ in self._grants.get(role, ()):
                table.setdefault(bucket, []).append(
                    (mask, prefix.replace(CN_TEMPLATE, cn), grant_))
        self._compiled[principal] = table
        return table

    def allows(self, principal: str, op: str, bucket: str, pk: bytes = b"") -> Grant | None:
        """The grant that lets ``principal`` run ``op`` on (bucket, pk), or None."""
        bit = _BIT[op]
        table = self._table(principal)
        for entries in (table.get(bucket, ()), table.get(ANY_BUCKET, ())):
            for mask, prefix, grant_ in entries:
                if mask & bit and pk.startswith(prefix):
                    return grant_
        return None


# ------------------------------------------------------------------ wire


def to_wire(auth: AuthState) -> dict[str, Any]:
    """CBOR-friendly and canonical (sorted), so equal states have equal digests."""
    e = auth.enabled
    return {
        "enabled": [e.present, e.version, e.writer],
        "roles": [[name, r.exists, r.generation, r.version, r.writer]
                  for name, r in sorted(auth.roles.items())],
        "grants": [[*key, r.present, r.version, r.writer]
                   for key, r in sorted(auth.grants.items())],
        "members": [[*key, r.present, r.version, r.writer]
                    for key, r in sorted(auth.members.items())],
    }


def _register_from_wire(item: list, what: str) -> Register:
    present, version, writer = item
    if not isinstance(present, bool) or not isinstance(writer, str) or len(writer) > 128:
        raise AuthError(f"{what}: malformed register")
    return Register(_check_counter(version, f"{what} version"), present, writer)


def _rows(obj: Any, what: str, width: int, limit: int) -> list[list]:
    if not isinstance(obj, list) or len(obj) > limit:
        raise AuthFull(f"auth state full: more than {limit} {what}") if isinstance(
            obj, list) else AuthError(f"auth {what} must be a list")
    if not all(isinstance(row, list) and len(row) == width for row in obj):
        raise AuthError(f"every auth {what} entry must be a list of {width} items")
    return obj


def from_wire(obj: Any) -> AuthState:
    """Rebuild and strictly validate an auth state from a peer (hostile input)."""
    keys = {"enabled", "roles", "grants", "members"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise AuthError(f"auth state must be a map with keys {sorted(keys)}")
    enabled = obj["enabled"]
    if not isinstance(enabled, list) or len(enabled) != 3:
        raise AuthError("auth enabled must be [bool, version, writer]")
    roles: dict[str, RoleRegister] = {}
    for name, exists, generation, version, writer in _rows(obj["roles"], "roles", 5,
                                                                  MAX_ROLES * MERGE_SLACK):
        register = _register_from_wire([exists, version, writer], "role")
        roles[check_role_name(name)] = RoleRegister(
            _check_counter(generation, "role generation"), register.version, exists, writer)
    if len(roles) != len(obj["roles"]):
        raise AuthError("a role is listed twice")
    grants: dict[GrantKey, Register] = {}
    for role, generation, op, bucket, prefix, *register in _rows(
            obj["grants"], "grants", 8, MAX_GRANTS * MERGE_SLACK):
        if not isinstance(op, str) or op not in _BIT:
            raise AuthError(f"unknown op {op!r:.40} in a grant")
        _check_grant((op,), check_bucket(bucket), check_prefix(prefix))
        key = (check_role_name(role), _check_counter(generation, "grant generation"), op,
               bucket, prefix)
        grants[key] = _register_from_wire(register, "grant")
    members: dict[MemberKey, Register] = {}
    for user, role, generation, *register in _rows(obj["members"], "memberships", 6,
                                                   MAX_MEMBERSHIPS * MERGE_SLACK):
        key = (check_user(user), check_role_name(role),
               _check_counter(generation, "membership generation"))
        members[key] = _register_from_wire(register, "membership")
    if len(grants) != len(obj["grants"]) or len(members) != len(obj["members"]):
        raise AuthError("a grant or membership is listed twice")
    auth = AuthState(_register_from_wire(enabled, "enabled"), roles, grants, members)
    if normalize(auth) != auth:
        raise AuthError("a grant or membership names a role generation that is not current")
    return auth


def _checked(auth: AuthState, before: AuthState) -> AuthState:
    """``auth``, the result of a local change to ``before``, unless the change grew it
    beyond a limit (AuthFull, exit 5). A change that adds nothing (a revoke, a delete)
    always passes, so a state merged beyond the limits can be brought back under them."""
    for count, was, limit, what in (
            (len(auth.roles), len(before.roles), MAX_ROLES, "roles"),
            (len(auth.grants), len(before.grants), MAX_GRANTS, "grant entries"),
            (len(auth.members), len(before.members), MAX_MEMBERSHIPS, "memberships")):
        if count > limit and count > was:
            raise AuthFull(f"auth state full: more than {limit} {what} (deleted roles and "
                           "revoked entries count too)")
    size = len(cbor2.dumps(to_wire(auth)))
    if size > MAX_WIRE_BYTES and size > len(cbor2.dumps(to_wire(before))):
        raise AuthFull(f"auth state full: {size} bytes on the wire, limit {MAX_WIRE_BYTES}")
    return auth


def digest(auth: AuthState) -> bytes:
    """16 bytes that differ when states differ: a node confirms a change has reached a
    member by comparing these."""
    return hashlib.blake2b(cbor2.dumps(to_wire(auth), canonical=True), digest_size=16).digest()
