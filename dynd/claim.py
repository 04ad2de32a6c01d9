"""Ownership plans: who owns each of the Q partitions.

A plan must be
- deterministic: every node computes the same plan from the same inputs (no
  randomness; ties are broken by node id and a fixed hash);
- balanced: each node owns its target count, a whole number within one of
  its exact share (from tokens, else an even share), see :func:`targets`;
- diverse: any n consecutive partitions (wrapping) hold min(n, nodes)
  distinct nodes and min(n, zones) distinct zones wherever the counts allow
  it, so a key's n replicas land on n nodes in as many zones as exist;
- cheap to reach: from the current ownership, only close to the minimum
  number of partitions moves.

Approach (Riak's claim: incremental, check, else re-stripe): nodes under
their target take partitions, orphaned ones first, from nodes over target,
each at the spot that keeps its own partitions evenly spaced and the windows
diverse; then pairwise swaps repair the windows that are still not diverse.
If that misses a constraint a fresh striped plan meets, the fresh plan wins.
Cost grows as Q x moved partitions x n^2, and the repair has a fixed budget:
a join or leave takes milliseconds to a few tenths of a second for Q <= 1024
and up to 64 nodes (the sizes tested); plans the counts make infeasible
(uneven zones, n close to the node count) take up to a few seconds.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from common.ring import DEFAULT_ZONE, check_ring_size


class ClaimError(ValueError):
    """The members, tokens or current ownership cannot make a plan."""


@dataclass(frozen=True, slots=True)
class Claimant:
    """A member as claim sees it."""

    id: str
    zone: str = DEFAULT_ZONE
    tokens: int | None = None  # wanted partition count; None = an even share of what is left


def targets(ring_size: int, members: Sequence[Claimant]) -> dict[str, int]:
    """Partitions each member should own, summing to `ring_size`.

    Explicit tokens are exact wants (their sum may not exceed ring_size); the
    rest is shared evenly by members without tokens. If every member has
    tokens and they sum below ring_size, the remainder is shared in proportion
    to them (tokens act as weights). A share that is not whole is rounded down
    or up, the ups going to the largest remainders, then by node id.
    """
    check_ring_size(ring_size)
    _check_members(members)
    return _quota(ring_size, members, Counter()).settled()


def claim(
    ring_size: int,
    members: Sequence[Claimant],
    current: Sequence[str] | None,
    n: int,
) -> tuple[str, ...]:
    """The ownership plan for `members`, moving as little as possible from
    `current` (None for a new cluster). `n` is the replica count whose windows
    must be diverse (the largest bucket n). Entries of `current` that are not
    members (a removed or replaced node) are reassigned; to replace a node,
    pass `current` with the old id's partitions renamed to the new id, and
    claim keeps them. Counts are those of :func:`targets`, except that a
    round-up may go to a member that already owns it (still within one).

    Limits: ring_size as in check_ring_size; 1 <= n <= ring_size; at least one
    member, distinct ids; tokens >= 0 summing to at most ring_size; current of
    length ring_size.
    """
    check_ring_size(ring_size)
    _check_members(members)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= ring_size:
        raise ClaimError(f"n must be an int in 1..{ring_size}, got {n!r}")
    if current is not None:
        current = tuple(current)
        if len(current) != ring_size:
            raise ClaimError(f"current has {len(current)} owners, ring size is {ring_size}")
        if not all(isinstance(owner, str) for owner in current):
            raise ClaimError("current owners must be node id strings")
    member_ids = {member.id for member in members}
    kept = Counter(owner for owner in current or () if owner in member_ids)
    quota = _quota(ring_size, members, kept)
    want = quota.settled()
    windows = _Windows(ring_size, n, {member.id: member.zone for member in members}, want)
    if current is None or not kept:
        return tuple(_fresh(windows, members, want))
    plan = windows.repaired(_take_over(ring_size, quota, current, windows), current)
    missing = windows.total(plan)
    if missing == (0, 0):
        return tuple(plan)
    # Re-stripe only to meet a constraint the incremental plan misses; when
    # neither meets it (the counts forbid it), moving everything buys too little.
    fresh = _fresh(windows, members, want)
    return tuple(fresh if _meets_more(windows.total(fresh), missing) else plan)


def _meets_more(fresh: tuple[int, int], plan: tuple[int, int]) -> bool:
    """Whether `fresh` leaves fewer windows short of distinct nodes than `plan`
    (or as few, and fewer short of zones). A window short of distinct nodes
    puts two replicas of its keys on one node, so diversity wins over
    movement whenever the counts allow better."""
    return fresh < plan


def moves(old: Sequence[str], new: Sequence[str]) -> list[tuple[int, str, str]]:
    """(partition, from, to) for every partition whose owner changes."""
    if len(old) != len(new):
        raise ClaimError(f"cannot compare rings of {len(old)} and {len(new)} partitions")
    return [(p, a, b) for p, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]


def _check_members(members: Sequence[Claimant]) -> None:
    if not members:
        raise ClaimError("claim needs at least one member")
    seen: set[str] = set()
    for member in members:
        if not isinstance(member, Claimant):
            raise ClaimError(f"members must be Claimant, got {type(member).__name__}")
        if not isinstance(member.id, str) or not member.id:
            raise ClaimError(f"member id must be a non-empty string, got {member.id!r:.60}")
        if member.id in seen:
            raise ClaimError(f"duplicate member id {member.id!r}")
        seen.add(member.id)
        if not isinstance(member.zone, str) or not member.zone:
            raise ClaimError(f"zone of {member.id!r} must be a non-empty string")
        tokens = member.tokens
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or tokens < 0):
            raise ClaimError(f"tokens of {member.id!r} must be an int >= 0, got {tokens!r}")


def _shares(ring_size: int, members: Sequence[Claimant]) -> dict[str, Fraction]:
    """Exact (fractional) share of each member, summing to ring_size."""
    explicit = sum(m.tokens for m in members if m.tokens is not None)
    if explicit > ring_size:
        raise ClaimError(f"tokens sum to {explicit}, more than the {ring_size} partitions")
    even = [m for m in members if m.tokens is None]
    if even:
        rest = Fraction(ring_size - explicit, len(even))
        return {m.id: Fraction(m.tokens) if m.tokens is not None else rest for m in members}
    if explicit == 0:
        raise ClaimError("every member has 0 tokens: nobody can own the ring")
    return {m.id: Fraction(m.tokens * ring_size, explicit) for m in members}  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class _Quota:
    """Whole partition counts: each member gets the floor of its share; the
    `free_ups` remaining partitions go one each to members whose share has a
    fraction (`may_up`). Members that already own more than the floor got
    their round-up in `base` (each such one saves a move)."""

    base: dict[str, int]
    free_ups: int
    may_up: tuple[str, ...]  # best claim to a free round-up first

    def settled(self) -> dict[str, int]:
        """The counts with the free round-ups handed out in may_up order."""
        counts = dict(self.base)
        for node in self.may_up[: self.free_ups]:
            counts[node] += 1
        return dict(sorted(counts.items()))


def _quota(ring_size: int, members: Sequence[Claimant], kept: Counter[str]) -> _Quota:
    shares = _shares(ring_size, members)
    base = {node: math.floor(share) for node, share in shares.items()}
    ups = ring_size - sum(base.values())
    ranked = sorted(
        (node for node, share in shares.items() if share != base[node]),
        key=lambda node: (kept[node] <= base[node], base[node] - shares[node], node),
    )
    owning_more = [node for node in ranked[:ups] if kept[node] > base[node]]
    for node in owning_more:
        base[node] += 1
    return _Quota(base, ups - len(owning_more), tuple(ranked[len(owning_more):]))


def _spread(counts: Sequence[tuple[str, int]], length: int) -> list[str]:
    """`length` labels, each label `count` times, as evenly spaced as possible
    round the ring: the j-th copy of the r-th of k labels, with count c, sits
    near (j + (r + 1/2) / k) * length / c. The phase (r + 1/2) / k staggers the
    labels' first copies, so they do not bunch up where the ring wraps."""
    k = len(counts)
    slots = [
        (Fraction((2 * j * k + 2 * rank + 1) * length, 2 * k * count), rank, label)
        for rank, (label, count) in enumerate(counts)
        for j in range(count)
    ]
    slots.sort()
    return [label for _, _, label in slots]


