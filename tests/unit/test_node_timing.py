"""The node's view of who is up (the set every request routes by), and the one task
that expires fan-outs at their deadline."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from common.config import Config
from dynd.coordinator import Coordinator
from dynd.node import UP_SET_TTL, Node
from dynd.storage import Storage
from tests.sim.harness import bootstrap_state
from tests.unit.test_fuzz_dispatch import Nowhere


async def test_up_set_is_reused_briefly_and_a_suspicion_takes_effect_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    storage = Storage.open(str(tmp_path), sync="none")
    try:
        node = Node(Config(node_id="n1", data_dir=str(tmp_path)), storage, Nowhere(),
                    addr="127.0.0.1:1")
        node.set_state(bootstrap_state(["n1", "n2"], ["127.0.0.1:1", "127.0.0.1:2"], 64, 2))
        node.detector.heartbeat("n2", trio.current_time())
        assert node.up_nodes() == {"n1", "n2"}
        node.suspect("n2", "a request timed out")
        assert node.up_nodes() == {"n1"}  # not the set computed a moment ago
        node.detector.heartbeat("n2", trio.current_time())
        assert node.up_nodes() == {"n1"}  # reused for a moment...
        await trio.sleep(UP_SET_TTL)
        assert node.up_nodes() == {"n1", "n2"}  # ...then recomputed
        node.detector.heartbeat("n3", trio.current_time())
        assert node.up_nodes() == {"n1", "n2"}  # n3 is not a member
        node.set_state(bootstrap_state(["n1", "n2", "n3"],
                                       ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], 64, 3))
        assert node.up_nodes() == {"n1", "n2", "n3"}  # a new cluster state: at once
    finally:
        storage.close()


async def test_fan_out_deadlines_fire_in_order_and_an_earlier_one_wakes_the_loop(
        autojump_clock: trio.testing.MockClock) -> None:
    coordinator = Coordinator(node=None)  # type: ignore[arg-type]  # run() needs no node
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coordinator.run)
        start = trio.current_time()
        coordinator.expire_at(start + 10, lambda: fired.append(("late", trio.current_time())))
        await trio.sleep(1)
        coordinator.expire_at(start + 5, lambda: fired.append(("early", trio.current_time())))
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert [(name, when - start) for name, when in fired] == [("early", 5), ("late", 10)]
