"""A hint whose target is no longer a primary of its partition goes to today's primaries,
this node included: it is never deleted without being merged somewhere."""

from __future__ import annotations

from collections.abc import Callable

import trio

from common import dvvset
from common.dvvset import Sibling
from common.ring import partition_of
from dynd.node import Node

KEY = b"cart"


async def test_a_hint_for_a_departed_target_is_merged_into_this_primary(
        make_node: Callable[..., Node]) -> None:
    node = make_node()
    storage = node.storage
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)  # the group-commit writer tickets wait on
        partition = partition_of("default", KEY, node.view.state.ring_size)
        assert node.view.routing().primaries(partition) == ("n1",)  # the only primary
        clock = dvvset.update(dvvset.new(Sibling(b"v", 1)), None, "n1.1.h1.n9")
        await node.replica.store_hint("n9", partition, "default", KEY, clock).wait()

        assert await node.hints.deliver_hints("n9") == 1  # n9 is no member (any more)
        nursery.cancel_scope.cancel()
    assert storage.hint_counts() == {}
    stored = node.replica.get(partition, "default", KEY)
    assert stored is not None and [s.value for s in dvvset.live_values(stored)] == [b"v"]
