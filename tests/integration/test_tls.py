"""Mutual TLS and authorization against real dynd processes, certificates made by trustme.

One module-scoped two-node cluster (n1, n2) of CA "good" serves every test; admin CN is
"ops", a data client is "alice". Another CA ("rogue") signs the certificates that must be
refused. Each test leaves the cluster serving, and checks so.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

from common.config import TLSConfig
from common.errors import DynError, Unauthorized
from common.messages import Request
from dynctl.client import Connection, SyncClient
from dynd import security
from dynd.membership import Member
from dynd.server import Peer
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    cluster,
    dynctl,
    dynctl_json,
    join_and_commit,
)

FRAME_TIMEOUT = 2.0  # the nodes' [limits] frame_timeout: handshakes must finish within it


@dataclass(frozen=True)
class Identity:
    """PEM files of one certificate: ca (trust anchor), cert, key."""

    ca: Path
    cert: Path
    key: Path

    def args(self) -> list[str]:
        return ["--tls-ca", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def tls(self) -> TLSConfig:
        return TLSConfig(str(self.ca), str(self.cert), str(self.key))


def issue(ca: trustme.CA, directory: Path, common_name: str) -> Identity:
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
    cert, key = directory / f"{common_name}.pem", directory / f"{common_name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return Identity(ca_path, cert, key)


def write_config(identity: Identity, path: Path, admins: tuple[str, ...] = ("ops",),
                 peer_identity: str = "member") -> Path:
    admins_toml = ", ".join(f'"{name}"' for name in admins)
    path.write_text(
        f'[tls]\nca = "{identity.ca}"\ncert = "{identity.cert}"\nkey = "{identity.key}"\n'
        f'admins = [{admins_toml}]\npeer_identity = "{peer_identity}"\n'
        f"[limits]\nframe_timeout = {FRAME_TIMEOUT}\n"
        f"[gossip]\ninterval = 0.2\n")
    return path


def start_tls_node(c: Cluster, node_id: str, identity: Identity, admin: Identity,
                   *extra: str, peer_identity: str = "member") -> DyndProcess:
    config = write_config(identity, c.root / f"{node_id}.toml", peer_identity=peer_identity)
    node = c.add(node_id, "-c", str(config), *extra, start=False)
    node.start(wait=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert node.proc is not None
        if node.proc.poll() is not None:
            raise RuntimeError(f"{node_id} exited:\n{node.log()[-3000:]}")
        if run(node, admin, "--timeout", "1", "ping").returncode == 0:
            return node
        time.sleep(0.1)
    raise RuntimeError(f"{node_id} did not answer ping over TLS:\n{node.log()[-3000:]}")


def run(node: DyndProcess, identity: Identity | None, *args: str):
    tls = identity.args() if identity is not None else []
    return dynctl("--node", node.addr, *tls, *args)


@dataclass(frozen=True)
class World:
    n1: DyndProcess
    n2: DyndProcess
    good_ca: trustme.CA
    admin: Identity
    alice: Identity
    rogue_ca: trustme.CA
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tls")
    good_ca, rogue_ca = trustme.CA(), trustme.CA()
    admin = issue(good_ca, root / "certs", "ops")
    alice = issue(good_ca, root / "certs", "alice")
    with cluster(root) as c:
        n1 = start_tls_node(c, "n1", issue(good_ca, root / "certs", "n1"), admin)
        n2 = start_tls_node(c, "n2", issue(good_ca, root / "certs", "n2"), admin)
        join_and_commit([n1, n2], *admin.args())
        for node in (n1, n2):
            wait_until_reachable(node, admin, {"n1", "n2"})
        yield World(n1, n2, good_ca, admin, alice, rogue_ca, root)


def assert_serving(world: World) -> None:
    """A write through n1 is read back through n2 (in-process client: no dynctl start-up)."""
    tls = {"tls_ca": str(world.alice.ca), "tls_cert": str(world.alice.cert),
           "tls_key": str(world.alice.key)}
    key = f"canary-{time.monotonic_ns()}".encode()
    with SyncClient.connect(world.n1.addr, **tls) as client:
        client.put(key, b"alive")
    with SyncClient.connect(world.n2.addr, **tls) as client:
        assert client.get(key).value == b"alive"


def wait_until_reachable(node: DyndProcess, admin: Identity, members: set[str]) -> None:
    """Until ``node`` sees every one of ``members`` as reachable (gossip over mutual TLS)."""
    deadline = time.monotonic() + 20
    while True:
        code, doc = dynctl_json("--node", node.addr, *admin.args(), "cluster", "status")
        reachable = {m["id"] for m in doc.get("members", ()) if m["reachable"]}
        if code == 0 and reachable == members:
            return
        assert time.monotonic() < deadline, doc
        time.sleep(0.3)


def wait_for_log_lines(node: DyndProcess, since: int, needle: str, count: int) -> None:
    """Until ``node``'s log, past offset ``since``, holds ``count`` lines with ``needle``."""
    deadline = time.monotonic() + 20
    while (seen := node.log()[since:].count(needle)) < count:
        assert time.monotonic() < deadline, f"{seen} of {count} {needle!r} lines"
        time.sleep(0.1)


