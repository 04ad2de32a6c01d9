"""Where a client sends a request about a key: the key's preference list, from a node's ring.

A client given several nodes asks one of them for its ``ring`` (owners, each member's
address and zone, the N of the preference lists, the epoch) and from then on sends each
request about a key straight to a node of that key's preference list, as the node itself
would route it (``common.ring``: same hash, same zone-aware walk). The order is the
failover order: the key's primaries first, in preference-list order, then every other
owner in the order of the ring walk. Routing is only an optimisation: a node that is not
the key's coordinator still serves the request (a put is forwarded to a primary), so a
stale ring costs a hop, never a wrong answer.

Pure: no I/O, no clock.

Limits: the reply's ring is checked as ``common.ring.Ring`` checks it; at most
``MAX_MEMBERS`` members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.errors import ProtocolError
from common.ring import Ring, partition_of

MAX_MEMBERS = 1024  # members a ring reply may name


class Topology:
    """One ring reply, ready to route: ``addresses_for(bucket, key)`` in failover order."""

    def __init__(self, epoch: int, ring: Ring, n: int, addrs: Mapping[str, str],
                 zones: Mapping[str, str]) -> None:
        self.epoch = epoch
        self.ring = ring
        self.n = n
        self.addrs = dict(addrs)
        self.zones = dict(zones)
        self._by_partition: dict[int, tuple[str, ...]] = {}  # at most ring_size entries
        self._all_owners = len(set(ring.owners))

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Topology | None:
        """The topology a ``ring`` reply describes; None when the node does not say where
        its members are (a node older than client-driven coordination). ProtocolError for
        a malformed reply."""
        members, n = reply.get("members"), reply.get("n")
        if members is None or n is None:
            return None
        epoch, ring_size, owners = reply.get("epoch"), reply.get("ring_size"), reply.get("owners")
        if not _is_int(epoch) or not _is_int(n) or n < 1:
            raise ProtocolError("ring reply without an integer epoch and n")
        if not isinstance(members, dict) or not 0 < len(members) <= MAX_MEMBERS:
            raise ProtocolError(f"ring reply must name 1..{MAX_MEMBERS} members")
        if not isinstance(owners, list) or not _is_int(ring_size):
            raise ProtocolError("ring reply without ring_size and owners")
        addrs: dict[str, str] = {}
        zones: dict[str, str] = {}
        for node, member in members.items():
            addr = member.get("addr") if isinstance(member, dict) else None
            zone = member.get("zone") if isinstance(member, dict) else None
            if not isinstance(node, str) or not isinstance(addr, str) \
                    or not isinstance(zone, str):
                raise ProtocolError(f"ring reply holds a malformed member {node!r:.70}")
            addrs[node], zones[node] = addr, zone
        try:
            ring = Ring(ring_size, tuple(owners))
        except ValueError as exc:
            raise ProtocolError(f"ring reply holds a malformed ring: {exc}") from None
        unknown = set(ring.owners) - addrs.keys()
        if unknown:
            raise ProtocolError(f"ring reply names owners without an address: "
                                f"{sorted(unknown)[:3]}")
        return cls(epoch, ring, n, addrs, zones)

    def addresses_for(self, bucket: str, key: bytes) -> tuple[str, ...]:
        """The addresses of the nodes of the key's preference list (its N primaries, in
        order), then of every other owner in ring-walk order: where to send a request
        about the key, and where to fail over to."""
        partition = partition_of(bucket, key, self.ring.ring_size)
        found = self._by_partition.get(partition)
        if found is None:
            primaries = self.ring.primaries(partition, self.n, self.zones)
            walk = self.ring.primaries(partition, self._all_owners, self.zones)
            order = primaries + [node for node in walk if node not in primaries]
            found = self._by_partition[partition] = tuple(self.addrs[node] for node in order)
        return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
