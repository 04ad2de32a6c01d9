"""A key's replica on any node: this node's copy read or merged in place, a peer's over
the wire (p_get, p_put), the same calls either way (riak_core's vnode interface)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from common import dvvset
from common.dvvset import DVVSet
from common.errors import Rejected
from common.ring import Target
from dynd.metrics import Stats
from dynd.replica import Replica
from dynd.storage import Ticket

Call = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def clock_from_peer(wire: bytes | None) -> DVVSet | None:
    """A peer's clock, sent as its stored bytes (``dvvset.encode``), validated.

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
        return dvvset.decode(wire)
    except ValueError as exc:
        raise Rejected(f"invalid clock from peer: {exc}") from None


def replica_fields(target: Target, partition: int, bucket: str, key: bytes,
                   sk: bytes | None = None, **extra: Any) -> dict[str, Any]:
    """A replica request's fields for ``target`` (a fallback's name the primary it
    holds the hint for); ``sk`` only for an item that has one."""
    fields = {"bucket": bucket, "key": key, "partition": partition, **extra}
    if sk is not None:
        fields["sk"] = sk
    if target.hint_for is not None:
        fields["hint_for"] = target.hint_for
    return fields


class ReplicaAccess:
    def __init__(self, node_id: str, replica: Replica, call: Call, stats: Stats) -> None:
        self.node_id = node_id
        self.replica = replica
        self.call = call
        self.stats = stats

    async def get(
        self, target: Target, partition: int, bucket: str, key: bytes,
        sk: bytes | None = None,
    ) -> DVVSet | None:
        if target.node == self.node_id:
            return self.replica.get(partition, bucket, key, target.hint_for, sk)
        reply = await self.call(target.node, "p_get",
                                replica_fields(target, partition, bucket, key, sk))
        return clock_from_peer(reply.get("clock"))

    async def put(
        self, target: Target, partition: int, bucket: str, key: bytes, clock: DVVSet,
        sk: bytes | None = None,
    ) -> None:
        """Store ``clock`` on ``target``."""
        if target.node == self.node_id:
            await self.store(partition, bucket, key, clock, target.hint_for, sk)
            return
        await self.call(target.node, "p_put", replica_fields(
            target, partition, bucket, key, sk, clock=dvvset.encode(clock)))

    async def store(
        self, partition: int, bucket: str, key: bytes, clock: DVVSet, hint_for: str | None,
        sk: bytes | None = None,
    ) -> None:
        """``stage`` and wait until it is durable."""
        ticket = self.stage(partition, bucket, key, clock, hint_for, sk)
        if ticket is not None:
            await ticket.wait()

    def stage(
        self, partition: int, bucket: str, key: bytes, clock: DVVSet, hint_for: str | None,
        sk: bytes | None = None,
    ) -> Ticket | None:
        """Merge a replica's copy into ours (or into the hint held for ``hint_for``); the
        ticket to wait on for durability, None when it brought nothing new."""
        if hint_for is not None and hint_for != self.node_id:
            self.stats.count("hint_stored")
            return self.replica.store_hint(hint_for, partition, bucket, key, clock, sk)
        return self.replica.merge(partition, bucket, key, clock, sk)[1]