def test_peers_talk_over_mutual_tls(world: World) -> None:
    for node in (world.n1, world.n2):
        wait_until_reachable(node, world.admin, {"n1", "n2"})
    assert_serving(world)


def test_plaintext_client_is_refused_and_logged(world: World) -> None:
    result = run(world.n1, None, "--timeout", "3", "ping")
    assert result.returncode == 5
    assert b"accepts only TLS connections" in result.stderr
    assert "tls_refused" in world.n1.log()
    assert_serving(world)


def test_client_without_certificate_is_refused(world: World) -> None:
    result = dynctl("--node", world.n1.addr, "--tls-ca", str(world.alice.ca), "get", "canary")
    assert result.returncode == 5, result.stderr
    assert_serving(world)


def test_client_of_another_ca_is_refused(world: World) -> None:
    stranger = issue(world.rogue_ca, world.root / "rogue", "ops")
    # It trusts the good CA, so only its own certificate is wrong.
    wrong_cert = Identity(world.admin.ca, stranger.cert, stranger.key)
    result = run(world.n1, wrong_cert, "bucket", "set", "evil", "--n", "1")
    assert result.returncode == 5, result.stderr
    # A client that trusts only another CA refuses the node's certificate itself.
    result = run(world.n1, stranger, "ping")
    assert result.returncode == 5 and b"certificate verify failed" in result.stderr
    assert_serving(world)


def test_admin_commands_need_an_admin_certificate(world: World) -> None:
    refused = run(world.n1, world.alice, "bucket", "set", "carts", "--n", "2")
    assert refused.returncode == 5
    assert b"not authorized" in refused.stderr
    assert "event=unauthorized op=bucket_set" in world.n1.log()
    assert run(world.n1, world.alice, "cluster", "commit").returncode == 5
    assert run(world.n1, world.alice, "repair").returncode == 5
    assert run(world.n1, world.alice, "cluster", "status").returncode == 5  # admin only
    accepted = run(world.n1, world.admin, "bucket", "set", "carts", "--n", "2")
    assert accepted.returncode == 0, accepted.stderr
    assert run(world.n1, world.admin, "cluster", "status").returncode == 0
    # Read-only and data commands are open to any certificate of the CA.
    assert run(world.n1, world.alice, "bucket", "get", "carts").returncode == 0
    assert run(world.n1, world.alice, "ring").returncode == 0
    assert_serving(world)


async def call_as(node: DyndProcess, identity: Identity, op: str, fields: dict) -> dict:
    """One raw request to ``node`` as ``identity``; a DynError reply is raised outside the
    nursery's group."""
    context = security.client_context(identity.tls())
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            connection = await Connection.open(node.addr, nursery, ssl_context=context)
            try:
                return await connection.call(op, fields)
            except DynError as exc:
                error = exc
            finally:
                connection.close()
    raise error


