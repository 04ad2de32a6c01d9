"""The gossiped cluster state: members, ring epochs, staged changes, bucket properties.

Riak's staged-change model: operators stage joins, leaves, removals,
replacements and token changes, look at the plan (which partitions move
where), then commit. A commit bumps the epoch and records, for that epoch, the
owners before and after and one transfer per partition that changes owner.
Until a partition's transfer completes its old owner keeps serving it and its
new owner also receives writes (the node writes each key to the primaries of
``next_owners`` too), so no acknowledged write is lost by a membership change.

Every node keeps its own copy and gossip merges copies with ``reconcile``,
a semilattice join (commutative, associative, idempotent), so copies converge
whatever the order, duplication or loss of gossip messages. Every local update
below only moves a state up in that order; each field is a register with its
own version:

- ring fields (epoch, owners, next_owners, transfers): the higher epoch wins;
  at equal epochs ``done`` is the union. Two different commits of one epoch
  cannot happen while commits are made on one node at a time; should they,
  the one with the higher digest wins everywhere.
- staged changes: the higher (staged_version, staged_by) wins.
- buckets: per bucket the higher (version, writer) wins.
- members: per id two registers. What the cluster decides (status, tokens)
  carries ``status_version``, bumped by every stage/commit/settle that
  changes it. What the node itself announces (addr, zone, whether it holds
  hints) is ordered by (incarnation, addr_version): the higher incarnation
  always wins.

Members are never deleted (a deleted entry would come back with the next
gossip); a removed member stays listed as ``removed``.

Limits (``MembershipError`` beyond them): node ids, cluster id and zones are
1..128 printable characters without whitespace; addresses up to 255; at most
MAX_MEMBERS members (removed ones included) and MAX_BUCKETS buckets; bucket
names 1..64 UTF-8 bytes; 1 <= r, w <= n <= MAX_N; counters below 2**63.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import cbor2

from common.limits import MAX_N, MAX_TTL_SECONDS
from common.ring import Ring, check_ring_size
from dynd import auth as auth_model
from dynd.auth import AuthError, AuthState
from dynd.claim import Claimant, ClaimError, claim

STATUSES = ("joining", "valid", "leaving", "removed")
CHANGE_KINDS = ("join", "leave", "remove", "replace", "tokens")
DEFAULT_BUCKET = "default"
WIRE_FORMAT = 1
MAX_MEMBERS = 1024
MAX_BUCKETS = 1024
MAX_NAME_CHARS = 128
MAX_ADDR_CHARS = 255
MAX_BUCKET_NAME_BYTES = 64
MAX_COUNTER = 2**63 - 1
MAX_STAGED = 2 * MAX_MEMBERS  # one membership change and one tokens change per member
MAX_FEATURES = 64  # names in a state's activated features (a few exist)


class MembershipError(ValueError):
    """A change, plan or state that is not allowed, or a malformed state from the wire."""


class ForeignCluster(MembershipError):
    """Two states of different clusters were asked to merge."""


K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping that iterates in key order (deterministic output)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(sorted(dict(items).items()))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True)
class Member:
    """One node as the cluster knows it.

    ``tokens`` is the number of partitions the operator wants it to own (None:
    an even share). ``incarnation`` changes when the node lost its data and
    came back (it is part of its identity as a writer). ``hints``: the node said it
    holds undelivered hints (announce_hints); a leaver is not removed while it does.
    The two versions order concurrent updates (see the module docstring); callers
    leave them at 0, the functions here maintain them.
    """

    id: str
    addr: str
    zone: str
    status: str
    tokens: int | None
    incarnation: int
    status_version: int = 0
    addr_version: int = 0
    hints: bool = False


@dataclass(frozen=True)
class BucketProps:
    name: str
    n: int = 3
    r: int = 2
    w: int = 2
    version: int = 0
    writer: str = ""
    pr: int = 0  # primary quorums (Riak's): replies / acks that must come from primaries
    pw: int = 0
    ttl: int = 0  # seconds: the expiry of a write that names none (0: writes never expire)
    grace: int = 0  # seconds a dead object is kept before a reap (0: the node's tombstone grace)


@dataclass(frozen=True)
class Change:
    """A staged change. ``arg``: NEW's id for replace, the count for tokens, else None."""

    kind: str
    node: str
    arg: str | int | None = None


@dataclass(frozen=True)
class Transfer:
    """Partition moving to ``target``, which pulls it from ``sources`` in that order.

    The old owner comes first, then the partition's other replicas, so the
    target can still complete when the old owner is dead. Empty when no
    replica survives (a forced removal with n=1): such a transfer is done at
    commit, nothing can be copied.
    """

    partition: int
    target: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class ClusterState:
    cluster_id: str
    ring_size: int
    epoch: int
    members: FrozenMap[str, Member]
    owners: tuple[str, ...]  # as of the commit that created this epoch
    next_owners: tuple[str, ...]  # once every transfer of this epoch completed
    transfers: tuple[Transfer, ...]  # sorted by partition
    done: frozenset[int]  # partitions whose transfer completed
    staged: tuple[Change, ...]
    staged_version: int
    staged_by: str
    buckets: FrozenMap[str, BucketProps]
    # Features every non-removed member reported supporting once (dynd/features.py):
    # grow-only, so a member down for a while does not switch one off again.
    features: frozenset[str] = frozenset()
    # Roles, grants and memberships (dynd/auth.py): merged by their own registers.
    auth: AuthState = auth_model.EMPTY


