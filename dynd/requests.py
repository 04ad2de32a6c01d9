"""The data ops a node serves: client gets, puts and deletes, replica reads and writes,
ping, the replicas view and stats.

Client ops go to the coordinator (dynd.coordinator); replica ops read or merge this
node's copy (dynd.replica_access). Ops named ``now_<op>`` run without a task of
their own (Dispatcher.answer_now): they take the request and reply once, now or from
a callback, or decline it (False) and their ``op_<op>`` sibling serves it in a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from common import dvvset, messages
from common.codec import MAX_BATCH_MESSAGES
from common.config import Config
from common.errors import DynError, Rejected, Unavailable
from common.ring import Target, partition_of
from dynd.cluster import ClusterView
from dynd.coordinator import Coordinator, Expiry
from dynd.features import EXPIRY, SORT_KEYS
from dynd.metrics import Stats
from dynd.peers import Peers
from dynd.replica import Replica
from dynd.replica_access import ReplicaAccess, clock_from_peer
from dynd.server import Peer, Reply

log = logging.getLogger("dynd.requests")


class Requests:
    OPS = ("put", "delete", "replicas", "stats", "p_forward")
    NOW_OPS = ("ping", "get", "put", "delete", "p_get", "p_put")

    def __init__(self, node_id: str, view: ClusterView, coordinator: Coordinator,
                 replica: Replica, access: ReplicaAccess, peers: Peers, stats: Stats,
                 config: Config, *, read_incomplete: Callable[[int, str | None], bool],
                 require_feature: Callable[[str], None]) -> None:
        """``read_incomplete(partition, hint_for)``: Transfers.read_incomplete;
        ``require_feature(name)``: Features.require, raises unless the cluster has it."""
        self.node_id = node_id
        self.view = view
        self.coordinator = coordinator
        self.replica = replica
        self.access = access
        self.call = peers.call
        self.stats = stats
        self.config = config
        self.read_incomplete = read_incomplete
        self.require_feature = require_feature

    # ---- client ops ------------------------------------------------------------------

    def now_ping(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        reply({"node": self.node_id, "epoch": self.view.state.epoch,
               "batch": MAX_BATCH_MESSAGES}, None)  # a client may send batch frames
        return True

    def _sort_key(self, fields: dict[str, Any]) -> bytes | None:
        """The request's sort key, once the cluster serves sort keys (else Rejected)."""
        sk = fields.get("sk")
        if sk is not None:
            self.require_feature(SORT_KEYS)
        return sk

    def _expiry(self, fields: dict[str, Any]) -> Expiry:
        """The put's ttl or expire_at, once the cluster serves expiry (else Rejected): a
        3-item sibling is a shape an older node cannot read."""
        expiry = Expiry(fields.get("ttl"), fields.get("expire_at"))
        if expiry != Expiry():
            self.require_feature(EXPIRY)
        return expiry

    def now_get(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        sk = self._sort_key(fields)

        def counted(result: dict[str, Any] | None, error: Exception | None) -> None:
            if result is not None:
                self.stats.siblings.observe(len(result["values"]))
                if len(result["values"]) > self.config.warn_siblings:
                    log.warning("event=many_siblings node=%s bucket=%s key=%r siblings=%d",
                                self.node_id, fields["bucket"], fields["key"][:64],
                                len(result["values"]))
            reply(result, error)

        return self.coordinator.start_get(fields["bucket"], fields["key"], fields.get("r"),
                                          counted, pr=fields.get("pr"), sk=sk)

    def now_put(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        """A put or delete this node is a primary for, coordinated without a task; False
        when it must go to a primary (op_put and op_delete forward it)."""
        value = fields["value"] if op == "put" else None
        return self.coordinator.start_put(fields["bucket"], fields["key"], value,
                                          partial(self._client_context, fields),
                                          fields.get("w"), reply, pw=fields.get("pw"),
                                          sk=self._sort_key(fields),
                                          expiry=self._expiry(fields))

    now_delete = now_put  # the op names which: a delete has no value

    async def op_put(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._write(fields, fields["value"], via=[])

    async def op_delete(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._write(fields, None, via=[])

    async def _write(
        self, fields: dict[str, Any], value: bytes | None, *, via: list[str]
    ) -> dict[str, Any]:
        """Coordinate a put or delete that came through the nodes ``via`` (forwarded by
        them, in order): forwarded on while hops remain, never back through them."""
        sk = self._sort_key(fields)
        client_context = self._client_context(fields)
        op = "put" if value is not None else "delete"

        async def forward(node: str) -> dict[str, Any]:
            request = messages.request(op, 1, **fields)
            result = await self.call(node, "p_forward", {"req": request,
                                                         "via": [*via, self.node_id]})
            if not via:  # the client chose a node outside the key's list: its ring may be old
                result = {**result, "epoch": self.view.state.epoch}
            return result

        return await self.coordinator.put(
            fields["bucket"], fields["key"], value, client_context, fields.get("w"),
            forward if len(via) < messages.MAX_FORWARD_HOPS else None, came_through=via,
            pw=fields.get("pw"), sk=sk, expiry=self._expiry(fields),
        )

    def _client_context(self, fields: dict[str, Any]) -> dict[str, int]:
        try:
            return dvvset.decode_context(fields.get("context") or "",
                                          self.config.limits.max_context_bytes)
        except ValueError as exc:
            raise Rejected(f"bad context: {exc}") from None

    async def op_p_forward(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        inner = messages.validate_request(fields["req"], self.config.limits)
        if inner.op not in ("put", "delete"):
            raise Rejected(f"only put and delete are forwarded, not {inner.op!r}")
        value = inner.fields["value"] if inner.op == "put" else None
        return await self._write(inner.fields, value, via=fields["via"])

    # ---- replica ops -------------------------------------------------------------------

    def now_p_get(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        # The stored bytes as they are: the coordinator validates them (clock_from_peer).
        partition, hint_for = fields["partition"], fields.get("hint_for")
        result: dict[str, Any] = {"clock": self.replica.get_encoded(
            partition, fields["bucket"], fields["key"], hint_for, fields.get("sk"))}
        if self.read_incomplete(partition, hint_for):
            result["incomplete"] = True  # merged by the coordinator, not counted toward R
        reply(result, None)
        return True

    def now_p_put(self, op: str, fields: dict[str, Any], peer: Peer, reply: Reply) -> bool:
        clock = clock_from_peer(fields["clock"])
        if clock is None or clock.anonymous:
            raise Rejected("p_put needs a stored clock (no anonymous values)")
        ticket = self.access.stage(fields["partition"], fields["bucket"], fields["key"],
                                   clock, fields.get("hint_for"), fields.get("sk"))
        if ticket is None:
            reply({}, None)
        else:  # a failed disk is this replica's failure for the coordinator, not a crash
            ticket.on_done(lambda error: reply({}, None) if error is None else reply(
                None, Unavailable(f"{self.node_id} could not store it: {error}")))
        return True

    # ---- views -------------------------------------------------------------------------

    async def op_replicas(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Every replica's local copy of a key: primaries, and fallbacks holding hints."""
        bucket, key, sk = fields["bucket"], fields["key"], self._sort_key(fields)
        routing = self.view.routing()
        n = routing.quorums(bucket).n
        partition = partition_of(bucket, key, routing.ring.ring_size)
        primaries = list(routing.primaries(partition, n))
        state = self.view.state
        targets = [Target(node, node, "primary") for node in primaries]
        for node in sorted(state.members):
            if node not in primaries and state.members[node].status != "removed":
                for primary in primaries:
                    targets.append(Target(node, primary, "fallback"))
        rows: list[dict[str, Any]] = []
        now_ms = int(self.coordinator.wall() * 1000)  # found: visible at this node's clock

        async def ask(target: Target) -> None:
            try:
                clock = await self.access.get(target, partition, bucket, key, sk)
                reachable = True
            except DynError:
                clock, reachable = None, False
            if target.role == "fallback" and clock is None:
                return  # a fallback is listed only when it holds a hint
            rows.append({
                "node": target.node, "role": target.role, "reachable": reachable,
                "found": clock is not None and bool(dvvset.visible_values(clock, now_ms)),
                "siblings": 0 if clock is None else dvvset.sibling_count(clock),
                "context": "" if clock is None else dvvset.encode_context(dvvset.join(clock)),
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
        return {"node": self.node_id, **self.stats.summary()}