async def test_data_client_cannot_act_as_a_peer(world: World) -> None:
    with pytest.raises(Unauthorized, match="cluster member"):
        await call_as(world.n1, world.alice, "p_gossip", {})
    with pytest.raises(Unauthorized, match="cluster member"):
        await call_as(world.n1, world.alice, "p_put", {
            "bucket": "default", "key": b"k", "partition": 0, "clock": b""})
    with pytest.raises(Unauthorized, match="only ask to join as itself"):
        await call_as(world.n1, world.alice, "p_join", {"member": {
            "id": "n9", "addr": "127.0.0.1:1", "zone": "default", "incarnation": 1}})
    # A member's certificate is a peer.
    n2 = Identity(world.admin.ca, world.root / "certs" / "n2.pem", world.root / "certs" / "n2.key")
    reply = await call_as(world.n1, n2, "p_gossip", {})
    assert {m["id"] for m in reply["state"]["members"]} == {"n1", "n2"}


def test_node_of_another_ca_cannot_join_or_gossip(world: World, tmp_path: Path) -> None:
    rogue_admin = issue(world.rogue_ca, tmp_path / "certs", "ops")
    mark = len(world.n1.log())
    with cluster(tmp_path) as rogue_cluster:
        rogue = start_tls_node(rogue_cluster, "rogue", issue(world.rogue_ca, tmp_path / "certs",
                                                               "rogue"), rogue_admin,
                               "--seed", world.n1.addr)
        joined = run(rogue, rogue_admin, "--timeout", "10", "cluster", "join", world.n1.addr)
        assert joined.returncode in (4, 5)
        # Not a fixed sleep before checking that nothing changed: n1 refusing three of the
        # rogue's connections (its join, then its gossip rounds) shows n1 handled them.
        wait_for_log_lines(world.n1, mark, "event=tls_refused", 3)
    code, doc = dynctl_json("--node", world.n1.addr, *world.admin.args(), "cluster", "status")
    assert code == 0 and {m["id"] for m in doc["members"]} == {"n1", "n2"}
    assert_serving(world)


def test_node_of_another_cluster_with_the_same_ca_cannot_gossip_in(
        world: World, tmp_path: Path) -> None:
    mark = len(world.n1.log())
    with cluster(tmp_path) as other:
        stranger = start_tls_node(other, "x1", issue(world.good_ca, tmp_path / "certs", "x1"),
                                  world.admin, "--seed", world.n1.addr)
        # Not a fixed sleep before checking that nothing changed: two of the stranger's
        # gossip rounds refused by n1 show that n1 handled them.
        wait_for_log_lines(world.n1, mark, "event=unauthorized op=p_gossip", 2)
        assert run(stranger, world.admin, "ping").returncode == 0
    code, doc = dynctl_json("--node", world.n1.addr, *world.admin.args(), "cluster", "status")
    assert code == 0 and {m["id"] for m in doc["members"]} == {"n1", "n2"}
    assert_serving(world)


def test_silent_connection_is_dropped_after_the_handshake_deadline(world: World) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", world.n1.port), timeout=FRAME_TIMEOUT * 5) as s:
        assert s.recv(1024) == b""  # the node hangs up: no handshake within frame_timeout
    assert time.monotonic() - started < FRAME_TIMEOUT * 4
    assert_serving(world)


def test_garbage_instead_of_a_handshake_is_refused(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.n1.port), timeout=10) as s:
        s.sendall(b"\x00\x00\x00\x05\xa1\x61v\x01" + b"\x16\x03\x01\xff\xff" * 100)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert_serving(world)


