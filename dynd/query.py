"""Queries over one partition key: the replica scan (``p_query``) and the coordinator.

The coordinator asks every replica of the key's sloppy preference list, like a get (its
own copy is scanned in place), answers once R replied (get's settled rule, where "holds
the key" means "returned any item"), and merges the replies with dynd.querymerge:
cursors, the horizon, refills of the replicas that stopped early. Budgets end a page
early with a token rather than failing it: refill rounds, items scanned, bytes received
and half the request deadline. Items that differ are read-repaired in the background,
from the replies used and from replies that came late.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from common import dvvset
from common.config import Config
from common.errors import DynError, Rejected, Unavailable
from common.messages import MAX_QUERY_LIMIT
from common.ring import Target
from common.skrange import condition_range
from dynd.cluster import ClusterView
from dynd.coordinator import result_fields
from dynd.features import SORT_KEYS
from dynd.liveness import Liveness
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.querymerge import (
    BadReply,
    QueryMerge,
    Repair,
    ReplicaPage,
    decode_token,
    encode_token,
    query_hash,
    resume_range,
    skeleton,
)
from dynd.quorum import GetCore
from dynd.replica_access import ReplicaAccess, clock_from_peer, replica_fields
from dynd.routing import Placement
from dynd.server import Peer
from dynd.storage import Storage

log = logging.getLogger("dynd.query")

DEFAULT_LIMIT = 100
MAX_ROUNDS = 8  # refill rounds per page
TOMBSTONE_LIMIT = 10_000  # dead items one replica reply scans (Scylla's query_tombstone_limit)
REPLY_BYTES = 1024 * 1024  # what one replica reply holds at most (after its first item)
WIDE_PARTITION_ITEMS = 100_000  # one scan that passes this many items is logged
_SCAN_PAGE = 256  # most rows read from storage at a time

T = TypeVar("T")
# A refill's outcome: a peer's reply, the own copy's page and bytes, or the error.
RefillOutcome = dict[str, Any] | tuple[ReplicaPage, int] | DynError


def _scan(storage: Storage, fields: dict[str, Any],
          item: Callable[[bytes], tuple[T, bool, int]]
          ) -> tuple[list[tuple[bytes, T]], bool, int]:
    """The rows of a ``p_query`` scan in order, each made by ``item(stored bytes)`` into
    (payload, live at ``now``, bytes it counts), whether the range has more, and the
    bytes of sort keys and payloads. Every
    item met in [lo, hi) is kept, dead ones included (a tombstone here must be able to
    hide a stale copy elsewhere); it stops after ``want`` live items, ``TOMBSTONE_LIMIT``
    dead ones or ``max_bytes``, always after at least one item. ``more`` is exact: the
    next row was read. Storage is read ``want + 1`` rows first, then in pages that double
    up to ``_SCAN_PAGE``: a page of live items reads no row it does not need."""
    partition, bucket, key = fields["partition"], fields["bucket"], fields["key"]
    lo, hi, reverse = fields["lo"], fields.get("hi"), fields["reverse"]
    want, max_bytes = fields["want"], fields["max_bytes"]
    items: list[tuple[bytes, T]] = []
    live = dead = size = 0
    page = min(_SCAN_PAGE, want + 1)
    while True:
        rows = storage.scan_items(partition, bucket, key, lo, hi, reverse=reverse,
                                  limit=page, hint_for=fields.get("hint_for"))
        for sk, raw in rows:
            if items and (live >= want or dead >= TOMBSTONE_LIMIT or size >= max_bytes):
                return items, True, size
            payload, visible, nbytes = item(raw)
            if visible:
                live += 1
            else:
                dead += 1
            items.append((sk, payload))
            size += len(sk) + nbytes
        if len(rows) < page:
            return items, False, size
        if reverse:
            hi = rows[-1][0]
        else:
            lo = rows[-1][0] + b"\x00"
        scanned = live + dead
        if scanned // WIDE_PARTITION_ITEMS > (scanned - len(rows)) // WIDE_PARTITION_ITEMS:
            log.warning("event=wide_partition bucket=%s key=%r scanned=%d", bucket, key[:64],
                        scanned)
        page = min(_SCAN_PAGE, 2 * page)


def scan_replica(storage: Storage, fields: dict[str, Any]) -> dict[str, Any]:
    """This node's answer to a ``p_query`` (see ``_scan``): the stored bytes as they are,
    liveness read off the CBOR without building clocks; skeletons re-encoded."""
    now = fields["now"]

    def stored(raw: bytes) -> tuple[bytes, bool, int]:
        return raw, dvvset.stored_visible(raw, now), len(raw)

    def bare(raw: bytes) -> tuple[bytes, bool, int]:
        clock = dvvset.decode_stored(raw)
        encoded = dvvset.encode(skeleton(clock))
        return encoded, bool(dvvset.visible_values(clock, now)), len(encoded)

    items, more, _ = _scan(storage, fields, bare if fields.get("skeleton") else stored)
    result: dict[str, Any] = {"items": [[sk, raw] for sk, raw in items], "more": more}
    if items:
        result["last"] = items[-1][0]
    return result


def scan_local(storage: Storage, fields: dict[str, Any]) -> tuple[ReplicaPage, int]:
    """The coordinator's own copy as ``scan_replica`` would answer it, with each clock
    decoded once (the node's own bytes need no validating decode), and the bytes it
    counts against the query's byte budget."""
    now, skeletons = fields["now"], fields.get("skeleton")

    def decoded(raw: bytes) -> tuple[dvvset.DVVSet, bool, int]:
        clock = dvvset.decode_stored(raw)
        if skeletons:
            clock = skeleton(clock)
        return clock, bool(dvvset.visible_values(clock, now)), len(raw)

    items, more, size = _scan(storage, fields, decoded)
    return ReplicaPage(items, more, items[-1][0] if items else None), size


def page_from_reply(result: dict[str, Any]) -> ReplicaPage:
    """A peer's ``p_query`` reply, its clocks validated; Rejected if malformed."""
    items, more, last = result.get("items"), result.get("more"), result.get("last")
    if not isinstance(items, list) or type(more) is not bool or (
            last is not None and type(last) is not bytes):
        raise Rejected("malformed p_query reply")
    decoded = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is bytes
                and type(item[1]) is bytes):
            raise Rejected("malformed p_query item")
        clock = clock_from_peer(item[1])
        assert clock is not None
        decoded.append((item[0], clock))
    return ReplicaPage(decoded, more, last)


