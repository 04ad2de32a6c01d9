"""Who this node is and under which actor it mints dots.

The node id (persisted with the data), the incarnation (this life of the
node, bumped at every start), the actor its own dots are minted under (kept
across a clean stop, see `Identity.resume_actor`), and the fallback actors
for dots minted on hint copies. `minting_actor` is the one place that decides
which actor a new dot takes; the replica keeps the per-partition renewals and
the dot floor (dynd.replica), which travel with the actor in the clean-stop
record.
"""

from __future__ import annotations

import logging
import random

import cbor2
import trio

from common.errors import DynError, UsageError
from dynd import membership
from dynd.cluster import ClusterView
from dynd.membership import ClusterState, Member
from dynd.peers import Peers
from dynd.replica import Replica
from dynd.storage import Batch, Storage

log = logging.getLogger("dynd.identity")

META_NODE_ID = "node_id"
META_INCARNATION = "incarnation"
META_HINT_GENERATION = "hint_generation"
META_CLEAN_STOP = "clean_stop"  # the actor state of a clean stop; consumed at start


def is_fresh(storage: Storage) -> bool:
    """No node has used this data dir yet."""
    return storage.get_meta(META_NODE_ID) is None


def node_id(storage: Storage, configured: str, rng: random.Random) -> str:
    """The id stored with the data; else the configured one, else a random one."""
    stored = storage.get_meta(META_NODE_ID)
    if stored is not None:
        if configured and configured != stored.decode():
            raise UsageError(f"data dir belongs to node {stored.decode()!r}, not {configured!r}")
        return stored.decode()
    return configured or f"node-{rng.getrandbits(32):08x}"


