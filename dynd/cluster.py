"""The cluster state this node holds: adopted, persisted, announced.

riak_core's ring manager for one node: every change of the state (a local
admin change, a merge from gossip, a transfer completed) goes through
`ClusterView.set_state`, which persists it with the next group commit and wakes
whoever waits for a change. Routing of the current
state is built once per state (dynd.routing).
"""

from __future__ import annotations

import logging

import cbor2
import trio

from common.errors import Unavailable
from dynd import membership
from dynd.auth import Policy
from dynd.membership import ClusterState
from dynd.routing import Routing
from dynd.storage import Batch, Storage, Ticket

log = logging.getLogger("dynd.cluster")

META_STATE = "state"


def stored_state(storage: Storage) -> ClusterState | None:
    """The cluster state persisted in ``storage``; None for a fresh data dir."""
    raw = storage.get_meta(META_STATE)
    return None if raw is None else membership.from_wire(cbor2.loads(raw))


def state_meta(state: ClusterState) -> tuple[str, bytes]:
    """The meta record that persists ``state`` (for a batch that writes more with it)."""
    return META_STATE, cbor2.dumps(membership.to_wire(state))


class ClusterView:
    """The current cluster state, its routing, and a wake-up for whoever waits on a change."""

    def __init__(self, storage: Storage, node_id: str, state: ClusterState) -> None:
        self.storage = storage
        self.node_id = node_id
        self.state = state
        self._changed = trio.Event()
        self._routing = Routing(state)
        self._policy = Policy(state.auth)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def routing(self) -> Routing:
        """Ring, zones and primaries of the current state, computed once per state."""
        if self._routing.state is not self.state:
            self._routing = Routing(self.state)
        return self._routing

    def policy(self) -> Policy:
        """The access-control grants of the current state, compiled once per state."""
        if self._policy.auth is not self.state.auth:
            self._policy = Policy(self.state.auth)
        return self._policy

    def set_state(self, state: ClusterState) -> Ticket | None:
        """Adopt a new cluster state (local change or gossip) and persist it; the ticket
        to wait on for durability, None when nothing changed."""
        if state == self.state:
            return None
        old_epoch = self.state.epoch
        self.state = state
        ticket = self.storage.stage(Batch().put_meta(*state_meta(state)))
        if state.epoch != old_epoch:
            log.info("event=ring_changed node=%s epoch=%d", self.node_id, state.epoch)
        self._changed.set()
        self._changed = trio.Event()
        return ticket

    def commit_synced(self, state: ClusterState, batch: Batch) -> None:
        """Adopt ``state`` and commit it with ``batch``, fsynced whatever the sync mode
        (start-up and join record the node's identity this way)."""
        self.state = state
        self.storage.commit_synced(batch.put_meta(*state_meta(state)))

    async def wait_changed(self) -> None:
        """Return at the next change of the state."""
        await self._changed.wait()

    def addr_of(self, node: str) -> str:
        member = self.state.members.get(node)
        if member is None:
            raise Unavailable(f"unknown node {node!r}")
        return member.addr

    def peer_addrs(self) -> list[str]:
        """Addresses of the other members that are not removed."""
        return [m.addr for m in self.state.members.values()
                if m.id != self.node_id and m.status != "removed"]
