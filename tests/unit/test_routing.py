"""dynd.routing: where a key lives among the members judged up."""

from __future__ import annotations

from common.ring import Target, partition_of
from dynd.routing import Routing
from tests.support.cluster import bootstrap_state

NODES = ["n1", "n2", "n3", "n4"]


def routing(size: int) -> Routing:
    return Routing(bootstrap_state(NODES[:size], [f"10.0.0.{i}:7070" for i in range(size)],
                                   64, 3))


def test_down_primaries_get_fallbacks_while_spare_members_are_up() -> None:
    four = routing(4)
    for i in range(50):
        key = f"k{i}".encode()
        primaries = four.primaries(partition_of("default", key, 64), 3)
        up = frozenset(NODES) - {primaries[0]}
        targets = four.placement("default", key, 3, up).targets
        assert [t.role for t in targets] == ["primary", "primary", "fallback"]
        assert targets[2].primary == primaries[0] and targets[2].node not in primaries


def test_a_down_primary_without_a_fallback_is_still_asked() -> None:
    """Three members, one judged down (maybe wrongly: a restarted node has heard no
    heartbeat yet): its primary stays on the list, last, so two replicas up still make a
    quorum of two. A node that judges every other down still asks all of them."""
    three = routing(3)
    for i in range(50):
        key = f"k{i}".encode()
        primaries = three.primaries(partition_of("default", key, 64), 3)
        down = primaries[1]
        targets = three.placement("default", key, 3, frozenset(NODES[:3]) - {down}).targets
        assert targets == [*(Target(p, p, "primary") for p in primaries if p != down),
                           Target(down, down, "primary")]
        alone = three.placement("default", key, 3, frozenset({"n1"})).targets
        assert alone[0] == Target("n1", "n1", "primary")
        assert sorted(t.node for t in alone) == sorted(primaries)
        assert all(t.role == "primary" for t in alone)