def _fresh(windows: _Windows, members: Sequence[Claimant], want: dict[str, int]) -> list[str]:
    """A plan that ignores the current one: the better (fewer missing nodes,
    then zones) of two repaired stripes, one spreading zones first and then
    nodes within each zone, one spreading nodes ordered round-robin over the
    zones. Equal nodes in equal zones come out as a plain stripe
    (a1 b1 c1 a2 b2 c2 ...) either way; they differ when zones or tokens are
    uneven."""
    zone_of = {member.id: member.zone for member in members}
    by_zone: dict[str, list[tuple[str, int]]] = {}
    for node, count in want.items():
        if count:
            by_zone.setdefault(zone_of[node], []).append((node, count))
    zone_counts = [(zone, sum(c for _, c in nodes)) for zone, nodes in sorted(by_zone.items())]
    node_queues = {zone: iter(_spread(by_zone[zone], count)) for zone, count in zone_counts}
    zones_first = [next(node_queues[zone]) for zone in _spread(zone_counts, windows.ring_size)]
    round_robin = [
        nodes[rank]
        for rank in range(max(len(nodes) for nodes in by_zone.values()))
        for _, nodes in sorted(by_zone.items())
        if rank < len(nodes)
    ]
    nodes_first = _spread(round_robin, windows.ring_size)
    candidates = [windows.repaired(plan, None) for plan in (zones_first, nodes_first)]
    return min(candidates, key=windows.total)


