"""Access control against real dynd processes over mutual TLS (certificates by trustme).

One module-scoped three-node cluster (n1..n3, node certificates whose CN is the node id,
``peer_identity = "ca"``, the old default, so that enabling access control is what closes
the peer protocol to clients). Identities: ``ops`` ([tls] admins), ``alice`` and ``bob``
(self-service users), ``priya`` (read-only analyst), ``mallory`` (a client certificate of
the same CA with no role of her own). The tests run in file order: set up, enable, check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from common.errors import NotFound, Unauthorized
from dynctl.client import SyncClient
from tests.integration.harness import DyndProcess, cluster, dynctl_json, join_and_commit
from tests.integration.test_tls import (
    Identity,
    call_as,
    issue,
    run,
    start_tls_node,
    wait_until_reachable,
)

USERS = ("ops", "alice", "bob", "priya", "mallory")


@dataclass(frozen=True)
class World:
    nodes: tuple[DyndProcess, ...]
    ids: dict[str, Identity]
    root: Path

    def ctl(self, who: str, *args: str, node: int = 0) -> tuple[int, dict]:
        return dynctl_json("--node", self.nodes[node].addr, *self.ids[who].args(), *args)

    def client(self, who: str, node: int = 0) -> SyncClient:
        identity = self.ids[who]
        return SyncClient.connect(self.nodes[node].addr, tls_ca=str(identity.ca),
                                  tls_cert=str(identity.cert), tls_key=str(identity.key))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rbac")
    ca = trustme.CA()
    ids = {name: issue(ca, root / "certs", name) for name in USERS}
    with cluster(root) as c:
        nodes = tuple(start_tls_node(c, f"n{i}", issue(ca, root / "certs", f"n{i}"),
                                     ids["ops"], peer_identity="ca") for i in (1, 2, 3))
        join_and_commit(list(nodes), *ids["ops"].args())
        for node in nodes:
            wait_until_reachable(node, ids["ops"], {"n1", "n2", "n3"})
        yield World(nodes, ids, root)


def test_roles_users_and_their_exit_codes(world: World) -> None:
    assert world.ctl("ops", "role", "get", "self-service")[0] == 1
    assert world.ctl("ops", "role", "create", "self-service") == (
        0, {"name": "self-service", "created": True})
    assert world.ctl("ops", "role", "create", "self-service") == (
        0, {"name": "self-service", "created": False})
    code, role = world.ctl("ops", "role", "grant", "self-service", "readwrite", "-b", "app",
                           "--prefix", "USER#${cn}#")
    assert (code, role) == (0, {"name": "self-service", "grants": [
        {"perms": ["get", "put", "delete", "query"], "bucket": "app", "prefix": "USER#${cn}#"}]})
    assert world.ctl("ops", "role", "grant", "self-service", "fly", "-b", "app")[0] == 2
    assert world.ctl("ops", "role", "grant", "self-service", "read", "-b", "app",
                     "--prefix", "USER#${user}#")[0] == 5
    assert world.ctl("ops", "role", "grant", "self-service", "admin", "-b", "app")[0] == 5
    code, error = world.ctl("ops", "role", "revoke", "self-service", "read", "-b", "app",
                            "--prefix", "USER#")
    assert code == 1 and "get,put,delete,query on app prefix 'USER#${cn}#'" in \
        error["error"]["message"]
    assert world.ctl("ops", "role", "create", "analyst")[0] == 0
    assert world.ctl("ops", "role", "grant", "analyst", "read", "-b", "accounts",
                     "--prefix", "BRANCH#MUM#")[0] == 0
    assert world.ctl("ops", "user", "grant-role", "priya", "nope")[0] == 1
    assert world.ctl("ops", "user", "grant-role", "priya", "analyst") == (
        0, {"user": "priya", "roles": ["analyst"]})
    assert world.ctl("ops", "user", "grant-role", "all", "self-service")[0] == 0
    assert world.ctl("ops", "user", "get", "nobody")[0] == 1
    assert world.ctl("ops", "user", "list")[1] == {"users": [
        {"user": "all", "roles": ["self-service"]}, {"user": "priya", "roles": ["analyst"]}]}
    # Not an admin: every change, and reading who holds what, is refused.
    assert world.ctl("alice", "role", "create", "mine")[0] == 5
    assert world.ctl("alice", "user", "grant-role", "alice", "analyst")[0] == 5
    assert world.ctl("alice", "role", "list")[0] == 5
    assert world.ctl("alice", "auth", "enable")[0] == 5
    # Every node holds the change once the command returned.
    for node in (1, 2):
        assert world.ctl("ops", "role", "get", "analyst", node=node)[0] == 0


def test_auth_check_and_whoami_answer_for_oneself(world: World) -> None:
    assert world.ctl("alice", "auth", "check", "put", "-b", "app", "USER#alice#1") == (
        0, {"allowed": True, "grant": {"role": "self-service", "perms": [
            "get", "put", "delete", "query"], "bucket": "app", "prefix": "USER#${cn}#"}})
    assert world.ctl("alice", "auth", "check", "get", "-b", "app", "USER#bob#1") == (
        5, {"allowed": False, "grant": None})
    assert world.ctl("alice", "auth", "check", "get", "-b", "accounts", "BRANCH#MUM#1",
                     "--as", "priya")[0] == 5  # --as is an admin command
    assert world.ctl("ops", "auth", "check", "put", "-b", "accounts", "BRANCH#MUM#1",
                     "--as", "priya")[0] == 5
    assert world.ctl("ops", "auth", "check", "get", "-b", "accounts", "BRANCH#MUM#1",
                     "--as", "priya")[0] == 0
    assert world.ctl("priya", "auth", "whoami") == (
        0, {"user": "priya", "admin": False, "roles": ["analyst", "self-service"]})
    assert world.ctl("ops", "auth", "whoami")[1]["admin"] is True
    assert world.ctl("alice", "auth", "status") == (0, {"enabled": False})


def test_enable_then_each_caller_reaches_only_its_grants(world: World) -> None:
    with world.client("ops") as ops:
        ops.put(b"BRANCH#MUM#7", b"balance", bucket="accounts")
        ops.put(b"USER#bob#profile", b"bob's", bucket="app")
        ops.call("bucket_set", name="app", n=1, r=1, w=1)  # most puts are forwarded
    assert world.ctl("ops", "auth", "enable") == (0, {"enabled": True})
    for node in range(3):
        assert world.ctl("alice", "auth", "status", node=node)[1] == {"enabled": True}
    for node in range(3):  # a put forwarded to the key's one primary is authorized once
        with world.client("alice", node) as alice:
            alice.put(b"USER#alice#%d" % node, b"mine", bucket="app")
            assert alice.get(b"USER#alice#%d" % node, bucket="app").value == b"mine"
            with pytest.raises(Unauthorized, match="holds no grant of get"):
                alice.get(b"USER#bob#profile", bucket="app")
            with pytest.raises(Unauthorized):
                alice.put(b"USER#bob#profile", b"hijacked", bucket="app")
            with pytest.raises(Unauthorized):
                alice.call("replicas", bucket="app", key=b"USER#bob#profile")
    with world.client("priya") as priya:
        assert priya.get(b"BRANCH#MUM#7", bucket="accounts").value == b"balance"
        with pytest.raises(Unauthorized, match="holds no grant of put"):
            priya.put(b"BRANCH#MUM#7", b"0", bucket="accounts")
        with pytest.raises(Unauthorized):
            priya.delete(b"BRANCH#MUM#7", bucket="accounts")
        with pytest.raises(Unauthorized):
            priya.get(b"BRANCH#DEL#1", bucket="accounts")
    with world.client("mallory") as mallory:
        with pytest.raises(Unauthorized):
            mallory.get(b"BRANCH#MUM#7", bucket="accounts")
    code, _ = world.ctl("mallory", "get", "-b", "app", "USER#bob#profile")
    assert code == 5
    assert "event=unauthorized op=get" in world.nodes[0].log()
    with world.client("bob") as bob:
        assert bob.get(b"USER#bob#profile", bucket="app").value == b"bob's"


async def test_a_client_certificate_cannot_send_peer_frames_once_enabled(world: World) -> None:
    n2 = Identity(world.ids["ops"].ca, world.root / "certs" / "n2.pem",
                  world.root / "certs" / "n2.key")
    state = (await call_as(world.nodes[0], n2, "p_gossip", {}))["state"]
    assert state["auth"]["enabled"][0] is True
    forged = {**state, "auth": {**state["auth"], "enabled": [False, 2**40, "n9"]}}
    with pytest.raises(Unauthorized, match="cluster member"):
        await call_as(world.nodes[0], world.ids["alice"], "p_gossip", {"state": forged})
    with pytest.raises(Unauthorized, match="cluster member"):
        await call_as(world.nodes[0], world.ids["alice"], "p_put", {
            "bucket": "app", "key": b"USER#bob#profile", "partition": 0, "clock": b""})
    assert world.ctl("ops", "auth", "status") == (0, {"enabled": True})
    got = await call_as(world.nodes[0], world.ids["bob"], "get", {"bucket": "app",
                                                         "key": b"USER#bob#profile"})
    assert [v["value"] for v in got["values"]] == [b"bob's"]


def test_a_revoke_holds_on_every_node_when_it_returns(world: World) -> None:
    clients = [world.client("priya", node) for node in range(3)]
    with clients[0] as c1, clients[1] as c2, clients[2] as c3:
        for client in (c1, c2, c3):
            assert client.get(b"BRANCH#MUM#7", bucket="accounts").value == b"balance"
        with world.client("ops", 1) as ops:
            ops.role_revoke("analyst", ["read"], bucket="accounts", prefix="BRANCH#MUM#")
        for client in (c1, c2, c3):
            with pytest.raises(Unauthorized):
                client.get(b"BRANCH#MUM#7", bucket="accounts")


def test_a_recreated_role_starts_empty_and_the_client_offers_every_command(
        world: World) -> None:
    with world.client("ops") as ops:
        ops.role_grant("analyst", ["read"], bucket="accounts", prefix=b"BRANCH#MUM#")
        ops.role_delete("analyst")
        with pytest.raises(NotFound):
            ops.role_get("analyst")
        assert ops.role_create("analyst") is True
        assert ops.role_get("analyst") == {"name": "analyst", "grants": []}
        assert ops.user_list() == [{"user": "all", "roles": ["self-service"]}]
        assert ops.auth_check("get", "BRANCH#MUM#7", bucket="accounts", user="priya")[
            "allowed"] is False
        assert ops.auth_whoami()["admin"] is True
        assert [r["name"] for r in ops.role_list()] == ["analyst", "self-service"]


def test_disable_needs_only_a_superuser(world: World) -> None:
    assert world.ctl("alice", "auth", "disable")[0] == 5
    assert world.ctl("ops", "auth", "disable") == (0, {"enabled": False})
    with world.client("mallory", 2) as mallory:
        assert mallory.get(b"BRANCH#MUM#7", bucket="accounts").value == b"balance"


def test_enable_is_refused_without_tls_or_when_a_cn_is_not_the_node_id(tmp_path: Path
                                                                        ) -> None:
    ca = trustme.CA()
    ops = issue(ca, tmp_path / "certs", "ops")
    with cluster(tmp_path) as c:
        plain = c.add("p1")
        code, error = dynctl_json("--node", plain.addr, "auth", "enable")
        assert code == 5 and "needs [tls]" in error["error"]["message"]
        web = start_tls_node(c, "n1", issue(ca, tmp_path / "certs", "web-a"), ops,
                             peer_identity="ca")
        code, error = dynctl_json("--node", web.addr, *ops.args(), "auth", "enable")
        assert code == 5 and "not so on: n1" in error["error"]["message"]
        assert run(web, ops, "auth", "status").stdout.strip() != b""