@dataclass(frozen=True)
class Plan:
    """What a commit would do: the staged changes, the owners after every transfer,
    the transfers, and how many partitions each member will own."""

    changes: tuple[Change, ...]
    next_owners: tuple[str, ...]
    transfers: tuple[Transfer, ...]
    owners_after: Mapping[str, int]


# ---------------------------------------------------------------- validation


def _check_int(value: Any, what: str, low: int = 0, high: int = MAX_COUNTER) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MembershipError(f"{what} must be an integer in [{low}, {high}], got {value!r:.80}")
    return value


def _check_name(value: Any, what: str, *, empty_ok: bool = False,
                max_chars: int = MAX_NAME_CHARS) -> str:
    """Ids, zones, addresses: printable, no whitespace, bounded."""
    if not isinstance(value, str):
        raise MembershipError(f"{what} must be a string, got {value!r:.80}")
    if value == "" and empty_ok:
        return value
    if not 1 <= len(value) <= max_chars or not value.isprintable() or any(
            c.isspace() for c in value):
        raise MembershipError(
            f"{what} must be 1..{max_chars} printable characters without spaces, "
            f"got {value!r:.80}")
    return value


def _check_tokens(value: Any, ring_size: int, what: str) -> int | None:
    return None if value is None else _check_int(value, what, 1, ring_size)


def _check_member(member: Any, ring_size: int) -> Member:
    if not isinstance(member, Member):
        raise MembershipError(f"expected a Member, got {member!r:.80}")
    _check_name(member.id, "member id")
    _check_name(member.addr, f"address of {member.id}", max_chars=MAX_ADDR_CHARS)
    _check_name(member.zone, f"zone of {member.id}")
    if member.status not in STATUSES:
        raise MembershipError(f"status of {member.id} must be one of {STATUSES}, "
                              f"got {member.status!r:.80}")
    _check_tokens(member.tokens, ring_size, f"tokens of {member.id}")
    _check_int(member.incarnation, f"incarnation of {member.id}")
    _check_int(member.status_version, f"status_version of {member.id}")
    _check_int(member.addr_version, f"addr_version of {member.id}")
    if not isinstance(member.hints, bool):
        raise MembershipError(f"hints of {member.id} must be a boolean, got {member.hints!r:.80}")
    return member


def _check_bucket_name(name: Any) -> str:
    try:
        size = len(name.encode("utf-8")) if isinstance(name, str) else 0
    except UnicodeEncodeError:
        size = 0
    if not 1 <= size <= MAX_BUCKET_NAME_BYTES:
        raise MembershipError(
            f"bucket name must be 1..{MAX_BUCKET_NAME_BYTES} UTF-8 bytes, got {name!r:.80}")
    return name


def _check_nrw(n: Any, r: Any, w: Any, pr: Any = 0, pw: Any = 0) -> None:
    _check_int(n, "n", 1, MAX_N)
    _check_int(r, "r", 1, n)
    _check_int(w, "w", 1, n)
    _check_int(pr, "pr", 0, r)
    _check_int(pw, "pw", 0, w)


def _check_change(change: Any, ring_size: int) -> Change:
    """Shape only; whether it applies to the members is `_check_applicable`."""
    if not isinstance(change, Change):
        raise MembershipError(f"expected a Change, got {change!r:.80}")
    if change.kind not in CHANGE_KINDS:
        raise MembershipError(f"change kind must be one of {CHANGE_KINDS}, "
                              f"got {change.kind!r:.80}")
    _check_name(change.node, f"node of {change.kind}")
    if change.kind == "replace":
        _check_name(change.arg, "replacement node id")
    elif change.kind == "tokens":
        _check_int(change.arg, f"tokens of {change.node}", 1, ring_size)
    elif change.arg is not None:
        raise MembershipError(f"{change.kind} takes no argument, got {change.arg!r:.80}")
    return change


def _valid_after(members: Mapping[str, Member], staged: Sequence[Change]) -> set[str]:
    """Ids that will be valid members once the staged changes are committed."""
    valid = {m.id for m in members.values() if m.status == "valid"}
    for change in staged:
        if change.kind == "join":
            valid.add(change.node)
        elif change.kind in ("leave", "remove"):
            valid.discard(change.node)
        elif change.kind == "replace":
            valid.discard(change.node)
            valid.add(str(change.arg))
    return valid


