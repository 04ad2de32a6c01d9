"""Heartbeats count only for members: what a peer sends cannot grow a node's memory, and a
removed member's beats and failure-detector history are forgotten."""

from __future__ import annotations

from collections.abc import Callable

from dynd import membership
from dynd.membership import Change, Member
from dynd.node import Node
from tests.support.nodes import PEER


async def test_beats_of_names_that_are_no_members_are_ignored(
        make_node: Callable[..., Node]) -> None:
    node = make_node()
    beats = {f"stranger{i}": [1, i] for i in range(1000)}
    await node.gossip.op_p_gossip({"heartbeats": beats}, PEER)
    assert set(node.gossip.heartbeats) <= {"n1"}
    assert node.liveness.detector.snapshot(0.0) == {}

    # A joining member's beats count, and they count with the state that lists it.
    joined = membership.stage(node.view.state, Change("join", "n2"), "n1",
                              Member("n2", "127.0.0.1:2", "default", "valid", None, 1))
    await node.gossip.op_p_gossip({"state": membership.to_wire(joined),
                                   "heartbeats": {"n2": [1, 5]}}, PEER)
    assert node.gossip.heartbeats["n2"] == (1, 5)
    assert "n2" in node.liveness.detector.snapshot(0.0)

    # Removed (here: its join cleared), it is forgotten, and its beats ignored again.
    cleared = membership.clear(node.view.state, "n1")
    await node.gossip.op_p_gossip({"state": membership.to_wire(cleared),
                                   "heartbeats": {"n2": [1, 6]}}, PEER)
    assert "n2" not in node.gossip.heartbeats
    assert "n2" not in node.liveness.detector.snapshot(0.0)
