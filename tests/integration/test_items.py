"""Items (KEY, SK) through dynctl and the Python client on one real dynd process
(docs/commands.md, "Items with sort keys")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.limits import MAX_SORT_KEY_BYTES
from dynctl.client import SyncClient
from tests.integration.harness import DyndProcess, dynctl, dynctl_json, one_node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    """One node for the module: each test writes keys (and buckets) of its own."""
    yield from one_node(tmp_path_factory.mktemp("items"))


def run(node, *args: str, input: bytes | None = None):
    return dynctl("--node", node.addr, *args, input=input)


def test_items_of_one_key_are_apart_from_each_other_and_from_the_plain_key(node) -> None:
    assert run(node, "put", "USER#alice", "profile", "--sk", "PROFILE").returncode == 0
    assert run(node, "put", "USER#alice", "order", "--sk", "ORDER#1").returncode == 0
    assert run(node, "get", "USER#alice").returncode == 1  # no plain key written
    got = run(node, "get", "USER#alice", "--sk", "PROFILE")
    assert (got.returncode, got.stdout) == (0, b"profile")
    assert run(node, "put", "USER#alice", "plain").returncode == 0
    assert run(node, "get", "USER#alice").stdout == b"plain"
    assert run(node, "get", "USER#alice", "--sk", "ORDER#1").stdout == b"order"
    # --sk-hex names the same bytes as --sk
    assert run(node, "get", "USER#alice", "--sk-hex", b"ORDER#1".hex()).stdout == b"order"
    assert run(node, "delete", "USER#alice", "--sk", "ORDER#1").returncode == 0
    assert run(node, "get", "USER#alice", "--sk", "ORDER#1").returncode == 1
    assert run(node, "get", "USER#alice", "--sk", "PROFILE").stdout == b"profile"
    assert run(node, "get", "USER#alice").stdout == b"plain"


def test_binary_sort_keys_siblings_resolve_and_replicas_per_item(node) -> None:
    sk = bytes([0, 255, 10, 0])
    assert run(node, "put", "k", "a", "--sk-hex", sk.hex(), "--blind").returncode == 0
    assert run(node, "put", "k", "b", "--sk-hex", sk.hex(), "--blind").returncode == 0
    assert run(node, "get", "k", "--sk-hex", sk.hex()).returncode == 3  # two siblings
    code, doc = dynctl_json("--node", node.addr, "get", "k", "--sk-hex", sk.hex())
    assert code == 3 and sorted(v["value"] for v in doc["values"]) == ["a", "b"]
    assert run(node, "get", "k", "--sk-hex", (sk + b"\0").hex()).returncode == 1
    resolved = run(node, "resolve", "k", "--sk-hex", sk.hex(), "--merge", "union-lines")
    assert resolved.returncode == 0, resolved.stderr
    assert run(node, "get", "k", "--sk-hex", sk.hex()).stdout == b"a\nb\n"
    code, doc = dynctl_json("--node", node.addr, "replicas", "k", "--sk-hex", sk.hex())
    assert code == 0 and [(r["node"], r["found"], r["siblings"]) for r in doc["replicas"]] == [
        ("n1", True, 1)]
    code, doc = dynctl_json("--node", node.addr, "replicas", "k")
    assert code == 0 and doc["replicas"][0]["found"] is False


def test_bad_sort_keys_exit_codes(node) -> None:
    both = run(node, "get", "bad", "--sk", "a", "--sk-hex", "61")
    assert both.returncode == 2 and b"exclude each other" in both.stderr
    assert run(node, "get", "bad", "--sk-hex", "61", "--sk", "a").returncode == 2
    assert run(node, "put", "bad", "v", "--sk-hex", "zz").returncode == 2
    assert run(node, "delete", "bad", "--sk-hex", "abc").returncode == 2  # odd length
    over = run(node, "put", "bad", "v", "--sk", "s" * (MAX_SORT_KEY_BYTES + 1))
    assert over.returncode == 5 and b"1024" in over.stderr
    assert run(node, "put", "bad", "v", "--sk", "s" * MAX_SORT_KEY_BYTES).returncode == 0
    assert run(node, "get", "bad", "--sk", "").returncode == 5  # empty: not the plain key
    assert run(node, "replicas", "bad", "--sk-hex", "").returncode == 5


def test_python_client_items_and_read_your_writes_per_item(node) -> None:
    with SyncClient.connect(node.addr) as client:
        ctx = client.put(b"cart", b"line 1", sk=b"LINE#1")
        client.put(b"cart", b"line 2", sk="LINE#2")
        assert client.get(b"cart", sk=b"LINE#1").values[0].value == b"line 1"
        assert client.get(b"cart").found is False
        client.put(b"cart", b"line 1b", sk=b"LINE#1", context=ctx)
        assert [v.value for v in client.get(b"cart", sk=b"LINE#1").values] == [b"line 1b"]
        client.delete(b"cart", sk=b"LINE#2")
        assert client.get(b"cart", sk=b"LINE#2").found is False
        assert len(client._client.written) == 2  # remembered per item


def test_cluster_features_shows_sort_keys_switched_on_in_a_one_node_cluster(node) -> None:
    code, shown = dynctl_json("--node", node.addr, "cluster", "features")
    assert code == 0 and {"feature": "sk", "active": True, "lacking": []} in shown["features"]
    piped = run(node, "cluster", "features")
    assert piped.returncode == 0 and b"feature=sk active=yes lacking=-" in piped.stdout