def _check_applicable(members: Mapping[str, Member], staged: Sequence[Change]) -> None:
    """Every staged change fits the members as they are now, and one valid member stays."""
    replacing: dict[str, str] = {}
    for change in staged:
        member = members.get(change.node)
        if member is None:
            raise MembershipError(f"unknown node {change.node!r}")
        status = member.status
        if change.kind == "join" and status != "joining":
            raise MembershipError(f"cannot join {change.node}: it is already {status}")
        if change.kind in ("leave", "replace") and status != "valid":
            raise MembershipError(f"cannot {change.kind} {change.node}: it is {status}, "
                                  "not valid")
        if change.kind == "remove" and status == "removed" and not member.hints:
            # A removed node that still says it holds hints may be removed again: that
            # gives them up (see commit), as for a node removed while down.
            raise MembershipError(f"cannot remove {change.node}: it is already removed")
        if change.kind == "tokens" and status not in ("joining", "valid"):
            raise MembershipError(f"cannot set tokens of {change.node}: it is {status}")
        if change.kind == "replace":
            new = str(change.arg)
            new_member = members.get(new)
            if new == change.node:
                raise MembershipError(f"cannot replace {new} by itself")
            if new_member is None or new_member.status != "joining":
                raise MembershipError(
                    f"cannot replace {change.node} by {new}: {new} must have joined first "
                    f"(it is {'unknown' if new_member is None else new_member.status})")
            if new in replacing:
                raise MembershipError(
                    f"{new} already replaces {replacing[new]}: one replacement per node")
            replacing[new] = change.node
    for change in staged:
        if change.kind in ("leave", "remove") and change.node in replacing:
            raise MembershipError(f"cannot {change.kind} {change.node}: it replaces "
                                  f"{replacing[change.node]}")
    if not _valid_after(members, staged):
        raise MembershipError("cannot leave or remove the last valid member")


# --------------------------------------------------------------- ring views


def new_cluster(cluster_id: str, member: Member, ring_size: int) -> ClusterState:
    """A single-node cluster: ``member`` (status valid) owns every partition and the
    ``default`` bucket is n=3, r=2, w=2."""
    _check_name(cluster_id, "cluster id")
    try:
        check_ring_size(ring_size)
    except ValueError as e:
        raise MembershipError(str(e)) from e
    _check_member(member, ring_size)
    if member.status != "valid":
        raise MembershipError(f"the founding member must be valid, not {member.status}")
    owners = (member.id,) * ring_size
    return ClusterState(
        cluster_id=cluster_id, ring_size=ring_size, epoch=0,
        members=FrozenMap({member.id: member}), owners=owners, next_owners=owners,
        transfers=(), done=frozenset(), staged=(), staged_version=0, staged_by="",
        buckets=FrozenMap({DEFAULT_BUCKET: BucketProps(DEFAULT_BUCKET)}))


def effective_owners(state: ClusterState) -> tuple[str, ...]:
    """Who owns each partition now: its target once its transfer is done, else its old owner."""
    return tuple(new if p in state.done else old
                 for p, (old, new) in enumerate(zip(state.owners, state.next_owners, strict=True)))


def pending_transfers(state: ClusterState) -> list[Transfer]:
    return [t for t in state.transfers if t.partition not in state.done]


def ring(state: ClusterState) -> Ring:
    """The ring requests are routed by: effective owners."""
    return Ring(state.ring_size, effective_owners(state))


def zones(state: ClusterState) -> dict[str, str]:
    """node -> zone of every member: the map to give `Ring.primaries`, so that every
    node agrees on where replicas live."""
    return {m.id: m.zone for m in state.members.values()}


def _transfer_of(state: ClusterState, partition: int) -> Transfer | None:
    _check_int(partition, "partition", 0, state.ring_size - 1)
    i = bisect_left(state.transfers, partition, key=lambda t: t.partition)
    if i < len(state.transfers) and state.transfers[i].partition == partition:
        return state.transfers[i]
    return None


def _needed(state: ClusterState, node: str) -> bool:
    return any(node == t.target or node in t.sources for t in pending_transfers(state))


def _left(state: ClusterState, member: Member) -> bool:
    """A leaver is gone once no pending transfer needs it and it holds no hints: hints
    it delivered after a reap could bring a deleted value back."""
    return member.status == "leaving" and not _needed(state, member.id) and not member.hints


def member_status(state: ClusterState, node: str) -> str:
    """A member's status, with a leaver counted as removed once it has left (see _left),
    even before `settle` recorded it."""
    member = state.members.get(node)
    if member is None:
        raise MembershipError(f"unknown node {node!r}")
    if _left(state, member):
        return "removed"
    return member.status


def takes_replicas(state: ClusterState, node: str) -> bool:
    """The node is a member that owns, or will own, partitions: not removed, and not a
    leaver whose transfers are all done (it may still hold hints of its own to deliver).
    Hints held for a node that does not go to the key's primaries instead."""
    member = state.members.get(node)
    if member is None or member.status == "removed":
        return False
    return member.status != "leaving" or _needed(state, node)


def may_hold_hints(state: ClusterState, node: str) -> bool:
    """The node has to be asked before a tombstone is reaped: a member that is not
    removed, or a removed one whose last word was that it holds hints (it said so after
    its removal was recorded, or was removed by force while down)."""
    return member_status(state, node) != "removed" or state.members[node].hints


