"""Client-driven coordination against in-process stand-in nodes: a client given several
nodes sends each request about a key to the key's first primary, fails over when a node
refuses or stays silent, never retries a node's own error, and asks for the ring again
when a put comes back forwarded from a newer epoch. No timing is asserted: a silent node
only has to be passed over, however long that takes within the deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from common.errors import Rejected, Unavailable
from dynctl.cli import main
from dynctl.client import Client
from dynctl.topology import Topology
from tests.component import test_cli_offline as offline
from tests.component.test_cli_offline import FakeNode, _run_node

node = offline.node  # fixtures: one stand-in node, and an address where nothing listens
closed_addr = offline.closed_addr

IDS = ("n1", "n2", "n3")


class RingNode(FakeNode):
    """A stand-in node that describes a 3-member ring (``members`` maps ids to addresses,
    filled in once every node listens) and may be told to stay silent on data ops."""

    def __init__(self, members: dict[str, str]) -> None:
        super().__init__()
        self.members = members
        self.silent = False
        self.epoch = 4
        self.forwarded_epoch: int | None = None  # put replies carry it: a wrong coordinator
        self.with_members = True
        self.quorum_lost = False  # data ops answer Unavailable, as a coordinator short of R/W

    def op_get(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.quorum_lost:
            raise Unavailable("read quorum not met")
        return super().op_get(req)

    def op_ring(self, req: dict[str, Any]) -> dict[str, Any]:
        reply = {"ring_size": 8, "epoch": self.epoch,
                 "owners": list(IDS) * 2 + ["n1", "n2"], "balance": 1.125}
        if self.with_members:
            reply |= {"n": 3, "members": {node: {"addr": addr, "zone": "default"}
                                          for node, addr in self.members.items()}}
        return reply

    async def op_put(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.silent:
            await trio.sleep_forever()
        if self.quorum_lost:
            raise Unavailable("write quorum not met")
        if req["value"] == b"bad":
            raise Rejected("refused by the node")
        result = super().op_put(req)
        if self.forwarded_epoch is not None:
            result["epoch"] = self.forwarded_epoch
        return result


@pytest.fixture
def ring_nodes() -> Iterator[list[RingNode]]:
    members: dict[str, str] = {}
    nodes = [RingNode(members) for _ in IDS]
    runs = [_run_node(node) for node in nodes]
    for run in runs:
        next(run)
    members.update((node_id, node.addr) for node_id, node in zip(IDS, nodes, strict=True))
    yield nodes
    for run in runs:
        next(run, None)


def puts_by_key(node: FakeNode) -> list[bytes]:
    return [req["key"] for req in node.requests if req["op"] == "put"]


def first_primary_addr(nodes: list[RingNode], key: bytes) -> str:
    topology = Topology.from_reply(nodes[0].op_ring({}))
    assert topology is not None
    return topology.addresses_for("default", key)[0]


def first_primary(nodes: list[RingNode], key: bytes) -> RingNode:
    return next(n for n in nodes if n.addr == first_primary_addr(nodes, key))


async def test_each_key_goes_to_its_first_primary(ring_nodes):
    keys = [f"key-{i}".encode() for i in range(30)]
    async with Client.connect([node.addr for node in ring_nodes]) as client:
        for key in keys:
            await client.put(key, b"v")
    for node in ring_nodes:
        assert puts_by_key(node) == [key for key in keys
                                     if first_primary(ring_nodes, key) is node]
    assert sum(req["op"] == "ring" for node in ring_nodes for req in node.requests) == 1


async def test_a_refused_node_is_passed_over(ring_nodes, closed_addr):
    ring_nodes[0].members["n1"] = closed_addr  # n1 is down: every node's ring says so
    keys = [f"key-{i}".encode() for i in range(30)]
    async with Client.connect([closed_addr, ring_nodes[1].addr, ring_nodes[2].addr]) as client:
        for key in keys:
            await client.put(key, b"v")
    taken = puts_by_key(ring_nodes[1]) + puts_by_key(ring_nodes[2])
    assert sorted(taken) == sorted(keys)
    assert any(first_primary_addr(ring_nodes, key) == closed_addr for key in keys)


async def test_a_silent_node_is_passed_over_within_the_deadline(ring_nodes):
    silent = ring_nodes[0]
    silent.silent = True
    key = next(k for i in range(100) if first_primary(ring_nodes, k := f"k{i}".encode())
               is silent)
    async with Client.connect([node.addr for node in ring_nodes], timeout=3.0) as client:
        await client.put(key, b"v1")
        await client.put(key, b"v2")  # the silent node is now tried last: not at all
    assert puts_by_key(silent) == [key]
    assert puts_by_key(ring_nodes[1]) + puts_by_key(ring_nodes[2]) == [key, key]


async def test_a_nodes_error_reply_is_not_retried_elsewhere(ring_nodes):
    async with Client.connect([node.addr for node in ring_nodes]) as client:
        with pytest.raises(Rejected, match="refused by the node"):
            await client.put(b"k", b"bad")
    assert sum(len(puts_by_key(node)) for node in ring_nodes) == 1


async def test_a_put_forwarded_from_a_newer_epoch_asks_for_the_ring_again(ring_nodes):
    async with Client.connect([node.addr for node in ring_nodes]) as client:
        await client.put(b"k", b"v")
        asked = [req for node in ring_nodes for req in node.requests if req["op"] == "ring"]
        assert len(asked) == 1
        for node in ring_nodes:
            node.forwarded_epoch, node.epoch = 5, 5
        with trio.fail_after(5):
            while client.ring_epoch != 5:
                await trio.sleep(1.1)  # RING_MIN_INTERVAL passes between two asks
                await client.put(b"k", b"v")


async def test_a_node_that_does_not_describe_its_members_leaves_the_given_order(ring_nodes):
    for node in ring_nodes:
        node.with_members = False
    async with Client.connect([node.addr for node in ring_nodes]) as client:
        for i in range(10):
            await client.put(f"k{i}".encode(), b"v")
    assert len(puts_by_key(ring_nodes[0])) == 10


async def test_no_node_answering_is_unavailable_naming_each(closed_addr):
    with pytest.raises(Unavailable, match="no node answered") as raised:
        async with Client.connect([closed_addr, closed_addr.replace("127.0.0.1", "localhost")]):
            pass
    assert raised.value.message.count("connection refused") == 2


def test_dynctl_says_which_node_answered_a_command_about_one_node(node, closed_addr):
    nodes = f"{closed_addr},{node.addr}"
    human = CliRunner().invoke(main, ["--node", nodes, "ping"])
    assert human.exit_code == 0, human.output
    assert human.stderr == f"answered by {node.addr}\n"
    as_json = CliRunner().invoke(main, ["--json", "ping"], env={"DYN_NODE": nodes})
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"node": "fake1", "epoch": 7,
                                          "answered_by": node.addr}


def test_dynctl_put_and_get_fail_over_to_a_live_node(ring_nodes, closed_addr):
    ring_nodes[0].members["n1"] = closed_addr
    nodes = ",".join([closed_addr, ring_nodes[1].addr, ring_nodes[2].addr])
    for i in range(5):
        put = CliRunner().invoke(main, ["--node", nodes, "put", f"k{i}", "v"])
        assert put.exit_code == 0, put.output
        assert put.stderr == ""  # a data command names no node


async def test_a_read_its_coordinator_could_not_serve_is_asked_of_the_next_node(ring_nodes):
    """A get answered Unavailable goes to the next node; a put so answered may have reached
    replicas and is not sent again."""
    short = ring_nodes[0]
    short.quorum_lost = True
    key = next(k for i in range(100) if first_primary(ring_nodes, k := f"k{i}".encode())
               is short)
    async with Client.connect([node.addr for node in ring_nodes]) as client:
        assert not (await client.get(key)).found
        with pytest.raises(Unavailable, match="write quorum not met"):
            await client.put(key, b"v")
    gets = [[req["key"] for req in node.requests if req["op"] == "get"] for node in ring_nodes]
    assert gets[0] == [key] and len(gets[1] + gets[2]) == 1
    assert puts_by_key(short) == [key] and not puts_by_key(ring_nodes[1]) + puts_by_key(
        ring_nodes[2])
