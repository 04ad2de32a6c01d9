"""Which members are up: the failure detector and the up set requests route by.

riak_core's node watcher for one node: gossip feeds heartbeats to the
phi-accrual detector (dynd.detector); a failed request marks its peer suspect
at once. The up set is what dynd.routing turns into preference lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from dynd.detector import PhiAccrualDetector
from dynd.membership import ClusterState

log = logging.getLogger("dynd.liveness")

# How long an up set is reused: liveness changes on the gossip timescale (seconds), and a
# failed request invalidates it at once (suspect).
UP_SET_TTL = 0.05


class Liveness:
    def __init__(self, node_id: str, detector: PhiAccrualDetector,
                 state: Callable[[], ClusterState]) -> None:
        self.node_id = node_id
        self.detector = detector
        self._state = state
        self._up_set: tuple[ClusterState | None, float, frozenset[str]] = (None, 0.0, frozenset())

    def is_up(self, node: str) -> bool:
        if node == self.node_id:
            return True
        return self.detector.is_available(node, trio.current_time())

    def up_nodes(self) -> frozenset[str]:
        """The members judged available, reused for UP_SET_TTL seconds (a phi evaluation
        per member per request would make every request O(members)); recomputed at once
        after a suspicion or a new cluster state."""
        now = trio.current_time()
        state = self._state()
        cached_state, expires, up = self._up_set
        if cached_state is state and now < expires:
            return up
        up = frozenset(m for m, member in state.members.items()
                       if member.status != "removed" and self.is_up(m))
        self._up_set = (state, now + UP_SET_TTL, up)
        return up

    def suspect(self, node: str, reason: str) -> None:
        if node != self.node_id:
            log.debug("event=suspect node=%s peer=%s reason=%r", self.node_id, node, reason)
            self.detector.suspect(node, trio.current_time())
            self._up_set = (None, 0.0, frozenset())