def announce_hints(state: ClusterState, node: str, holding: bool) -> ClusterState:
    """The node itself says whether it holds undelivered hints (announced register)."""
    member = state.members.get(node)
    if member is None:
        raise MembershipError(f"unknown node {node!r}")
    if member.hints == holding:
        return state
    updated = replace(member, hints=holding, addr_version=member.addr_version + 1)
    return replace(state, members=FrozenMap({**state.members, node: updated}))


def settle(state: ClusterState) -> ClusterState:
    """Record leaving members that have left (see _left) as removed."""
    settled = {m.id: _bump_status(m, status="removed") for m in state.members.values()
               if _left(state, m)}
    if not settled:
        return state
    return replace(state, members=FrozenMap({**state.members, **settled}))


def _bump_status(member: Member, **fields: Any) -> Member:
    return replace(member, status_version=member.status_version + 1, **fields)


# ---------------------------------------------------------- staged changes


def _membership_slot(change: Change) -> tuple[bool, str]:
    """A node has at most one staged membership change and one staged tokens change."""
    return change.kind == "tokens", change.node


def stage(state: ClusterState, change: Change, by: str,
          member: Member | None = None) -> ClusterState:
    """Stage ``change`` (made on node ``by``); a later change of the same node replaces
    the earlier one.

    A join needs ``member``, the joining node's own record (addr, zone, tokens,
    incarnation): it is listed as ``joining`` at once so gossip reaches it. A
    removed id may join again. An id the cluster already knows joins as a new life,
    under an incarnation above the one recorded (the node adopts it): heartbeats
    rank by (incarnation, counter) and dots are minted as id.incarnation, so a
    rejoined node with a wiped data dir would otherwise go unheard behind its old
    beats and mint its old dots again. Leave and replace need a valid member, remove a
    non-removed one, replace's NEW must have joined first; tokens takes
    1..ring_size. The last valid member can neither leave nor be removed.
    """
    state = settle(state)
    _check_change(change, state.ring_size)
    _check_name(by, "staging node")
    members = state.members
    if change.kind == "join":
        if member is None or member.id != change.node:
            raise MembershipError(f"joining {change.node} needs its member record")
        _check_member(member, state.ring_size)
        known = members.get(member.id)
        if known is None:
            if len(members) >= MAX_MEMBERS:
                raise MembershipError(f"too many members (limit {MAX_MEMBERS})")
            joining = replace(member, status="joining", status_version=0, addr_version=0)
        elif known.status in ("joining", "removed"):
            joining = replace(
                member, status="joining", status_version=known.status_version + 1,
                incarnation=max(known.incarnation + 1, member.incarnation),
                addr_version=known.addr_version + 1)
        else:
            raise MembershipError(f"cannot join {member.id}: it is already {known.status}")
        members = FrozenMap({**members, member.id: joining})
    elif member is not None:
        raise MembershipError(f"{change.kind} takes no member record")
    slot = _membership_slot(change)
    staged = tuple(c for c in state.staged if _membership_slot(c) != slot) + (change,)
    _check_applicable(members, staged)
    return replace(state, members=members, staged=staged,
                   staged_version=state.staged_version + 1, staged_by=by)


def clear(state: ClusterState, by: str) -> ClusterState:
    """Drop every staged change and undo the joins, as Riak's ``cluster clear`` does.

    A joining member exists only for its staged join: kept as ``joining`` with
    nothing staged it could neither be committed nor leave, so it becomes
    ``removed`` (members are never deleted) and may ``cluster join`` again.
    """
    _check_name(by, "clearing node")
    undone = {m.id: _bump_status(m, status="removed") for m in state.members.values()
              if m.status == "joining"}
    return replace(state, members=FrozenMap({**state.members, **undone}), staged=(),
                   staged_version=state.staged_version + 1, staged_by=by)


def _sources(current: Ring, partition: int, target: str, n: int, zone_map: Mapping[str, str],
             gone: set[str]) -> tuple[str, ...]:
    """Where the partition's data is now: its replicas (old owner first), minus the
    target and nodes that are gone."""
    return tuple(node for node in current.primaries(partition, n, zone_map)
                 if node != target and node not in gone)