@pytest.mark.parametrize("check_only", [[], ["--check-config"]], ids=["start", "check-config"])
def test_missing_tls_file_is_a_clear_start_up_error(tmp_path: Path, check_only: list[str]
                                                    ) -> None:
    """dynd(8): a message naming the file and the setting, exit 2, nothing written."""
    identity = Identity(tmp_path / "nope-ca.pem", tmp_path / "n.pem", tmp_path / "n.key")
    config = write_config(identity, tmp_path / "dynd.toml")
    result = subprocess.run([sys.executable, "-m", "dynd", "-c", str(config), "--data-dir",
                             str(tmp_path / "data"), *check_only], capture_output=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.decode() == (f"dynd: {config}: [tls] ca = "
                                      f"'{identity.ca}': no such file\n")
    assert not (tmp_path / "data").exists()


def test_mismatched_key_is_a_clear_start_up_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    one, two = issue(ca, tmp_path / "a", "n1"), issue(ca, tmp_path / "b", "n1")
    config = write_config(Identity(one.ca, one.cert, two.key), tmp_path / "dynd.toml")
    result = subprocess.run([sys.executable, "-m", "dynd", "-c", str(config), "--data-dir",
                             str(tmp_path / "data")], capture_output=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"dynd: {config}: [tls] cert = ".encode())
    assert b"do they match?" in result.stderr


def test_server_context_requires_a_client_certificate(tmp_path: Path) -> None:
    identity = issue(trustme.CA(), tmp_path, "n1")
    assert security.server_context(identity.tls()).verify_mode == ssl.CERT_REQUIRED
    assert security.client_context(identity.tls()).check_hostname


MEMBERS = {"n1": Member("n1", "127.0.0.1:1", "z", "valid", None, 1),
           "gone": Member("gone", "127.0.0.1:2", "z", "removed", None, 1)}
JOIN_AS_N9 = {"member": {"id": "n9", "addr": "127.0.0.1:9", "zone": "z", "incarnation": 1}}


@pytest.mark.parametrize(("op", "fields", "identity", "allowed"), [
    ("get", {"bucket": "b", "key": b"k"}, "alice", True),
    ("get", {"bucket": "b", "key": b"k"}, None, True),  # CA-signed, no CN: still a client
    ("cluster_status", {}, "alice", False),  # every cluster command is admin
    ("cluster_status", {}, "ops", True),
    ("ring", {}, "alice", True),
    ("bucket_set", {"name": "b"}, "alice", False),
    ("bucket_set", {"name": "b"}, "ops", True),
    ("cluster_commit", {}, "n1", False),  # a node is not an admin unless listed
    ("repair", {}, "ops", True),
    ("p_gossip", {}, "n1", True),
    ("p_gossip", {}, "ops", False),  # an admin is not a node
    ("p_gossip", {}, "gone", False),  # removed members are strangers again
    ("p_gossip", {}, None, False),
    ("p_join", JOIN_AS_N9, "n9", True),
    ("p_join", JOIN_AS_N9, "n1", False),
])
def test_authorize_table(op: str, fields: dict, identity: str | None, allowed: bool) -> None:
    tls = TLSConfig("ca", "cert", "key", admins=("ops",), peer_identity="member")
    req = Request(op=op, id=1, fields=fields)
    peer = Peer("127.0.0.1:5", identity)
    if allowed:
        security.authorize(req, peer, tls, MEMBERS)
    else:
        with pytest.raises(Unauthorized, match=f"{op}: not authorized"):
            security.authorize(req, peer, tls, MEMBERS)
    security.authorize(req, peer, None, MEMBERS)  # without [tls] nothing is checked


@pytest.mark.parametrize(("op", "fields", "identity"), [
    ("p_gossip", {}, "any-node-cert"),
    ("p_gossip", {}, None),
    ("p_join", JOIN_AS_N9, "n1"),
])
def test_default_peer_identity_accepts_any_certificate_of_the_ca(
        op: str, fields: dict, identity: str | None) -> None:
    """A peer must present a certificate of the same CA to gossip or replicate."""
    tls = TLSConfig("ca", "cert", "key", admins=("ops",))
    security.authorize(Request(op=op, id=1, fields=fields), Peer("127.0.0.1:5", identity),
                       tls, MEMBERS)


def test_default_mode_nodes_need_only_certificates_of_the_ca(tmp_path: Path) -> None:
    """Node certificates whose CN is not the node id form a cluster (peer_identity = "ca")."""
    ca = trustme.CA()
    admin = issue(ca, tmp_path / "certs", "ops")
    with cluster(tmp_path) as c:
        n1 = start_tls_node(c, "n1", issue(ca, tmp_path / "certs", "web-a"), admin,
                            peer_identity="ca")
        n2 = start_tls_node(c, "n2", issue(ca, tmp_path / "certs", "web-b"), admin,
                            peer_identity="ca")
        join_and_commit([n1, n2], *admin.args())
        wait_until_reachable(n1, admin, {"n1", "n2"})
        assert run(n1, admin, "put", "k", "v").returncode == 0
        got = run(n2, admin, "get", "--r", "2", "k")
        assert (got.returncode, got.stdout) == (0, b"v")
