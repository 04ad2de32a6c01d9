"""Hinted handoff: hand the replicas a fallback holds back to their primary.

A fallback keeps a replica for an unreachable primary in the hints column
family (Replica.store_hint); this service hands each one back once the
primary answers again, and deletes the hint only after the primary
acknowledged it (and only if the hint did not change meanwhile). Hints held
for a node that takes no replicas any more are re-keyed to the key's current
primaries (redirect_departed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from common import dvvset
from common.config import HandoffConfig
from common.errors import DynError
from common.ring import Target
from dynd import membership
from dynd.cluster import ClusterView
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.replica_access import ReplicaAccess, replica_fields
from dynd.server import Peer
from dynd.storage import SCAN_PAGE, Batch, Storage

_PRIMARY = Target("", "", "primary")  # a hint goes to its recipient's own copy, not a hint

log = logging.getLogger("dynd.hints")


class Hints:
    OPS = ("hints",)

    def __init__(self, node_id: str, view: ClusterView, storage: Storage,
                 access: ReplicaAccess, peers: Peers, stats: Stats, config: HandoffConfig, *,
                 is_up: Callable[[str], bool], release_hints: Callable[[], None],
                 push_gossip: Callable[[], None]) -> None:
        """``release_hints()``: a hint copy was deleted (Identity.release_hints)."""
        self.node_id = node_id
        self.view = view
        self.storage = storage
        self.access = access
        self.call = peers.call
        self.stats = stats
        self.config = config
        self.is_up = is_up
        self.release_hints = release_hints
        self.push_gossip = push_gossip

    async def op_hints(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Hints held per target; only members that take replicas are targets (see
        redirect_departed)."""
        await self.redirect_departed()
        return {"hints": self.storage.hint_counts()}

    async def run(self) -> None:
        """Every handoff interval: re-key, hand back to the targets that are up, announce."""
        config = self.config
        while True:
            await trio.sleep(config.interval)
            await self.redirect_departed()
            counts = self.storage.hint_counts()
            self.stats.hint_ages.check(self.node_id, counts, trio.current_time(),
                                       config.hint_warn_age)
            for target in sorted(counts):
                if self.is_up(target):
                    await self.deliver_hints(target)
            self.announce_hints()

    def announce_hints(self) -> None:
        """Tell the cluster whether this node holds hints: a leaver is not removed, and a
        removed node is still asked before a reap, while it does (membership._left)."""
        holding = bool(self.storage.hint_counts())
        me = self.view.state.members.get(self.node_id)
        if me is None or me.hints == holding:
            return
        self.view.set_state(membership.announce_hints(self.view.state, self.node_id, holding))
        self.push_gossip()

    async def redirect_departed(self) -> int:
        """Re-key the hints held for a node that takes no replicas any more (removed, or
        replaced or left with its transfers done) to the key's current primaries, this
        node's own copy merged at once; returns how many hints were re-keyed.

        Such a target never comes back to take them, and every member holding hints
        stops every reap in the cluster (tests/sim: one `cluster replace` of a dead node
        did). Re-keyed, they are ordinary hints: delivered when their new target
        answers, counted and shown under it, and deleted only once it acknowledged.
        Every current primary but the target (a node removed by force stays an owner
        until its transfers are done) gets a copy, a replacement among them, so none is
        ranked first. The old hint is deleted only if it did not change meanwhile.
        """
        state = self.view.state
        departed = [t for t in self.storage.hint_counts()
                    if t != self.node_id and not membership.takes_replicas(state, t)]
        moved = 0
        for target in departed:
            after: tuple[int, str, bytes, bytes | None] | None = None
            while rows := self.storage.scan_hints(target, SCAN_PAGE, after):
                copied, tickets = [], []
                for _, partition, bucket, key, sk, raw in rows:
                    primaries = self.view.routing().primaries(partition)
                    recipients = [p for p in primaries if p != target]
                    clock = dvvset.decode_stored(raw)
                    tickets += [self.access.stage(partition, bucket, key, clock, p, sk)
                                for p in recipients]
                    if recipients:  # else it waits until the ring has moved on
                        copied.append((partition, bucket, key, sk, raw))
                for ticket in tickets:
                    if ticket is not None:
                        await ticket.wait()
                batch = Batch()
                for partition, bucket, key, sk, raw in copied:
                    if self.storage.get_hint(target, partition, bucket, key, sk) == raw:
                        batch.delete_hint(target, partition, bucket, key, sk)
                if len(batch):
                    self.storage.stage(batch)
                    self.release_hints()  # see Identity.fallback_actor
                moved += len(batch)
                after = rows[-1][1:5]
        if moved:
            log.info("event=hints_redirected node=%s targets=%s hints=%d", self.node_id,
                     ",".join(departed), moved)
        return moved

    async def deliver_hints(self, target: str) -> int:
        """Hand back every hint held for `target`; returns how many were delivered."""
        config = self.config
        delivered = 0
        while True:
            rows = self.storage.scan_hints(target, limit=config.batch_keys)
            if not rows:
                return delivered
            for _, partition, bucket, key, sk, raw in rows:
                recipients = self._hint_recipients(target, partition)
                try:
                    for recipient in recipients:
                        if recipient == self.node_id:
                            await self.access.store(
                                partition, bucket, key, dvvset.decode_stored(raw), None, sk)
                        else:
                            await self.call(recipient, "p_put", replica_fields(
                                _PRIMARY, partition, bucket, key, sk, clock=raw))  # wire form
                except DynError as exc:
                    log.info("event=hint_delivery_paused node=%s target=%s error=%r",
                             self.node_id, target, exc.message)
                    return delivered
                if self.storage.get_hint(target, partition, bucket, key, sk) == raw:
                    batch = Batch()
                    batch.delete_hint(target, partition, bucket, key, sk)
                    self.storage.stage(batch)
                    self.release_hints()  # see Identity.fallback_actor
                delivered += 1
                self.stats.count("hint_delivered")
                await trio.sleep(1 / config.keys_per_second)

    def _hint_recipients(self, target: str, partition: int) -> list[str]:
        """The primary the hint was for, while it is one; once it is not (it left, or the
        ring moved), today's primaries, this node included: handed to a node that no longer
        owns the partition, the copy would sit where no read or exchange looks, and with
        this node left out, a hint whose only primary is this node was deleted unmerged."""
        primaries = self.view.routing().primaries(partition)
        member = self.view.state.members.get(target)
        if member is not None and member.status != "removed" and target in primaries:
            return [target]
        return list(primaries)

