"""Hinted handoff and ownership transfer: moving replicas to where they belong.

Hints: a fallback keeps a replica for an unreachable primary in the hints
column family; this service hands each one back once the primary answers
again, and deletes the hint only after the primary acknowledged it (and only
if the hint did not change meanwhile).

Transfers: after a commit, a node that gained key partitions pulls them,
page by page, from any replica of the old ring (the old owner first, so a
dead owner costs nothing but a retry), whether or not it is the new owner of
a ring partition: a key partition's primaries are the first n distinct owners
walking the ring, so another node's move can make this one a primary too.
The cursor of every partition is persisted, so a transfer resumes after a
crash. While a partition moves, writes also reach the new owner
(dynd.node.placement), reads still go to the old one. When every page is in,
the node records the transfer as complete in the gossiped state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from common import context
from common.errors import DynError, Rejected, Unavailable
from dynd import membership
from dynd.membership import Transfer
from dynd.storage import SCAN_PAGE, Batch

if TYPE_CHECKING:
    from dynd.node import Node
    from dynd.server import Peer

log = logging.getLogger("dynd.handoff")

_CURSOR_PREFIX = "xfer:"  # meta names of pull cursors: xfer:<epoch>:<partition>
_META_PULLED_EPOCH = "pulled_epoch"


@dataclass
class Progress:
    partition: int
    source: str
    target: str
    keys: int = 0
    state: str = "waiting"


class Handoff:
    OPS = ("hints", "transfers", "p_fetch")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.progress: dict[int, Progress] = {}
        self.cleaned_epoch = 0
        # The last epoch whose gained key partitions are all in; persisted, or every restart
        # would pull them again (from the founder alone, in the first epoch after it).
        self.pulled_epoch = int(node.storage.get_meta(_META_PULLED_EPOCH) or b"0")

    # ---- ops -------------------------------------------------------------------

    async def op_hints(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Hints held per target; only members that take replicas are targets (see
        redirect_departed)."""
        await self.redirect_departed()
        return {"hints": self.node.storage.hint_counts()}

    async def op_transfers(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Ownership moves of the current epoch, with this node's pull progress where known."""
        rows = [{"partition": t.partition, "source": next(iter(t.sources), ""),
                 "target": t.target, "keys": 0, "state": "queued"}
                for t in membership.pending_transfers(self.node.state)]
        rows += [{"partition": p.partition, "source": p.source, "target": p.target,
                  "keys": p.keys, "state": p.state}
                 for _, p in sorted(self.progress.items()) if p.state != "done"]
        return {"transfers": rows}

    async def op_p_fetch(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """One page of a partition for a transfer: stored clocks passed through as bytes."""
        after = fields.get("after")
        if after is not None and not (
                isinstance(after, list) and len(after) == 2
                and isinstance(after[0], str) and isinstance(after[1], bytes)):
            raise Rejected("p_fetch cursor must be [bucket, key]")
        limit = fields["limit"]
        rows = self.node.storage.scan_partition(
            fields["partition"], after=None if after is None else (after[0], after[1]), limit=limit)
        return {"items": [[b, k, raw] for b, k, raw in rows], "done": len(rows) < limit}

    # ---- services ------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hint_loop)
            nursery.start_soon(self._transfer_loop)

    async def _hint_loop(self) -> None:
        config = self.node.config.handoff
        while True:
            await trio.sleep(config.interval)
            await self.redirect_departed()
            counts = self.node.storage.hint_counts()
            self.node.stats.hint_ages.check(self.node.id, counts, trio.current_time(),
                                            config.hint_warn_age)
            for target in sorted(counts):
                if self.node.is_up(target):
                    await self.deliver_hints(target)
            self.announce_hints()

    def announce_hints(self) -> None:
        """Tell the cluster whether this node holds hints: a leaver is not removed, and a
        removed node is still asked before a reap, while it does (membership._left)."""
        holding = bool(self.node.storage.hint_counts())
        me = self.node.state.members.get(self.node.id)
        if me is None or me.hints == holding:
            return
        self.node.set_state(membership.announce_hints(self.node.state, self.node.id, holding))
        self.node.background.start_soon(self.node.gossip.push_now)

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
        state = self.node.state
        departed = [t for t in self.node.storage.hint_counts()
                    if t != self.node.id and not membership.takes_replicas(state, t)]
        moved = 0
        for target in departed:
            after: tuple[int, str, bytes] | None = None
            while rows := self.node.storage.scan_hints(target, SCAN_PAGE, after):
                copied, tickets = [], []
                for _, partition, bucket, key, raw in rows:
                    recipients = [p for p in self.node.primaries(partition) if p != target]
                    clock = context.decode_stored(raw)
                    tickets += [self.node.stage_replica(partition, bucket, key, clock, p)
                                for p in recipients]
                    if recipients:  # else it waits until the ring has moved on
                        copied.append((partition, bucket, key, raw))
                for ticket in tickets:
                    if ticket is not None:
                        await ticket.wait()
                batch = Batch()
                for partition, bucket, key, raw in copied:
                    if self.node.storage.get_hint(target, partition, bucket, key) == raw:
                        batch.delete_hint(target, partition, bucket, key)
                if len(batch):
                    self.node.storage.stage(batch)
                    self.node.hints_released = True  # see Node.fallback_actor
                moved += len(batch)
                after = rows[-1][1:4]
        if moved:
            log.info("event=hints_redirected node=%s targets=%s hints=%d", self.node.id,
                     ",".join(departed), moved)
        return moved

    async def deliver_hints(self, target: str) -> int:
        """Hand back every hint held for `target`; returns how many were delivered."""
        config = self.node.config.handoff
        delivered = 0
        while True:
            rows = self.node.storage.scan_hints(target, limit=config.batch_keys)
            if not rows:
                return delivered
            for _, partition, bucket, key, raw in rows:
                recipients = self._hint_recipients(target, partition)
                try:
                    for recipient in recipients:
                        if recipient == self.node.id:
                            await self.node.store_replica(
                                partition, bucket, key, context.decode_stored(raw), None)
                        else:
                            await self.node.call(recipient, "p_put", {  # stored: wire form
                                "bucket": bucket, "key": key, "partition": partition,
                                "clock": raw})
                except DynError as exc:
                    log.info("event=hint_delivery_paused node=%s target=%s error=%r",
                             self.node.id, target, exc.message)
                    return delivered
                if self.node.storage.get_hint(target, partition, bucket, key) == raw:
                    batch = Batch()
                    batch.delete_hint(target, partition, bucket, key)
                    self.node.storage.stage(batch)
                    self.node.hints_released = True  # see Node.fallback_actor
                delivered += 1
                self.node.stats.count("hint_delivered")
                await trio.sleep(1 / config.keys_per_second)

    def _hint_recipients(self, target: str, partition: int) -> list[str]:
        """The primary the hint was for, while it is one; once it is not (it left, or the
        ring moved), today's primaries, this node included: handed to a node that no longer
        owns the partition, the copy would sit where no read or exchange looks, and with
        this node left out, a hint whose only primary is this node was deleted unmerged."""
        primaries = self.node.primaries(partition)
        member = self.node.state.members.get(target)
        if member is not None and member.status != "removed" and target in primaries:
            return [target]
        return list(primaries)

    async def _transfer_loop(self) -> None:
        """Pull what the current epoch brings; once all its transfers are done, forget the
        pull cursors and drop the partitions this node lost.

        The pull comes first even when the other nodes' transfers are all done (this node
        learnt of the epoch late, or restarted): cursors written after the clean-up would
        never be forgotten.
        """
        while True:
            state = self.node.state
            pending = membership.pending_transfers(state)
            mine = [t for t in pending if t.target == self.node.id]
            if mine or state.epoch > self.pulled_epoch:
                try:
                    await self._pull_all(state.epoch, mine)
                except DynError as exc:
                    self.node.stats.count("transfer_stalled")
                    log.warning("event=transfer_stalled node=%s epoch=%d error=%r",
                                self.node.id, state.epoch, exc.message)
            elif not pending and state.epoch > self.cleaned_epoch:
                self._forget_cursors(state.epoch)
                await self.drop_foreign_partitions(state.epoch)
            with trio.move_on_after(1.0):
                await self.node.state_changed.wait()

    async def drop_foreign_partitions(self, epoch: int) -> None:
        """Once an epoch's transfers are all done, delete the replicas this node no longer owns.

        Their new owners hold them now. Keeping stale copies would waste disk and,
        worse, let a later ring change make this node a primary again with values
        that were deleted and reaped meanwhile (resurrection).
        """
        owned = self.node.owned_partitions()
        dropped = 0
        for partition in range(self.node.state.ring_size):
            if partition in owned or not self.node.storage.scan_partition(partition, limit=1):
                continue
            if not await self._handed_over(partition):
                return  # a primary did not take our copy yet: keep it, try again later
            self.node.replica.forget_partition(partition)
            while rows := self.node.storage.scan_partition(partition, limit=1000):
                if self.node.state.epoch != epoch or partition in self.node.owned_partitions():
                    return  # the ring moved on meanwhile: decide again next time
                batch = Batch()
                for bucket, key, _ in rows:
                    batch.delete(partition, bucket, key)
                await self.node.storage.write(batch)
                dropped += len(rows)
            self.node.replica.trees.pop(partition, None)
            await trio.sleep(0)
        self.cleaned_epoch = epoch
        if dropped:
            log.info("event=foreign_replicas_dropped node=%s epoch=%d keys=%d",
                     self.node.id, epoch, dropped)

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
        if partition not in self.node.replica.trees:
            await self.node.replica.rebuild_tree(partition)  # not built at start: not owned then
        for peer in self.node.primaries(partition):
            if peer == self.node.id:
                continue
            try:
                await self.node.antientropy.exchange(partition, peer, handover=True)
            except DynError as exc:
                log.info("event=handover_deferred node=%s partition=%d peer=%s error=%r",
                         self.node.id, partition, peer, exc.message)
                return False
        return True

    def _needed(self) -> list[int]:
        """Key partitions whose primaries gain this node in the planned ring."""
        state = self.node.state
        n = self.node.target_n()
        return [p for p in range(state.ring_size)
                if self.node.id in self.node.primaries(p, n, state.next_owners)
                and self.node.id not in self.node.primaries(p, n, state.owners)]

    async def _pull_all(self, epoch: int, mine: list[Transfer]) -> None:
        """Pull every key partition this epoch brings us, then report our transfers done.

        Completion is reported only once all of them are in: until then the old
        owners stay primaries and keep serving reads. A node with no transfer of its
        own (`mine` empty) still pulls what it gained, once per epoch, and has nothing
        to report; it pulls before its cursors are forgotten (see _transfer_loop).
        """
        state = self.node.state
        first_sources = [s for t in mine for s in t.sources]
        for partition in self._needed():
            progress = self.progress.setdefault(
                partition, Progress(partition, "", self.node.id))
            # The old primaries first (they hold it while transfers run), then today's: once
            # the epoch's transfers are done (a node that restarted, or learnt of the epoch
            # late) an old primary may have dropped its copy, or be down.
            candidates = (*self.node.primaries(partition, owners=state.owners), *first_sources,
                          *self.node.primaries(partition))
            sources = list(dict.fromkeys(s for s in candidates if s != self.node.id))
            await self._pull_partition(epoch, partition, sources, progress)
            progress.state = "done"
        self.mark_pulled(epoch)
        if not mine:
            return
        for transfer in mine:
            if self.node.state.epoch != epoch:
                return
            self.node.set_state(membership.complete_transfer(
                self.node.state, transfer.partition, epoch))
            self.node.stats.count("transfer_completed")
        log.info("event=transfers_done node=%s epoch=%d partitions=%d",
                 self.node.id, epoch, len(mine))
        self.node.background.start_soon(self.node.gossip.push_now)

    def pull_pending(self, partition: int) -> bool:
        """Whether this node's copy of a key partition may lack keys it is a primary for:
        gained in the current epoch (not a primary of it under the old owners) and not
        pulled yet. Another node's completed transfer can make this node a primary before
        its own pull is in; such a copy must not make a read's answer (GetCore: it is
        merged, not counted toward R). After a restart the persisted cursor tells."""
        state = self.node.state
        if state.epoch <= self.pulled_epoch:
            return False  # every pull of this epoch is in: the common case, one comparison
        if self.node.id in self.node.primaries(partition, owners=state.owners):
            return False
        cursor = self.node.storage.get_meta(f"{_CURSOR_PREFIX}{state.epoch}:{partition}")
        return cursor is None or cbor2.loads(cursor) != "done"

    def mark_pulled(self, epoch: int) -> None:
        """Record that ``epoch`` needs no pull (any more); persisted with the next group
        commit, so a restart does not pull again (a crash before it only repeats a pull)."""
        self.pulled_epoch = epoch
        self.node.storage.stage(Batch().put_meta(_META_PULLED_EPOCH, str(epoch).encode()))

    def _forget_cursors(self, epoch: int) -> None:
        """Drop the pull cursors of this epoch and of the ones it superseded: once every
        transfer of the epoch is done, none is read again."""
        batch = Batch()
        for name in self.node.storage.meta_names(_CURSOR_PREFIX):
            if int(name.split(":")[1]) <= epoch:
                batch.delete_meta(name)
        if len(batch):
            self.node.storage.stage(batch)

    async def _pull_partition(
        self, epoch: int, partition: int, sources: list[str], progress: Progress
    ) -> None:
        meta = f"{_CURSOR_PREFIX}{epoch}:{partition}"
        raw_cursor = self.node.storage.get_meta(meta)
        cursor = None if raw_cursor is None else cbor2.loads(raw_cursor)
        if cursor == "done":
            return
        limit = self.node.config.handoff.batch_keys
        errors = []
        for source in sources:
            progress.source, progress.state = source, "running"
            try:
                while True:
                    fields: dict[str, Any] = {"partition": partition, "limit": limit}
                    if cursor is not None:
                        fields["after"] = cursor
                    page = await self.node.call(source, "p_fetch", fields)
                    tickets = []
                    for bucket, key, raw in page["items"]:
                        _, ticket = self.node.replica.merge(partition, bucket, key,
                                                            context.decode(raw))
                        if ticket is not None:
                            tickets.append(ticket)
                    for ticket in tickets:
                        await ticket.wait()
                    progress.keys += len(page["items"])
                    self.node.stats.count("transfer_keys", len(page["items"]))
                    if page["items"]:
                        cursor = [page["items"][-1][0], page["items"][-1][1]]
                    batch = Batch()
                    batch.put_meta(meta, cbor2.dumps("done" if page["done"] else cursor))
                    await self.node.storage.write(batch)
                    if page["done"]:
                        return
                    await trio.sleep(len(page["items"]) / self.node.config.handoff.keys_per_second)
            except (DynError, KeyError, ValueError, TypeError) as exc:
                errors.append(f"{source}: {exc}")
                # The cursor is a place in that source's keys: the next source may hold
                # keys before it that this one lacked, so it is read from the start.
                cursor = None
        progress.state = "waiting for a source"
        raise Unavailable(f"no source for partition {partition}: {'; '.join(errors)}")
