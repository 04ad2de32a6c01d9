"""dynd/security.py with access control: which caller may run which request."""

from __future__ import annotations

import pytest

from common.config import TLSConfig
from common.errors import Unauthorized
from common.messages import Request
from dynd import auth, security
from dynd.auth import Policy
from dynd.membership import Member
from dynd.server import Peer

MEMBERS = {"n1": Member("n1", "127.0.0.1:1", "z", "valid", None, 1)}
TLS_CA = TLSConfig("ca", "cert", "key", admins=("ops",), peer_identity="ca")


def policy(enabled: bool) -> Policy:
    state, _ = auth.create_role(auth.EMPTY, "self", "n1")
    state = auth.grant(state, "self", ["readwrite"], "app", b"USER#${cn}#", "n1")
    state = auth.set_membership(state, "all", "self", True, "n1")
    state, _ = auth.create_role(state, "analyst", "n1")
    state = auth.grant(state, "analyst", ["read"], "accounts", b"BRANCH#MUM#", "n1")
    state = auth.set_membership(state, "priya", "analyst", True, "n1")
    state, _ = auth.create_role(state, "operator", "n1")
    state = auth.grant(state, "operator", ["admin"], "*", b"", "n1")
    state = auth.set_membership(state, "olga", "operator", True, "n1")
    return Policy(auth.set_enabled(state, enabled, "n1"))


def keyed(op: str, bucket: str, key: bytes) -> Request:
    fields = {"bucket": bucket, "key": key}
    if op == "put":
        fields["value"] = b"v"
    return Request(op=op, id=1, fields=fields)


CASES = [
    (keyed("get", "app", b"USER#alice#1"), "alice", True),
    (keyed("put", "app", b"USER#alice#1"), "alice", True),
    (keyed("get", "app", b"USER#bob#1"), "alice", False),  # ${cn} isolation
    (keyed("replicas", "app", b"USER#bob#1"), "alice", False),
    (keyed("query", "app", b"USER#bob#"), "alice", False),
    (keyed("get", "accounts", b"BRANCH#MUM#7"), "priya", True),
    (keyed("put", "accounts", b"BRANCH#MUM#7"), "priya", False),  # read-only analyst
    (keyed("delete", "accounts", b"BRANCH#MUM#7"), "priya", False),
    (keyed("get", "accounts", b"BRANCH#DEL#7"), "priya", False),
    (keyed("get", "app", b"anything"), "ops", True),  # [tls] admins: superusers
    (keyed("get", "app", b"USER#alice#1"), None, False),  # no CN, no principal
    (Request("bucket_set", 1, {"name": "b"}), "olga", True),  # an admin grant
    (Request("role_create", 1, {"name": "r"}), "olga", True),
    (Request("role_create", 1, {"name": "r"}), "alice", False),
    (Request("auth_set", 1, {"enabled": False}), "ops", True),
    (Request("auth_check", 1, {"check_op": "get", "bucket": "b", "key": b"k"}), "alice", True),
    (Request("auth_check", 1, {"check_op": "get", "bucket": "b", "key": b"k", "user": "bob"}),
     "alice", False),
    (Request("auth_whoami", 1, {}), "alice", True),
    (Request("ring", 1, {}), "alice", True),
    (Request("p_gossip", 1, {}), "alice", False),  # members only, whatever peer_identity
    (Request("p_put", 1, {}), "alice", False),
    (Request("p_gossip", 1, {}), "n1", True),
]


@pytest.mark.parametrize(("request_", "caller", "allowed"), CASES)
def test_enabled_access_control(request_: Request, caller: str | None, allowed: bool) -> None:
    check = policy(enabled=True)
    peer = Peer("127.0.0.1:5", caller)
    if allowed:
        security.authorize(request_, peer, TLS_CA, MEMBERS, check)
    else:
        with pytest.raises(Unauthorized, match=f"{request_.op}: not authorized"):
            security.authorize(request_, peer, TLS_CA, MEMBERS, check)


@pytest.mark.parametrize(("request_", "caller"), [
    (keyed("get", "app", b"USER#bob#1"), "alice"),
    (keyed("put", "accounts", b"x"), None),
    (Request("p_gossip", 1, {}), "alice"),  # peer_identity = "ca" holds while disabled
])
def test_disabled_access_control_checks_no_grant(request_: Request, caller: str | None) -> None:
    security.authorize(request_, Peer("127.0.0.1:5", caller), TLS_CA, MEMBERS, policy(False))


def test_an_admin_grant_counts_before_access_control_is_enabled() -> None:
    """So that the operator who will enable it can prepare roles (and is not locked out)."""
    security.authorize(Request("role_create", 1, {"name": "r"}), Peer("a", "olga"), TLS_CA,
                       MEMBERS, policy(False))


def test_a_refusal_is_logged_with_caller_op_and_reason(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    with pytest.raises(Unauthorized):
        security.authorize(keyed("get", "app", b"USER#bob#1"), Peer("1.2.3.4:5", "alice"),
                           TLS_CA, MEMBERS, policy(True))
    assert ("event=unauthorized op=get peer=1.2.3.4:5 caller='alice' reason=\"certificate CN "
            "'alice' holds no grant of get on bucket 'app'") in caplog.text
