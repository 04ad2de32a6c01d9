"""Merkle anti-entropy: replicas of a partition compare trees and repair what differs.

Hinted handoff covers short outages; this covers everything else (Dynamo
4.7). Each node walks the partitions it is a primary for and exchanges with
every other primary of each, so every pair of replicas is compared at least
once per `antientropy.period`. An exchange walks down the two trees
(dynd.merkle, one round trip per level), lists the keys of the differing
segments on both sides, and merges the DVV sets in both directions. Repairs
are rate limited in keys per second so foreground latency barely moves.

Dead objects (tombstones, and values past their expiry) are reaped here too, only
when (1) every sibling was written at least the bucket's grace ago, (2) every primary
holds exactly that object and finds it dead by its own clock, (3) no reachable member
holds undelivered hints, and (4) the partition's future primaries are all
primaries already, so neither repair, nor a late hint, nor a returning
replica can resurrect a deleted value. A node that holds a copy outside the
agreement (no primary any more, its copy not yet handed over) pushes back no
key that may have been reaped meanwhile (see `exchange`'s `handover`).

Scans of a partition take a checkpoint every page (Storage.iter_partition), so a
big partition never holds the event loop for long.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from common import dvvset
from common.config import AntiEntropyConfig
from common.dvvset import DVVSet
from common.errors import DynError, Rejected
from common.messages import MAX_REAP_ITEMS
from common.ring import Target
from dynd import membership, merkle
from dynd.cluster import ClusterView
from dynd.features import BATCHED_REAP
from dynd.membership import ClusterState
from dynd.merkle import MerkleError, TreeComparison
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.replica import Replica, key_id, split_key_id
from dynd.replica_access import ReplicaAccess, clock_from_peer
from dynd.server import Peer
from dynd.storage import Storage

log = logging.getLogger("dynd.antientropy")

Candidate = tuple[str, bytes, bytes | None, DVVSet]  # (bucket, key, sk, our clock)


def _segment_item(kid: bytes, digest: bytes) -> list[Any]:
    """One item of a p_segments reply: ``[bucket, key, digest]``, and the sort key after
    them for an item that has one (the plain form is what nodes without sort keys read)."""
    bucket, key, sk = split_key_id(kid)
    return [bucket, key, digest] if sk is None else [bucket, key, digest, sk]


def _remote_digests(items: Any) -> dict[bytes, bytes]:
    """key id -> digest of a peer's p_segments items (see _segment_item)."""
    try:
        return {key_id(item[0], item[1], item[3] if len(item) == 4 else None): item[2]
                for item in items}
    except (TypeError, IndexError, AttributeError) as exc:
        raise Rejected(f"bad p_segments answer: {exc}") from None


def _batch_answers(reply: dict[str, Any], field: str, count: int) -> list[Any]:
    """A p_digests or batched p_reap answer: one entry per item asked about."""
    answers = reply.get(field)
    if not isinstance(answers, list) or len(answers) != count:
        raise Rejected(f"bad {field} answer: {count} items asked, got {answers!r:.60}")
    return answers


def past_grace(clock: DVVSet, now_ms: int, grace_ms: float) -> bool:
    """Every sibling was written at least ``grace_ms`` before ``now_ms``."""
    return all(now_ms - sibling.written_at >= grace_ms for sibling in dvvset.values(clock))


def reap_candidate(clock: DVVSet, now_ms: int, grace_ms: float) -> bool:
    """Whether a copy may be reaped by a node whose clock says ``now_ms``: dead (every
    sibling a tombstone or expired) and past the grace. The grace holds expired values to
    the tombstones' rule, which the hand-over rule (``AntiEntropy.exchange``) relies on:
    anything reaped was written at least a grace ago."""
    return dvvset.is_dead(clock, now_ms) and past_grace(clock, now_ms, grace_ms)


def grace_ms(state: ClusterState, bucket: str, default_seconds: float) -> float:
    """The bucket's grace in ms: its own, else the node's tombstone grace."""
    return (membership.bucket(state, bucket).grace or default_seconds) * 1000