# Bounds on the swap repair: passes over the windows that fall short, and
# swaps weighed in all (about 10 us each with n = 3); feasible plans need far
# fewer, infeasible ones (uneven zones, huge tokens) would otherwise grind.
REPAIR_PASSES = 8
REPAIR_BUDGET = 40_000


class _Windows:
    """Diversity of the n-partition windows of a ring under construction.

    A window's cost is (missing nodes, missing zones): how far it falls short
    of min(n, nodes with partitions) distinct nodes and min(n, zones with
    partitions) distinct zones. Unassigned partitions (None) count as nothing.
    """

    def __init__(self, ring_size: int, n: int, zone_of: dict[str, str], want: dict[str, int]):
        self.ring_size = ring_size
        self.n = n
        self.zone_of = zone_of
        active = [node for node, count in want.items() if count]
        self.node_need = min(n, len(active))
        self.zone_need = min(n, len({zone_of[node] for node in active}))

    def cost(self, owners: Sequence[str | None], start: int) -> tuple[int, int]:
        window = {owners[(start + i) % self.ring_size] for i in range(self.n)}
        window.discard(None)
        zones = {self.zone_of[node] for node in window}  # type: ignore[index]
        return (max(0, self.node_need - len(window)), max(0, self.zone_need - len(zones)))

    def around(self, owners: Sequence[str | None], positions: Sequence[int]) -> tuple[int, int]:
        """Summed cost of the windows containing any of `positions`."""
        starts = {(p - i) % self.ring_size for p in positions for i in range(self.n)}
        missing_nodes = missing_zones = 0
        for start in starts:
            nodes, zones = self.cost(owners, start)
            missing_nodes += nodes
            missing_zones += zones
        return missing_nodes, missing_zones

    def total(self, owners: Sequence[str | None]) -> tuple[int, int]:
        return self.around(owners, range(self.ring_size))

    def repaired(self, owners: list[str], current: Sequence[str] | None) -> list[str]:
        """Swap pairs of partitions while that lowers (missing nodes, missing
        zones, partitions moved away from `current`), lexicographically.
        Swaps keep every count, so balance is untouched. Effort is bounded:
        at most REPAIR_PASSES passes over the windows that fall short and
        REPAIR_BUDGET swaps weighed, which only counts limits can exhaust."""
        size, n = self.ring_size, self.n
        budget = REPAIR_BUDGET

        def moved(position: int) -> int:
            return 0 if current is None else int(owners[position] != current[position])

        for _ in range(REPAIR_PASSES):
            improved = False
            for start in range(size):
                missing = self.cost(owners, start)
                if missing == (0, 0):
                    continue
                zones_only = missing[0] == 0
                for p in [(start + offset) % size for offset in range(n)]:
                    best: tuple[tuple[int, int, int], int] | None = None
                    for q in range(size):
                        if owners[q] == owners[p] or self._clashes(owners, p, q, zones_only):
                            continue
                        budget -= 1
                        if budget < 0:
                            return owners
                        before = (*self.around(owners, (p, q)), moved(p) + moved(q))
                        owners[p], owners[q] = owners[q], owners[p]
                        after = (*self.around(owners, (p, q)), moved(p) + moved(q))
                        owners[p], owners[q] = owners[q], owners[p]
                        delta = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
                        if delta < (0, 0, 0) and (best is None or delta < best[0]):
                            best = (delta, q)
                    if best is not None:
                        q = best[1]
                        owners[p], owners[q] = owners[q], owners[p]
                        improved = True
            if not improved:
                break
        return owners

    def _clashes(self, owners: Sequence[str], p: int, q: int, zones_too: bool) -> bool:
        """Cheap pre-check of swapping p and q: whether either node would land
        within n-1 of itself while every window needs n distinct nodes (or,
        with `zones_too`, of its zone while every window needs n zones). Such
        a swap nearly never pays off, and skipping it keeps repair fast."""
        size, n = self.ring_size, self.n
        nodes_strict = self.node_need == n
        zones_strict = zones_too and self.zone_need == n
        if not (nodes_strict or zones_strict):
            return False
        for node, here, leaves in ((owners[p], q, p), (owners[q], p, q)):
            zone = self.zone_of[node]
            for d in (*range(1 - n, 0), *range(1, n)):
                r = (here + d) % size
                other = owners[here] if r == leaves else owners[r]  # after the swap
                if (nodes_strict and other == node) or (
                    zones_strict and self.zone_of[other] == zone
                ):
                    return True
        return False