def plan(state: ClusterState, n: int) -> Plan:
    """Compute what committing the staged changes would do, for ``n`` replicas per key.

    Claim runs over the members valid after the changes, starting from the
    effective owners, where a replaced node's partitions are first given to
    its replacement. Refused while the current epoch still has pending
    transfers: one reshuffle at a time keeps every transfer's sources valid.
    ``n`` (1..MAX_N, normally the largest bucket n) is capped at the ring size.
    With nothing staged the plan is empty (no change, no transfer: the owners once
    the current epoch's transfers are done), so an operator can always look.
    """
    state = settle(state)
    n = min(_check_int(n, "n", 1, MAX_N), state.ring_size)
    if not state.staged:
        valid = _valid_after(state.members, ())
        return Plan((), state.next_owners, (), _owner_counts(valid, state.next_owners))
    pending = pending_transfers(state)
    if pending:
        raise MembershipError(f"transfers of epoch {state.epoch} still pending "
                              f"({len(pending)} left)")
    _check_applicable(state.members, state.staged)
    tokens = {m.id: m.tokens for m in state.members.values()}
    replaced = {}
    gone = {m.id for m in state.members.values() if m.status == "removed"}
    for change in state.staged:
        if change.kind == "tokens":
            tokens[change.node] = change.arg
        elif change.kind == "replace":
            replaced[change.node] = str(change.arg)
        elif change.kind == "remove":
            gone.add(change.node)
    claimants = [Claimant(node, state.members[node].zone, tokens[node])
                 for node in sorted(_valid_after(state.members, state.staged))]
    current = effective_owners(state)
    current_ring, zone_map = Ring(state.ring_size, current), zones(state)
    try:
        next_owners = tuple(claim(state.ring_size, claimants,
                                  [replaced.get(o, o) for o in current], n))
    except ClaimError as e:
        raise MembershipError(f"cannot plan: {e}") from e
    transfers = tuple(
        Transfer(p, new, _sources(current_ring, p, new, n, zone_map, gone))
        for p, (old, new) in enumerate(zip(current, next_owners, strict=True)) if old != new)
    return Plan(state.staged, next_owners, transfers,
                _owner_counts((c.id for c in claimants), next_owners))


def _owner_counts(nodes: Iterable[str], owners: Sequence[str]) -> FrozenMap[str, int]:
    """Partitions per owner, every one of ``nodes`` listed (0 when it owns none)."""
    counts = dict.fromkeys(nodes, 0)
    for owner in owners:
        counts[owner] = counts.get(owner, 0) + 1
    return FrozenMap(counts)


def commit(state: ClusterState, n: int, by: str) -> ClusterState:
    """Apply the plan as epoch + 1 (made on node ``by``).

    Joining members become valid, leaving ones leaving (removed once their
    partitions moved and they hold no hints), removed ones removed at once (the
    hints they may hold given up); a replaced node leaves,
    its replacement becomes valid. Refused with nothing staged: an epoch that
    changes nothing would only make every node re-check its ring.
    """
    _check_name(by, "committing node")
    if not state.staged:
        raise MembershipError("nothing staged")
    state = settle(state)
    planned = plan(state, n)
    members = dict(state.members)
    for change in planned.changes:
        node = members[change.node]
        if change.kind == "join":
            members[node.id] = _bump_status(node, status="valid")
        elif change.kind == "leave":
            members[node.id] = _bump_status(node, status="leaving")
        elif change.kind == "remove":
            # Its hints are given up with it: were they still said to be held, a node
            # removed while down would be asked before every reap, forever. Should it
            # answer again, it says so anew (a higher addr_version) and is asked.
            members[node.id] = replace(_bump_status(node, status="removed"), hints=False,
                                       addr_version=node.addr_version + 1)
        elif change.kind == "replace":
            members[node.id] = _bump_status(node, status="leaving")
            new = members[str(change.arg)]
            members[new.id] = _bump_status(new, status="valid")
        else:
            members[node.id] = _bump_status(node, tokens=change.arg)
    committed = replace(
        state, epoch=state.epoch + 1, members=FrozenMap(members),
        owners=effective_owners(state), next_owners=planned.next_owners,
        transfers=planned.transfers,
        done=frozenset(t.partition for t in planned.transfers if not t.sources),
        staged=(), staged_version=state.staged_version + 1, staged_by=by)
    return settle(committed)


def complete_transfer(state: ClusterState, partition: int,
                      epoch: int | None = None) -> ClusterState:
    """Mark a partition's transfer of this epoch done (idempotent).

    With ``epoch``, a completion reported for another epoch is refused, so a
    late report cannot complete a newer epoch's transfer of the same partition.
    """
    if epoch is not None and epoch != state.epoch:
        raise MembershipError(f"transfer of epoch {epoch} reported in epoch {state.epoch}")
    if _transfer_of(state, partition) is None:
        raise MembershipError(f"no transfer of partition {partition} in epoch {state.epoch}")
    if partition in state.done:
        return state
    return settle(replace(state, done=state.done | {partition}))


# ----------------------------------------------------------- buckets, members


def set_bucket(state: ClusterState, name: str, n: int, r: int, w: int,
               by: str, *, pr: int = 0, pw: int = 0, ttl: int = 0, grace: int = 0
               ) -> ClusterState:
    """Create or update a bucket's properties (1 <= r, w <= n <= MAX_N, 0 <= pr <= r,
    0 <= pw <= w, 0 <= ttl, grace <= MAX_TTL_SECONDS), made on ``by``."""
    _check_bucket_name(name)
    _check_nrw(n, r, w, pr, pw)
    _check_int(ttl, "bucket ttl", 0, MAX_TTL_SECONDS)
    _check_int(grace, "bucket grace", 0, MAX_TTL_SECONDS)
    _check_name(by, "writer")
    known = state.buckets.get(name)
    if known is None and len(state.buckets) >= MAX_BUCKETS:
        raise MembershipError(f"too many buckets (limit {MAX_BUCKETS})")
    version = known.version + 1 if known is not None else 1
    props = BucketProps(name, n, r, w, version, by, pr, pw, ttl, grace)
    return replace(state, buckets=FrozenMap({**state.buckets, name: props}))


