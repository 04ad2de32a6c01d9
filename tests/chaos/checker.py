"""After the faults: wait for the replicas to converge, read everything back, compare.

Convergence: every replica of every key (``replicas`` op, what ``dynctl replicas --json``
prints) is reachable and reports the same context, and no fallback still holds a hint.
It is polled without reading through the coordinator, so read repair does not help: what
converges it is hinted handoff and anti-entropy alone.

The set check (Jepsen's): every acknowledged element must be in the final read of its key
(read with R=N after ``dynctl repair`` on every node); an element in the final read that
no client ever attempted is *unexpected* (corruption or a resurrected value); an
element attempted but not acknowledged may be present or absent (indeterminate).

The query check, on the threads (partition key = thread, sort key = post): every query's
sort keys in strict order (descending when reverse), none twice across its pages; the
final query of every thread (R=N, after the repair, paged) holds every acknowledged post
not deleted (a delete attempted may have happened) and no post whose delete was
acknowledged, nor one never attempted; and a post whose delete a read confirmed never
shows in a query that started after that read and after the last heal (during a fault a
sloppy quorum's query may miss the replicas of the delete, so that is not checked).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from common.dvvset import decode_context
from common.errors import DynError
from dynctl.client import Client
from tests.chaos.workload import (
    Ack,
    History,
    ItemHistory,
    QueryRecord,
    cart_key,
    elements_of,
    query_thread,
    thread_key,
)

POLL_INTERVAL = 0.5  # seconds between two convergence sweeps
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class SetResult:
    """The outcome of the set check; ``ok`` when nothing acknowledged was lost and nothing
    unexpected appeared."""

    acknowledged: int
    lost: dict[str, list[str]]        # key -> acknowledged elements missing in the final read
    unexpected: dict[str, list[str]]  # key -> final elements no client attempted
    indeterminate_present: int        # attempted, not acknowledged, yet stored
    indeterminate_absent: int

    @property
    def lost_count(self) -> int:
        return sum(map(len, self.lost.values()))

    @property
    def unexpected_count(self) -> int:
        return sum(map(len, self.unexpected.values()))

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_set(attempted: Mapping[str, set[str]], acked: Mapping[str, set[str]],
              final: Mapping[str, set[str]]) -> SetResult:
    """Compare what clients attempted and were acknowledged with the final reads.

    An acknowledged element must also be attempted; a key missing from ``final`` reads as
    empty.
    """
    stray = {key: sorted(acked[key] - attempted.get(key, set())) for key in acked
             if acked[key] - attempted.get(key, set())}
    if stray:
        raise ValueError(f"acknowledged but never attempted (history is broken): {stray}")
    lost, unexpected = {}, {}
    present = absent = 0
    for key in set(attempted) | set(final):
        tried, ok, seen = attempted.get(key, set()), acked.get(key, set()), final.get(key, set())
        if ok - seen:
            lost[key] = sorted(ok - seen)
        if seen - tried:
            unexpected[key] = sorted(seen - tried)
        present += len((tried - ok) & seen)
        absent += len(tried - ok - seen)
    return SetResult(sum(map(len, acked.values())), lost, unexpected, present, absent)


def replicas_agree(rows: Sequence[Mapping[str, Any]], n: int) -> bool:
    """All ``n`` primaries reachable with one context, and no fallback holds a hint."""
    primaries = [row for row in rows if row["role"] == "primary"]
    return (len(primaries) == n and len(rows) == n
            and all(row["reachable"] for row in rows)
            and len({row["context"] for row in rows}) == 1)


@dataclass
class Convergence:
    converged: bool
    seconds: float            # from the heal until every key agreed, or gave up
    sweeps: int
    diverged_keys: list[str] = field(default_factory=list)  # at the end, when not converged


async def wait_converged(addr: str, keys: int, n: int, timeout: float, since: float,
                         bucket: str = "default") -> Convergence:
    """Poll every key's replicas until all agree or ``timeout`` seconds pass; the time is
    counted from ``since`` (``time.monotonic()`` of the heal)."""
    start = since
    sweeps = 0
    diverged = [cart_key(i) for i in range(keys)]
    while True:
        sweeps += 1
        try:
            async with Client.connect(addr, timeout=REQUEST_TIMEOUT) as client:
                still = []
                for key in diverged:
                    result = await client.call("replicas", bucket=bucket, key=key.encode())
                    if not replicas_agree(result["replicas"], n):
                        still.append(key)
                diverged = still
        except DynError:
            pass  # the polled node itself is still recovering: try again
        elapsed = time.monotonic() - start
        if not diverged or elapsed > timeout:
            return Convergence(not diverged, elapsed, sweeps, diverged)
        await trio.sleep(POLL_INTERVAL)


@dataclass
class FinalRead:
    elements: dict[str, set[str]]  # key -> union of its siblings' elements
    contexts: dict[str, str]       # key -> context of the final read
    max_siblings: int


async def final_read(addr: str, keys: int, r: int, bucket: str = "default") -> FinalRead:
    """Every cart read with R=``r``."""
    final = FinalRead({}, {}, 0)
    async with Client.connect(addr, timeout=REQUEST_TIMEOUT * 2) as client:
        for i in range(keys):
            obj = await client.get(cart_key(i), bucket=bucket, r=r)
            final.elements[cart_key(i)] = elements_of(obj)
            final.contexts[cart_key(i)] = obj.context
            final.max_siblings = max(final.max_siblings, len(obj.values))
    return final


def new_dots(ack: Ack) -> set[tuple[str, int]]:
    """Entries the acknowledged context has beyond the read context: the put's own dot is
    among them (the others are writes the coordinator knew and the client had not read)."""
    read, got = decode_context(ack.read_context), decode_context(ack.context)
    return {(actor, counter) for actor, counter in got.items() if counter > read.get(actor, 0)}


def explain_lost(history: History, result: SetResult, final: FinalRead, limit: int = 5
                 ) -> list[str]:
    """For some lost elements: their ack, and other acknowledged puts of the same key that
    may have minted the same dot (a dot minted twice makes one value silently replace the
    other when replicas merge)."""
    lines = []
    for key, elements in sorted(result.lost.items()):
        for element in elements:
            if len(lines) >= limit:
                return lines
            ack = history.acks[element]
            dots = new_dots(ack)
            rivals = sorted(
                (other.at, name, sorted(new_dots(other) & dots))
                for name in history.acked.get(key, set()) - {element}
                if new_dots(other := history.acks[name]) & dots)
            lines.append(
                f"{key} {element}: acked by {ack.node} at {ack.at:.2f}, read "
                f"{decode_context(ack.read_context)}, got {decode_context(ack.context)}; "
                f"final context {decode_context(final.contexts.get(key, ''))}; "
                f"acked puts sharing a new dot: "
                + (", ".join(f"{name} at {at:.2f} {shared}" for at, name, shared in rivals)
                   or "none"))
    return lines


@dataclass(frozen=True)
class QueryResult:
    """The outcome of the query check; ``ok`` when every list is empty."""

    queries: int
    disordered: list[str]  # a query whose sort keys are out of order or shown twice
    lost: dict[str, list[str]]  # thread -> acknowledged posts, never deleted, not in the final
    resurrected: dict[str, list[str]]  # thread -> posts deleted (acknowledged) in the final
    unexpected: dict[str, list[str]]  # thread -> final posts no worker attempted
    reappeared: list[str]  # confirmed deleted, then shown by a later query after the heal

    @property
    def ok(self) -> bool:
        return not (self.disordered or self.lost or self.resurrected or self.unexpected
                    or self.reappeared)


def _in_order(record: QueryRecord) -> bool:
    pairs = zip(record.sks, record.sks[1:], strict=False)
    return all((a > b) if record.reverse else (a < b) for a, b in pairs)


def check_queries(items: ItemHistory, final: list[QueryRecord], healed_at: float
                  ) -> QueryResult:
    """Compare the workers' queries and the final ones with the acknowledged puts and
    deletes (see the module's docstring)."""
    disordered = [f"{q.thread} reverse={q.reverse} at {q.started:.1f}: {q.sks}"
                  for q in items.queries + final if not _in_order(q)]
    shown = {q.thread: set(q.sks) for q in final}
    lost, resurrected, unexpected = {}, {}, {}
    for thread in set(items.attempted) | set(shown):
        seen = shown.get(thread, set())
        maybe_deleted = items.delete_attempted.get(thread, set())
        if missing := items.acked.get(thread, set()) - maybe_deleted - seen:
            lost[thread] = sorted(missing)
        if back := items.deleted.get(thread, set()) & seen:
            resurrected[thread] = sorted(back)
        if stray := seen - items.attempted.get(thread, set()):
            unexpected[thread] = sorted(stray)
    reappeared = [f"{q.thread}/{sk}: confirmed deleted at {items.confirmed[(q.thread, sk)]:.1f}"
                  f", shown by the query started at {q.started:.1f}"
                  for q in items.queries if q.started > healed_at for sk in q.sks
                  if items.confirmed.get((q.thread, sk), q.started) < q.started]
    return QueryResult(len(items.queries), disordered, lost, resurrected, unexpected,
                       reappeared)


async def final_queries(addr: str, threads: int, r: int, page_size: int,
                        bucket: str = "default") -> list[QueryRecord]:
    """Every thread queried with R=``r`` in pages of ``page_size``, forward and reverse."""
    async with Client.connect(addr, timeout=REQUEST_TIMEOUT * 2) as client:
        return [await query_thread(client, thread_key(i), reverse, page_size, bucket, r=r)
                for i in range(threads) for reverse in (False, True)]
