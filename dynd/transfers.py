"""Ownership transfer: after a commit, pull the key partitions this node gained.

A node that gained key partitions pulls them, page by page, from any replica
of the old ring (the old owner first, so a dead owner costs nothing but a
retry), whether or not it is the new owner of a ring partition: a key
partition's primaries are the first n distinct owners walking the ring, so
another node's move can make this one a primary too. The cursor of every
partition is persisted, so a transfer resumes after a crash. While a
partition moves, writes also reach the new owner (Routing.placement), reads
still go to the old one. When every page is in, the node records the
transfer as complete in the gossiped state; once every transfer of the epoch
is done, the partitions this node lost are handed over and dropped
(dynd.handover).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import trio

from common import dvvset
from common.config import HandoffConfig
from common.errors import DynError, Unavailable
from dynd import membership
from dynd.cluster import ClusterView
from dynd.membership import Transfer
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.replica import Replica
from dynd.server import Peer
from dynd.storage import Batch, Storage

log = logging.getLogger("dynd.transfers")


def _sort_key_of(item: list[Any], index: int) -> bytes | None:
    """The sort key a p_fetch item or cursor carries at ``index`` (None: a plain key)."""
    if len(item) <= index:
        return None
    sk = item[index]
    if type(sk) is not bytes or not sk:
        raise ValueError(f"a sort key must be non-empty bytes, not {sk!r:.40}")
    return sk


_CURSOR_PREFIX = "xfer:"  # meta names of pull cursors: xfer:<epoch>:<partition>
_META_PULLED_EPOCH = "pulled_epoch"
# Seconds between two more hand-over drops within a settled epoch: a replica write sent by a
# coordinator whose view is older (it still counts this node a primary) can store a copy of
# a partition after this epoch's drop, and nothing else would ever remove it.
RESWEEP_SECONDS = 60.0


@dataclass
class Progress:
    partition: int
    source: str
    target: str
    keys: int = 0
    state: str = "waiting"


class Transfers:
    OPS = ("transfers", "p_fetch")

    def __init__(self, node_id: str, view: ClusterView, storage: Storage, replica: Replica,
                 peers: Peers, stats: Stats, config: HandoffConfig, *,
                 push_gossip: Callable[[], None],
                 on_settled: Callable[[int], Awaitable[bool]]) -> None:
        """``on_settled(epoch)``: every transfer of ``epoch`` is done; True once its work
        is (asked again at the next change or second until then)."""
        self.node_id = node_id
        self.view = view
        self.storage = storage
        self.replica = replica
        self.call = peers.call
        self.stats = stats
        self.config = config
        self.push_gossip = push_gossip
        self.on_settled = on_settled
        self.progress: dict[int, Progress] = {}
        self.settled_epoch = 0
        self.swept_at = 0.0  # trio time of the last hand-over drop (see RESWEEP_SECONDS)
        # The last epoch whose gained key partitions are all in; persisted, or every restart
        # would pull them again (from the founder alone, in the first epoch after it).
        self.pulled_epoch = int(storage.get_meta(_META_PULLED_EPOCH) or b"0")

    async def op_transfers(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Ownership moves of the current epoch, with this node's pull progress where known."""
        return self.status_fields()

    def status_fields(self) -> dict[str, Any]:
        """What this service adds to ``status`` (Admin's status provider)."""
        return {"transfers": self.rows()}

    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``op_transfers`` (also in ``status``)."""
        rows = [{"partition": t.partition, "source": next(iter(t.sources), ""),
                 "target": t.target, "keys": 0, "state": "queued"}
                for t in membership.pending_transfers(self.view.state)]
        rows += [{"partition": p.partition, "source": p.source, "target": p.target,
                  "keys": p.keys, "state": p.state}
                 for _, p in sorted(self.progress.items()) if p.state != "done"]
        return rows

    async def op_p_fetch(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """One page of a partition for a transfer: stored clocks passed through as bytes."""
        after = fields.get("after")  # [bucket, key] or [bucket, key, sk] (validate_request)
        limit = fields["limit"]
        rows = self.storage.scan_partition(
            fields["partition"], limit=limit,
            after=None if after is None else (after[0], after[1], _sort_key_of(after, 2)))
        return {"items": [[b, k, raw] if sk is None else [b, k, raw, sk]
                          for b, k, sk, raw in rows], "done": len(rows) < limit}

    async def run(self) -> None:
        """Pull what the current epoch brings; once all its transfers are done, forget the
        pull cursors and hand the epoch to ``on_settled`` (the hand-over drop).

        The pull comes first even when the other nodes' transfers are all done (this node
        learnt of the epoch late, or restarted): cursors written after the clean-up would
        never be forgotten.
        """
        while True:
            state = self.view.state
            pending = membership.pending_transfers(state)
            mine = [t for t in pending if t.target == self.node_id]
            if mine or state.epoch > self.pulled_epoch:
                try:
                    await self._pull_all(state.epoch, mine)
                except DynError as exc:
                    self.stats.count("transfer_stalled")
                    log.warning("event=transfer_stalled node=%s epoch=%d error=%r",
                                self.node_id, state.epoch, exc.message)
            elif not pending and state.epoch > self.settled_epoch:
                self._forget_cursors(state.epoch)
                if await self.on_settled(state.epoch):
                    self.settled_epoch = state.epoch
                    self.swept_at = trio.current_time()
            elif not pending and trio.current_time() - self.swept_at >= RESWEEP_SECONDS:
                await self.on_settled(state.epoch)  # copies that arrived after the drop
                self.swept_at = trio.current_time()
            with trio.move_on_after(1.0):
                await self.view.wait_changed()

    def _needed(self) -> list[int]:
        """Key partitions whose primaries gain this node in the planned ring."""
        state = self.view.state
        n = self.view.routing().target_n()
        return [p for p in range(state.ring_size)
                if self.node_id in self.view.routing().primaries(p, n, state.next_owners)
                and self.node_id not in self.view.routing().primaries(p, n, state.owners)]

    async def _pull_all(self, epoch: int, mine: list[Transfer]) -> None:
        """Pull every key partition this epoch brings us, then report our transfers done.

        Completion is reported only once all of them are in: until then the old
        owners stay primaries and keep serving reads. A node with no transfer of its
        own (`mine` empty) still pulls what it gained, once per epoch, and has nothing
        to report; it pulls before its cursors are forgotten (see run).
        """
        state = self.view.state
        first_sources = [s for t in mine for s in t.sources]
        for partition in self._needed():
            progress = self.progress.setdefault(
                partition, Progress(partition, "", self.node_id))
            # The old primaries first (they hold it while transfers run), then today's: once
            # the epoch's transfers are done (a node that restarted, or learnt of the epoch
            # late) an old primary may have dropped its copy, or be down.
            routing = self.view.routing()
            candidates = (*routing.primaries(partition, owners=state.owners), *first_sources,
                          *routing.primaries(partition))
            sources = list(dict.fromkeys(s for s in candidates if s != self.node_id))
            await self._pull_partition(epoch, partition, sources, progress)
            progress.state = "done"
        self.mark_pulled(epoch)
        if not mine:
            return
        for transfer in mine:
            if self.view.state.epoch != epoch:
                return
            self.view.set_state(membership.complete_transfer(
                self.view.state, transfer.partition, epoch))
            self.stats.count("transfer_completed")
        log.info("event=transfers_done node=%s epoch=%d partitions=%d",
                 self.node_id, epoch, len(mine))
        self.push_gossip()

    def pull_pending(self, partition: int) -> bool:
        """Whether this node's copy of a key partition may lack keys it is a primary for:
        gained in the current epoch (not a primary of it under the old owners) and not
        pulled yet. Another node's completed transfer can make this node a primary before
        its own pull is in; such a copy must not make a read's answer (GetCore: it is
        merged, not counted toward R). After a restart the persisted cursor tells."""
        state = self.view.state
        if state.epoch <= self.pulled_epoch:
            return False  # every pull of this epoch is in: the common case, one comparison
        if self.node_id in self.view.routing().primaries(partition, owners=state.owners):
            return False
        cursor = self.storage.get_meta(f"{_CURSOR_PREFIX}{state.epoch}:{partition}")
        return cursor is None or cbor2.loads(cursor) != "done"

    def read_incomplete(self, partition: int, hint_for: str | None) -> bool:
        """Whether this node's copy read for ``hint_for`` (None: its own) may lack keys
        because its pull of the partition is not in (pull_pending)."""
        return hint_for in (None, self.node_id) and self.pull_pending(partition)

    def mark_pulled(self, epoch: int) -> None:
        """Record that ``epoch`` needs no pull (any more); persisted with the next group
        commit, so a restart does not pull again (a crash before it only repeats a pull)."""
        self.pulled_epoch = epoch
        self.storage.stage(Batch().put_meta(_META_PULLED_EPOCH, str(epoch).encode()))

    def _forget_cursors(self, epoch: int) -> None:
        """Drop the pull cursors of this epoch and of the ones it superseded: once every
        transfer of the epoch is done, none is read again."""
        batch = Batch()
        for name in self.storage.meta_names(_CURSOR_PREFIX):
            if int(name.split(":")[1]) <= epoch:
                batch.delete_meta(name)
        if len(batch):
            self.storage.stage(batch)

    async def _pull_partition(
        self, epoch: int, partition: int, sources: list[str], progress: Progress
    ) -> None:
        meta = f"{_CURSOR_PREFIX}{epoch}:{partition}"
        raw_cursor = self.storage.get_meta(meta)
        cursor = None if raw_cursor is None else cbor2.loads(raw_cursor)
        if cursor == "done":
            return
        limit = self.config.batch_keys
        errors = []
        for source in sources:
            progress.source, progress.state = source, "running"
            try:
                while True:
                    fields: dict[str, Any] = {"partition": partition, "limit": limit}
                    if cursor is not None:
                        fields["after"] = cursor
                    page = await self.call(source, "p_fetch", fields)
                    tickets = []
                    for item in page["items"]:
                        _, ticket = self.replica.merge(partition, item[0], item[1],
                                                       dvvset.decode(item[2]),
                                                       _sort_key_of(item, 3))
                        if ticket is not None:
                            tickets.append(ticket)
                    for ticket in tickets:
                        await ticket.wait()
                    progress.keys += len(page["items"])
                    self.stats.count("transfer_keys", len(page["items"]))
                    if page["items"]:
                        last = page["items"][-1]
                        cursor = [last[0], last[1], *last[3:]]  # sort key last, if any
                    batch = Batch()
                    batch.put_meta(meta, cbor2.dumps("done" if page["done"] else cursor))
                    await self.storage.write(batch)
                    if page["done"]:
                        return
                    await trio.sleep(len(page["items"]) / self.config.keys_per_second)
            except (DynError, KeyError, ValueError, TypeError) as exc:
                errors.append(f"{source}: {exc}")
                # The cursor is a place in that source's keys: the next source may hold
                # keys before it that this one lacked, so it is read from the start.
                cursor = None
        progress.state = "waiting for a source"
        raise Unavailable(f"no source for partition {partition}: {'; '.join(errors)}")
