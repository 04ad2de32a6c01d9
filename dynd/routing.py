"""Where keys live under one cluster state: the pure part of placement.

riak_core's apl in one object: from a cluster state (and, per request, the set
of members judged up) it gives the primaries of a key partition, the sloppy
preference list of a key, the quorum sizes of a bucket and the partitions a
node owns. A state is immutable, so one `Routing` is built per state
(ClusterView.routing) and memoises what it computed; no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from common.errors import Rejected
from common.ring import Ring, Target, partition_of
from dynd import membership
from dynd.membership import BucketProps, ClusterState


class Quorums(NamedTuple):
    """What one request needs: N replicas asked, R replies or W acknowledgements, PR (PW)
    of them from the key's primaries."""

    n: int
    r: int
    w: int
    pr: int
    pw: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one key lives right now."""

    partition: int
    n: int
    targets: list[Target]
    extra: list[str]  # future owners of a partition in transfer: written, not counted


class Routing:
    """Ring, zones, primaries and (per set of up nodes) preference lists of one cluster
    state, memoised. Building them costs more than the rest of a request (the ring alone
    validates Q owners); the caches are bounded by Q x N values x the up-sets seen in one
    epoch."""

    MAX_PLACEMENTS = 65536  # (partition, n, up set) entries kept; cleared when exceeded
    MAX_BUCKETS = 4096  # bucket names kept (clients name any); cleared when exceeded

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.ring = membership.ring(state)
        self.zones = membership.zones(state)
        self.active_members = sum(1 for m in state.members.values()
                                  if m.status in ("valid", "leaving")) or 1
        self.claim_n = max(b.n for b in state.buckets.values())
        self._buckets: dict[str, BucketProps] = {}
        self._rings: dict[tuple[str, ...], Ring] = {self.ring.owners: self.ring}
        self._primaries: dict[tuple[int, int, tuple[str, ...]], tuple[str, ...]] = {}
        self._placements: dict[tuple[int, int, frozenset[str]],
                               tuple[tuple[Target, ...], tuple[str, ...]]] = {}

    def target_n(self) -> int:
        """The largest N of any bucket (claim_n: how many consecutive partitions claim
        keeps distinct), capped by the member count: the claim's diversity goal."""
        return min(self.claim_n, self.active_members)

    def primaries(self, partition: int, n: int | None = None,
                  owners: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The primary replicas of a key partition, zone-aware: the one rule every module
        uses. ``n`` defaults to target_n; ``owners`` picks another ring (the pre-commit or
        the planned one), default the effective ring of now."""
        n = n or self.target_n()
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

    def owned_partitions(self, node: str) -> set[int]:
        """Key partitions ``node`` is a primary replica for, in the current ring."""
        n = self.target_n()
        return {p for p in range(self.ring.ring_size) if node in self.primaries(p, n)}

    def bucket(self, name: str) -> BucketProps:
        """A bucket's properties (a bucket never set copies the default's: one copy per
        name and state, not one per request)."""
        props = self._buckets.get(name)
        if props is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._buckets.clear()
            props = self._buckets[name] = membership.bucket(self.state, name)
        return props

    def quorums(self, bucket: str, *, r: int | None = None, w: int | None = None,
                pr: int | None = None, pw: int | None = None) -> Quorums:
        """N, R, W, PR, PW for a request: bucket props or per-request overrides, R and W
        at most the bucket's N and PR (PW) at most the request's R (W), else Rejected;
        all capped by the member count."""
        props = self.bucket(bucket)
        n = min(props.n, self.active_members)
        r = r if r is not None else props.r
        w = w if w is not None else props.w
        pr = pr if pr is not None else props.pr
        pw = pw if pw is not None else props.pw
        if r > props.n or w > props.n:
            raise Rejected(f"r={r} w={w} exceed the bucket's n={props.n}")
        if pr > r or pw > w:
            raise Rejected(f"pr={pr} pw={pw} exceed r={r} w={w}: at most R replies (W "
                           f"acknowledgements) are counted")
        return Quorums(n, min(r, n), min(w, n), min(pr, r, n), min(pw, w, n))

    def placement(self, bucket: str, key: bytes, n: int, up: frozenset[str]) -> Placement:
        """A key's sloppy preference list among the ``up`` members, and the future owners
        of its partition (in transfer) that are not among the current primaries.

        A down primary left without a fallback (too few members up to give every one
        its own) stays on the list, after the others: being judged down is a guess (a node
        just restarted has heard no heartbeat yet; a survivor's beats come late while the
        gossip rounds go to a dead node), and asking costs one failed request where
        leaving it out would cost the quorum with two of three replicas up."""
        partition = partition_of(bucket, key, self.ring.ring_size)
        cache_key = (partition, n, up)
        found = self._placements.get(cache_key)
        if found is None:
            if len(self._placements) >= self.MAX_PLACEMENTS:
                self._placements.clear()
            listed = self.ring.preference_list(partition, n, up, self.zones)
            covered = {target.primary for target in listed}
            targets = (*listed, *(Target(node, node, "primary")
                                  for node in self.primaries(partition, n)
                                  if node not in covered))
            current = set(self.primaries(partition, n))
            extra = tuple(node for node in self.primaries(partition, n, self.state.next_owners)
                          if node not in current)
            found = self._placements[cache_key] = (targets, extra)
        return Placement(partition, n, list(found[0]), list(found[1]))

    def replacement(self, place: Placement, failed: Target, up: frozenset[str],
                    tried: set[str]) -> Target | None:
        """A fallback among ``up`` for a replica that just failed, not one already asked."""
        candidates = self.ring.preference_list(place.partition, place.n, up - tried, self.zones)
        for target in candidates:
            if target.node not in tried:
                return Target(target.node, failed.primary, "fallback")
        return None
