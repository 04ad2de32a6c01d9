"""The hand-over drop: once an epoch's transfers are done, give the copies of the
partitions this node lost to their primaries, then delete them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from common.errors import DynError
from dynd.cluster import ClusterView
from dynd.replica import Replica
from dynd.storage import Storage

log = logging.getLogger("dynd.handover")

# exchange(partition, peer, handover=True): AntiEntropy.exchange
Exchange = Callable[..., Awaitable[tuple[int, int]]]


class Handover:
    def __init__(self, node_id: str, view: ClusterView, storage: Storage, replica: Replica,
                 exchange: Exchange) -> None:
        self.node_id = node_id
        self.view = view
        self.storage = storage
        self.replica = replica
        self.exchange = exchange

    async def drop_foreign_partitions(self, epoch: int) -> bool:
        """Once an epoch's transfers are all done, delete the replicas this node no longer owns.

        Their new owners hold them now. Keeping stale copies would waste disk and,
        worse, let a later ring change make this node a primary again with values
        that were deleted and reaped meanwhile (resurrection). True once every
        foreign partition is gone.
        """
        owned = self._owned()
        dropped = 0
        for partition in range(self.view.state.ring_size):
            if partition in owned or not self.storage.scan_partition(partition, limit=1):
                continue
            if not await self._handed_over(partition):
                return False  # a primary did not take our copy yet: keep it, try later
            self.replica.forget_partition(partition)
            while rows := self.storage.scan_partition(partition, limit=1000):
                if self.view.state.epoch != epoch or partition in self._owned():
                    return False  # the ring moved on meanwhile: decide again next time
                await self.replica.drop_copies(partition, rows).wait()
                dropped += len(rows)
            self.replica.drop_tree(partition)
            await trio.sleep(0)
        if dropped:
            log.info("event=foreign_replicas_dropped node=%s epoch=%d keys=%d",
                     self.node_id, epoch, dropped)
        return True

    def _owned(self) -> set[int]:
        return self.view.routing().owned_partitions(self.node_id)

    async def _handed_over(self, partition: int) -> bool:
        """Merge our copy of a partition we no longer own into every one of its primaries
        (an anti-entropy exchange with each) before it is dropped.

        The new owner pulled the partition from one replica, which may lack a write that
        only this node still holds (its other copy lost with a disk, say): dropping
        without this would lose it (tests/sim seed 10). Riak's old owner hands its vnode
        off for the same reason. Our copy is outside the reap agreement, so a key only we
        hold that may have been deleted and reaped meanwhile is not pushed (AntiEntropy.
        exchange, ``handover``). False when a primary could not be reached.
        """
        await self.replica.ensure_tree(partition)  # not built at start: not owned then
        for peer in self.view.routing().primaries(partition):
            if peer == self.node_id:
                continue
            try:
                await self.exchange(partition, peer, handover=True)
            except DynError as exc:
                log.info("event=handover_deferred node=%s partition=%d peer=%s error=%r",
                         self.node_id, partition, peer, exc.message)
                return False
        return True