def _tiebreak(partition: int, node: str) -> int:
    """Fixed pseudo-random order among equally good spots, so that takers do
    not all crowd the low partitions."""
    digest = hashlib.blake2b(f"{partition}:{node}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def _take_over(
    ring_size: int, quota: _Quota, current: Sequence[str], windows: _Windows
) -> list[str]:
    """Start from `current` and let nodes under quota take, one partition at
    a time, first the orphaned partitions (the one the fewest takers can hold
    without repeating themselves within n first), then partitions of nodes
    over quota (the taker with the largest deficit first). Free round-ups go
    to whichever eligible node fits an orphan best. A taker's spot is ranked
    by the change in (missing nodes, missing zones) of the windows around it,
    then by distance from its own partitions up to its ideal spacing (so it
    ends up evenly spread), then by a fixed hash."""
    n = windows.n
    base = quota.base
    free_ups = quota.free_ups
    owners: list[str | None] = [owner if owner in base else None for owner in current]
    have = Counter(owner for owner in owners if owner is not None)
    excess = {node: have[node] - count for node, count in base.items() if have[node] > count}
    deficit = {node: count - have[node] for node, count in base.items() if have[node] < count}
    may_up = set(quota.may_up)
    mine = {node: [p for p, owner in enumerate(owners) if owner == node] for node in base}
    # Diversity change of a taker taking p; only a take within n-1 of p
    # changes it, so each take invalidates just those entries.
    known: dict[str, dict[int, tuple[int, int]]] = {}

    def score(taker: str, p: int) -> tuple[int, ...]:
        changes = known.setdefault(taker, {})
        change = changes.get(p)
        if change is None:
            before = windows.around(owners, (p,))
            previous, owners[p] = owners[p], taker
            after = windows.around(owners, (p,))
            owners[p] = previous
            change = changes[p] = (after[0] - before[0], after[1] - before[1])
        spacing = ring_size // (base[taker] + (taker in may_up))
        gap = _distance_to_nearest(mine[taker], p, ring_size)
        return (*change, -min(gap, spacing), _tiebreak(p, taker))

    while deficit or free_ups:
        takers = sorted(deficit.keys() | (may_up if free_ups else set()))
        holes = [p for p, owner in enumerate(owners) if owner is None]
        if holes:
            spot = min(
                holes, key=lambda p: (_holders(mine, takers, p, n, ring_size), _tiebreak(p, ""))
            )
            taker = min(takers, key=lambda t: score(t, spot))
        else:
            if deficit:
                takers = [min(deficit, key=lambda node: (-deficit[node], node))]
            spots = [p for p, owner in enumerate(owners) if owner in excess]
            taker, spot = min(
                ((t, p) for t in takers for p in spots), key=lambda pair: score(*pair)
            )
        donor = owners[spot]
        if donor is not None:
            excess[donor] -= 1
            if not excess[donor]:
                del excess[donor]
            mine[donor].remove(spot)
        owners[spot] = taker
        insort(mine[taker], spot)
        for changes in known.values():
            for offset in range(1 - n, n):
                changes.pop((spot + offset) % ring_size, None)
        if taker in deficit:
            deficit[taker] -= 1
            if not deficit[taker]:
                del deficit[taker]
        else:
            free_ups -= 1
            may_up.discard(taker)
            if not free_ups:
                may_up.clear()
    return owners  # type: ignore[return-value]  # every None was taken: deficits == orphans


def _holders(mine: dict[str, list[int]], takers: list[str], p: int, n: int, size: int) -> int:
    """How many takers could hold p without owning another partition within n."""
    return sum(_distance_to_nearest(mine[taker], p, size) >= n for taker in takers)


def _distance_to_nearest(sorted_positions: list[int], p: int, ring_size: int) -> int:
    """Ring distance from p to the nearest of sorted_positions (ring_size if none)."""
    if not sorted_positions:
        return ring_size
    i = bisect_left(sorted_positions, p)
    after = sorted_positions[i % len(sorted_positions)]
    before = sorted_positions[i - 1]
    return min((after - p) % ring_size, (p - before) % ring_size)