def bucket(state: ClusterState, name: str) -> BucketProps:
    """A bucket's properties; a bucket never set has the ``default`` bucket's n, r, w."""
    props = state.buckets.get(name)
    return props if props is not None else replace(state.buckets[DEFAULT_BUCKET], name=name)


def update_member(state: ClusterState, member: Member) -> ClusterState:
    """A node announces its own address, zone or a new incarnation (after losing its
    disk). Status and tokens stay as the cluster decided; incarnation never goes back.
    Only the node itself should call this about itself: it is the authority on them."""
    _check_member(member, state.ring_size)
    known = state.members.get(member.id)
    if known is None:
        raise MembershipError(f"unknown node {member.id!r}: it must join first")
    if (member.addr, member.zone) == (known.addr, known.zone) \
            and member.incarnation <= known.incarnation:
        return state
    updated = replace(known, addr=member.addr, zone=member.zone,
                      incarnation=max(known.incarnation, member.incarnation),
                      addr_version=known.addr_version + 1)
    return replace(state, members=FrozenMap({**state.members, member.id: updated}))


# --------------------------------------------------------------- reconcile


def _arg_key(arg: str | int | None) -> tuple[int, str | int]:
    if arg is None:
        return (0, 0)
    return (1, arg) if isinstance(arg, int) else (2, arg)


def _staged_key(state: ClusterState) -> tuple:
    return (state.staged_version, state.staged_by,
            tuple((c.kind, c.node, _arg_key(c.arg)) for c in state.staged))


def _bucket_key(props: BucketProps) -> tuple:
    return (props.version, props.writer, props.n, props.r, props.w, props.pr, props.pw,
            props.ttl, props.grace)


def _merge_member(a: Member, b: Member) -> Member:
    def decided(m: Member) -> tuple:
        return (m.status_version, STATUSES.index(m.status), -1 if m.tokens is None else m.tokens)

    def announced(m: Member) -> tuple:
        return (m.incarnation, m.addr_version, m.addr, m.zone, m.hints)

    d = max(a, b, key=decided)
    s = max(a, b, key=announced)
    return Member(a.id, s.addr, s.zone, d.status, d.tokens, s.incarnation,
                  d.status_version, s.addr_version, s.hints)


def _ring_digest(state: ClusterState) -> bytes:
    ring_fields = [list(state.owners), list(state.next_owners),
                   [[t.partition, t.target, list(t.sources)] for t in state.transfers]]
    return hashlib.blake2b(cbor2.dumps(ring_fields, canonical=True), digest_size=16).digest()


def _merge_ring(a: ClusterState, b: ClusterState) -> tuple[ClusterState, frozenset[int]]:
    """The state whose ring fields win, and the merged ``done``."""
    if a.epoch != b.epoch:
        winner = max(a, b, key=lambda s: s.epoch)
        return winner, winner.done
    if (a.owners, a.next_owners, a.transfers) == (b.owners, b.next_owners, b.transfers):
        return a, a.done | b.done
    winner = max(a, b, key=_ring_digest)
    return winner, winner.done


def reconcile(a: ClusterState, b: ClusterState) -> ClusterState:
    """Merge two copies of one cluster's state (gossip): commutative, associative,
    idempotent. Raises ForeignCluster for states of different clusters."""
    if (a.cluster_id, a.ring_size) != (b.cluster_id, b.ring_size):
        raise ForeignCluster(f"cluster {b.cluster_id!r} (ring size {b.ring_size}) is not "
                             f"cluster {a.cluster_id!r} (ring size {a.ring_size})")
    if a == b:
        return a
    ring_side, done = _merge_ring(a, b)
    staged_side = max(a, b, key=_staged_key)
    members = dict(a.members)
    for node, member in b.members.items():
        members[node] = _merge_member(members[node], member) if node in members else member
    buckets = dict(a.buckets)
    for name, props in b.buckets.items():
        buckets[name] = max(buckets[name], props, key=_bucket_key) if name in buckets else props
    return ClusterState(
        cluster_id=a.cluster_id, ring_size=a.ring_size, epoch=ring_side.epoch,
        members=FrozenMap(members), owners=ring_side.owners,
        next_owners=ring_side.next_owners, transfers=ring_side.transfers, done=done,
        staged=staged_side.staged, staged_version=staged_side.staged_version,
        staged_by=staged_side.staged_by, buckets=FrozenMap(buckets),
        features=a.features | b.features, auth=auth_model.merge(a.auth, b.auth))


# -------------------------------------------------------------------- features


