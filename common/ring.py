"""Partitions, ownership and preference lists (Dynamo's strategy 3).

The hash space is cut into Q equal partitions (Q a power of two, fixed when the
cluster is created); ``Ring.owners`` names the node owning each one. A key's
replicas live on the first n distinct nodes met walking the ring from its
partition (Riak's "active preference list"); when some of them are down, the
sloppy preference list substitutes fallbacks, spread over all survivors so a
failed node's load does not pile onto its ring successor.

Pure: no I/O, no clock, no randomness. Everything here is a function of its
arguments, so every node computes the same lists from the same ring.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache

MIN_RING_SIZE = 8
MAX_RING_SIZE = 65536
DEFAULT_ZONE = "default"


def check_ring_size(q: int) -> None:
    """Reject a ring size that is not a power of two in 8..65536.

    A power of two lets a partition be the top bits of the key hash; the bounds
    keep ownership lists small enough to gossip and large enough to balance.
    """
    if isinstance(q, bool) or not isinstance(q, int):
        raise ValueError(f"ring size must be an int, got {type(q).__name__}")
    if not MIN_RING_SIZE <= q <= MAX_RING_SIZE or q & (q - 1):
        raise ValueError(
            f"ring size must be a power of two in {MIN_RING_SIZE}..{MAX_RING_SIZE}, got {q}"
        )


def key_hash(bucket: str, key: bytes) -> int:
    """64-bit hash of (bucket, key); the bucket is length-prefixed so that
    ("ab", b"c") and ("a", b"bc") never collide by construction."""
    if not isinstance(bucket, str):
        raise ValueError(f"bucket must be a str, got {type(bucket).__name__}")
    if not isinstance(key, bytes | bytearray | memoryview):
        raise ValueError(f"key must be bytes, got {type(key).__name__}")
    bucket_bytes = bucket.encode("utf-8")
    digest = hashlib.blake2b(digest_size=8)
    digest.update(len(bucket_bytes).to_bytes(4, "big"))
    digest.update(bucket_bytes)
    digest.update(key)
    return int.from_bytes(digest.digest(), "big")


def partition_of(bucket: str, key: bytes, ring_size: int) -> int:
    """The partition of (bucket, key): the top log2(ring_size) bits of its hash,
    so partition p covers one contiguous slice of the hash space."""
    check_ring_size(ring_size)
    return key_hash(bucket, key) >> (64 - (ring_size.bit_length() - 1))


def _rendezvous(partition: int, primary: str, candidate: str) -> int:
    """Highest-random-weight score of `candidate` standing in for `primary` on
    `partition`: independent per (partition, primary), so the slots of a down
    node scatter over all survivors, and stable as other nodes come and go."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (str(partition), primary, candidate):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return int.from_bytes(digest.digest(), "big")


@dataclass(frozen=True, slots=True)
class Target:
    """One replica destination of a preference list."""

    node: str  # who receives the replica
    primary: str  # the primary this replica belongs to (== node for a primary)
    role: str  # "primary" | "fallback"

    @property
    def hint_for(self) -> str | None:
        """The primary a fallback keeps its copy for as a hint; None for a primary."""
        return None if self.role == "primary" else self.primary


