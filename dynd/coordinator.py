"""Get/put/delete fan-out over the sloppy preference list, under a deadline.

The quorum arithmetic lives in dynd.quorum; this module only sends, waits and
keeps going in the background after the client has its answer (stragglers are
read-repaired, replication finishes). A replica that fails is replaced by a
fallback, so a freshly dead node costs one retry, not the write; one that
cannot be reached is also marked suspect (dynd.peers), one that answered with
an error is not (it is up).

Replica requests are sent without a task each (Peers.submit) and come back as
callbacks, the way riak_kv's get/put FSMs take replies as messages: a request
to N replicas costs no spawn, cancel scope or coroutine chain per replica. One
task per node (``Coordinator.run``) expires the fan-outs whose deadline passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from common import dvvset
from common.dvvset import DVVSet
from common.errors import DynError, Rejected, Unavailable, Unreachable
from common.limits import MAX_TTL_SECONDS
from common.ring import Target
from dynd import membership
from dynd.cluster import ClusterView
from dynd.liveness import Liveness
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.quorum import GetCore, PutCore
from dynd.replica import Replica
from dynd.replica_access import ReplicaAccess, clock_from_peer, replica_fields
from dynd.routing import Placement, Quorums
from dynd.server import Reply, answered
from dynd.storage import StorageError, Ticket


def result_fields(clock: DVVSet | None, now_ms: int) -> dict[str, Any]:
    """The client's view of a merged object as a reader whose clock says ``now_ms`` sees
    it: the visible values (tombstones and expired values hidden, so an item whose values
    all expired is not found) and the opaque context, which still covers every sibling so
    that the next write drops the expired ones too."""
    if clock is None:
        return {"found": False, "context": "", "values": []}
    visible = dvvset.visible_values(clock, now_ms)
    return {
        "found": bool(visible),
        "context": dvvset.encode_context(dvvset.join(clock)),
        "values": [_value_fields(s) for s in visible],
    }


def _value_fields(sibling: dvvset.Sibling) -> dict[str, Any]:
    fields: dict[str, Any] = {"value": sibling.value, "written_at": sibling.written_at}
    if sibling.expires_at is not None:
        fields["expires_at"] = sibling.expires_at
    return fields


@dataclass(frozen=True, slots=True)
class Expiry:
    """What a put asked for: expire ``ttl`` seconds after the write (0: never, whatever
    the bucket says), or at ``at`` (ms since the epoch), or neither (the bucket's ttl)."""

    ttl: int | None = None
    at: int | None = None

    def stamp(self, written_at: int, bucket_ttl: int, node: str) -> int | None:
        """The ``expires_at`` of a value written at ``written_at`` on ``node``'s clock.

        An ``at`` not after the write is refused: the value would vanish at once, after
        being acknowledged. So is one further ahead than the longest ttl."""
        if self.at is not None:
            if self.at <= written_at:
                raise Rejected(f"expire_at is {(written_at - self.at) / 1000:g} s in the past "
                               f"on {node}'s clock")
            if self.at - written_at > MAX_TTL_SECONDS * 1000:
                raise Rejected(f"expire_at is more than {MAX_TTL_SECONDS} s (10 years) ahead "
                               f"on {node}'s clock")
            return self.at
        seconds = bucket_ttl if self.ttl is None else self.ttl
        return written_at + seconds * 1000 if seconds else None



def _primaries(targets: list[Target]) -> int:
    """How many of a placement's replicas are the key's primaries: only they count toward
    PR and PW."""
    return sum(1 for target in targets if target.role == "primary")


class _FanOut:
    """Requests of one get or put, in flight without tasks: local writes (tickets) and
    replica requests (Peers.submit). ``then`` runs once, when the last has come back or
    when the deadline passed (the stragglers are abandoned then: a reply after the
    deadline changes nothing)."""

    __slots__ = ("coordinator", "then", "outstanding", "abandon", "over")

    def __init__(self, coordinator: Coordinator, then: Callable[[], None]) -> None:
        self.coordinator = coordinator
        self.then: Callable[[], None] | None = then
        # The sending phase counts as one until arm(): a reply that comes back while
        # requests are still being sent (a synchronous failure) cannot end it early.
        self.outstanding = 1
        self.abandon: list[Callable[[], None]] = []
        self.over = False

    def send(self, node: str, op: str, fields: dict[str, Any],
             on_reply: Callable[[dict[str, Any] | None, DynError | None], None]) -> None:
        """Send one replica request. A request that cannot even be sent (its frame over
        the limit) fails through ``on_reply`` like any failed reply: raised from here it
        would answer the client a second time, from the caller, beside the fan-out's own
        answer (and, from a callback, break the connection that delivered it)."""
        counted = self._counted(on_reply)
        try:
            abandon = self.coordinator.peers.submit(node, op, fields, counted)
        except DynError as exc:
            counted(None, exc)
        else:
            self.abandon.append(abandon)

    def track(self, ticket: Ticket, on_done: Callable[[StorageError | None], None]) -> None:
        ticket.on_done(self._counted(on_done))

    def _counted(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` as one more outstanding request: called unless the fan-out is over,
        then counted down (after it, so a fallback it sends keeps the fan-out open)."""
        self.outstanding += 1

        def done(*outcome: Any) -> None:
            if not self.over:
                callback(*outcome)
                self._count_down()

        return done

    def arm(self) -> None:
        """Everything is sent: from now on the last reply, or the deadline, ends it."""
        self._count_down()
        if not self.over:
            self.coordinator.expire_later(self)

    def expire(self) -> None:
        if not self.over:
            for abandon in self.abandon:
                abandon()
            self._end()

    def _count_down(self) -> None:
        self.outstanding -= 1
        if not self.outstanding:
            self._end()

    def _end(self) -> None:
        self.over = True
        self.coordinator.forget(self)
        then, self.then, self.abandon = self.then, None, []  # nothing kept until the deadline
        if then is not None:
            then()


class _FirstReply:
    """A reply that passes on only its first call: whichever callback completes a quorum
    answers, the later ones find it ``done``."""

    __slots__ = ("reply", "done")

    def __init__(self, reply: Reply) -> None:
        self.reply, self.done = reply, False

    def __call__(self, result: dict[str, Any] | None, error: Exception | None) -> None:
        if not self.done:
            self.done = True
            self.reply(result, error)


class Coordinator:
    def __init__(self, node_id: str, view: ClusterView, liveness: Liveness, peers: Peers,
                 replica: Replica, access: ReplicaAccess, stats: Stats, *,
                 minting_actor: Callable[[str | None], str],
                 read_incomplete: Callable[[int, str | None], bool],
                 request_timeout: float, wall: Callable[[], float]) -> None:
        """``minting_actor(hint_for)``: the actor a new dot takes (Identity);
        ``read_incomplete(partition, hint_for)``: whether this node's copy may lack keys
        (Transfers.read_incomplete)."""
        self.node_id = node_id
        self.view = view
        self.liveness = liveness
        self.peers = peers
        self.replica = replica
        self.access = access
        self.stats = stats
        self.minting_actor = minting_actor
        self.read_incomplete = read_incomplete
        self.request_timeout = request_timeout
        self.wall = wall
        # Fan-outs in flight and their deadlines. Every one gets the same timeout from when
        # it is armed, so insertion order is deadline order; one that ends leaves at once,
        # so only those in flight are kept (not every request of the last timeout period).
        self._open: dict[_FanOut, float] = {}
        self._opened = trio.Event()

    def expire_later(self, fan: _FanOut) -> None:
        """Expire ``fan`` request_timeout from now, unless it ends before."""
        self._open[fan] = trio.current_time() + self.request_timeout
        if len(self._open) == 1:
            self._opened.set()

    def forget(self, fan: _FanOut) -> None:
        self._open.pop(fan, None)

    async def run(self) -> None:
        """Expire fan-outs as their deadlines pass: one task for all of them."""
        while True:
            if not self._open:
                await self._opened.wait()
                self._opened = trio.Event()
                continue
            fan, deadline = next(iter(self._open.items()))
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
            else:
                del self._open[fan]
                fan.expire()

    def start_get(self, bucket: str, key: bytes, r: int | None, reply: Reply, *,
                  pr: int | None = None, sk: bytes | None = None) -> bool:
        """Begin a get: ``reply`` comes once R replies, PR of them from primaries (or the
        failures that make that impossible) are in, from whichever callback completes
        them. Raises what makes the request impossible to start (a bad r). True: it
        always takes the request."""
        routing = self.view.routing()
        n, r, _, pr, _ = routing.quorums(bucket, r=r, pr=pr)
        place = routing.placement(bucket, key, n, self.liveness.up_nodes())
        if not place.targets:
            raise Unavailable("no replica of this key is reachable")
        # R counts distinct replicas: never lowered to the few this node finds reachable.
        core = GetCore(r=r, n=len(place.targets), pr=pr,
                       primaries=_primaries(place.targets) if pr else None)
        answer = _FirstReply(reply)

        def decide() -> None:
            if answer.done:
                return
            if core.enough():
                answer(result_fields(core.merged(), int(self.wall() * 1000)), None)
            else:
                answer(None, Unavailable(f"read quorum not met: {core.describe()}"))

        # Our own copy first: a replica answering with the very bytes we hold (replicas in
        # sync, the common case) needs no parse and validation of its own.
        local_raw: bytes | None = None
        local: DVVSet | None = None
        for target in place.targets:
            if target.node == self.node_id:
                local_raw = self.replica.get_encoded(place.partition, bucket, key,
                                                     target.hint_for, sk)
                local = None if local_raw is None else dvvset.decode_stored(local_raw)
                core.add_reply(target.node, local, fallback=target.role == "fallback",
                               incomplete=self.read_incomplete(place.partition,
                                                                  target.hint_for))

        def replied(target: Target, result: dict[str, Any] | None,
                    error: DynError | None) -> None:
            try:
                if error is not None:
                    raise error
                assert result is not None
                wire = result.get("clock")
                clock = local if wire == local_raw else clock_from_peer(wire)
            except DynError as exc:
                core.add_failure(target.node, exc.message, fallback=target.role == "fallback")
            else:
                core.add_reply(target.node, clock, fallback=target.role == "fallback",
                               incomplete=result.get("incomplete") is True)
            if core.settled():
                decide()

        def finished() -> None:
            core.give_up(self._no_reply())
            decide()
            self._read_repair(place, bucket, key, sk, core)

        fan = _FanOut(self, finished)
        for target in place.targets:
            if target.node != self.node_id:
                core.ask(target.node, fallback=target.role == "fallback")
                fan.send(target.node, "p_get",
                         replica_fields(target, place.partition, bucket, key, sk),
                         partial(replied, target))
        fan.arm()
        if core.settled():
            decide()
        return True

    def _no_reply(self) -> str:
        """Why a replica that had not answered when its fan-out ended did not count (a
        fan-out that ends before its deadline has none left)."""
        return f"no reply within {self.request_timeout:g}s"

    def _read_repair(self, place: Placement, bucket: str, key: bytes, sk: bytes | None,
                     core: GetCore) -> None:
        """Every replica that answered with less than the merged object gets it (in the
        background, best effort: anti-entropy catches what this misses)."""
        merged = core.merged()
        stale = [] if merged is None else core.stale(merged)
        if not stale:
            return
        assert merged is not None
        by_node = {t.node: t for t in place.targets}
        fan = _FanOut(self, lambda: None)
        for node in stale:
            self.stats.count("read_repair")
            target = by_node[node]
            if node == self.node_id:
                self.access.stage(place.partition, bucket, key, merged, target.hint_for, sk)
            else:
                fields = replica_fields(target, place.partition, bucket, key, sk,
                                        clock=dvvset.encode(merged))
                fan.send(node, "p_put", fields, lambda result, error: None)
        fan.arm()

    def start_put(
        self, bucket: str, key: bytes, value: bytes | None,
        client_context: Callable[[], dict[str, int]], w: int | None, reply: Reply, *,
        pw: int | None = None, sk: bytes | None = None, expiry: Expiry = Expiry(),
    ) -> bool:
        """Coordinate a put (value) or delete (value None) here if this node is a primary
        of the key: ``reply`` comes once W replicas hold it. False, with nothing done (not
        even ``client_context`` decoded), when the write belongs on a primary (``put``
        forwards it)."""
        place, me, quorums = self._write_placement(bucket, key, w, pw)
        if me is None or me.role != "primary":
            return False
        self._write_here(place, me, bucket, key, value, client_context(), quorums.w, reply,
                         pw=quorums.pw, sk=sk, expiry=expiry)
        return True

    def _write_placement(self, bucket: str, key: bytes, w: int | None, pw: int | None
                         ) -> tuple[Placement, Target | None, Quorums]:
        """Where a write of the key goes, this node's place in it (None: outside the
        preference list), and the quorums (W, PW) it needs."""
        routing = self.view.routing()
        quorums = routing.quorums(bucket, w=w, pw=pw)
        place = routing.placement(bucket, key, quorums.n, self.liveness.up_nodes())
        me = next((t for t in place.targets if t.node == self.node_id), None)
        return place, me, quorums

    async def put(
        self, bucket: str, key: bytes, value: bytes | None, client_context: dict[str, int],
        w: int | None, forward: Callable[[str], Awaitable[dict[str, Any]]] | None,
        came_through: Collection[str] = (), *, pw: int | None = None,
        sk: bytes | None = None, expiry: Expiry = Expiry(),
    ) -> dict[str, Any]:
        """Coordinate a put or delete wherever it arrived: forwarded to a primary when
        this node is none (unless ``forward`` is None: no forwarding hop left), never to a
        node it ``came_through`` (no loops), else as ``start_put``."""
        place, me, quorums = self._write_placement(bucket, key, w, pw)
        if (me is None or me.role != "primary") and forward is not None:
            # Only a primary's copy holds every dot its actor minted for the key; a dot
            # minted on a fallback's hint copy can repeat one already handed back and be
            # silently dropped at the primary (tests/sim seed 5). Prefer a primary. A node
            # outside the preference list then tries its fallbacks: puts are minted only
            # on a node of the list.
            candidates = sorted((t for t in place.targets if t.node != self.node_id
                                 and t.node not in came_through
                                 and (t.role == "primary" or me is None)),
                                key=lambda t: t.role != "primary")
            for target in candidates:
                try:
                    return await forward(target.node)
                except Unreachable as exc:  # never sent: the next one may take it
                    self.liveness.suspect(target.node, exc.message)
        if me is None:  # minted here, the dot's actor would hold no copy of the key
            hops = "" if forward is not None else ", and no forwarding hop is left"
            raise Unavailable(f"no node of the key's preference list took the write "
                              f"({', '.join(t.node for t in place.targets) or 'none up'})"
                              f"{hops}")
        result = await answered(partial(self._write_here, place, me, bucket, key, value,
                                        client_context, quorums.w, pw=quorums.pw, sk=sk,
                                        expiry=expiry))
        assert result is not None
        return result

    def _write_here(
        self, place: Placement, me: Target, bucket: str, key: bytes,
        value: bytes | None, client_context: dict[str, int], w: int, reply: Reply, *,
        pw: int = 0, sk: bytes | None = None, expiry: Expiry = Expiry(),
    ) -> bool:
        """Mint the write's dot on this node's copy (a hint when this node is a fallback
        of the key), store it, replicate it; ``reply`` once W acknowledged, PW of them
        primaries. With fewer than PW primaries reachable it writes nothing. The value's
        expiry is stamped here, on this node's clock, as its ``written_at`` is."""
        primaries = _primaries(place.targets) if pw else None
        if primaries is not None and primaries < pw:
            reply(None, Unavailable(f"primary write quorum not met: {primaries} of the key's "
                                    f"primaries reachable, pw={pw}"))
            return True
        hint_for = me.hint_for
        actor = self.minting_actor(hint_for)
        written_at = int(self.wall() * 1000)
        expires_at = None if value is None else expiry.stamp(
            written_at, membership.bucket(self.view.state, bucket).ttl, self.node_id)
        clock, encoded, ticket = self.replica.coordinate(
            place.partition, bucket, key, value, client_context, actor,
            written_at, hint_for, sk, expires_at=expires_at,
        )
        if hint_for is not None:  # counted once stored: a refused write stores nothing
            self.stats.count("hint_stored")
        # W counts distinct nodes holding the write: never lowered to the few reachable
        # ones, or one node could acknowledge alone and then lose its disk (tests/sim seed 8).
        core = PutCore(w=w, n=max(len(place.targets), 1), pw=pw, primaries=primaries)
        tried = {t.node for t in place.targets} | {self.node_id}
        answer = _FirstReply(reply)

        def decide() -> None:
            if answer.done:
                return
            if core.enough():
                answer({"context": dvvset.encode_context(dvvset.join(clock)),
                        **({} if expires_at is None else {"expires_at": expires_at})}, None)
            else:
                answer(None, Unavailable(f"write quorum not met: {core.describe()}"))

        def check() -> None:
            if core.enough() or core.hopeless():
                decide()

        def landed(error: StorageError | None) -> None:
            # A failed local write is one missing ack, not a crash. A hint held here is no
            # primary's copy.
            if error is None:
                core.add_ack(self.node_id, fallback=hint_for is not None)
            else:
                core.add_failure(self.node_id, f"local write failed: {error}",
                                 fallback=hint_for is not None)
            check()

        def replicate(target: Target, counted: bool) -> None:
            if counted:
                core.ask(target.node, fallback=target.role == "fallback")
            fields = replica_fields(target, place.partition, bucket, key, sk, clock=encoded)
            fan.send(target.node, "p_put", fields, partial(acked, target, counted))

        def acked(target: Target, counted: bool, result: dict[str, Any] | None,
                  error: DynError | None) -> None:
            if not counted:
                return
            fallback = target.role == "fallback"
            if error is None:
                core.add_ack(target.node, fallback=fallback)
            else:
                # No suspicion here: an unreachable replica was marked by Peers.submit; one
                # that answered with an error is up.
                core.add_failure(target.node, error.message, fallback=fallback)
                replacement = self.view.routing().replacement(
                    place, target, self.liveness.up_nodes(), tried)
                if replacement is not None:
                    tried.add(replacement.node)
                    core.n += 1
                    replicate(replacement, True)
            check()

        def finished() -> None:
            nonlocal replicate
            core.give_up(self._no_reply())
            decide()
            # replicate and acked name each other: a reference cycle that would keep the
            # whole put (clock, value, request, reply) until the collector's next pass, and
            # make that pass walk every put since the last one. No reply is taken now.
            del replicate

        fan = _FanOut(self, finished)
        fan.track(ticket, landed)
        for target in place.targets:
            if target.node != self.node_id:
                replicate(target, True)
        for node in place.extra:
            if node not in tried:
                replicate(Target(node, node, "primary"), False)
        fan.arm()
        return True
