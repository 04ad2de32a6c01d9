"""The coordinator's merge of a query's replica replies: pure, so it can be property-tested.

Each replica's reply (``p_query``) is a run of ``(sort key, clock)`` in scan order, dead
items included, and becomes a **cursor**: its buffer, the last key it scanned and whether
it has more. The **horizon** is the least advanced ``last`` among cursors that have more
(the end of the range if none has). An item at or before the horizon has been scanned by
every cursor: each returned it or scanned past it without finding it, so the DVV merge of
what they returned is the item as the replicas used know it. An item beyond the horizon
is never emitted: the cursor that stopped early may hold a newer version of it (a
tombstone, say), so that cursor is refilled from after its ``last`` first (Cassandra's
short read protection, CASSANDRA-13794, expressed as a horizon). Dead merged items are
not emitted but are repaired like live ones.

Continuation tokens hold no server state: ``base64url(CBOR [1, last_sk, reverse,
qhash])``, ``qhash`` binding the token to its query (bucket, key, condition, reverse).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cbor2

from common import dvvset
from common.dvvset import DVVSet, Sibling
from common.errors import Rejected
from common.limits import MAX_SORT_KEY_BYTES
from common.skrange import successor

TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 2 * MAX_SORT_KEY_BYTES  # base64 of the CBOR array around a sort key
_QHASH_BYTES = 8

Item = tuple[bytes, DVVSet]  # (sort key, clock) as one replica holds it


class BadReply(ValueError):
    """A replica reply that is out of order or outside the range it was asked for."""


@dataclass(frozen=True, slots=True)
class ReplicaPage:
    """One ``p_query`` reply, its clocks decoded: items in scan order, whether the replica
    has more in the range, and the last sort key it scanned (None: it scanned nothing)."""

    items: list[Item]
    more: bool
    last: bytes | None


@dataclass(frozen=True, slots=True)
class Emitted:
    """An item of the page: its merged clock and the values visible at the query's now."""

    sk: bytes
    clock: DVVSet
    values: list[Sibling]


@dataclass(frozen=True, slots=True)
class Repair:
    """Read repair: ``node`` gets the merged ``clock`` of item ``sk``."""

    node: str
    sk: bytes
    clock: DVVSet


@dataclass
class _Cursor:
    fallback: bool
    buffer: deque[Item] = field(default_factory=deque)
    last: bytes | None = None
    more: bool = True


def before(a: bytes, b: bytes, reverse: bool) -> bool:
    """``a`` comes strictly before ``b`` in scan order."""
    return a > b if reverse else a < b


def in_range(sk: bytes, lo: bytes, hi: bytes | None) -> bool:
    return lo <= sk and (hi is None or sk < hi)


def resume_range(lo: bytes, hi: bytes | None, reverse: bool, after: bytes
                 ) -> tuple[bytes, bytes | None]:
    """The part of ``[lo, hi)`` that lies after ``after`` in scan order."""
    if reverse:
        return lo, after if hi is None else min(hi, after)
    return max(lo, successor(after)), hi


def skeleton(clock: DVVSet) -> DVVSet:
    """``clock`` with every value replaced by b"" (tombstones and expiry kept): merges and
    visibility stay exact, and a keys-only or count query moves no values."""
    def bare(siblings: tuple[Sibling, ...]) -> tuple[Sibling, ...]:
        return tuple(Sibling(None if s.value is None else b"", s.written_at, s.expires_at)
                     for s in siblings)
    return DVVSet(tuple((actor, counter, bare(values))
                        for actor, counter, values in clock.entries), bare(clock.anonymous))


