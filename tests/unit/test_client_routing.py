"""The pure parts of client-driven coordination: the node list, the share of the deadline
one attempt gets, and the preference list a client computes from a ring reply."""

from __future__ import annotations

import pytest

from common.errors import ProtocolError
from common.ring import Ring, partition_of
from dynctl.client import (
    MAX_ATTEMPT_SHARES,
    MAX_NODES,
    ClientConfigError,
    attempt_budget,
    parse_nodes,
)
from dynctl.topology import Topology
from dynd.claim import Claimant, claim

NODES = ["n1", "n2", "n3", "n4", "n5"]
ZONES = {"n1": "a", "n2": "a", "n3": "b", "n4": "b", "n5": "c"}


def ring_reply(n: int = 3, zones: dict[str, str] | None = None, epoch: int = 7) -> dict:
    zones = zones or dict.fromkeys(NODES, "default")
    owners = claim(64, [Claimant(node, zone=zones[node]) for node in NODES], None, n)
    return {"ring_size": 64, "epoch": epoch, "owners": list(owners), "balance": 1.0, "n": n,
            "members": {node: {"addr": f"127.0.0.1:{7070 + i}", "zone": zones[node]}
                        for i, node in enumerate(NODES)}}


@pytest.mark.parametrize("given, expected", [
    ("127.0.0.1:7070", ("127.0.0.1:7070",)),
    ("a:1,b:2,c:3", ("a:1", "b:2", "c:3")),
    ("a:1, b:2", ("a:1", "b:2")),
    (["a:1", "[::1]:2"], ("a:1", "[::1]:2")),
])
def test_parse_nodes_accepts_one_or_several_addresses_in_order(given, expected):
    assert parse_nodes(given) == expected


@pytest.mark.parametrize("given, message", [
    ("", "empty"), ("a:1,,b:2", "empty"), ("a:1,", "empty"), ([], "1..256"),
    ("a:1,b", "HOST:PORT"), ("a:1,a:1", "listed twice"),
    (",".join(f"h:{port}" for port in range(1, MAX_NODES + 2)), "1..256"),
])
def test_parse_nodes_refuses_a_malformed_list(given, message):
    with pytest.raises(ClientConfigError, match=message):
        parse_nodes(given)


def test_attempt_budget_leaves_time_for_the_next_nodes():
    assert attempt_budget(6.0, 1) == 6.0  # the last attempt gets all that is left
    assert attempt_budget(6.0, 2) == 3.0
    assert attempt_budget(6.0, 3) == 2.0
    # However many nodes remain, one attempt waits at least 1/MAX_ATTEMPT_SHARES of it.
    assert attempt_budget(6.0, 10) == 6.0 / MAX_ATTEMPT_SHARES
    assert attempt_budget(6.0, 0) == 6.0


@pytest.mark.parametrize("zones", [None, ZONES], ids=["one zone", "three zones"])
def test_topology_puts_the_keys_primaries_first_then_every_other_owner(zones):
    reply = ring_reply(zones=zones)
    topology = Topology.from_reply(reply)
    assert topology is not None and topology.epoch == 7
    ring = Ring(64, tuple(reply["owners"]))
    addr_of = {node: member["addr"] for node, member in reply["members"].items()}
    for i in range(200):
        key = f"key-{i}".encode()
        partition = partition_of("default", key, 64)
        primaries = ring.primaries(partition, 3, zones or dict.fromkeys(NODES, "default"))
        order = topology.addresses_for("default", key)
        assert order[:3] == tuple(addr_of[node] for node in primaries)
        assert sorted(order) == sorted(addr_of.values())  # every owner, once


def test_topology_routes_as_the_node_does():
    """The client's preference list is the node's own (dynd.routing on the same state)."""
    from dynd.routing import Routing
    from tests.support.membership import cluster

    state = cluster(5, ring_size=64)
    routing = Routing(state)
    topology = Topology.from_reply({
        "ring_size": 64, "epoch": state.epoch, "owners": list(routing.ring.owners),
        "n": routing.target_n(),
        "members": {m.id: {"addr": m.addr, "zone": m.zone} for m in state.members.values()}})
    assert topology is not None
    for i in range(100):
        key = f"k{i}".encode()
        primaries = routing.primaries(partition_of("b", key, 64), 3)
        assert topology.addresses_for("b", key)[:3] == tuple(
            state.members[node].addr for node in primaries)


def test_a_ring_reply_without_members_is_an_older_node():
    reply = ring_reply()
    del reply["members"], reply["n"]
    assert Topology.from_reply(reply) is None


@pytest.mark.parametrize("change", [
    {"epoch": "7"}, {"n": 0}, {"members": {}}, {"members": ["n1"]},
    {"owners": ["n1"] * 63}, {"owners": None},
    {"members": {"n1": {"addr": "127.0.0.1:1", "zone": "z"}}},  # owners without address
    {"members": {node: {"addr": 7070} for node in NODES}},
])
def test_a_malformed_ring_reply_is_a_protocol_error(change):
    with pytest.raises(ProtocolError):
        Topology.from_reply({**ring_reply(), **change})