@dataclass(frozen=True)
class Ring:
    """Ownership of the Q partitions: ``owners[p]`` is the node id owning p.

    Limits: ``ring_size`` as in :func:`check_ring_size`; ``owners`` has exactly
    ``ring_size`` non-empty string node ids.
    """

    ring_size: int
    owners: tuple[str, ...]

    def __post_init__(self) -> None:
        check_ring_size(self.ring_size)
        owners = tuple(self.owners)
        if len(owners) != self.ring_size:
            raise ValueError(
                f"ring of size {self.ring_size} needs as many owners, got {len(owners)}"
            )
        for owner in owners:
            if not isinstance(owner, str) or not owner:
                raise ValueError(f"owner must be a non-empty node id, got {owner!r:.60}")
        object.__setattr__(self, "owners", owners)

    def _check_partition(self, partition: int, n: int) -> None:
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise ValueError(f"partition must be an int, got {type(partition).__name__}")
        if not 0 <= partition < self.ring_size:
            raise ValueError(f"partition {partition} outside 0..{self.ring_size - 1}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")

    def primaries(
        self, partition: int, n: int, zones: Mapping[str, str] | None = None
    ) -> list[str]:
        """The first n distinct owners walking the ring from `partition`
        (Riak's apl); fewer when the ring has fewer than n distinct owners.

        With `zones` (node -> zone) the walk also spreads zones, the way
        Cassandra's NetworkTopologyStrategy does: it passes over a node whose
        zone is already on the list while the remaining slots are all needed to
        reach min(n, zones on the ring) distinct zones. A claim that stripes
        zones makes this the plain walk almost everywhere; it differs only where
        the ring cannot stripe them (3 zones never divide a power-of-two ring).
        Every caller must pass the same zone map (or none) to agree on primaries.
        """
        self._check_partition(partition, n)
        if zones is None:
            zone_of = _single_zone
            wanted_zones = 1
        else:
            zone_of = _zone_lookup(zones)
            wanted_zones = min(n, len({zone_of(owner) for owner in self._distinct_owners}))
        chosen: list[str] = []
        seen_zones: set[str] = set()
        for step in range(self.ring_size):
            node = self.owners[(partition + step) % self.ring_size]
            if node in chosen:
                continue
            zone = zone_of(node)
            spare_slots = (n - len(chosen)) - (wanted_zones - len(seen_zones))
            if zone in seen_zones and spare_slots <= 0:
                continue
            chosen.append(node)
            seen_zones.add(zone)
            if len(chosen) == n:
                break
        return chosen

    def preference_list(
        self,
        partition: int,
        n: int,
        up: Collection[str],
        zones: Mapping[str, str] | None = None,
    ) -> list[Target]:
        """The sloppy preference list of `partition`: primaries that are `up`
        serve themselves; each down primary gets a fallback among the up nodes
        not yet on the list.

        A fallback is chosen by, in order: a zone not yet on the list; the
        down node's fallback plan (see :func:`_fallback_plan`), which spreads
        its replica slots evenly over all survivors instead of loading its ring
        neighbour; the rendezvous hash of (partition, down primary, candidate).
        Up primaries come first (ring order), then fallbacks in the order of
        the primaries they replace. Length: min(n, distinct owners, len(up));
        no node appears twice.
        """
        primaries = self.primaries(partition, n, zones)
        up_nodes = frozenset(up)
        chosen = [Target(node, node, "primary") for node in primaries if node in up_nodes]
        down_primaries = [node for node in primaries if node not in up_nodes]
        if not down_primaries:
            return chosen
        zone_of = _single_zone if zones is None else _zone_lookup(zones)
        zone_items = None if zones is None else tuple(sorted(zones.items()))
        spare = sorted(up_nodes.difference(primaries))
        for down in down_primaries:
            if not spare:
                break
            planned = _fallback_plan(self, n, down, up_nodes, zone_items).get(partition)
            zones_on_list = {zone_of(target.node) for target in chosen}
            fallback = max(
                spare,
                key=lambda c: (
                    zone_of(c) not in zones_on_list,
                    c == planned,
                    _rendezvous(partition, down, c),
                    c,
                ),
            )
            spare.remove(fallback)
            chosen.append(Target(fallback, down, "fallback"))
        return chosen

    @cached_property
    def _distinct_owners(self) -> frozenset[str]:
        return frozenset(self.owners)

    def counts(self) -> dict[str, int]:
        """Partitions owned per node (only nodes owning at least one)."""
        return dict(Counter(self.owners))

    def balance(self) -> float:
        """Largest owner's count over the mean count of the owners: 1.0 is perfect."""
        counts = self.counts()
        return max(counts.values()) * len(counts) / self.ring_size


@lru_cache(maxsize=128)
def _fallback_plan(
    ring: Ring,
    n: int,
    down: str,
    up: frozenset[str],
    zone_items: tuple[tuple[str, str], ...] | None,
) -> dict[int, str]:
    """partition -> preferred fallback for each replica slot of `down`.

    Independent rendezvous choices leave the busiest survivor with about twice
    its fair share (24 slots over 7 survivors is a balls-into-bins draw); so
    the slots are assigned in partition order by rendezvous rank among the
    candidates still under the fair share, rounded up (consistent hashing with
    bounded loads); only zones, or a ring that leaves no other candidate, push
    a survivor above it. Deterministic; cached per (ring, n, down, up, zones).
    """
    zones = None if zone_items is None else dict(zone_items)
    zone_of = _single_zone if zones is None else _zone_lookup(zones)
    survivors = sorted(up - {down})
    slots = [
        (partition, primaries)
        for partition in range(ring.ring_size)
        if down in (primaries := ring.primaries(partition, n, zones))
    ]
    if not survivors:
        return {}
    cap = math.ceil(len(slots) / len(survivors))
    load: Counter[str] = Counter()
    plan: dict[int, str] = {}
    for partition, primaries in slots:
        zones_on_list = {zone_of(node) for node in primaries if node in up}
        candidates = [c for c in survivors if c not in primaries]
        if not candidates:
            continue
        best = max(
            candidates,
            key=lambda c: (
                zone_of(c) not in zones_on_list,
                load[c] < cap,
                _rendezvous(partition, down, c),
                c,
            ),
        )
        plan[partition] = best
        load[best] += 1
    return plan


def _single_zone(node: str) -> str:
    return DEFAULT_ZONE


def _zone_lookup(zones: Mapping[str, str]) -> Callable[[str], str]:
    """node -> zone; a node missing from the map is in the default zone, like
    a node started without ``--zone``."""

    def zone_of(node: str) -> str:
        return zones.get(node, DEFAULT_ZONE)

    return zone_of
