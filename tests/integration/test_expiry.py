"""Expiry through dynctl and the Python client on one real dynd process: put --ttl and
--expire-at, reads before and after the expiry, a bucket's default ttl, and the exit
codes of bad input (docs/commands.md, "Items with sort keys, queries and expiry")."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from common.errors import Rejected
from dynctl.client import SyncClient
from tests.integration.harness import DyndProcess, dynctl, dynctl_json, one_node, wait_until


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    """One node for the module: each test writes keys (and buckets) of its own."""
    yield from one_node(tmp_path_factory.mktemp("expiry"))


def run(node, *args: str):
    return dynctl("--node", node.addr, *args)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_value_with_a_ttl_is_read_until_it_expires_then_reads_as_deleted(node) -> None:
    with SyncClient.connect(node.addr) as client:
        context = client.put(b"session", b"token", ttl=2)
        got = client.get(b"session")
        assert got.found and got.values[0].value == b"token"
        expires_at = got.values[0].expires_at
        assert expires_at is not None
        assert expires_at - got.values[0].written_at == timedelta(seconds=2)
        wait_until(lambda: run(node, "get", "session").returncode == 1, 15,
                   "the value to expire")
        expired = client.get(b"session")
        assert (expired.found, expired.values) == (False, [])
        assert expired.context == context  # still covers the expired value
    code, doc = dynctl_json("--node", node.addr, "get", "session")
    assert code == 1 and doc["found"] is False and doc["values"] == []
    # A write over it with that context starts afresh, without an expiry.
    assert run(node, "put", "session", "again").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "get", "session")
    assert code == 0 and [v["value"] for v in doc["values"]] == ["again"]
    assert "expires_at" not in doc["values"][0]


def test_get_json_shows_expires_at_as_rfc3339(node) -> None:
    assert run(node, "put", "k", "v", "--ttl", "1h").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "get", "k")
    (value,) = doc["values"]
    written = datetime.fromisoformat(value["written_at"])
    expires = datetime.fromisoformat(value["expires_at"])
    assert code == 0 and value["expires_at"].endswith("Z")
    assert expires - written == timedelta(hours=1)
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    assert run(node, "put", "k2", "v", "--expire-at", _rfc3339(moment)).returncode == 0
    code, doc = dynctl_json("--node", node.addr, "get", "k2")
    assert datetime.fromisoformat(doc["values"][0]["expires_at"]) == moment


def test_a_buckets_ttl_applies_to_later_writes_and_ttl_0_overrides_it(node) -> None:
    code, doc = dynctl_json("--node", node.addr, "bucket", "set", "cache", "--ttl", "5m",
                            "--grace", "1h")
    assert code == 0 and (doc["bucket"]["ttl"], doc["bucket"]["grace"]) == (300, 3600)
    code, doc = dynctl_json("--node", node.addr, "bucket", "get", "cache")
    assert (doc["bucket"]["ttl"], doc["bucket"]["grace"]) == (300, 3600)
    code, doc = dynctl_json("--node", node.addr, "bucket", "get", "default")
    assert (doc["bucket"]["ttl"], doc["bucket"]["grace"]) == (0, 86400)  # node's grace
    assert run(node, "put", "-b", "cache", "a", "v").returncode == 0
    assert run(node, "put", "-b", "cache", "b", "v", "--ttl", "0").returncode == 0
    assert run(node, "put", "-b", "cache", "c", "v", "--ttl", "90").returncode == 0
    spans = {}
    for key in ("a", "b", "c"):
        _, doc = dynctl_json("--node", node.addr, "get", "-b", "cache", key)
        value = doc["values"][0]
        spans[key] = None if "expires_at" not in value else (
            datetime.fromisoformat(value["expires_at"])
            - datetime.fromisoformat(value["written_at"])).total_seconds()
    assert spans == {"a": 300, "b": None, "c": 90}


@pytest.mark.parametrize("args", [
    ["put", "k", "v", "--ttl", "-5"], ["put", "k", "v", "--ttl", "soon"],
    ["put", "k", "v", "--ttl", "3651d"], ["put", "k", "v", "--ttl", "1.5h"],
    ["put", "k", "v", "--ttl", "5m", "--expire-at", "2099-01-01T00:00:00Z"],
    ["put", "k", "v", "--expire-at", "tomorrow"],
    ["put", "k", "v", "--expire-at", "2099-01-01T00:00:00"],  # no offset
    ["delete", "k", "--ttl", "5m"], ["bucket", "set", "cache", "--grace", "2x"],
])
def test_bad_expiry_options_exit_2(node, args: list[str]) -> None:
    assert run(node, *args).returncode == 2


def test_an_expire_at_in_the_past_is_refused_naming_the_coordinators_clock(node) -> None:
    past = _rfc3339(datetime.now(UTC) - timedelta(seconds=30))
    refused = run(node, "put", "past", "v", "--expire-at", past)
    assert refused.returncode == 5
    assert b"s in the past on n1's clock" in refused.stderr
    assert run(node, "get", "past").returncode == 1  # nothing was written
    with SyncClient.connect(node.addr) as client, pytest.raises(Rejected, match="past"):
        client.put(b"past", b"v", expire_at=datetime.now(UTC) - timedelta(seconds=1))


def test_a_grace_under_4_antientropy_periods_is_refused_naming_both(node) -> None:
    refused = run(node, "bucket", "set", "graced", "--grace", "10m")  # period 300 s
    assert refused.returncode == 5
    assert b"600 s" in refused.stderr and b"300 s" in refused.stderr
    assert run(node, "bucket", "set", "graced", "--grace", "20m").returncode == 0


def test_an_expired_item_leaves_queries_and_counts_at_once(node) -> None:
    assert run(node, "put", "T", "stays", "--sk", "a").returncode == 0
    # 5 s: the query below starts a dynctl process, which takes seconds on a busy machine.
    assert run(node, "put", "T", "goes", "--sk", "b", "--ttl", "5").returncode == 0
    code, doc = dynctl_json("--node", node.addr, "query", "T")
    shown = {item["sk"]: item["values"][0] for item in doc["items"]}
    assert code == 0 and set(shown) == {"a", "b"}
    assert "expires_at" in shown["b"] and "expires_at" not in shown["a"]
    wait_until(lambda: run(node, "get", "T", "--sk", "b").returncode == 1, 15,
               "the item to expire")
    assert run(node, "query", "T").stdout == b"a\tstays\n"
    assert run(node, "query", "T", "--count").stdout.strip() == b"1"
    assert run(node, "query", "T", "--eq", "b", "--exists").returncode == 1