def lacking_feature(state: ClusterState, reported: Mapping[str, frozenset[str]],
                    feature: str) -> list[str]:
    """The members that are not removed and have not reported supporting ``feature``."""
    return sorted(node for node, member in state.members.items()
                  if member.status != "removed" and feature not in reported.get(node, ()))


def activate_features(state: ClusterState, reported: Mapping[str, frozenset[str]]
                      ) -> ClusterState:
    """``state`` with every feature that each non-removed member has reported added to its
    activated ``features`` (the same object when none is new)."""
    offered = frozenset().union(*reported.values()) - state.features
    new = {f for f in offered if not lacking_feature(state, reported, f)}
    return replace(state, features=state.features | new) if new else state


# -------------------------------------------------------------------- wire

_MEMBER_KEYS = ("id", "addr", "zone", "status", "tokens", "incarnation", "status_version",
                "addr_version", "hints")
_BUCKET_KEYS = ("name", "n", "r", "w", "version", "writer")
# Written only when set (non-zero): a state without them is the same bytes, the same
# digest, and readable by a node that predates them.
_BUCKET_OPTIONAL_KEYS = ("pr", "pw", "ttl", "grace")
_STATE_KEYS = ("format", "cluster_id", "ring_size", "epoch", "members", "owners",
               "next_owners", "transfers", "done", "staged", "staged_version", "staged_by",
               "buckets")
# Written only once non-empty, as the bucket's optional keys: nodes that predate it read
# the state, and compute the same digest, until a feature is activated.
_STATE_OPTIONAL_KEYS = ("features", "auth")


def to_wire(state: ClusterState) -> dict[str, Any]:
    """A CBOR-friendly dict; node ids in the ring are indexes into ``members``."""
    index = {node: i for i, node in enumerate(state.members)}
    wire = {
        "format": WIRE_FORMAT,
        "cluster_id": state.cluster_id,
        "ring_size": state.ring_size,
        "epoch": state.epoch,
        "members": [{key: getattr(m, key) for key in _MEMBER_KEYS}
                    for m in state.members.values()],
        "owners": [index[o] for o in state.owners],
        "next_owners": [index[o] for o in state.next_owners],
        "transfers": [[t.partition, index[t.target], [index[s] for s in t.sources]]
                      for t in state.transfers],
        "done": sorted(state.done),
        "staged": [[c.kind, c.node, c.arg] for c in state.staged],
        "staged_version": state.staged_version,
        "staged_by": state.staged_by,
        "buckets": [_bucket_to_wire(b) for b in state.buckets.values()],
    }
    if state.features:
        wire["features"] = sorted(state.features)
    if not state.auth.is_default():
        wire["auth"] = auth_model.to_wire(state.auth)
    return wire


def _bucket_to_wire(props: BucketProps) -> dict[str, Any]:
    wire = {key: getattr(props, key) for key in _BUCKET_KEYS}
    wire.update((key, getattr(props, key)) for key in _BUCKET_OPTIONAL_KEYS
                if getattr(props, key))
    return wire