class Identity:
    def __init__(self, storage: Storage, replica: Replica, node_id: str, addr: str,
                 state: ClusterState | None, *, restored: bool = False) -> None:
        """``state``: the stored cluster state (None: a fresh data dir); ``restored``: the
        data dir is a restored backup (dynd.backup), whose actor is never kept."""
        self.storage = storage
        self.replica = replica
        self.id = node_id
        self.addr = addr
        self.hint_generation = int(storage.get_meta(META_HINT_GENERATION) or b"0")
        self.hints_released = True  # hints may have been released before a crash
        record = None if state is None else state.members.get(node_id)
        # A join adopts the cluster's (higher) incarnation and its state before recording
        # its own: after a crash in between, the state's record is the newer one.
        stored_incarnation = int(storage.get_meta(META_INCARNATION) or b"0")
        recorded = 0 if record is None else record.incarnation
        self.set_incarnation(max(stored_incarnation, recorded) + 1)
        self.restored = restored
        self.actor_kept = not restored and recorded <= stored_incarnation \
            and self.resume_actor(stored_incarnation)

    def member(self, zone: str, status: str) -> Member:
        """This node's record in a cluster state."""
        return Member(self.id, self.addr, zone, status, None, self.incarnation)

    def set_incarnation(self, incarnation: int) -> None:
        """This life of the node, and a new actor named after it (the name its dots are
        minted under): no earlier life took that incarnation, so no dot of it exists."""
        self.incarnation = incarnation
        self.actor = f"{self.id}.{incarnation}"
        self.replica.take_actor(self.actor)

    def resume_actor(self, stored_incarnation: int) -> bool:
        """Keep the actor of the last life if it stopped cleanly; True if kept.

        The rule: a node keeps its actor across a clean stop and takes a new one (its new
        incarnation, above every earlier one of its own and the cluster's record of it)
        at every other start. Why a kept actor never mints a dot twice: a dot's counter
        comes from the copy it is minted on, and every dot is staged into that local copy
        (data or hint) in the same step as it is minted, before any replica sees it. A
        clean stop (dynd on SIGTERM, after its services ended) commits everything
        staged, then writes this record with fsync: so the copies hold every dot the
        actor minted, and the record holds what the copies no longer show (dot_floor of
        reaped tombstones, the renewals of dropped partitions, whether a hint copy was
        released since the fallback generation was taken). Any other exit (crash, kill
        -9, a failed disk) may have lost a staged dot that replicas already hold, and
        leaves no record: `persist` deletes it, fsynced, before the node serves data,
        and only a clean stop writes it again. A lost disk has no record either. A copy
        of the data dir taken while the node runs has none; a copy of a stopped node's
        dir has one, so a start that keeps its actor asks a peer first
        (confirm_kept_actor) and renews if the cluster knows a later life of this node
        or no peer answers.
        """
        raw = self.storage.get_meta(META_CLEAN_STOP)
        if raw is None:
            return False
        try:
            saved = cbor2.loads(raw)
            actor = saved["actor"]
            if saved["incarnation"] != stored_incarnation or not isinstance(actor, str) \
                    or not actor.startswith(f"{self.id}."):
                raise ValueError(f"record of incarnation {saved['incarnation']}, "
                                 f"actor {actor!r}")
            self.replica.take_actor(actor, saved["replica"])
            self.hints_released = bool(saved["hints_released"])
        except (ValueError, KeyError, TypeError, AttributeError, cbor2.CBORDecodeError) as exc:
            log.warning("event=clean_stop_record_ignored node=%s error=%r", self.id, str(exc))
            self.replica.take_actor(self.actor)
            return False
        self.actor = actor
        return True

    async def confirm_kept_actor(self, view: ClusterView, peers: Peers) -> None:
        """Give up a kept actor unless a peer confirms that the cluster knows no later life
        of this node: this data dir may be a copy of a stopped node's dir, restored after
        the node ran on (and minted under the same actor) elsewhere. Renews when no peer
        answers within the request timeout too: an extra clock entry, never a dot twice.
        A one-node cluster has nobody to ask and keeps it."""
        if not self.actor_kept:
            return
        addrs = view.peer_addrs()
        if not addrs:
            return
        known = await self._recorded_incarnation(addrs, peers)
        if known is not None and known < self.incarnation:
            return
        self.actor_kept = False
        self.set_incarnation(max(self.incarnation, (known or 0) + 1))
        log.warning("event=actor_renewed node=%s actor=%s reason=%s", self.id, self.actor,
                    "no peer answered" if known is None else "the cluster knows a later life")

    async def renew_after_restore(self, view: ClusterView, peers: Peers) -> None:
        """A restored backup: take an incarnation above every one the cluster knows of this
        node, so that no dot minted from here on can be one the node minted after the
        backup (its copy no longer shows them, the other replicas and clients' contexts
        do). Asks every peer of the backup's cluster state and takes the highest record of
        those that answer (a node announces each new life to its peers before it serves,
        see `Node.run`), retrying until one answers, as a lost disk waits for its seeds:
        serving before would risk minting those dots again. A one-node cluster has nobody
        to ask: its own record is all there is."""
        if not self.restored:
            return
        delay = 0.5
        while addrs := view.peer_addrs():
            known = await self._recorded_incarnation(addrs, peers)
            if known is not None:
                self.set_incarnation(max(self.incarnation, known + 1))
                break
            log.warning("event=restore_waiting_for_peers node=%s retry_in=%.1fs", self.id, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
        log.warning("event=restored_from_backup node=%s actor=%s", self.id, self.actor)

    async def _recorded_incarnation(self, addrs: list[str], peers: Peers) -> int | None:
        """The highest incarnation the peers at ``addrs`` record for this node (0: one does
        not list it), asked all at once, from those that answer within the request
        timeout; None if none answered. The highest, not the first answer: a peer that has
        not yet heard of this node's latest life answers an older one."""
        answers: list[int] = []

        async def ask(addr: str) -> None:
            with trio.move_on_after(peers.request_timeout):
                try:
                    reply = await peers.call_addr(addr, "p_gossip", {})
                    remote = membership.from_wire(reply["state"])
                except (DynError, membership.MembershipError, KeyError) as exc:
                    log.info("event=peer_record_unknown node=%s peer=%s error=%r",
                             self.id, addr, getattr(exc, "message", str(exc)))
                    return
                record = remote.members.get(self.id)
                answers.append(0 if record is None else record.incarnation)

        async with trio.open_nursery() as nursery:
            for addr in addrs:
                nursery.start_soon(ask, addr)
        return max(answers, default=None)

    async def persist(self, view: ClusterView) -> None:
        """Record id, incarnation and state before serving, and consume the clean-stop
        record (fsynced whatever the sync mode): from here on an exit may lose a minted
        dot, so the next start must not keep the actor unless this life stops cleanly."""
        batch = Batch()
        batch.put_meta(META_NODE_ID, self.id.encode())
        batch.put_meta(META_INCARNATION, str(self.incarnation).encode())
        batch.delete_meta(META_CLEAN_STOP)
        state = view.state
        member = state.members.get(self.id)
        if member is not None and (
                member.incarnation != self.incarnation or member.addr != self.addr):
            state = membership.update_member(
                state, Member(self.id, self.addr, member.zone, member.status, member.tokens,
                              self.incarnation))
        view.commit_synced(state, batch)
        await trio.lowlevel.checkpoint()

    def record_clean_stop(self) -> None:
        """Write the clean-stop record (see resume_actor): call once every service of
        the node has ended, and only then; a StorageError means no record (renewed)."""
        saved = {"incarnation": self.incarnation, "actor": self.actor,
                 "replica": self.replica.actor_state(), "hints_released": self.hints_released}
        self.storage.commit_synced(Batch().put_meta(META_CLEAN_STOP, cbor2.dumps(saved)))

    def release_hints(self) -> None:
        """A hint copy was deleted (handed back or re-keyed): the next dot minted on a hint
        copy takes a new fallback actor (see fallback_actor)."""
        self.hints_released = True

    def minting_actor(self, hint_for: str | None) -> str:
        """The actor a new dot is minted under: this node's own on its own copy, a
        fallback actor on the hint copy held for ``hint_for``."""
        return self.actor if hint_for is None else self.fallback_actor(hint_for)

    def fallback_actor(self, primary: str) -> str:
        """The actor for a dot minted on the hint copy held for ``primary`` (no primary
        of the key reachable).

        A dot's counter comes from the copy it is minted on. A primary's data
        copy keeps every dot its actor minted for the key, but a hint copy is
        deleted once handed back, so a later fallback write to the same key
        would mint the same dot again and one of the two values would vanish
        on merge (tests/sim seeds 4, 10, 12, 17, 18; the chaos two-node kill).
        So fallback dots get their own actor, renewed (and persisted) after
        every hint release: a key's clock grows by one entry only per outage in
        which no primary of it was reachable. The actor names the primary too:
        one node can hold hint copies of a key for two primaries (the preference
        list moved between two writes), each counting from its own start
        (tests/sim seed 20 minted one dot on both and lost a write).
        """
        if self.hints_released:
            self.hints_released = False
            self.hint_generation += 1
            batch = Batch()
            batch.put_meta(META_HINT_GENERATION, str(self.hint_generation).encode())
            self.storage.stage(batch)  # staged before the write it serves: durable first
        return f"{self.actor}.h{self.hint_generation}.{primary}"
