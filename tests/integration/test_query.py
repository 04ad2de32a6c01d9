"""dynctl query and Client.query against one real dynd process: output modes, paging,
reverse, tombstones, conflicts and exit codes (docs/commands.md, "Items with sort keys")."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from dynctl.client import SK, SyncClient
from tests.integration.harness import DyndProcess, dynctl, dynctl_json, one_node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    """One node for the module: each test queries a partition key of its own."""
    yield from one_node(tmp_path_factory.mktemp("query"))


@pytest.fixture
def pk(node: DyndProcess, request: pytest.FixtureRequest) -> str:
    """A partition key only this test uses, holding items P000..P024 = "post 0".."post 24"."""
    key = f"T-{request.node.name}"
    with SyncClient.connect(node.addr) as client:
        for i in range(25):
            client.put(key, f"post {i}", sk=f"P{i:03d}")
    return key


def run(node, *args: str):
    return dynctl("--node", node.addr, *args)


def _lines(result) -> list[bytes]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_piped_output_conditions_reverse_and_paging_with_all(node: DyndProcess, pk: str) -> None:
    assert _lines(run(node, "query", pk, "--between", "P003", "P005")) == [
        b"P003\tpost 3", b"P004\tpost 4", b"P005\tpost 5"]
    assert _lines(run(node, "query", pk, "--lt", "P002", "--reverse")) == [
        b"P001\tpost 1", b"P000\tpost 0"]
    assert _lines(run(node, "query", pk, "--prefix", "P01", "--keys-only")) == [
        b"P%03d" % i for i in range(10, 20)]
    assert _lines(run(node, "query", pk, "--eq", "P007")) == [b"P007\tpost 7"]
    assert _lines(run(node, "query", pk, "--hex", "--ge", b"P024".hex())) == [
        b"P024\tpost 24"]
    one_page = _lines(run(node, "query", pk, "--limit", "1000"))
    assert len(one_page) == 25
    assert _lines(run(node, "query", pk, "--limit", "4", "--all")) == one_page
    assert _lines(run(node, "query", pk, "--limit", "4", "--all", "--reverse")) == one_page[::-1]
    assert run(node, "query", pk, "--count").stdout == b"25\n"
    assert run(node, "query", "NOBODY").stdout == b""  # empty: exit 0


def test_pages_follow_the_next_token_on_stderr(node: DyndProcess, pk: str) -> None:
    seen: list[bytes] = []
    args = ["query", pk, "--limit", "10"]
    for _ in range(5):
        result = run(node, *args)
        seen.extend(_lines(result))
        tokens = [line for line in result.stderr.decode().splitlines()
                  if line.startswith("next: ")]
        if not tokens:
            break
        args = ["query", pk, "--limit", "10", "--after", tokens[0][len("next: "):]]
    assert seen == _lines(run(node, "query", pk, "--limit", "100"))


def test_json_shape_deletes_and_conflicts(node: DyndProcess, pk: str) -> None:
    assert run(node, "delete", pk, "--sk", "P001").returncode == 0
    assert run(node, "put", pk, "other", "--sk", "P002", "--blind").returncode == 0
    assert run(node, "put", pk, "\xff".encode("latin-1").decode("utf-8", "surrogateescape"),
               "--sk", "P003", "--blind").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "query", pk, "--le", "P003", "--limit", "2")
    assert code == 0
    assert [item["sk"] for item in doc["items"]] == ["P000", "P002"]  # P001 deleted
    conflicting = doc["items"][1]
    assert conflicting["conflict"] is True and conflicting["sk_encoding"] == "utf-8"
    assert sorted(v["value"] for v in conflicting["values"]) == ["other", "post 2"]
    assert doc["items"][0]["conflict"] is False and isinstance(doc["next"], str)
    piped = _lines(run(node, "query", pk, "--eq", "P003"))
    assert sorted(piped) == [b"P003\tb64:/w==", b"P003\tpost 3"]
    code, doc = dynctl_json("--node", node.addr, "query", pk, "--count")
    assert (code, doc) == (0, {"count": 24})


def test_exit_codes(node: DyndProcess, pk: str) -> None:
    assert run(node, "query", pk, "--prefix", "P00", "--exists").returncode == 0
    assert run(node, "query", pk, "--prefix", "X", "--exists").returncode == 1
    for bad in (["--eq", "a", "--lt", "b"], ["--limit", "0"], ["--limit", "1001"],
                ["--between", "b", "a"], ["--hex", "--eq", "zz"], ["--count", "--exists"]):
        result = run(node, "query", pk, *bad)
        assert result.returncode == 2, (bad, result.stderr)
    other = run(node, "query", pk, "--limit", "1", "--reverse")
    token = other.stderr.decode().split("next: ")[1].strip()
    foreign = run(node, "query", pk, "--limit", "1", "--after", token)
    assert foreign.returncode == 5 and b"belongs to another query" in foreign.stderr
    assert run(node, "query", pk, "--after", "!!").returncode == 5
    assert run(node, "query", pk, "--eq", "x" * 1025).returncode == 5
    code, doc = dynctl_json("--node", node.addr, "query", pk, "--after", "!!")
    assert code == 5 and "continuation token" in json.dumps(doc)


def test_python_client_pages_counts_and_iterates(node: DyndProcess, pk: str) -> None:
    with SyncClient.connect(node.addr) as client:
        page = client.query(pk, where=SK.begins_with(b"P00"), limit=3, reverse=True)
        assert [item.sk for item in page.items] == [b"P009", b"P008", b"P007"]
        assert page.items[0].values[0].value == b"post 9" and not page.items[0].conflict
        rest = client.query(pk, where=SK.begins_with(b"P00"), limit=100, reverse=True,
                            after=page.next)
        assert [item.sk for item in rest.items] == [b"P%03d" % i for i in range(6, -1, -1)]
        assert rest.next is None
        assert [item.sk for item in client.query_all(pk, where=SK.gt(b"P020"),
                                                     page_size=2)] == [
            b"P021", b"P022", b"P023", b"P024"]
        assert client.count(pk, where=SK.between(b"P010", b"P019")) == 10
        item = client.query(pk, where=SK.eq(b"P005")).items[0]
        client.put(pk, b"new", sk=item.sk, context=item.context)
        assert client.get(pk, sk=b"P005").value == b"new"
