"""Access control model (dynd/auth.py): merge laws, revokes that survive, generations,
limits, the wire format, and the compiled check against a brute-force reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynd import auth, membership
from dynd.auth import AuthError, AuthFull, AuthNotFound, AuthState, Policy
from tests.support.membership import cluster as founded_cluster

ROLES = ("r1", "r2", "r3")
USERS = ("alice", "bob", "all")
BUCKETS = ("app", "logs", "*")
PREFIXES = (b"", b"USER#", b"USER#${cn}#", b"USER#alice#")
WRITERS = ("n1", "n2", "n3")

# One random admin change: (function name, arguments); applied with `apply`.
change = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(ROLES)),
    st.tuples(st.just("delete"), st.sampled_from(ROLES)),
    st.tuples(st.just("grant"), st.sampled_from(ROLES),
              st.sampled_from(("get", "put", "read", "write", "all", "query", "delete")),
              st.sampled_from(BUCKETS), st.sampled_from(PREFIXES)),
    st.tuples(st.just("revoke"), st.sampled_from(ROLES),
              st.sampled_from(("get", "put", "read", "write")),
              st.sampled_from(BUCKETS), st.sampled_from(PREFIXES)),
    st.tuples(st.just("member"), st.sampled_from(USERS), st.sampled_from(ROLES), st.booleans()),
    st.tuples(st.just("enable"), st.booleans()),
)


def apply(state: AuthState, step: tuple, writer: str) -> AuthState:
    """The change, or the state unchanged when the change is refused (no such role...)."""
    kind, *args = step
    try:
        if kind == "create":
            return auth.create_role(state, args[0], writer)[0]
        if kind == "delete":
            return auth.delete_role(state, args[0], writer)
        if kind == "grant":
            return auth.grant(state, args[0], [args[1]], args[2], args[3], writer)
        if kind == "revoke":
            return auth.revoke(state, args[0], [args[1]], args[2], args[3], writer)
        if kind == "member":
            return auth.set_membership(state, args[0], args[1], args[2], writer)
        return auth.set_enabled(state, args[0], writer)
    except AuthError:
        return state


@st.composite
def states(draw: Any) -> AuthState:
    """A state reached by random changes, some made on copies that diverged and merged."""
    state = auth.EMPTY
    for _ in range(draw(st.integers(0, 3))):
        sides = []
        for writer in WRITERS[:draw(st.integers(1, 3))]:
            side = state
            for step in draw(st.lists(change, max_size=8)):
                side = apply(side, step, writer)
            sides.append(side)
        for side in sides:
            state = auth.merge(state, side)
    return state


@settings(max_examples=150, deadline=None)
@given(states(), states(), states())
def test_merge_is_commutative_associative_idempotent(a: AuthState, b: AuthState,
                                                     c: AuthState) -> None:
    assert auth.merge(a, b) == auth.merge(b, a)
    assert auth.merge(auth.merge(a, b), c) == auth.merge(a, auth.merge(b, c))
    assert auth.merge(a, a) == a
    assert auth.merge(a, auth.EMPTY) == a


@settings(max_examples=150, deadline=None)
@given(states(), st.sampled_from(ROLES), st.sampled_from(BUCKETS),
       st.sampled_from(PREFIXES), change)
def test_a_revoke_is_never_lost_to_a_concurrent_change(base: AuthState, role: str, bucket: str,
                                                       prefix: bytes, other: tuple) -> None:
    """A grant revoked on one side stays revoked after merging any one concurrent change
    made on the other side (a concurrent grant of it included: the revoke wins the tie)."""
    try:
        base = auth.grant(auth.create_role(base, role, "n1")[0], role, ["get"], bucket,
                          prefix, "n1")
    except AuthError:
        return
    revoked = auth.revoke(base, role, ["get"], bucket, prefix, "n1")
    merged = auth.merge(revoked, apply(base, other, "n2"))
    assert not any(g.bucket == bucket and g.prefix == prefix and "get" in g.ops
                   for g in _grants_or_none(merged, role))


def _grants_or_none(state: AuthState, role: str) -> list[auth.Grant]:
    try:
        return auth.role_grants(state, role)
    except AuthNotFound:
        return []


def test_concurrent_grants_on_both_sides_both_survive() -> None:
    base = auth.create_role(auth.EMPTY, "r", "n1")[0]
    left = auth.grant(base, "r", ["read"], "app", b"A#", "n1")
    right = auth.grant(base, "r", ["write"], "app", b"B#", "n2")
    merged = auth.merge(left, right)
    assert [(g.ops, g.prefix) for g in auth.role_grants(merged, "r")] == [
        (("get", "query"), b"A#"), (("put", "delete"), b"B#")]


def test_a_recreated_role_never_picks_up_its_old_grants() -> None:
    old = auth.grant(auth.create_role(auth.EMPTY, "r", "n1")[0], "r", ["all"], "app", b"",
                     "n1")
    old = auth.set_membership(old, "bob", "r", True, "n1")
    recreated = auth.create_role(auth.delete_role(old, "r", "n1"), "r", "n1")[0]
    merged = auth.merge(recreated, old)  # a stale copy still holding the old generation
    assert auth.role_grants(merged, "r") == []
    assert auth.roles_of(merged, "bob") == []
    assert Policy(auth.set_enabled(merged, True, "n1")).allows("bob", "get", "app", b"k") is None


def test_concurrent_recreations_share_a_generation() -> None:
    base = auth.delete_role(auth.create_role(auth.EMPTY, "r", "n1")[0], "r", "n1")
    left = auth.grant(auth.create_role(base, "r", "n1")[0], "r", ["get"], "app", b"a", "n1")
    right = auth.grant(auth.create_role(base, "r", "n2")[0], "r", ["put"], "app", b"a", "n2")
    assert auth.role_grants(auth.merge(left, right), "r")[0].ops == ("get", "put")


def reference(state: AuthState, cn: str, op: str, bucket: str, pk: bytes) -> bool:
    """Straight from the registers, no compilation: is there a present grant of a live
    role, held (present membership of the same generation) by cn or all, that matches?"""
    for (role, generation, granted, on, prefix), register in state.grants.items():
        known = state.roles.get(role)
        if not (register.present and known is not None and known.exists
                and known.generation == generation):
            continue
        held = any(state.members.get((user, role, generation), auth.NEVER).present
                   for user in (cn, "all"))
        template = prefix.replace(b"${cn}", cn.encode())
        if held and granted == op and on in (bucket, "*") and pk.startswith(template):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(states(), st.sampled_from(("alice", "bob", "carol")),
       st.sampled_from(("get", "put", "delete", "query")), st.sampled_from(("app", "logs")),
       st.sampled_from((b"USER#alice#1", b"USER#bob#", b"USER#", b"x", b"")))
def test_the_compiled_check_equals_the_reference(state: AuthState, cn: str, op: str,
                                                 bucket: str, pk: bytes) -> None:
    found = Policy(state).allows(cn, op, bucket, pk)
    assert (found is not None) == reference(state, cn, op, bucket, pk)
    if found is not None:
        assert op in found.ops


def test_cn_template_confines_each_user_to_their_prefix() -> None:
    state = auth.grant(auth.create_role(auth.EMPTY, "self", "n1")[0], "self", ["readwrite"],
                       "app", b"USER#${cn}#", "n1")
    policy = Policy(auth.set_membership(state, "all", "self", True, "n1"))
    assert policy.allows("alice", "put", "app", b"USER#alice#profile") is not None
    assert policy.allows("alice", "get", "app", b"USER#bob#profile") is None
    assert policy.allows("alice", "get", "other", b"USER#alice#profile") is None


@pytest.mark.parametrize(("perms", "bucket", "prefix", "message"), [
    (["fly"], "app", b"", "unknown permission"),
    (["admin"], "app", b"", "admin can only be granted on bucket '*'"),
    (["admin"], "*", b"x", "admin can only be granted"),
    (["get"], "app", b"USER#${user}#", r"only use the template \$\{cn\}"),
    (["get"], "app", b"USER#${cn", r"only use the template \$\{cn\}"),
    (["get"], "bad bucket", b"", "bucket must be"),
])
def test_bad_grants_are_refused(perms: list[str], bucket: str, prefix: bytes,
                                message: str) -> None:
    state = auth.create_role(auth.EMPTY, "r", "n1")[0]
    with pytest.raises(AuthError, match=message):
        auth.grant(state, "r", perms, bucket, prefix, "n1")


def test_a_revoke_that_matches_nothing_lists_the_grants() -> None:
    state = auth.grant(auth.create_role(auth.EMPTY, "r", "n1")[0], "r", ["read"], "app",
                       b"A#", "n1")
    with pytest.raises(AuthNotFound, match=r"its grants: get,query on app prefix 'A#'"):
        auth.revoke(state, "r", ["read"], "app", b"B#", "n1")
    with pytest.raises(AuthNotFound, match="no role"):
        auth.revoke(state, "nope", ["read"], "app", b"A#", "n1")


def test_limits_are_enforced() -> None:
    state = auth.EMPTY
    for i in range(auth.MAX_ROLES):
        state = auth.create_role(state, f"role{i}", "n1")[0]
    with pytest.raises(AuthFull, match="auth state full: more than 256 roles"):
        auth.create_role(state, "one-more", "n1")
    state = auth.create_role(auth.EMPTY, "r", "n1")[0]
    full = AuthState(state.enabled, state.roles, {
        ("r", 1, "get", "app", b"%d" % i): auth.Register(1, True, "n1")
        for i in range(auth.MAX_GRANTS)})
    with pytest.raises(AuthFull, match="more than 4096 grant entries"):
        auth.grant(full, "r", ["get"], "app", b"one-more", "n1")
    big = auth.grant(state, "r", ["get"], "app", b"x" * auth.MAX_PREFIX_BYTES, "n1")
    with pytest.raises(AuthFull, match="bytes on the wire"):
        for i in range(300):
            big = auth.grant(big, "r", ["get"], "app", b"%04d" % i + b"x" * 1000, "n1")


@settings(max_examples=100, deadline=None)
@given(states())
def test_wire_round_trip_and_default_omitted(state: AuthState) -> None:
    assert auth.from_wire(auth.to_wire(state)) == state
    cluster = membership.ClusterState(**{**founded_cluster(1).__dict__, "auth": state})
    wire = membership.to_wire(cluster)
    assert ("auth" in wire) == (not state.is_default())
    assert membership.from_wire(wire) == cluster


def test_a_default_auth_state_leaves_the_digest_as_old_nodes_compute_it() -> None:
    state = founded_cluster(1)
    assert "auth" not in membership.to_wire(state)
    assert membership.reconcile(state, state).auth == auth.EMPTY


@pytest.mark.parametrize("corrupt", [
    lambda w: {**w, "extra": 1},
    lambda w: {**w, "roles": [["r", True, 1, 1]]},
    lambda w: {**w, "roles": [["bad name", True, 1, 1, "n1"]]},
    lambda w: {**w, "grants": [["ghost", 1, "get", "app", b"", True, 1, "n1"]]},
    lambda w: {**w, "grants": [["r", 1, "fly", "app", b"", True, 1, "n1"]]},
    lambda w: {**w, "grants": [["r", 1, "admin", "app", b"", True, 1, "n1"]]},
    lambda w: {**w, "members": [["bob", "r", 0, True, 1, "n1"]]},
    lambda w: {**w, "enabled": [1, 1, "n1"]},
    lambda w: {**w, "roles": [["r", True, 1, -1, "n1"]]},
    lambda w: {**w, "grants": [["r", 1, "get", "app", b"", True, 1, "n1"]] * 5000},
    lambda w: {**w, "grants": [["r", 1, ["get"], "app", b"", True, 1, "n1"]]},  # unhashable
    lambda w: {**w, "grants": [[["r"], 1, "get", "app", b"", True, 1, "n1"]]},
    lambda w: {**w, "members": [["bob", ["r"], 1, True, 1, "n1"]]},
    lambda w: {**w, "members": [["bob", "r", [1], True, 1, "n1"]]},
])
def test_from_wire_refuses_malformed_states(corrupt: Any) -> None:
    wire = auth.to_wire(auth.create_role(auth.EMPTY, "r", "n1")[0])
    with pytest.raises(AuthError):
        auth.from_wire(corrupt(wire))
    cluster = membership.to_wire(founded_cluster(1))
    with pytest.raises(membership.MembershipError, match="auth"):
        membership.from_wire({**cluster, "auth": corrupt(wire)})


atoms = (st.none() | st.booleans() | st.integers(-2, 2**64)
         | st.sampled_from(["r", "*", "get", "", "a b"]) | st.binary(max_size=4))
junk = atoms | st.lists(atoms, max_size=3) | st.dictionaries(st.text(max_size=3), atoms,
                                                             max_size=2)


def rows(width: int) -> st.SearchStrategy[list]:
    return st.lists(st.lists(junk, min_size=width, max_size=width), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"enabled": st.just([True, 1, "n1"]) | junk,
                              "roles": st.just([["r", True, 1, 1, "n1"]]) | rows(5),
                              "grants": rows(8), "members": rows(6)}) | junk)
def test_from_wire_never_crashes_on_junk(obj: Any) -> None:
    """A hostile peer's auth state is refused with AuthError, never another exception."""
    try:
        auth.from_wire(obj)
    except AuthError:
        pass


def test_copies_filled_apart_still_merge_and_gossip_but_take_no_more_roles() -> None:
    """Each side of a partition stays under the limit; their merge may not: peers must
    still accept it (or gossip would stop everywhere), and local changes are refused."""
    left = right = auth.EMPTY
    for i in range(200):
        left = auth.create_role(left, f"left{i}", "n1")[0]
        right = auth.create_role(right, f"right{i}", "n2")[0]
    merged = auth.merge(left, right)
    assert len(auth.live_roles(merged)) == 400
    assert auth.from_wire(auth.to_wire(merged)) == merged
    with pytest.raises(AuthFull, match="more than 256 roles"):
        auth.create_role(merged, "one-more", "n1")
    assert auth.delete_role(merged, "left0", "n1").live_role("left0") is None
