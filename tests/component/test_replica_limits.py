"""What makes a key unreplicable is refused to the writer, never to a peer, and a replica
request that cannot even be sent is one failed replica: every request is answered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing

from common import dvvset
from common.errors import DynError, ProtocolError, Rejected, Unavailable
from common.limits import MAX_SORT_KEY_BYTES, Limits
from common.messages import request
from dynd.merkle import PartitionTree
from dynd.node import Node
from dynd.replica import Replica
from dynd.replica_access import clock_from_peer
from dynd.storage import Storage
from tests.support.cluster import bootstrap_state
from tests.support.nodes import LIMITS, PEER, validated

OVERSIZE = "frame of 5000149 bytes exceeds limit 4194304"


def test_the_largest_replica_request_fits_a_frame() -> None:
    """max_object_bytes leaves room for the rest of the p_put that carries the object."""
    limits = Limits()
    fields = {"bucket": "b" * limits.max_bucket_name_bytes, "key": b"k" * limits.max_key_bytes,
              "partition": 2**63 - 1, "hint_for": "n" * 64, "sk": b"s" * MAX_SORT_KEY_BYTES,
              "clock": b"c" * limits.max_object_bytes}
    body = cbor2.dumps(request("p_put", 2**63 - 1, **fields))
    assert len(body) <= limits.max_frame_bytes


def test_a_write_whose_object_would_outgrow_a_replica_frame_stores_nothing(
        tmp_path: Path) -> None:
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100, max_object_bytes=2500)
    replica.trees[1] = PartitionTree(replica.segments)  # as on a start owning partition 1
    try:
        for i in range(2):  # blind: two siblings of 1000 bytes fit
            replica.coordinate(1, "b", b"k", bytes([65 + i]) * 1000, {}, "n1.1", i)
        before = replica.get_encoded(1, "b", b"k")
        digest = replica.trees[1].root()
        with pytest.raises(Rejected, match=r"with its 3 siblings, a replica takes at most "
                                           r"2500: resolve its siblings"):
            replica.coordinate(1, "b", b"k", b"C" * 1000, {}, "n1.1", 3)
        assert replica.get_encoded(1, "b", b"k") == before
        assert replica.trees[1].root() == digest
        assert before is not None
        resolved, _, _ = replica.coordinate(1, "b", b"k", b"C" * 1000,
                                            dvvset.join(dvvset.decode(before)), "n1.1", 4)
        assert [s.value for s in dvvset.live_values(resolved)] == [b"C" * 1000]
    finally:
        storage.close()


def test_a_context_counter_that_leaves_no_room_for_a_dot_stores_nothing(
        tmp_path: Path) -> None:
    """A forged counter of 2**63-1 for the coordinator's actor would mint a dot no peer
    takes (counters stop there): the writer is refused, as for any bad context."""
    storage = Storage.open(str(tmp_path), sync="none")
    replica = Replica(storage, max_siblings=100)
    try:
        with pytest.raises(Rejected, match=r"bad context: the counter of 'n1.1' is at "):
            replica.coordinate(1, "b", b"k", b"v", {"n1.1": 2**63 - 1}, "n1.1", 1)
        assert replica.get_encoded(1, "b", b"k") is None
        clock, _, _ = replica.coordinate(1, "b", b"k", b"v", {"n2.1": 2**63 - 1}, "n1.1", 2)
        assert dvvset.decode(dvvset.encode(clock)) == clock  # what a peer accepts
    finally:
        storage.close()


def test_a_peer_copy_merged_past_the_sibling_limit_is_accepted() -> None:
    """Two copies within the limit, minted apart, merge past it: still an acknowledged
    copy, which peers must take (read, repair, hand back)."""
    copies = []
    for actor in ("n2.1", "n3.1"):
        clock = None
        for i in range(LIMITS.max_siblings):
            clock = dvvset.update(dvvset.new(dvvset.Sibling(b"v%d" % i, i)), clock, actor)
        copies.append(clock)
    merged = dvvset.merge_all(copies)
    assert dvvset.sibling_count(merged) == 2 * LIMITS.max_siblings
    assert clock_from_peer(dvvset.encode(merged)) == merged


class _Transport:
    """Peers that acknowledge every replica request at once, except that a request to
    ``unsendable`` cannot be sent at all (Connection.submit raises: the frame is over the
    limit)."""

    def __init__(self, unsendable: str | None = None) -> None:
        self.unsendable = unsendable

    async def call(self, addr: str, op: str, fields: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        raise Unavailable(f"{addr} takes no calls in this test")

    def submit(self, addr: str, op: str, fields: dict[str, Any],
               on_reply: Callable[[dict[str, Any] | None, DynError | None], None]
               ) -> Callable[[], None]:
        if addr == self.unsendable:
            raise ProtocolError(OVERSIZE)
        on_reply({}, None)
        return lambda: None


@pytest.mark.parametrize("w", [1, 3])
async def test_a_replica_request_that_cannot_be_sent_is_one_failed_replica(
        make_node: Callable[..., Node], w: int) -> None:
    """Before: the ProtocolError went up to answer_now, which answered it, and the put's
    own answer followed (w=1: two answers, in-flight count -1); or (w=3) the failure was
    never counted and the client got the raw frame error."""
    ids, addrs = ["n1", "n2", "n3"], ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    node = make_node(transport=_Transport(unsendable="127.0.0.1:2"), ring_size=16,
                     state=bootstrap_state(ids, addrs, 16, 3))
    answers: list[tuple[dict[str, Any] | None, Exception | None]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(node.storage.run)
        node._nursery = nursery  # the root nursery Node.run would open
        for peer in ids[1:]:
            node.liveness.detector.heartbeat(peer, trio.current_time())
        node.dispatch.ready.set()
        taken = node.answer_now(validated("put", bucket="default", key=b"k", value=b"v", w=w),
                                PEER, lambda *answer: answers.append(answer))
        assert taken
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (len(answers), node.dispatch.inflight) == (1, 0), answers  # answered, counted out
    result, error = answers[0]
    if w == 1:
        assert error is None and result is not None and result["context"]
    else:
        assert isinstance(error, Unavailable) and f"n2: {OVERSIZE}" in error.message, error
