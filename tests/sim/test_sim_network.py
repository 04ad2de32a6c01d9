"""The simulated network itself: encoding, refusal, loss, partitions, duplicates."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from common.errors import DynError, ProtocolError, Unavailable
from common.limits import Limits
from common.messages import Request
from dynd.server import Peer
from tests.sim.network import LinkFaults, SimNetwork


async def _with_echo(faults: LinkFaults, body) -> list[Request]:
    seen: list[Request] = []

    async def echo(request: Request, peer: Peer) -> dict:
        seen.append(request)
        return {"node": peer.address}

    network = SimNetwork(random.Random(1), Limits(), faults)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        network.attach("b", echo, nursery)
        await body(network)
        nursery.cancel_scope.cancel()
    return seen


async def test_call_is_validated_and_answered(autojump_clock: trio.testing.MockClock) -> None:
    async def body(network: SimNetwork) -> None:
        assert await network.call("a", "b", "ping", {}, 1.0) == {"node": "a"}
        with pytest.raises(ProtocolError):  # validated exactly as the server does
            await network.call("a", "b", "no_such_op", {}, 1.0)

    seen = await _with_echo(LinkFaults(), body)
    assert [r.op for r in seen] == ["ping"]


async def test_crashed_node_refuses_fast_partition_times_out(
        autojump_clock: trio.testing.MockClock) -> None:
    async def body(network: SimNetwork) -> None:
        start = trio.current_time()
        with pytest.raises(Unavailable, match="refused"):
            await network.call("a", "gone", "ping", {}, 5.0)
        assert trio.current_time() - start < 0.1
        network.block("a", "b")
        with pytest.raises(Unavailable, match="timed out"):
            await network.call("a", "b", "ping", {}, 5.0)
        assert trio.current_time() - start >= 5.0
        network.heal()
        await network.call("a", "b", "ping", {}, 5.0)

    await _with_echo(LinkFaults(), body)


async def test_duplicates_reach_the_handler_twice(autojump_clock: trio.testing.MockClock) -> None:
    async def body(network: SimNetwork) -> None:
        await network.call("a", "b", "ping", {}, 1.0)
        await trio.sleep(1)

    seen = await _with_echo(LinkFaults(dup=1.0), body)
    assert len(seen) == 2


async def test_unencodable_fields_fail_at_the_sender(autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    async def body(network: SimNetwork) -> None:
        with pytest.raises(DynError, match="encode"):
            await network.call("a", "b", "ping", {"x": object()}, 1.0)

    await _with_echo(LinkFaults(), body)