def _check_map(obj: Any, keys: tuple[str, ...], what: str,
               optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(obj, dict) or not set(keys) <= set(obj) <= set(keys + optional):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        also = f" (optionally {sorted(optional)})" if optional else ""
        raise MembershipError(f"{what} must be a map with keys {sorted(keys)}{also}, "
                              f"got {found!s:.200}")
    return obj


def _check_list(obj: Any, what: str, max_items: int) -> list:
    if not isinstance(obj, list) or len(obj) > max_items:
        raise MembershipError(f"{what} must be a list of at most {max_items} items")
    return obj


def _owners_from_wire(obj: Any, ids: list[str], ring_size: int, what: str) -> tuple[str, ...]:
    items = _check_list(obj, what, ring_size)
    if len(items) != ring_size:
        raise MembershipError(f"{what} must list {ring_size} owners, got {len(items)}")
    return tuple(ids[_check_int(i, f"{what} index", 0, len(ids) - 1)] for i in items)


def _members_from_wire(obj: Any, ring_size: int) -> dict[str, Member]:
    members: dict[str, Member] = {}
    for item in _check_list(obj, "members", MAX_MEMBERS):
        if isinstance(item, dict) and "hints" not in item:
            item = {**item, "hints": False}  # a state written before members announced it
        fields = _check_map(item, _MEMBER_KEYS, "member")
        member = _check_member(Member(**fields), ring_size)
        if member.id in members:
            raise MembershipError(f"member {member.id} listed twice")
        members[member.id] = member
    if not members:
        raise MembershipError("a cluster has at least one member")
    return members


def _transfers_from_wire(obj: Any, ids: list[str], owners: tuple[str, ...],
                         next_owners: tuple[str, ...]) -> tuple[Transfer, ...]:
    size = len(owners)
    transfers = []
    for item in _check_list(obj, "transfers", size):
        if not isinstance(item, list) or len(item) != 3:
            raise MembershipError("a transfer must be [partition, target, sources]")
        partition = _check_int(item[0], "transfer partition", 0, size - 1)
        target = ids[_check_int(item[1], "transfer target", 0, len(ids) - 1)]
        sources = tuple(ids[_check_int(s, "transfer source", 0, len(ids) - 1)]
                        for s in _check_list(item[2], "transfer sources", MAX_N))
        if len(set(sources)) != len(sources) or target in sources:
            raise MembershipError(f"transfer of partition {partition}: bad sources")
        transfers.append(Transfer(partition, target, sources))
    transfers.sort(key=lambda t: t.partition)
    moving = [p for p in range(size) if owners[p] != next_owners[p]]
    if [t.partition for t in transfers] != moving or any(
            t.target != next_owners[t.partition] for t in transfers):
        raise MembershipError("transfers do not match the owners before and after")
    return tuple(transfers)


def _staged_from_wire(obj: Any, members: Mapping[str, Member],
                      ring_size: int) -> tuple[Change, ...]:
    staged = []
    for item in _check_list(obj, "staged", MAX_STAGED):
        if not isinstance(item, list) or len(item) != 3:
            raise MembershipError("a staged change must be [kind, node, arg]")
        change = _check_change(Change(*item), ring_size)
        if change.node not in members or (change.kind == "replace"
                                          and change.arg not in members):
            raise MembershipError(f"staged {change.kind} of an unknown node")
        staged.append(change)
    if len({_membership_slot(c) for c in staged}) != len(staged):
        raise MembershipError("two staged changes of the same kind for one node")
    return tuple(staged)


def _buckets_from_wire(obj: Any) -> dict[str, BucketProps]:
    buckets: dict[str, BucketProps] = {}
    for item in _check_list(obj, "buckets", MAX_BUCKETS):
        props = BucketProps(**_check_map(item, _BUCKET_KEYS, "bucket", _BUCKET_OPTIONAL_KEYS))
        _check_bucket_name(props.name)
        _check_nrw(props.n, props.r, props.w, props.pr, props.pw)
        _check_int(props.ttl, "bucket ttl", 0, MAX_TTL_SECONDS)
        _check_int(props.grace, "bucket grace", 0, MAX_TTL_SECONDS)
        _check_int(props.version, "bucket version")
        _check_name(props.writer, "bucket writer", empty_ok=True)
        if props.name in buckets:
            raise MembershipError(f"bucket {props.name} listed twice")
        buckets[props.name] = props
    if DEFAULT_BUCKET not in buckets:
        raise MembershipError("the default bucket is missing")
    return buckets


def from_wire(obj: Any) -> ClusterState:
    """Rebuild and fully validate a state received from a peer (hostile input):
    anything malformed raises MembershipError."""
    wire = _check_map(obj, _STATE_KEYS, "cluster state", _STATE_OPTIONAL_KEYS)
    _check_int(wire["format"], "cluster state format", WIRE_FORMAT, WIRE_FORMAT)
    cluster_id = _check_name(wire["cluster_id"], "cluster id")
    ring_size = _check_int(wire["ring_size"], "ring size", 1)
    try:
        check_ring_size(ring_size)
    except ValueError as e:
        raise MembershipError(str(e)) from e
    members = _members_from_wire(wire["members"], ring_size)
    ids = sorted(members)
    owners = _owners_from_wire(wire["owners"], ids, ring_size, "owners")
    next_owners = _owners_from_wire(wire["next_owners"], ids, ring_size, "next_owners")
    transfers = _transfers_from_wire(wire["transfers"], ids, owners, next_owners)
    moving = {t.partition for t in transfers}
    done = frozenset(_check_int(p, "done partition", 0, ring_size - 1)
                     for p in _check_list(wire["done"], "done", ring_size))
    if not done <= moving:
        raise MembershipError("done lists a partition without a transfer")
    return ClusterState(
        cluster_id=cluster_id, ring_size=ring_size,
        epoch=_check_int(wire["epoch"], "epoch"),
        members=FrozenMap(members), owners=owners, next_owners=next_owners,
        transfers=transfers, done=done,
        staged=_staged_from_wire(wire["staged"], members, ring_size),
        staged_version=_check_int(wire["staged_version"], "staged_version"),
        staged_by=_check_name(wire["staged_by"], "staged_by", empty_ok=True),
        buckets=FrozenMap(_buckets_from_wire(wire["buckets"])),
        features=_features_from_wire(wire.get("features", [])),
        auth=_auth_from_wire(wire.get("auth")))


def _auth_from_wire(obj: Any) -> AuthState:
    if obj is None:
        return auth_model.EMPTY
    try:
        return auth_model.from_wire(obj)
    except AuthError as exc:
        raise MembershipError(f"auth: {exc}") from None


def _features_from_wire(obj: Any) -> frozenset[str]:
    return frozenset(_check_name(name, "feature")
                     for name in _check_list(obj, "features", MAX_FEATURES))


def digest(state: ClusterState) -> bytes:
    """16 bytes that differ when states differ: gossip compares these before sending states."""
    return hashlib.blake2b(cbor2.dumps(to_wire(state), canonical=True),
                           digest_size=16).digest()
