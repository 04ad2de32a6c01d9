"""Operator ops: buckets, staged membership changes, ring and status views.

Thin over dynd.membership (which validates and computes) and the node's
services; every change to the cluster state is persisted and pushed to the
other members at once instead of waiting for the next gossip round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from common.config import AntiEntropyConfig
from common.errors import DynError, Rejected
from dynd import backup, membership
from dynd.clocks import ClockOffsets
from dynd.cluster import ClusterView
from dynd.features import EXPIRY, Features
from dynd.identity import Identity
from dynd.liveness import Liveness
from dynd.membership import Change, ClusterState, Member, MembershipError
from dynd.peers import Peers
from dynd.server import Peer
from dynd.storage import Storage

log = logging.getLogger("dynd.admin")

StatusProvider = Callable[[], dict[str, Any]]  # fields a node service adds to ``status``


def _bucket_wire(props: membership.BucketProps, default_grace: float) -> dict[str, Any]:
    """A bucket's properties as shown; ``grace`` is the node's tombstone grace unless the
    bucket sets its own."""
    grace = props.grace or default_grace
    return {"name": props.name, "n": props.n, "r": props.r, "w": props.w,
            "pr": props.pr, "pw": props.pw, "ttl": props.ttl,
            "grace": int(grace) if float(grace).is_integer() else grace}


class Admin:
    OPS = ("bucket_set", "bucket_get", "bucket_list", "cluster_join", "cluster_leave",
           "cluster_remove", "cluster_replace", "tokens", "cluster_plan", "cluster_commit",
           "cluster_clear", "cluster_status", "cluster_check", "cluster_features", "ring",
           "status", "backup",
           "p_join", "p_status")

    def __init__(self, view: ClusterView, identity: Identity, storage: Storage,
                 liveness: Liveness, peers: Peers, *, push_gossip: Callable[[], None],
                 features: Features, antientropy: AntiEntropyConfig, wall: Callable[[], float],
                 clock_offsets: ClockOffsets, status_providers: Sequence[StatusProvider] = (),
                 status_fields: Callable[[], dict[str, Any]] = dict) -> None:
        """``status_providers``: the other services' parts of ``status`` (transfers,
        anti-entropy exchanges, hint ages), so that a service shows itself without Admin
        knowing it; ``antientropy``: the period a bucket's grace must exceed, and the grace
        of a bucket without one; ``wall``: the clock p_status reports; ``clock_offsets``:
        the peers' offsets gossip measured (``status`` shows them); ``status_fields``: more
        that ``p_status`` reports (AuthAdmin.status_fields)."""
        self.view = view
        self.identity = identity
        self.storage = storage
        self.liveness = liveness
        self.peers = peers
        self.push_gossip = push_gossip
        self.features = features
        self.antientropy = antientropy
        self.wall = wall
        self.clock_offsets = clock_offsets
        self.status_providers = tuple(status_providers)
        self.status_fields = status_fields

    async def _change(self, state: ClusterState) -> None:
        """Adopt, wait until durable, then tell every member."""
        ticket = self.view.set_state(state)
        if ticket is not None:
            await ticket.wait()
        self.push_gossip()

    def _apply(self, change: Any, *args: Any) -> ClusterState:
        try:
            return change(self.view.state, *args)
        except MembershipError as exc:
            raise Rejected(str(exc)) from None

    # ---- buckets -------------------------------------------------------------------

    async def op_bucket_set(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        name = fields["name"]
        current = membership.bucket(self.view.state, name)
        n = fields.get("n", current.n)
        r = fields.get("r", min(current.r, n))
        w = fields.get("w", min(current.w, n))
        pr = fields.get("pr", min(current.pr, r))
        pw = fields.get("pw", min(current.pw, w))
        if "ttl" in fields or "grace" in fields:
            self.features.require(EXPIRY)  # props an older node's state decoder refuses
        self._check_grace(fields.get("grace"))
        ttl, grace = fields.get("ttl", current.ttl), fields.get("grace", current.grace)
        await self._change(self._apply(partial(membership.set_bucket, pr=pr, pw=pw, ttl=ttl,
                                               grace=grace),
                                       name, n, r, w, self.identity.id))
        result: dict[str, Any] = {"bucket": self._bucket_wire(
            membership.bucket(self.view.state, name))}
        if r + w <= n:
            result["warning"] = (f"r + w <= n ({r} + {w} <= {n}): a read may miss the latest "
                                 "acknowledged write")
            log.warning("event=weak_quorum node=%s bucket=%s n=%d r=%d w=%d",
                        self.identity.id, name, n, r, w)
        return result

    def _check_grace(self, grace: int | None) -> None:
        """Refuse a grace shorter than 4 anti-entropy periods: a dead object reaped before
        every replica pair has compared it can be brought back by one that missed it."""
        period = self.antientropy.period
        if grace is not None and grace < 4 * period:
            raise Rejected(f"grace {grace} s is under 4 x the anti-entropy period "
                           f"({period:g} s): at least {4 * period:g} s")

    def _bucket_wire(self, props: membership.BucketProps) -> dict[str, Any]:
        return _bucket_wire(props, self.antientropy.tombstone_grace)

    async def op_bucket_get(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"bucket": self._bucket_wire(membership.bucket(self.view.state, fields["name"]))}

    async def op_bucket_list(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"buckets": [self._bucket_wire(b)
                            for _, b in sorted(self.view.state.buckets.items())]}

    # ---- membership ----------------------------------------------------------------

    async def op_cluster_join(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Sent to the NEW node: ask the seed's cluster to stage us, then adopt its state.

        Refused while this node is valid or leaving in a cluster with other members (it
        owns partitions there). A node that is only joining (a retry, or a join cleared
        without it hearing yet) or that was removed may join again, a removed one only
        with nothing stored: copies from before its removal could bring back values
        deleted (and their tombstones reaped) since. The cluster may give
        us a higher incarnation than ours (our id had an earlier life there): we take it
        before adopting the state, so our beats and dots are new from the first gossip.
        """
        state = self.view.state
        me = state.members[self.identity.id]
        others = [m for m in state.members if m != self.identity.id]
        if others and membership.member_status(state, me.id) in ("valid", "leaving"):
            raise Rejected(f"node {self.identity.id} is already in a cluster with {len(others)} "
                           "other member(s); `cluster leave` it first")
        if membership.member_status(state, me.id) == "removed" \
                and self.storage.holds_objects():
            raise Rejected(f"node {self.identity.id} was removed from its cluster and still holds "
                           "objects from then, which could bring back values deleted since: "
                           "start it with an empty data dir to join again")
        member = {"id": me.id, "addr": me.addr, "zone": me.zone, "incarnation": me.incarnation}
        reply = await self.peers.call_addr(fields["seed"], "p_join", {"member": member})
        try:
            joined = membership.from_wire(reply["state"])
            record = joined.members[self.identity.id]
        except (MembershipError, KeyError) as exc:
            raise Rejected(f"seed answered an invalid cluster state: {exc}") from None
        self.identity.set_incarnation(max(self.identity.incarnation, record.incarnation))
        self.view.set_state(joined)  # maybe another cluster id: adopt it whole, no reconcile
        await self.identity.persist(self.view)
        log.info("event=join_staged node=%s seed=%s", self.identity.id, fields["seed"])
        return {"epoch": joined.epoch}

    async def op_p_join(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        wire = fields["member"]
        try:
            member = Member(wire["id"], wire["addr"], wire["zone"], "joining", None,
                            wire["incarnation"])
        except (KeyError, TypeError) as exc:
            raise Rejected(f"bad member: {exc}") from None
        state = self._apply(membership.stage, Change("join", member.id, None), self.identity.id,
                            member)
        await self._change(state)
        return {"state": membership.to_wire(self.view.state)}

    async def op_cluster_leave(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        node = fields.get("node", self.identity.id)
        await self._change(self._apply(membership.stage, Change("leave", node, None),
                                       self.identity.id))
        return {}

    async def op_cluster_remove(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        change = Change("remove", fields["node"], None)
        await self._change(self._apply(membership.stage, change, self.identity.id))
        return {}

    async def op_cluster_replace(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        change = Change("replace", fields["old"], fields["new"])
        await self._change(self._apply(membership.stage, change, self.identity.id))
        return {}

    async def op_tokens(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        node = fields["node"]
        member = self.view.state.members.get(node)
        if member is None:
            raise Rejected(f"unknown node {node!r}")
        if "count" in fields:
            change = Change("tokens", node, fields["count"])
            await self._change(self._apply(membership.stage, change, self.identity.id))
            member = self.view.state.members[node]
        owned = self.view.routing().ring.counts().get(node, 0)
        wanted = next((c.arg for c in self.view.state.staged
                       if c.kind == "tokens" and c.node == node), member.tokens)
        return {"node": node, "tokens": owned, "wanted": wanted}

    async def op_cluster_plan(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        try:
            plan = membership.plan(self.view.state, self.view.routing().claim_n)
        except MembershipError as exc:
            raise Rejected(str(exc)) from None
        return {
            "changes": [{"kind": c.kind, "node": c.node, "arg": c.arg} for c in plan.changes],
            "transfers": [{"partition": t.partition, "source": t.sources[0] if t.sources else "",
                           "target": t.target} for t in plan.transfers],
            "owners_after": dict(plan.owners_after),
        }

    async def op_cluster_commit(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        state = self._apply(membership.commit, self.view.routing().claim_n, self.identity.id)
        await self._change(state)
        log.info("event=commit node=%s epoch=%d transfers=%d", self.identity.id, state.epoch,
                 len(state.transfers))
        return {"epoch": state.epoch, "transfers": len(state.transfers)}

    async def op_cluster_clear(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Drop the staged changes; name the joins this undid (see membership.clear)."""
        before = self.view.state.members
        state = self._apply(membership.clear, self.identity.id)
        await self._change(state)
        return {"undone_joins": [node for node, member in state.members.items()
                                 if member.status != before[node].status]}

    def _member_rows(self) -> list[dict[str, Any]]:
        state = self.view.state
        counts = self.view.routing().ring.counts()
        pending = membership.pending_transfers(state)
        rows = []
        for member_id, member in sorted(state.members.items()):
            rows.append({
                "id": member_id, "addr": member.addr, "zone": member.zone,
                "status": membership.member_status(state, member_id),
                "reachable": self.liveness.is_up(member_id),
                "tokens": counts.get(member_id, 0),
                "pending_transfers": sum(
                    1 for t in pending if member_id in (t.target, *t.sources[:1])),
            })
        return rows

    async def op_cluster_status(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"epoch": self.view.state.epoch, "members": self._member_rows()}

    async def op_cluster_features(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"features": self.features.describe()}

    async def op_p_status(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"epoch": self.view.state.epoch,
                "pending_transfers": len(membership.pending_transfers(self.view.state)),
                "features": self.features.wire(), "wall_ms": int(self.wall() * 1000),
                **self.status_fields()}

    async def op_cluster_check(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Has every reachable member the same epoch, with no transfer pending and no
        leaver holding hints?"""
        epochs: dict[str, int] = {self.identity.id: self.view.state.epoch}
        pending = {self.identity.id: len(membership.pending_transfers(self.view.state))}
        unreachable: list[str] = []

        async def ask(member_id: str) -> None:
            try:
                reply = await self.peers.call(member_id, "p_status", {}, 2.0)
            except DynError:
                unreachable.append(member_id)
                return
            epochs[member_id] = reply["epoch"]
            pending[member_id] = reply["pending_transfers"]
            self.features.record(member_id, reply.get("features", []))

        async with trio.open_nursery() as nursery:
            for member_id, member in self.view.state.members.items():
                if member_id != self.identity.id and member.status != "removed":
                    nursery.start_soon(ask, member_id)
        # A leaver whose transfers are done has not left while it holds hints.
        state = self.view.state
        holding = sorted(m for m, member in state.members.items()
                         if member.hints and not membership.takes_replicas(state, m))
        converged = (len(set(epochs.values())) == 1 and not any(pending.values())
                     and not holding)
        return {"converged": converged, "epochs": epochs,
                "pending_transfers": max(pending.values()), "unreachable": sorted(unreachable),
                "leavers_holding_hints": holding}

    async def op_ring(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """The ring requests are routed by, with what a client needs to route them itself:
        each member's address and zone, and the N of its preference lists (target_n)."""
        routing = self.view.routing()
        ring, state = routing.ring, self.view.state
        members = {member_id: {"addr": member.addr, "zone": member.zone}
                   for member_id, member in state.members.items()
                   if membership.member_status(state, member_id) != "removed"}
        return {"ring_size": ring.ring_size, "epoch": state.epoch,
                "owners": list(ring.owners), "balance": round(ring.balance(), 3),
                "members": members, "n": routing.target_n()}

    async def op_status(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        now = trio.current_time()
        detector = self.liveness.detector.snapshot(now)
        disk_free, disk_total = self.storage.disk_space()
        reply = {
            "node": self.identity.id,
            "actor": self.identity.actor,
            "epoch": self.view.state.epoch,
            "members": [{"id": row["id"], "status": row["status"], "reachable": row["reachable"],
                         "phi": _finite(detector.get(row["id"], {}).get("phi"))}
                        for row in self._member_rows()],
            "hints": self.storage.hint_counts(),
            "storage_bytes": self.storage.approximate_size(),
            # The peer clock furthest from ours (signed, ms; None: nothing measured yet),
            # and each peer's: expiry is as precise as these are small.
            "clock_offset_ms": self.clock_offsets.largest(),
            "clock_offsets_ms": dict(self.clock_offsets.per_peer()),
            "disk_free_bytes": disk_free,
            "disk_total_bytes": disk_total,
        }
        for provider in self.status_providers:
            reply.update(provider())
        return reply

    async def op_backup(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """A consistent copy of this node's store in a new directory on its host
        (dynd.backup); the node keeps serving, paused while RocksDB writes the checkpoint."""
        path = fields["dir"]
        size = backup.write_backup(self.storage, path, self.identity.id,
                                   self.identity.incarnation)
        return {"path": path, "bytes": size}


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and value != float("inf"):
        return round(float(value), 2)
    return None

