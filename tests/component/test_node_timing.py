"""The node's view of who is up (the set every request routes by), and the one task
that expires fan-outs at their deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import trio
import trio.testing

from dynd.coordinator import Coordinator, _FanOut
from dynd.liveness import UP_SET_TTL
from dynd.node import Node
from tests.support.cluster import bootstrap_state


async def test_up_set_is_reused_briefly_and_a_suspicion_takes_effect_at_once(
        make_node: Callable[..., Node], autojump_clock: trio.testing.MockClock) -> None:
    node = make_node()
    node.view.set_state(bootstrap_state(["n1", "n2"], ["127.0.0.1:1", "127.0.0.1:2"], 64, 2))
    node.liveness.detector.heartbeat("n2", trio.current_time())
    assert node.liveness.up_nodes() == {"n1", "n2"}
    node.liveness.suspect("n2", "a request timed out")
    assert node.liveness.up_nodes() == {"n1"}  # not the set computed a moment ago
    node.liveness.detector.heartbeat("n2", trio.current_time())
    assert node.liveness.up_nodes() == {"n1"}  # reused for a moment...
    await trio.sleep(UP_SET_TTL)
    assert node.liveness.up_nodes() == {"n1", "n2"}  # ...then recomputed
    node.liveness.detector.heartbeat("n3", trio.current_time())
    assert node.liveness.up_nodes() == {"n1", "n2"}  # n3 is not a member
    node.view.set_state(bootstrap_state(["n1", "n2", "n3"],
                                        ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], 64, 3))
    assert node.liveness.up_nodes() == {"n1", "n2", "n3"}  # a new cluster state: at once


async def test_fan_outs_expire_at_their_deadline_unless_they_end_first(
        autojump_clock: trio.testing.MockClock) -> None:
    """One task expires every fan-out request_timeout after it was armed; one that ends
    first is forgotten at once (only fan-outs in flight are kept)."""
    coordinator = Coordinator(  # only the deadlines are used
        "n1", *[SimpleNamespace()] * 6, minting_actor=str, read_incomplete=lambda p, h: False,  # type: ignore[arg-type]
        request_timeout=5.0, wall=time.time)
    fired: list[tuple[str, float]] = []

    def fan_out(name: str) -> _FanOut:
        fan = _FanOut(coordinator, lambda: fired.append((name, trio.current_time())))
        fan.outstanding += 1  # one request in flight that never answers
        fan.arm()
        return fan

    async with trio.open_nursery() as nursery:
        nursery.start_soon(coordinator.run)
        start = trio.current_time()
        fan_out("first")
        await trio.sleep(1)
        ends_early = fan_out("second")
        fan_out("third")
        assert len(coordinator._open) == 3
        await trio.sleep(1)
        ends_early._count_down()  # its reply came
        assert len(coordinator._open) == 2
        await trio.sleep(10)
        assert not coordinator._open
        fan_out("later")  # an empty loop wakes for a new one
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(name, when - start) for name, when in fired] == [
        ("second", 2), ("first", 5), ("third", 6), ("later", 17)]
