"""One dynd node: identity, cluster state, and the services of its root nursery.

`Node.run` starts the storage writer, the transport, gossip, hinted handoff,
ownership transfer and anti-entropy as tasks of one nursery; `handle`
dispatches a validated request to the op that serves it. Clock and
randomness are injected (trio's clock for intervals and the failure detector,
`wall` for `written_at`), which lets tests/sim run many nodes in one process.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import cbor2
import trio

from common import context, messages
from common.config import Config
from common.context import DVVSet
from common.errors import DynError, Rejected, Unavailable, UsageError
from common.messages import Request
from dynd import membership
from dynd.admin import Admin
from dynd.antientropy import AntiEntropy
from dynd.coordinator import Coordinator, Placement
from dynd.detector import PhiAccrualDetector
from dynd.gossip import Gossip
from dynd.handoff import Handoff
from dynd.membership import BucketProps, ClusterState, Member
from dynd.metrics import Stats
from dynd.replica import Replica
from dynd.ring import Ring, Target, partition_of
from dynd.security import authorize
from dynd.server import Peer, Reply, answered
from dynd.storage import Batch, Storage, Ticket
from dynd.transport import ReplyCallback, Transport

log = logging.getLogger("dynd.node")

OpHandler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]
# An op run without a task: takes the request (True) and replies once, now or from a
# callback, or declines it (False: the op's async handler takes it).
ImmediateOp = Callable[[str, dict[str, Any], Peer, Reply], bool]

# How long an up set is reused: liveness changes on the gossip timescale (seconds), and a
# failed request invalidates it at once (suspect).
UP_SET_TTL = 0.05

META_NODE_ID = "node_id"
META_INCARNATION = "incarnation"
META_STATE = "state"
META_HINT_GENERATION = "hint_generation"
META_CLEAN_STOP = "clean_stop"  # the actor state of a clean stop; consumed at start


class Node:
    def __init__(
        self, config: Config, storage: Storage, transport: Transport, *, addr: str,
        wall: Callable[[], float] = time.time, rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.transport = transport
        self.addr = addr
        self.wall = wall
        self.rng = rng or random.Random()
        self.limits = config.limits
        self.request_timeout = config.limits.request_timeout
        self.detector = PhiAccrualDetector(
            threshold=config.detector.phi_threshold,
            min_std_seconds=config.detector.min_std,
            acceptable_pause_seconds=config.detector.acceptable_pause,
            first_interval_seconds=config.gossip.interval,
        )
        self.replica = Replica(storage, max_siblings=config.limits.max_siblings,
                               max_object_bytes=config.limits.max_object_bytes)
        self.coordinator = Coordinator(self)
        self.fresh = storage.get_meta(META_NODE_ID) is None
        self.id = self._node_id()
        self.stats = Stats(self.id)
        self.hint_generation = int(storage.get_meta(META_HINT_GENERATION) or b"0")
        self.hints_released = True  # hints may have been released before a crash
        raw_state = storage.get_meta(META_STATE)
        state = None if raw_state is None else membership.from_wire(cbor2.loads(raw_state))
        record = None if state is None else state.members.get(self.id)
        # A join adopts the cluster's (higher) incarnation and its state before recording
        # its own: after a crash in between, the state's record is the newer one.
        stored_incarnation = int(storage.get_meta(META_INCARNATION) or b"0")
        recorded = 0 if record is None else record.incarnation
        self.set_incarnation(max(stored_incarnation, recorded) + 1)
        self.actor_kept = recorded <= stored_incarnation and self._resume_actor(
            stored_incarnation)
        self.state = state if state is not None else membership.new_cluster(
            f"{self.id}-{self.rng.getrandbits(64):016x}", self._me("valid"), config.ring_size)
        self.state_changed = trio.Event()
        self._routing = _Routing(self.state)
        self._up_set: tuple[ClusterState | None, float, frozenset[str]] = (None, 0.0, frozenset())
        self.background: trio.Nursery
        self.ready = trio.Event()
        self.stopping = False  # set on SIGTERM: new requests are refused, in-flight ones finish
        self.inflight = 0
        self._handlers: dict[str, OpHandler] = {}
        self.register(self, ("put", "delete", "replicas", "stats", "p_forward"))
        self._immediate: dict[str, ImmediateOp] = {
            "ping": self.ping, "p_get": self.p_get, "p_put": self.p_put, "get": self.get,
            "put": self.put_here, "delete": self.put_here}
        self.gossip = Gossip(self)
        self.handoff = Handoff(self)
        self.antientropy = AntiEntropy(self)
        for service in (self.gossip, self.handoff, self.antientropy, Admin(self)):
            self.register(service, service.OPS)
        missing = (messages.CLIENT_OPS | messages.PEER_OPS) - set(self._handlers) - set(
            self._immediate)
        assert not missing, f"ops without a handler: {sorted(missing)}"

    def register(self, owner: object, ops: Iterable[str]) -> None:
        """Route each op to `owner.op_<op>`: one mechanism per module, one table."""
        for op in ops:
            self._handlers[op] = getattr(owner, "op_" + op)

    # ---- identity and state -------------------------------------------------

    def _node_id(self) -> str:
        stored = self.storage.get_meta(META_NODE_ID)
        if stored is not None:
            if self.config.node_id and self.config.node_id != stored.decode():
                raise UsageError(
                    f"data dir belongs to node {stored.decode()!r}, not {self.config.node_id!r}"
                )
            return stored.decode()
        return self.config.node_id or f"node-{self.rng.getrandbits(32):08x}"

    def _me(self, status: str) -> Member:
        return Member(self.id, self.addr, self.config.zone, status, None, self.incarnation)

    async def persist_identity(self) -> None:
        """Record id, incarnation and state before serving, and consume the clean-stop
        record (fsynced whatever the sync mode): from here on an exit may lose a minted
        dot, so the next start must not keep the actor unless this life stops cleanly."""
        batch = Batch()
        batch.put_meta(META_NODE_ID, self.id.encode())
        batch.put_meta(META_INCARNATION, str(self.incarnation).encode())
        batch.delete_meta(META_CLEAN_STOP)
        member = self.state.members.get(self.id)
        if member is not None and (
                member.incarnation != self.incarnation or member.addr != self.addr):
            self.state = membership.update_member(
                self.state, Member(self.id, self.addr, member.zone, member.status, member.tokens,
                                   self.incarnation))
        batch.put_meta(META_STATE, cbor2.dumps(membership.to_wire(self.state)))
        self.storage.commit_synced(batch)
        await trio.lowlevel.checkpoint()

    def set_state(self, state: ClusterState) -> Ticket | None:
        """Adopt a new cluster state (local change or gossip) and persist it."""
        if state == self.state:
            return None
        old_epoch = self.state.epoch
        self.state = state
        batch = Batch()
        batch.put_meta(META_STATE, cbor2.dumps(membership.to_wire(state)))
        ticket = self.storage.stage(batch)
        if state.epoch != old_epoch:
            log.info("event=ring_changed node=%s epoch=%d", self.id, state.epoch)
        self.state_changed.set()
        self.state_changed = trio.Event()
        return ticket

    def addr_of(self, node: str) -> str:
        member = self.state.members.get(node)
        if member is None:
            raise Unavailable(f"unknown node {node!r}")
        return member.addr

    def routing(self) -> _Routing:
        """Ring, zones and primaries of the current state, computed once per state."""
        if self._routing.state is not self.state:
            self._routing = _Routing(self.state)
        return self._routing

    def ring(self) -> Ring:
        return self.routing().ring

    def claim_n(self) -> int:
        """The largest N of any bucket: how many consecutive partitions claim keeps distinct."""
        return max(b.n for b in self.state.buckets.values())

    def target_n(self) -> int:
        """The largest N of any bucket, capped by the member count: the claim's diversity goal."""
        return min(self.claim_n(), self.active_member_count())

    def active_member_count(self) -> int:
        return self.routing().active_members

    def quorum_sizes(
        self, bucket: str, *, r: int | None = None, w: int | None = None
    ) -> tuple[int, int, int]:
        """N, R, W for a request: bucket props, per-request overrides, capped by members."""
        routing = self.routing()
        props = routing.bucket(bucket)
        n = min(props.n, routing.active_members)
        r = r if r is not None else props.r
        w = w if w is not None else props.w
        if r > props.n or w > props.n:
            raise Rejected(f"r={r} w={w} exceed the bucket's n={props.n}")
        return n, min(r, n), min(w, n)

    def primary_quorums(
        self, bucket: str, *, r: int | None = None, w: int | None = None,
        pr: int | None = None, pw: int | None = None,
    ) -> tuple[int, int]:
        """PR, PW for a request: bucket props or per-request overrides, at most the
        request's R (W) (else Rejected), capped by members as R and W are."""
        props = self.routing().bucket(bucket)
        asked_r = r if r is not None else props.r
        asked_w = w if w is not None else props.w
        pr = pr if pr is not None else props.pr
        pw = pw if pw is not None else props.pw
        if pr > asked_r or pw > asked_w:
            raise Rejected(f"pr={pr} pw={pw} exceed r={asked_r} w={asked_w}: at most R "
                           f"replies (W acknowledgements) are counted")
        _, r_capped, w_capped = self.quorum_sizes(bucket, r=r, w=w)
        return min(pr, r_capped), min(pw, w_capped)

    # ---- liveness -------------------------------------------------------------

    def is_up(self, node: str) -> bool:
        if node == self.id:
            return True
        return self.detector.is_available(node, trio.current_time())

    def up_nodes(self) -> frozenset[str]:
        """The members judged available, reused for UP_SET_TTL seconds (a phi evaluation
        per member per request would make every request O(members)); recomputed at once
        after a suspicion or a new cluster state."""
        now = trio.current_time()
        state, expires, up = self._up_set
        if state is self.state and now < expires:
            return up
        up = frozenset(m for m, member in self.state.members.items()
                       if member.status != "removed" and self.is_up(m))
        self._up_set = (self.state, now + UP_SET_TTL, up)
        return up

    def suspect(self, node: str, reason: str) -> None:
        if node != self.id:
            log.debug("event=suspect node=%s peer=%s reason=%r", self.id, node, reason)
            self.detector.suspect(node, trio.current_time())
            self._up_set = (None, 0.0, frozenset())

    def zones(self) -> dict[str, str]:
        return dict(self.routing().zones)

    def primaries(
        self, partition: int, n: int | None = None, owners: tuple[str, ...] | None = None
    ) -> list[str]:
        """The primary replicas of a key partition, zone-aware: the one rule every module uses.

        `owners` picks another ring (the pre-commit or the planned one); default the
        effective ring of now.
        """
        return list(self.routing().primaries(partition, n or self.target_n(), owners))

    def placement(self, bucket: str, key: bytes, n: int) -> Placement:
        routing = self.routing()
        partition = partition_of(bucket, key, routing.ring.ring_size)
        targets, extra = routing.placement(partition, n, self.up_nodes())
        return Placement(partition, n, list(targets), list(extra))

    def replacement(self, place: Placement, failed: Target, tried: set[str]) -> Target | None:
        """A fallback for a replica that just failed, not one already asked."""
        self.suspect(failed.node, "request failed")
        up = self.up_nodes() - tried
        candidates = self.ring().preference_list(place.partition, place.n, up, self.zones())
        for target in candidates:
            if target.node not in tried:
                return Target(target.node, failed.primary, "fallback")
        return None

    # ---- replica calls (local or remote) -------------------------------------

    async def call(self, node: str, op: str, fields: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        try:
            return await self.transport.call(
                self.addr_of(node), op, fields, timeout or self.request_timeout)
        except Unavailable as exc:
            self.suspect(node, exc.message)
            raise

    def replica_fields(self, target: Target, partition: int, bucket: str, key: bytes,
                       **extra: Any) -> dict[str, Any]:
        """A replica request's fields for ``target`` (a fallback's name the primary it
        holds the hint for)."""
        fields = {"bucket": bucket, "key": key, "partition": partition, **extra}
        if target.hint_for is not None:
            fields["hint_for"] = target.hint_for
        return fields

    def submit(self, node: str, op: str, fields: dict[str, Any],
               on_reply: ReplyCallback) -> Callable[[], None]:
        """Send a request without waiting for it: ``on_reply(result, None)`` or
        ``on_reply(None, error)`` comes once, unless the returned function abandoned it
        first. No task where the transport can do without (an open connection with a free
        slot); else ``call`` in a background task. Unavailable marks the node suspect,
        as in ``call``."""
        def replied(result: dict[str, Any] | None, error: DynError | None) -> None:
            if isinstance(error, Unavailable):
                self.suspect(node, error.message)
            on_reply(result, error)

        try:
            addr = self.addr_of(node)
        except Unavailable as exc:
            replied(None, exc)
            return _nothing
        abandon = self.transport.submit(addr, op, fields, replied)
        if abandon is not None:
            return abandon
        scope = trio.CancelScope()

        async def in_task() -> None:
            with scope:
                try:
                    result = await self.transport.call(addr, op, fields, self.request_timeout)
                except DynError as exc:
                    replied(None, exc)
                else:
                    replied(result, None)

        self.background.start_soon(in_task)
        return scope.cancel

    async def replica_get(
        self, target: Target, partition: int, bucket: str, key: bytes
    ) -> DVVSet | None:
        if target.node == self.id:
            return self.replica.get(partition, bucket, key, target.hint_for)
        reply = await self.call(target.node, "p_get",
                                self.replica_fields(target, partition, bucket, key))
        return self.clock_from_peer(reply.get("clock"))

    async def replica_put(
        self, target: Target, partition: int, bucket: str, key: bytes, clock: DVVSet
    ) -> None:
        """Store ``clock`` on ``target``."""
        if target.node == self.id:
            await self.store_replica(partition, bucket, key, clock, target.hint_for)
            return
        await self.call(target.node, "p_put", self.replica_fields(
            target, partition, bucket, key, clock=context.encode(clock)))

    async def store_replica(
        self, partition: int, bucket: str, key: bytes, clock: DVVSet, hint_for: str | None
    ) -> None:
        ticket = self.stage_replica(partition, bucket, key, clock, hint_for)
        if ticket is not None:
            await ticket.wait()

    def stage_replica(
        self, partition: int, bucket: str, key: bytes, clock: DVVSet, hint_for: str | None
    ) -> Ticket | None:
        """Merge a replica's copy into ours (or into the hint held for ``hint_for``); the
        ticket to wait on for durability, None when it brought nothing new."""
        if hint_for is not None and hint_for != self.id:
            self.stats.count("hint_stored")
            return self.replica.store_hint(hint_for, partition, bucket, key, clock)
        return self.replica.merge(partition, bucket, key, clock)[1]

    def clock_from_peer(self, wire: bytes | None) -> DVVSet | None:
        """A peer's clock, sent as its stored bytes (``context.encode``), validated.

        Without a sibling limit: max_siblings is the writer's limit, enforced where a
        sibling is minted (Replica.coordinate). A replica's copy holds more when copies
        that minted apart meet (two primaries written while partitioned, then healed), and
        refusing it made the key unreadable through other nodes and beyond read repair,
        anti-entropy and hints. No lower ceiling is safe: every copy that mints stays
        within the limit, but fallbacks mint on hint copies under actors of their own,
        one per outage, so no multiple of N bounds a merge (nor do nodes configured with
        different limits). Bytes bound it: the clock comes in a frame the codec has
        capped (max_frame_bytes for p_put, the client's reply limit for p_get) and is
        decoded whole before any count could be checked, so a count never bounded the
        memory either.
        """
        if wire is None:
            return None
        try:
            return context.decode(wire)
        except ValueError as exc:
            raise Rejected(f"invalid clock from peer: {exc}") from None

    def set_incarnation(self, incarnation: int) -> None:
        """This life of the node, and a new actor named after it (the name its dots are
        minted under): no earlier life took that incarnation, so no dot of it exists."""
        self.incarnation = incarnation
        self.actor = f"{self.id}.{incarnation}"
        self.replica.take_actor(self.actor)

    def _resume_actor(self, stored_incarnation: int) -> bool:
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
        leaves no record: persist_identity deletes it, fsynced, before the node serves
        data, and only a clean stop writes it again. A lost disk has no record either. A
        copy of the data dir taken while the node runs has none; a copy of a stopped
        node's dir has one, so a start that keeps its actor asks a peer first
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

    async def confirm_kept_actor(self) -> None:
        """Give up a kept actor unless a peer confirms that the cluster knows no later life
        of this node: this data dir may be a copy of a stopped node's dir, restored after
        the node ran on (and minted under the same actor) elsewhere. Renews when no peer
        answers within the request timeout too: an extra clock entry, never a dot twice.
        A one-node cluster has nobody to ask and keeps it."""
        if not self.actor_kept:
            return
        peers = [m.addr for m in self.state.members.values()
                 if m.id != self.id and m.status != "removed"]
        if not peers:
            return
        self.rng.shuffle(peers)
        known: int | None = None
        with trio.move_on_after(self.request_timeout):
            for addr in peers:
                try:
                    reply = await self.transport.call(addr, "p_gossip", {}, self.request_timeout)
                    remote = membership.from_wire(reply["state"])
                except (DynError, membership.MembershipError, KeyError) as exc:
                    log.info("event=kept_actor_unconfirmed node=%s peer=%s error=%r",
                             self.id, addr, getattr(exc, "message", str(exc)))
                    continue
                record = remote.members.get(self.id)
                known = 0 if record is None else record.incarnation
                break
        if known is not None and known < self.incarnation:
            return
        self.actor_kept = False
        self.set_incarnation(max(self.incarnation, (known or 0) + 1))
        log.warning("event=actor_renewed node=%s actor=%s reason=%s", self.id, self.actor,
                    "no peer answered" if known is None else "the cluster knows a later life")

    def record_clean_stop(self) -> None:
        """Write the clean-stop record (see _resume_actor): call once every service of
        the node has ended, and only then; a StorageError means no record (renewed)."""
        saved = {"incarnation": self.incarnation, "actor": self.actor,
                 "replica": self.replica.actor_state(), "hints_released": self.hints_released}
        self.storage.commit_synced(Batch().put_meta(META_CLEAN_STOP, cbor2.dumps(saved)))

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

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    # ---- dispatch ----------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer) -> dict[str, Any]:
        with _Observed(self, request.op):
            if self.stopping:
                raise Unavailable(f"node {self.id} is stopping")
            if not self.ready.is_set() and request.op not in ("ping", "p_gossip"):
                with trio.move_on_after(self.request_timeout):
                    await self.ready.wait()
                if not self.ready.is_set():
                    raise Unavailable(f"node {self.id} is starting: waiting for its seeds "
                                      f"{', '.join(self.config.seeds)} to recover its state")
            authorize(request, peer, self.config.tls, self.state.members)
            handler = self._handlers.get(request.op)
            if handler is not None:
                return await handler(request.fields, peer)
            result = await answered(partial(self._immediate[request.op], request.op,
                                            request.fields, peer))
            assert result is not None  # ops without a handler always take the request
            return result

    def answer_now(self, request: Request, peer: Peer, reply: Reply) -> bool:
        """The server's fast path: the ops that need no task of their own (replica reads
        and writes, ping, and gets and puts this node coordinates) are started from the
        reader loop and reply from callbacks. False for every other op, for a put this
        node must forward, and while starting or stopping (``handle`` says why)."""
        immediate = self._immediate.get(request.op)
        if immediate is None or self.stopping or not self.ready.is_set():
            return False
        observed = _Observed(self, request.op)

        def replied(result: dict[str, Any] | None, error: Exception | None) -> None:
            observed.end(error)
            reply(result, error)

        try:
            authorize(request, peer, self.config.tls, self.state.members)
            if immediate(request.op, request.fields, peer, replied):
                return True
        except Exception as exc:  # noqa: BLE001 - the error reply, as handle would raise it
            replied(None, exc)
            return True
        observed.discard()
        return False

    async def drain(self, grace: float) -> int:
        """Refuse new requests and give in-flight ones up to `grace` seconds to finish.

        Returns how many were still running when the grace period ended (they fail).
        """
        self.stopping = True
        with trio.move_on_after(grace):
            while self.inflight:
                await trio.sleep(0.01)
        return self.inflight

    # ---- services ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every service of the node, in one nursery; `task_status.started()` once it serves."""
        async with trio.open_nursery() as nursery:
            self.background = nursery
            await nursery.start(self.storage.run)
            if hasattr(self.transport, "run"):
                await nursery.start(self.transport.run)
            # Serve from here on: fresh peers bootstrapping at the same time may need our
            # gossip answers; data ops wait for `ready` (see handle).
            task_status.started()
            if self.fresh and self.config.seeds:
                await self.gossip.recover_identity()
            await self.confirm_kept_actor()
            await self.persist_identity()
            for partition in sorted(self.owned_partitions()):
                await self.replica.rebuild_tree(partition)
                await trio.sleep(0)
            nursery.start_soon(self.coordinator.run)
            nursery.start_soon(self.gossip.run)
            nursery.start_soon(self.handoff.run)
            nursery.start_soon(self.antientropy.run)
            self.ready.set()
            log.info("event=node_ready node=%s actor=%s addr=%s epoch=%d",
                     self.id, self.actor, self.addr, self.state.epoch)

    def owned_partitions(self) -> set[int]:
        """Key partitions this node is a primary replica for, in the current ring."""
        ring = self.ring()
        n = self.target_n()
        return {p for p in range(ring.ring_size) if self.id in self.primaries(p, n)}

    # ---- data ops ------------------------------------------------------------------

    def ping(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        reply({"node": self.id, "epoch": self.state.epoch}, None)
        return True

    def get(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        def counted(result: dict[str, Any] | None, error: Exception | None) -> None:
            if result is not None:
                self.stats.siblings.observe(len(result["values"]))
                if len(result["values"]) > self.config.warn_siblings:
                    log.warning("event=many_siblings node=%s bucket=%s key=%r siblings=%d",
                                self.id, fields["bucket"], fields["key"][:64],
                                len(result["values"]))
            reply(result, error)

        return self.coordinator.start_get(fields["bucket"], fields["key"], fields.get("r"),
                                          counted, pr=fields.get("pr"))

    def put_here(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        """A put or delete this node is a primary for, coordinated without a task; False
        when it must go to a primary (op_put and op_delete forward it)."""
        value = fields["value"] if op == "put" else None
        return self.coordinator.start_put(fields["bucket"], fields["key"], value,
                                          partial(self._client_context, fields),
                                          fields.get("w"), reply, pw=fields.get("pw"))

    async def op_put(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._write(fields, fields["value"], via=[])

    async def op_delete(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._write(fields, None, via=[])

    async def _write(
        self, fields: dict[str, Any], value: bytes | None, *, via: list[str]
    ) -> dict[str, Any]:
        """Coordinate a put or delete that came through the nodes ``via`` (forwarded by
        them, in order): forwarded on while hops remain, never back through them."""
        client_context = self._client_context(fields)
        op = "put" if value is not None else "delete"

        async def forward(node: str) -> dict[str, Any]:
            request = messages.request(op, 1, **fields)
            return await self.call(node, "p_forward", {"req": request, "via": [*via, self.id]})

        return await self.coordinator.put(
            fields["bucket"], fields["key"], value, client_context, fields.get("w"),
            forward if len(via) < messages.MAX_FORWARD_HOPS else None, came_through=via,
            pw=fields.get("pw"),
        )

    def _client_context(self, fields: dict[str, Any]) -> dict[str, int]:
        try:
            return context.decode_context(fields.get("context") or "",
                                          self.limits.max_context_bytes)
        except ValueError as exc:
            raise Rejected(f"bad context: {exc}") from None

    async def op_p_forward(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        inner = messages.validate_request(fields["req"], self.limits)
        if inner.op not in ("put", "delete"):
            raise Rejected(f"only put and delete are forwarded, not {inner.op!r}")
        value = inner.fields["value"] if inner.op == "put" else None
        return await self._write(inner.fields, value, via=fields["via"])

    def p_get(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        # The stored bytes as they are: the coordinator validates them (clock_from_peer).
        partition, hint_for = fields["partition"], fields.get("hint_for")
        result: dict[str, Any] = {"clock": self.replica.get_encoded(
            partition, fields["bucket"], fields["key"], hint_for)}
        if self.pull_pending(partition, hint_for):
            result["incomplete"] = True  # merged by the coordinator, not counted toward R
        reply(result, None)
        return True

    def pull_pending(self, partition: int, hint_for: str | None) -> bool:
        """Whether this node's copy read for ``hint_for`` (None: its own) may lack keys
        because its pull of the partition is not in (Handoff.pull_pending)."""
        return hint_for in (None, self.id) and self.handoff.pull_pending(partition)

    def p_put(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        clock = self.clock_from_peer(fields["clock"])
        if clock is None or clock.anonymous:
            raise Rejected("p_put needs a stored clock (no anonymous values)")
        ticket = self.stage_replica(fields["partition"], fields["bucket"], fields["key"],
                                    clock, fields.get("hint_for"))
        if ticket is None:
            reply({}, None)
        else:  # a failed disk is this replica's failure for the coordinator, not a crash
            ticket.on_done(lambda error: reply({}, None) if error is None else reply(
                None, Unavailable(f"{self.id} could not store it: {error}")))
        return True

    async def op_replicas(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Every replica's local copy of a key: primaries, and fallbacks holding hints."""
        bucket, key = fields["bucket"], fields["key"]
        n, _, _ = self.quorum_sizes(bucket)
        ring = self.ring()
        partition = partition_of(bucket, key, ring.ring_size)
        primaries = self.primaries(partition, n)
        targets = [Target(node, node, "primary") for node in primaries]
        for node in sorted(self.state.members):
            if node not in primaries and self.state.members[node].status != "removed":
                for primary in primaries:
                    targets.append(Target(node, primary, "fallback"))
        rows: list[dict[str, Any]] = []

        async def ask(target: Target) -> None:
            try:
                clock = await self.replica_get(target, partition, bucket, key)
                reachable = True
            except DynError:
                clock, reachable = None, False
            if target.role == "fallback" and clock is None:
                return  # a fallback is listed only when it holds a hint
            rows.append({
                "node": target.node, "role": target.role, "reachable": reachable,
                "found": clock is not None and bool(context.live_values(clock)),
                "siblings": 0 if clock is None else context.sibling_count(clock),
                "context": "" if clock is None else context.encode_context(context.join(clock)),
                **({"hint_for": target.primary} if target.role == "fallback" else {}),
            })

        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(ask, target)
        order = {node: i for i, node in enumerate(primaries)}
        rows.sort(key=lambda row: (row["role"] != "primary", order.get(row["node"], 0),
                                   row["node"]))
        return {"partition": partition, "replicas": rows}

    async def op_stats(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"node": self.id, **self.stats.summary()}


def _nothing() -> None:
    """Nothing to abandon: the request failed before it was sent."""


class _Observed:
    """One request from admission to answer: counted in flight (drain waits for it) and,
    when it ends, its latency and outcome (ok, an error code, internal) go to the stats."""

    __slots__ = ("node", "op", "start")

    def __init__(self, node: Node, op: str) -> None:
        self.node, self.op = node, op
        self.start = trio.current_time()
        node.inflight += 1

    def discard(self) -> None:
        """The request went elsewhere after all (a task): not counted here."""
        self.node.inflight -= 1

    def end(self, error: BaseException | None) -> None:
        self.node.inflight -= 1
        outcome = ("ok" if error is None else error.code if isinstance(error, DynError)
                   else "internal")
        self.node.stats.observe(self.op, outcome, trio.current_time() - self.start)

    def __enter__(self) -> _Observed:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        self.end(error)


class _Routing:
    """Where keys live under one cluster state, memoised: a state is immutable, so its
    ring, zone map, primaries and (per set of up nodes) preference lists never change.
    Building them costs more than the rest of a request (the ring alone validates Q
    owners); the caches are bounded by Q x N values x the up-sets seen in one epoch."""

    MAX_PLACEMENTS = 65536  # (partition, n, up set) entries kept; cleared when exceeded
    MAX_BUCKETS = 4096  # bucket names kept (clients name any); cleared when exceeded

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.ring = membership.ring(state)
        self.zones = membership.zones(state)
        self.active_members = sum(1 for m in state.members.values()
                                  if m.status in ("valid", "leaving")) or 1
        self._buckets: dict[str, BucketProps] = {}
        self._rings: dict[tuple[str, ...], Ring] = {self.ring.owners: self.ring}
        self._primaries: dict[tuple[int, int, tuple[str, ...]], tuple[str, ...]] = {}
        self._placements: dict[tuple[int, int, frozenset[str]],
                               tuple[tuple[Target, ...], tuple[str, ...]]] = {}

    def primaries(self, partition: int, n: int,
                  owners: tuple[str, ...] | None = None) -> tuple[str, ...]:
        owners = self.ring.owners if owners is None else tuple(owners)
        cache_key = (partition, n, owners)
        found = self._primaries.get(cache_key)
        if found is None:
            ring = self._rings.get(owners)
            if ring is None:
                ring = self._rings[owners] = Ring(self.state.ring_size, owners)
            found = self._primaries[cache_key] = tuple(
                ring.primaries(partition, n, self.zones))
        return found

    def bucket(self, name: str) -> BucketProps:
        """A bucket's properties (a bucket never set copies the default's: one copy per
        name and state, not one per request)."""
        props = self._buckets.get(name)
        if props is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._buckets.clear()
            props = self._buckets[name] = membership.bucket(self.state, name)
        return props

    def placement(self, partition: int, n: int, up: frozenset[str]
                  ) -> tuple[tuple[Target, ...], tuple[str, ...]]:
        """(sloppy preference list, future owners not among the current primaries)."""
        cache_key = (partition, n, up)
        found = self._placements.get(cache_key)
        if found is None:
            if len(self._placements) >= self.MAX_PLACEMENTS:
                self._placements.clear()
            targets = tuple(self.ring.preference_list(partition, n, up, self.zones))
            current = set(self.primaries(partition, n))
            extra = tuple(node for node in self.primaries(partition, n, self.state.next_owners)
                          if node not in current)
            found = self._placements[cache_key] = (targets, extra)
        return found
