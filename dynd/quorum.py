"""Quorum bookkeeping for one get or put: when is the answer ready, and what is it.

Pure (riak_kv's get_core / put_core): the coordinator feeds replies in and
asks whether R or W is met, whether it can still be met, and after a get
which replicas are stale and need read repair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import context
from common.context import DVVSet


@dataclass
class GetCore:
    """Collects p_get replies; `merged` is the answer once `enough()`.

    A reply marked incomplete (its replica's pull of the partition is not in: it became
    a primary before its copy was filled) is merged into the answer and read-repaired,
    but never counted toward R: alone it could answer "not found" for a stored value.
    """

    r: int
    n: int
    replies: dict[str, DVVSet | None] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    fallbacks: set[str] = field(default_factory=set)
    incomplete: set[str] = field(default_factory=set)

    def add_reply(self, node: str, clock: DVVSet | None, *, fallback: bool = False,
                  incomplete: bool = False) -> None:
        self.replies[node] = clock
        if fallback:
            self.fallbacks.add(node)
        if incomplete:
            self.incomplete.add(node)

    def settled(self) -> bool:
        """Time to answer: R replies, and if none of them holds the key, either R of
        them came from primaries or every replica has answered.

        A fallback without a hint knows nothing about the key: two of them answering
        first must not turn a stored value into "not found" while a primary that holds
        it is still answering.
        """
        if self.hopeless():
            return True
        if not self.enough():
            return False
        if any(clock is not None for clock in self.replies.values()):
            return True
        primary_misses = sum(1 for node in self.replies
                             if node not in self.fallbacks and node not in self.incomplete)
        return primary_misses >= self.r or len(self.replies) + len(self.failures) >= self.n

    def add_failure(self, node: str, reason: str) -> None:
        self.failures[node] = reason

    def enough(self) -> bool:
        return len(self.replies) - len(self.incomplete) >= self.r

    def hopeless(self) -> bool:
        """R can no longer be met: too many replicas failed or answered incomplete."""
        return self.n - len(self.failures) - len(self.incomplete) < self.r

    def merged(self) -> DVVSet | None:
        """The sync of every reply, or None when no replica held the key."""
        # Replies that are one object (equal bytes, parsed once) need merging only once.
        clocks = list({id(c): c for c in self.replies.values() if c is not None}.values())
        if len(clocks) == 1:
            return clocks[0]
        return context.merge_all(clocks) if clocks else None

    def describe(self) -> str:
        """What is known when R was not met, for the error message."""
        why = {**self.failures,
               **{node: "its pull of the partition is not in" for node in self.incomplete}}
        reasons = "".join(f"; {node}: {text}" for node, text in sorted(why.items()))
        return f"{len(self.replies) - len(self.incomplete)} of {self.r} replies{reasons}"

    def stale(self, merged: DVVSet) -> list[str]:
        """Replicas whose copy does not descend the merged answer: read repair targets."""
        return [
            node
            for node, clock in self.replies.items()
            if clock is None or (clock is not merged and not context.descends(clock, merged))
        ]


@dataclass
class PutCore:
    """Counts replica acknowledgements against W."""

    w: int
    n: int
    acks: set[str] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)

    def add_ack(self, node: str) -> None:
        self.acks.add(node)

    def add_failure(self, node: str, reason: str) -> None:
        self.failures[node] = reason

    def enough(self) -> bool:
        return len(self.acks) >= self.w

    def hopeless(self) -> bool:
        return self.n - len(self.failures) < self.w

    def describe(self) -> str:
        """What is known when W was not met, for the error message. The count is of the
        answer's moment: replicas still writing may hold the value later, so the write
        is indeterminate (exit 4), not undone."""
        reasons = "; ".join(f"{node}: {why}" for node, why in sorted(self.failures.items()))
        text = f"{len(self.acks)} of {self.w} required acknowledgements"
        text = f"{text} ({reasons})" if reasons else text
        return f"{text}; the value may still reach other replicas"