class Queries:
    OPS = ("query",)
    NOW_OPS = ("p_query",)

    def __init__(self, node_id: str, view: ClusterView, liveness: Liveness, peers: Peers,
                 storage: Storage, access: ReplicaAccess, stats: Stats, config: Config, *,
                 require_feature: Callable[[str], None],
                 read_incomplete: Callable[[int, str | None], bool],
                 wall: Callable[[], float],
                 spawn: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
        """``spawn(task)`` runs background work (late replies, read repair) in the node."""
        self.node_id = node_id
        self.view = view
        self.liveness = liveness
        self.peers = peers
        self.storage = storage
        self.access = access
        self.stats = stats
        self.limits = config.limits
        self.require_feature = require_feature
        self.read_incomplete = read_incomplete
        self.wall = wall
        self.spawn = spawn

    def now_p_query(self, op: str, fields: dict[str, Any], peer: Peer,
                    reply: Callable[[dict[str, Any] | None, Exception | None], None]) -> bool:
        result = scan_replica(self.storage, fields)
        self.stats.count("query_scanned_items", len(result["items"]))
        if self.read_incomplete(fields["partition"], fields.get("hint_for")):
            result["incomplete"] = True
        reply(result, None)
        return True

    async def op_query(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.require_feature(SORT_KEYS)
        bucket, key = fields["bucket"], fields["key"]
        cond, reverse = fields.get("cond"), fields.get("reverse", False)
        limit, select = fields.get("limit", DEFAULT_LIMIT), fields.get("select", "items")
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise Rejected(f"limit must be in 1..{MAX_QUERY_LIMIT}, not {limit}")
        qhash = query_hash(bucket, key, cond, reverse)
        lo, hi = condition_range(cond)
        if "after" in fields:
            lo, hi = resume_range(lo, hi, reverse, decode_token(fields["after"], qhash))
        routing = self.view.routing()
        n, r = routing.quorums(bucket, r=fields.get("r"))[:2]
        place = routing.placement(bucket, key, n, self.liveness.up_nodes())
        if not place.targets:
            raise Unavailable("no replica of this key is reachable")
        merge = QueryMerge(lo, hi, reverse=reverse, limit=limit,
                           now_ms=int(self.wall() * 1000))
        rounds = 0
        if hi is None or lo < hi:
            rounds = await self._run(place, bucket, key, merge, r, skeletons=select != "items")
        after = merge.next_after()
        result: dict[str, Any] = {"count": len(merge.emitted), "rounds": rounds}
        if after is not None:
            result["next"] = encode_token(after, reverse, qhash)
        if select == "items":
            result["items"] = [_item(emitted.sk, emitted.clock, merge.now_ms)
                               for emitted in merge.emitted]
        elif select == "keys":
            result["items"] = [{"sk": e.sk, "siblings": len(e.values),
                                "context": dvvset.encode_context(dvvset.join(e.clock))}
                               for e in merge.emitted]
        return result

    async def _run(self, place: Placement, bucket: str, key: bytes, merge: QueryMerge, r: int,
                   *, skeletons: bool) -> int:
        """Fill ``merge`` with the first R replies and the refills; the refill rounds."""
        started = trio.current_time()
        soft_deadline = started + self.limits.request_timeout / 2
        deadline = started + self.limits.request_timeout
        max_bytes = max(1, self.limits.max_frame_bytes // (4 * len(place.targets)))
        budget_bytes = self.limits.max_frame_bytes // 4
        by_node = {t.node: t for t in place.targets}

        def request(target: Target) -> dict[str, Any]:
            lo, hi = merge.request_range(target.node)
            fields = replica_fields(target, place.partition, bucket, key, lo=lo,
                                    reverse=merge.reverse, want=merge.limit, now=merge.now_ms,
                                    max_bytes=min(max_bytes, REPLY_BYTES))
            if hi is not None:
                fields["hi"] = hi
            if skeletons:
                fields["skeleton"] = True
            return fields

        send, replies = trio.open_memory_channel[tuple[Target, dict[str, Any] | DynError]](
            len(place.targets))
        received = 0
        core = GetCore(r=r, n=len(place.targets))
        first: dict[str, ReplicaPage] = {}

        def take_page(target: Target, page: ReplicaPage, size: int, incomplete: bool) -> None:
            nonlocal received
            received += size
            first[target.node] = page
            core.add_reply(target.node, dvvset.empty() if page.items else None,
                           fallback=target.role == "fallback", incomplete=incomplete)

        def take(target: Target, outcome: dict[str, Any] | DynError) -> None:
            try:
                if isinstance(outcome, DynError):
                    raise outcome
                page = page_from_reply(outcome)
            except DynError as exc:
                core.add_failure(target.node, exc.message, fallback=target.role == "fallback")
                return
            take_page(target, page, _reply_bytes(outcome), outcome.get("incomplete") is True)

        # The own copy first: it costs no round trip, and with query_fanout "r" it is one
        # of the R asked. The others keep their preference-list order.
        waiting = deque(sorted(place.targets, key=lambda t: t.node != self.node_id))
        asked = len(waiting) if self.limits.query_fanout == "n" else min(r, len(waiting))
        pending = 0

        def ask(target: Target) -> None:
            nonlocal pending
            if target.node == self.node_id:
                page, size = scan_local(self.storage, request(target))
                take_page(target, page, size,
                          self.read_incomplete(place.partition, target.hint_for))
            else:
                pending += 1
                self.spawn(partial(self._ask, target, request(target), deadline, send.clone()))

        def ask_more() -> None:
            """With fewer than all asked: one more when the replies and those still
            awaited cannot make R, or when every one asked answered and it is not settled."""
            while waiting and (len(core.replies) - len(core.incomplete) + pending < r
                               or (pending == 0 and not core.settled())):
                ask(waiting.popleft())

        for _ in range(asked):
            ask(waiting.popleft())
        ask_more()
        with send, trio.move_on_at(deadline):
            while not core.settled() and pending:
                target, outcome = await replies.receive()
                pending -= 1
                take(target, outcome)
                ask_more()
        if not core.enough():
            replies.close()
            raise Unavailable(f"read quorum not met: {core.describe()}")
        for node, page in first.items():
            try:
                merge.add(node, page, fallback=by_node[node].role == "fallback")
            except BadReply as exc:
                log.warning("event=bad_query_reply node=%s reason=%r", node, str(exc))
        rounds = 0
        while refills := merge.step():
            if (rounds >= MAX_ROUNDS or merge.scanned >= 10 * merge.limit + 1000
                    or received >= budget_bytes or trio.current_time() >= soft_deadline):
                break  # the page ends at the horizon, with a token
            rounds += 1
            self.stats.count("query_refills", len(refills))
            outcomes: dict[str, RefillOutcome] = {}
            async with trio.open_nursery() as nursery:
                for node in refills:
                    nursery.start_soon(self._refill, by_node[node], request(by_node[node]),
                                       soft_deadline, outcomes)
            for node in refills:
                outcome = outcomes.get(node)
                try:
                    if outcome is None or isinstance(outcome, DynError):
                        raise BadReply(f"{node}: refill failed")
                    if isinstance(outcome, tuple):
                        page, size = outcome
                    else:
                        page, size = page_from_reply(outcome), _reply_bytes(outcome)
                    received += size
                    merge.add(node, page, fallback=by_node[node].role == "fallback")
                except (BadReply, DynError):
                    merge.drop(node)
            if len(merge.cursors) < r:
                # Fewer than R replicas vouch for what lies past the horizon (the dropped
                # one may hold a newer tombstone there): the page ends at the horizon.
                break
        if not skeletons:
            self.spawn(partial(self._repair, place, bucket, key, merge, by_node, replies,
                               deadline))
        else:
            replies.close()
        return rounds

    async def _ask(self, target: Target, fields: dict[str, Any], deadline: float,
                   send: trio.MemorySendChannel[tuple[Target, dict[str, Any] | DynError]]
                   ) -> None:
        async with send:
            outcome: dict[str, Any] | DynError
            with trio.move_on_at(deadline):
                try:
                    outcome = await self.peers.call(target.node, "p_query", fields)
                except DynError as exc:
                    outcome = exc
                try:
                    send.send_nowait((target, outcome))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the query is over and its late replies are not wanted

    async def _refill(self, target: Target, fields: dict[str, Any], deadline: float,
                      outcomes: dict[str, RefillOutcome]) -> None:
        if target.node == self.node_id:
            outcomes[target.node] = scan_local(self.storage, fields)
            return
        with trio.move_on_at(deadline):
            try:
                outcomes[target.node] = await self.peers.call(target.node, "p_query", fields)
            except DynError as exc:
                outcomes[target.node] = exc

    async def _repair(self, place: Placement, bucket: str, key: bytes, merge: QueryMerge,
                      by_node: dict[str, Target],
                      replies: trio.MemoryReceiveChannel[tuple[Target, dict[str, Any] | DynError]],
                      deadline: float) -> None:
        """Read repair, in the background and best effort: the replies used, then the
        first replies that came after the answer, up to the deadline."""
        await self._send_repairs(place, bucket, key, merge.repairs, by_node)
        with replies, trio.move_on_at(deadline):
            async for target, outcome in replies:
                if target.node in merge.cursors or isinstance(outcome, DynError):
                    continue
                try:
                    page = page_from_reply(outcome)
                except DynError:
                    continue
                await self._send_repairs(place, bucket, key, merge.late_repairs(
                    target.node, page, fallback=target.role == "fallback"), by_node)

    async def _send_repairs(self, place: Placement, bucket: str, key: bytes,
                            repairs: list[Repair], by_node: dict[str, Target]) -> None:
        for repair in repairs:
            self.stats.count("read_repair")
            target = by_node[repair.node]
            try:
                await self.access.put(target, place.partition, bucket, key, repair.clock,
                                      repair.sk)
            except DynError:
                pass  # best effort: anti-entropy catches what this misses


def _reply_bytes(result: dict[str, Any]) -> int:
    """Bytes of sort keys and clocks in a well-formed p_query reply (the byte budget)."""
    return sum(len(sk) + len(raw) for sk, raw in result["items"])


def _item(sk: bytes, clock: dvvset.DVVSet, now_ms: int) -> dict[str, Any]:
    """An item as a query returns it: its sort key, context and the values visible at
    the coordinator's ``now_ms`` (expiry included)."""
    fields = result_fields(clock, now_ms)
    return {"sk": sk, "context": fields["context"], "values": fields["values"]}