class QueryMerge:
    """One page of a query: cursors in, items out, refills and repairs as it goes.

    Drive it as: ``add`` the first replies (R of them, get's settled rule), then ``step``;
    while it names nodes, send each a refill over ``request_range(node)`` and ``add`` the
    reply (or ``drop`` the node if it failed), then ``step`` again. When ``step`` names
    none, the page is ``emitted`` and ``next_after()`` says where the next page starts.
    """

    def __init__(self, lo: bytes, hi: bytes | None, *, reverse: bool, limit: int,
                 now_ms: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.lo, self.hi, self.reverse, self.limit, self.now_ms = lo, hi, reverse, limit, now_ms
        self.cursors: dict[str, _Cursor] = {}
        self.emitted: list[Emitted] = []
        self.repairs: list[Repair] = []
        self.merged: list[tuple[bytes, DVVSet]] = []  # every merged item, emitted or dead
        self.scanned = 0  # items received over every reply: the scan budget counts them
        self.cut_at: bytes | None = None  # where a page cut short ends (see step)

    # -- replies in --

    def request_range(self, node: str) -> tuple[bytes, bytes | None]:
        """``[lo, hi)`` still to be scanned by ``node`` (all of it before its first reply)."""
        cursor = self.cursors.get(node)
        if cursor is None or cursor.last is None:
            return self.lo, self.hi
        return resume_range(self.lo, self.hi, self.reverse, cursor.last)

    def add(self, node: str, page: ReplicaPage, *, fallback: bool = False) -> None:
        """A reply of ``node`` (its first, or a refill over ``request_range(node)``).
        BadReply, and nothing changed, if it is not a scan of that range in order."""
        lo, hi = self.request_range(node)
        previous: bytes | None = None
        for sk, _ in page.items:
            if not in_range(sk, lo, hi) or (previous is not None
                                           and not before(previous, sk, self.reverse)):
                raise BadReply(f"{node} returned sort keys out of order or out of range")
            previous = sk
        last = page.last if page.last is not None else previous
        if last is not None and (not in_range(last, lo, hi) or (
                previous is not None and before(last, previous, self.reverse))):
            raise BadReply(f"{node} reported a last sort key outside what it scanned")
        if page.more and last is None:
            raise BadReply(f"{node} has more but scanned nothing")
        cursor = self.cursors.setdefault(node, _Cursor(fallback))
        cursor.buffer.extend(page.items)
        cursor.last = last if last is not None else cursor.last
        cursor.more = page.more
        self.scanned += len(page.items)

    def drop(self, node: str) -> None:
        """``node``'s refill failed: merge on without it (its buffer is empty: refills are
        asked only once everything up to its ``last`` is merged)."""
        self.cursors.pop(node, None)

    # -- merging --

    def horizon(self) -> bytes | None:
        """The least advanced ``last`` among cursors with more; None: the range's end."""
        lasts = [c.last for c in self.cursors.values() if c.more and c.last is not None]
        if not lasts:
            return None
        return max(lasts) if self.reverse else min(lasts)

    def step(self) -> list[str]:
        """Merge as far as the horizon allows; the nodes to refill (empty: page done).

        While refills are asked, ``next_after`` is the horizon: a caller that cannot or
        may not refill (a budget ran out, fewer than R cursors left) ends the page there,
        since everything up to it is merged."""
        self.cut_at = None
        while len(self.emitted) < self.limit:
            heads = [c.buffer[0][0] for c in self.cursors.values() if c.buffer]
            horizon = self.horizon()
            if not heads and horizon is None:
                return []
            head = None if not heads else (max(heads) if self.reverse else min(heads))
            if head is None or (horizon is not None and before(horizon, head, self.reverse)):
                self.cut_at = horizon
                return sorted(node for node, c in self.cursors.items()
                              if c.more and c.last == horizon)
            self._merge(head)
        return []

    def _merge(self, sk: bytes) -> None:
        clocks = {node: c.buffer.popleft()[1] for node, c in self.cursors.items()
                  if c.buffer and c.buffer[0][0] == sk}
        merged = dvvset.merge_all(clocks.values())
        self.merged.append((sk, merged))
        for node, cursor in self.cursors.items():
            if _stale(clocks.get(node), merged, cursor.fallback):
                self.repairs.append(Repair(node, sk, merged))
        visible = dvvset.visible_values(merged, self.now_ms)
        if visible:
            self.emitted.append(Emitted(sk, merged, visible))

    def has_more(self) -> bool:
        """Anything may be left past what was merged."""
        return any(c.buffer or c.more for c in self.cursors.values())

    def next_after(self) -> bytes | None:
        """Where the next page starts (after this sort key); None: nothing is left. A full
        page ends at its last item, a page cut short at the horizon (see step)."""
        if self.cut_at is not None:
            return self.cut_at
        if len(self.emitted) >= self.limit and self.has_more():
            return self.emitted[-1].sk
        return None

    def late_repairs(self, node: str, page: ReplicaPage, *, fallback: bool) -> list[Repair]:
        """Repairs for a first reply that came after the page was answered: the merged
        items up to the reply's own ``last`` that it lacks or holds stale."""
        held = dict(page.items)
        last = page.last if page.last is not None else (page.items[-1][0] if page.items
                                                         else None)
        repairs = []
        for sk, merged in self.merged:
            if page.more and (last is None or before(last, sk, self.reverse)):
                break
            if _stale(held.get(sk), merged, fallback):
                repairs.append(Repair(node, sk, merged))
        return repairs


def _stale(clock: DVVSet | None, merged: DVVSet, fallback: bool) -> bool:
    """A replica that returned ``clock`` (None: it scanned past the item without it) needs
    ``merged``. A fallback only for items it returned stale: copying every item it lacks
    into hints would move whole pages toward a down primary, which anti-entropy refills."""
    if clock is None:
        return not fallback
    return not dvvset.descends(clock, merged)


# -- continuation tokens --------------------------------------------------------------


def query_hash(bucket: str, key: bytes, cond: list[Any] | None, reverse: bool) -> bytes:
    """8 bytes that bind a token to the query that issued it."""
    return hashlib.blake2b(cbor2.dumps([bucket, key, cond, reverse]),
                           digest_size=_QHASH_BYTES).digest()


def encode_token(after: bytes, reverse: bool, qhash: bytes) -> str:
    raw = cbor2.dumps([TOKEN_VERSION, after, reverse, qhash])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, qhash: bytes) -> bytes:
    """The sort key a token continues after; Rejected (exit 5) for a malformed token or
    one issued for another query: never a silent restart from the beginning."""
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = cbor2.loads(raw)
    except (ValueError, binascii.Error, cbor2.CBORDecodeError):
        raise Rejected("malformed continuation token") from None
    if (not isinstance(decoded, list) or len(decoded) != 4 or decoded[0] != TOKEN_VERSION
            or type(decoded[1]) is not bytes or not 1 <= len(decoded[1]) <= MAX_SORT_KEY_BYTES
            or type(decoded[2]) is not bool or type(decoded[3]) is not bytes):
        raise Rejected("malformed continuation token")
    if decoded[3] != qhash:
        raise Rejected("continuation token belongs to another query")
    return decoded[1]