@dataclass
class ExchangeRecord:
    partition: int
    last_exchange: float | None = None  # wall-clock seconds
    compared: int = 0
    repaired: int = 0


class AntiEntropy:
    OPS = ("repair", "p_tree", "p_segments", "p_reap", "p_digests")

    def __init__(self, node_id: str, view: ClusterView, storage: Storage, replica: Replica,
                 access: ReplicaAccess, peers: Peers, stats: Stats, config: AntiEntropyConfig,
                 *, is_up: Callable[[str], bool], rng: random.Random,
                 wall: Callable[[], float]) -> None:
        self.node_id = node_id
        self.view = view
        self.storage = storage
        self.replica = replica
        self.access = access
        self.call = peers.call
        self.stats = stats
        self.config = config
        self.is_up = is_up
        self.rng = rng
        self.wall = wall
        self.records: dict[int, ExchangeRecord] = {}
        self._repair_lock = trio.Lock()

    def status_fields(self) -> dict[str, Any]:
        """What this service adds to ``status`` (Admin's status provider)."""
        return {"antientropy": self.status_rows()}

    def status_rows(self) -> list[dict[str, Any]]:
        return [{"partition": r.partition, "last_exchange": r.last_exchange,
                 "compared": r.compared, "repaired": r.repaired}
                for _, r in sorted(self.records.items())]

    def last_exchange(self) -> float | None:
        """Wall-clock time of the newest exchange of any partition (None: none yet)."""
        return max((r.last_exchange for r in self.records.values()
                    if r.last_exchange is not None), default=None)

    # ---- peer ops -----------------------------------------------------------------

    async def op_p_tree(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        tree = await self.replica.ensure_tree(fields["partition"])
        try:
            return {"hashes": tree.hashes(fields["level"], fields["indices"])}
        except MerkleError as exc:
            raise Rejected(str(exc)) from None

    async def op_p_segments(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        items = await self._segment_digests(fields["partition"], fields["segments"])
        return {"items": [_segment_item(kid, digest) for kid, digest in items.items()]}

    async def op_p_digests(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """The digest of our copy of each item, for the reaper to compare; null where we
        hold none or our own clock does not find it dead past the grace yet, so that an
        item any primary would refuse is deleted by none."""
        partition = fields["partition"]
        digests: list[bytes | None] = []
        for bucket, key, sk in fields["items"]:
            raw = self.replica.get_encoded(partition, bucket, key, None, sk)
            reapable = raw is not None and self._reapable(dvvset.decode_stored(raw), bucket)
            digests.append(dvvset.digest_encoded(raw) if reapable and raw is not None else None)
        return {"digests": digests}

    async def op_p_reap(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        if "items" in fields:
            return {"reaped": await self._reap_items(fields["partition"], fields["items"])}
        clock = clock_from_peer(fields["clock"])
        if clock is None or not dvvset.values(clock):
            raise Rejected("p_reap needs a clock with siblings")
        # Our own clock decides, not the reaper's: skew can delay a reap, never advance it.
        if not self._reapable(clock, fields["bucket"]):
            return {"reaped": False}
        ticket = self.replica.reap(fields["partition"], fields["bucket"], fields["key"], clock,
                                   fields.get("sk"))
        if ticket is not None:
            await ticket.wait()
        return {"reaped": ticket is not None}

    async def _reap_items(self, partition: int, items: list[list[Any]]) -> list[bool]:
        """Delete each item whose copy still has exactly the agreed digest and is dead past
        the grace by our own clock (skew can delay a reap, never advance it); whether each
        one was, once the deletes are durable."""
        tickets = []
        for bucket, key, sk, digest in items:
            raw = self.replica.get_encoded(partition, bucket, key, None, sk)
            ticket = None
            if raw is not None and dvvset.digest_encoded(raw) == digest:
                clock = dvvset.decode_stored(raw)
                if self._reapable(clock, bucket):
                    ticket = self.replica.reap(partition, bucket, key, clock, sk)
            tickets.append(ticket)
        for ticket in tickets:
            if ticket is not None:
                await ticket.wait()
        return [ticket is not None for ticket in tickets]

    async def _segment_digests(self, partition: int, segments: list[int]) -> dict[bytes, bytes]:
        """key id -> version digest for every local key in the given segments."""
        wanted = set(segments)
        size = self.replica.segments
        found: dict[bytes, bytes] = {}
        async for bucket, key, sk, raw in self.storage.iter_partition(partition):
            kid = key_id(bucket, key, sk)
            if merkle.key_segment(kid, size) in wanted:
                found[kid] = dvvset.digest_encoded(raw)
        return found

    # ---- exchange -----------------------------------------------------------------

    def _peers(self, partition: int) -> list[str]:
        primaries = self.view.routing().primaries(partition)
        if self.node_id not in primaries:
            return []
        return [p for p in primaries if p != self.node_id]

    async def exchange(
        self, partition: int, peer: str, bucket: str | None = None, *, handover: bool = False
    ) -> tuple[int, int]:
        """Compare and repair one partition with one peer; (keys compared, keys repaired).

        ``handover``: this node is no primary of the partition any more and hands its copy
        to ``peer`` before dropping it (Handover._handed_over). Its copy stayed outside the
        reap agreement, so a key only it holds whose siblings are all past the tombstone
        grace is not pushed: the primaries may have deleted and reaped it meanwhile (a
        reap needs a tombstone past the grace, newer than every value it deleted), and
        pushing it would resurrect it. Cassandra's rule: a replica that missed gc_grace
        must not push old data back. A genuinely missing write that old was written while
        this node was a primary, and anti-entropy (period 300 s against a grace of a day,
        by default) had given it to the other primaries, from which the new ones pulled.
        """
        comparison = TreeComparison(await self.replica.ensure_tree(partition))
        while (request := comparison.next_request()) is not None:
            level, indices = request
            reply = await self.call(peer, "p_tree", {"partition": partition, "level": level,
                                                          "indices": indices})
            try:
                comparison.receive(reply["hashes"])
            except (MerkleError, KeyError) as exc:
                raise Rejected(f"bad tree answer from {peer}: {exc}") from None
        segments = comparison.differing_segments
        if not segments:
            return 0, 0
        local = await self._segment_digests(partition, segments)
        reply = await self.call(peer, "p_segments", {"partition": partition,
                                                          "segments": segments})
        remote = _remote_digests(reply["items"])
        only_local, only_remote, different = merkle.diff_keys(local, remote)
        if handover:
            only_local = [kid for kid in only_local if not self._maybe_reaped(partition, kid)]
        repaired = 0
        for kid in [*only_local, *only_remote, *different]:
            b, k, sk = split_key_id(kid)
            if bucket is not None and b != bucket:
                continue
            size = await self._repair_key(partition, peer, b, k, sk)
            repaired += 1
            self.stats.count("antientropy_repaired")
            config = self.config
            await trio.sleep(max(1 / config.keys_per_second, size / config.bytes_per_second))
        compared = len(set(local) | set(remote))
        self.stats.count("antientropy_compared", compared)
        return compared, repaired

    async def _repair_key(self, partition: int, peer: str, bucket: str, key: bytes,
                          sk: bytes | None) -> int:
        """Merge both copies into both replicas; returns the merged object's size in bytes."""
        target = Target(peer, peer, "primary")
        theirs = await self.access.get(target, partition, bucket, key, sk)
        ours = self.replica.get(partition, bucket, key, None, sk)
        clocks = [c for c in (ours, theirs) if c is not None]
        merged = dvvset.merge_all(clocks)
        if ours is None or not dvvset.equal(ours, merged):
            await self.access.store(partition, bucket, key, merged, None, sk)
        if theirs is None or not dvvset.equal(theirs, merged):
            await self.access.put(target, partition, bucket, key, merged, sk)
        return sum(len(s.value or b"") for s in dvvset.values(merged))

    async def repair_partition(self, partition: int, bucket: str | None = None) -> tuple[int, int]:
        record = self.records.setdefault(partition, ExchangeRecord(partition))
        compared = repaired = 0
        for peer in self._peers(partition):
            if not self.is_up(peer):
                continue
            try:
                c, r = await self.exchange(partition, peer, bucket)
            except DynError as exc:
                log.info("event=exchange_failed node=%s partition=%d peer=%s error=%r",
                         self.node_id, partition, peer, exc.message)
                continue
            compared += c
            repaired += r
        record.last_exchange = self.wall()
        record.compared += compared
        record.repaired += repaired
        if repaired:
            log.info("event=antientropy_repaired node=%s partition=%d keys=%d",
                     self.node_id, partition, repaired)
        await self.reap_tombstones(partition)
        return compared, repaired

    async def op_repair(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        partitions = sorted(self.view.routing().owned_partitions(self.node_id))
        if "partition" in fields:
            if fields["partition"] >= self.view.state.ring_size:
                raise Rejected(f"partition {fields['partition']} out of range")
            partitions = [p for p in partitions if p == fields["partition"]]
        compared = repaired = 0
        async with self._repair_lock:
            for partition in partitions:
                c, r = await self.repair_partition(partition, fields.get("bucket"))
                compared += c
                repaired += r
        return {"partitions": len(partitions), "compared": compared, "repaired": repaired}

    async def run(self) -> None:
        """Exchange every owned partition once per period, spread evenly over the period."""
        config = self.config
        if not config.enabled:
            return
        while True:
            partitions = sorted(self.view.routing().owned_partitions(self.node_id))
            pause = config.period / max(len(partitions), 1)
            for partition in partitions:
                await trio.sleep(pause * (0.5 + self.rng.random()))
                async with self._repair_lock:
                    await self.repair_partition(partition)
            if not partitions:
                await trio.sleep(config.period)

    # ---- tombstones ---------------------------------------------------------------

    def _grace_ms(self, bucket: str) -> float:
        return grace_ms(self.view.state, bucket, self.config.tombstone_grace)

    def _reapable(self, clock: DVVSet, bucket: str) -> bool:
        return reap_candidate(clock, int(self.wall() * 1000), self._grace_ms(bucket))

    def _maybe_reaped(self, partition: int, kid: bytes) -> bool:
        """Our copy of a key is old enough that a delete or expiry of it may have been
        reaped: every sibling was written at least the bucket's grace ago."""
        bucket, key, sk = split_key_id(kid)
        clock = self.replica.get(partition, bucket, key, None, sk)
        return clock is not None and past_grace(clock, int(self.wall() * 1000),
                                                self._grace_ms(bucket))

    async def reap_tombstones(self, partition: int) -> int:
        """Reap the dead objects (tombstones, expired values) past their bucket's grace of
        a partition this node is the first primary of.

        Nothing is reaped while the partition moves to a primary it does not have yet:
        writes reach that future owner (Placement.extra) but are neither counted, nor
        retried, nor hinted, so it may hold a value without the tombstone that deleted
        it, and once it is a primary anti-entropy would spread that value back. Waiting
        until the transfer is done keeps every node that may hold a copy inside the
        agreement: the new primary is asked like the others.
        """
        primaries = list(self.view.routing().primaries(partition))
        if not primaries or primaries[0] != self.node_id:
            return 0
        future = self.view.routing().primaries(partition, owners=self.view.state.next_owners)
        if any(p not in primaries for p in future):
            return 0
        candidates: list[Candidate] = []
        async for bucket, key, sk, raw in self.storage.iter_partition(partition):
            clock = dvvset.decode_stored(raw)
            if self._reapable(clock, bucket):
                candidates.append((bucket, key, sk, clock))
        if not candidates or not await self._no_hints_anywhere():
            return 0
        reaped = 0
        if BATCHED_REAP in self.view.state.features:
            others = [p for p in primaries if p != self.node_id]
            for start in range(0, len(candidates), MAX_REAP_ITEMS):
                reaped += await self._reap_batch(
                    partition, others, candidates[start:start + MAX_REAP_ITEMS])
        else:  # a member may not read the batch: one key per call, as it does
            for bucket, key, sk, clock in candidates:
                if await self._reap_everywhere(partition, primaries, bucket, key, sk, clock):
                    reaped += 1
        if reaped:
            self.stats.count("tombstones_reaped", reaped)
        return reaped

    async def _no_hints_anywhere(self) -> bool:
        """No member holds hints. A leaver counts as removed once its transfers are done
        and it said it holds no hints (a stopped leaver without hints would block every
        reap); one that holds some is asked, and so is a removed node still saying it
        does (membership.may_hold_hints)."""
        if self.storage.hint_counts():
            return False
        state = self.view.state
        for member_id in state.members:
            if member_id == self.node_id or not membership.may_hold_hints(state, member_id):
                continue
            try:
                reply = await self.call(member_id, "hints", {}, 2.0)
            except DynError:
                return False
            if reply["hints"]:
                return False
        return True

    async def _reap_everywhere(self, partition: int, primaries: list[str], bucket: str,
                               key: bytes, sk: bytes | None, clock: DVVSet) -> bool:
        for primary in primaries:
            try:
                theirs = await self.access.get(Target(primary, primary, "primary"),
                                                     partition, bucket, key, sk)
            except DynError:
                return False
            if theirs is None or not dvvset.equal(theirs, clock):
                return False
        wire = dvvset.encode(clock)
        for primary in primaries:
            if primary == self.node_id:
                ticket = self.replica.reap(partition, bucket, key, clock, sk)
                if ticket is not None:
                    await ticket.wait()
                continue
            try:
                fields = {"partition": partition, "bucket": bucket, "key": key, "clock": wire}
                if sk is not None:
                    fields["sk"] = sk
                reply = await self.call(primary, "p_reap", fields)
            except DynError:
                return False
            if reply.get("reaped") is not True:  # changed since, or not dead by its clock
                return False
        return True

    async def _reap_batch(self, partition: int, others: list[str],
                          batch: list[Candidate]) -> int:
        """Reap a batch of candidates: every other primary must hold each item with our
        digest and find it dead past the grace by its own clock (p_digests), then each
        deletes what it still holds so (batched p_reap, which checks both again), and we
        delete last what all of them deleted, so that an item another primary refused
        keeps our copy too. A primary that fails stops the batch; what it kept is
        retried next round. Returns the items reaped here."""
        digests = [dvvset.digest(clock) for *_, clock in batch]
        agreed = list(range(len(batch)))
        for op in ("p_digests", "p_reap"):
            for primary in others:
                if not agreed:
                    return 0
                items = [[*batch[i][:3], digests[i]] if op == "p_reap" else [*batch[i][:3]]
                         for i in agreed]
                try:
                    reply = await self.call(primary, op, {"partition": partition,
                                                          "items": items})
                    if op == "p_digests":
                        answers = _batch_answers(reply, "digests", len(items))
                        agreed = [i for i, theirs in zip(agreed, answers, strict=True)
                                  if theirs == digests[i]]
                    else:
                        answers = _batch_answers(reply, "reaped", len(items))
                        agreed = [i for i, deleted in zip(agreed, answers, strict=True)
                                  if deleted is True]
                except DynError as exc:
                    log.info("event=reap_failed node=%s partition=%d peer=%s error=%r",
                             self.node_id, partition, primary, exc.message)
                    return 0
        tickets = [self.replica.reap(partition, bucket, key, clock, sk)
                   for bucket, key, sk, clock in (batch[i] for i in agreed)]
        for ticket in tickets:
            if ticket is not None:
                await ticket.wait()
        return sum(ticket is not None for ticket in tickets)
