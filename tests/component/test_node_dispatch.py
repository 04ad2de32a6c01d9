"""Both ways into a node reach the same ops: the server's fast path (``answer_now``, no
task) and ``handle`` (a task, used while the node starts or stops, by the simulator's
fallback and for the ops that need one)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import trio

from common import dvvset
from common.errors import Rejected
from dynd.node import Node
from dynd.server import answered
from tests.support.nodes import PEER, validated


async def _fast(node: Node, op: str, **fields: Any) -> dict[str, Any] | None:
    """The result through answer_now, or None when it declines the request."""
    return await answered(lambda reply: node.answer_now(validated(op, **fields), PEER, reply))


async def test_fast_path_and_handle_give_the_same_answers(
        make_node: Callable[..., Node]) -> None:
    node = make_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.dispatch.ready.wait()
        put = await _fast(node, "put", bucket="default", key=b"k", value=b"v1")
        assert put is not None and put["context"]
        fast = await _fast(node, "get", bucket="default", key=b"k")
        slow = await node.handle(validated("get", bucket="default", key=b"k"), PEER)
        assert fast == slow and [v["value"] for v in slow["values"]] == [b"v1"]
        # A put through handle, with the context read: supersedes v1.
        await node.handle(validated("put", bucket="default", key=b"k", value=b"v2",
                                   context=slow["context"]), PEER)
        partition = next(iter(node.view.routing().owned_partitions(node.id)))
        clock = dvvset.encode(dvvset.update(
            dvvset.new(dvvset.Sibling(b"r", 1), {}), None, "n9.1"))
        replica = {"bucket": "default", "key": b"r", "partition": partition, "clock": clock}
        assert await _fast(node, "p_put", **replica) == {}
        assert await node.handle(validated("p_put", **replica), PEER) == {}  # nothing new
        fields = {"bucket": "default", "key": b"r", "partition": partition}
        assert (await _fast(node, "p_get", **fields) == await node.handle(
            validated("p_get", **fields), PEER) == {"clock": clock})
        got = await _fast(node, "get", bucket="default", key=b"k")
        assert got is not None and [v["value"] for v in got["values"]] == [b"v2"]
        with pytest.raises(Rejected, match="bad context"):
            await _fast(node, "put", bucket="default", key=b"k", value=b"x", context="!")
        assert node.dispatch.inflight == 0  # every request counted in was counted out
        node.dispatch.stopping = True  # a stopping node takes nothing on the fast path
        assert await _fast(node, "ping") is None
        nursery.cancel_scope.cancel()


async def test_gets_and_puts_leave_no_reference_cycles(make_node: Callable[..., Node]) -> None:
    """What a request builds is freed when it is answered, by reference counting: a cycle
    (two closures naming each other kept every put until the collector's next pass) makes
    that pass walk every request since the last one, a stall on a busy node."""
    node = make_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.dispatch.ready.wait()
        await _fast(node, "put", bucket="default", key=b"warm", value=b"v")
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                put = await _fast(node, "put", bucket="default", key=b"k%d" % i, value=b"v")
                assert put is not None
                got = await _fast(node, "get", bucket="default", key=b"k%d" % i,
                                  r=1)
                assert got is not None and got["found"]
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = sorted({type(o).__qualname__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert garbage == []
        nursery.cancel_scope.cancel()


async def test_status_shows_each_services_part(make_node: Callable[..., Node]) -> None:
    """Admin builds ``status`` from its status providers: transfers, anti-entropy
    exchanges and hint ages each reach the reply, as of the call."""
    node = make_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.dispatch.ready.wait()
        status = await node.handle(validated("status"), PEER)
        assert status["transfers"] == node.transfers.rows()
        assert status["antientropy"] == node.antientropy.status_rows()
        assert status["oldest_hint_seconds"] == 0.0
        node.stats.hint_ages.check(node.id, {"n2": 3}, now=10.0, warn_after=600.0)
        node.stats.hint_ages.check(node.id, {"n2": 3}, now=52.25, warn_after=600.0)
        status = await node.handle(validated("status"), PEER)
        assert status["oldest_hint_seconds"] == 42.2
        nursery.cancel_scope.cancel()
