"""Quorum bookkeeping for one get or put: when is the answer ready, and what is it.

Pure (riak_kv's get_core / put_core): the coordinator feeds replies in and
asks whether R or W is met, whether it can still be met, and after a get
which replicas are stale and need read repair.

PR and PW are Riak's primary quorums: of the R replies (W acknowledgements), at
least PR (PW) must come from the key's primaries, not from fallbacks. A write
acknowledged by PW primaries and a read answered by PR primaries share a primary
whenever PR + PW > N, so the read sees the write even where the sloppy quorum's
fallbacks took part; short of them the operation fails instead of answering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import dvvset
from common.dvvset import DVVSet


@dataclass(kw_only=True)
class _Asked:
    """The replicas one request went to, and those that failed with why: an error that
    says a quorum was not met names every replica that did not count."""

    failures: dict[str, str] = field(default_factory=dict)
    fallbacks: set[str] = field(default_factory=set)  # replicas asked as fallbacks
    asked: set[str] = field(default_factory=set)

    def ask(self, node: str, *, fallback: bool = False) -> None:
        """A request went to ``node``: until it answers, it is waited for."""
        self.asked.add(node)
        if fallback:
            self.fallbacks.add(node)

    def add_failure(self, node: str, reason: str, *, fallback: bool = False) -> None:
        self.failures[node] = reason
        if fallback:
            self.fallbacks.add(node)

    def answered(self) -> set[str]:
        """The replicas whose reply (acknowledgement) is in."""
        raise NotImplementedError

    def give_up(self, reason: str) -> None:
        """The request's deadline passed: every replica still waited for failed, for
        ``reason``."""
        for node in self.asked - self.answered() - set(self.failures):
            self.failures[node] = reason

    def reasons(self) -> dict[str, str]:
        """Why each asked replica that did not count did not (a failure, or no reply yet)."""
        waiting = self.asked - self.answered() - set(self.failures)
        return {**self.failures, **dict.fromkeys(waiting, "no reply yet")}


@dataclass
class GetCore(_Asked):
    """Collects p_get replies; `merged` is the answer once `enough()`.

    A reply marked incomplete (its replica's pull of the partition is not in: it became
    a primary before its copy was filled) is merged into the answer and read-repaired,
    but never counted toward R: alone it could answer "not found" for a stored value.
    """

    r: int
    n: int
    pr: int = 0
    primaries: int | None = None  # how many of the n replicas asked are primaries (None: all)
    replies: dict[str, DVVSet | None] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)

    def add_reply(self, node: str, clock: DVVSet | None, *, fallback: bool = False,
                  incomplete: bool = False) -> None:
        self.replies[node] = clock
        if fallback:
            self.fallbacks.add(node)
        if incomplete:
            self.incomplete.add(node)

    def primary_replies(self) -> int:
        """Replies of primaries whose copy is complete: what PR counts."""
        return sum(1 for node in self.replies
                   if node not in self.fallbacks and node not in self.incomplete)

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
        primary_misses = self.primary_replies()
        return primary_misses >= self.r or len(self.replies) + len(self.failures) >= self.n

    def answered(self) -> set[str]:
        return set(self.replies)

    def enough(self) -> bool:
        return (len(self.replies) - len(self.incomplete) >= self.r
                and (not self.pr or self.primary_replies() >= self.pr))

    def hopeless(self) -> bool:
        """R or PR can no longer be met: too many replicas (primaries) failed or answered
        incomplete, or too few primaries were reachable to ask."""
        primaries = self.n if self.primaries is None else self.primaries
        primary_failures = len(set(self.failures) - self.fallbacks)
        incomplete_primaries = len(self.incomplete - self.fallbacks)
        return (self.n - len(self.failures) - len(self.incomplete) < self.r
                or primaries - primary_failures - incomplete_primaries < self.pr)

    def merged(self) -> DVVSet | None:
        """The sync of every reply, or None when no replica held the key."""
        # Replies that are one object (equal bytes, parsed once) need merging only once.
        clocks = list({id(c): c for c in self.replies.values() if c is not None}.values())
        if len(clocks) == 1:
            return clocks[0]
        return dvvset.merge_all(clocks) if clocks else None

    def describe(self) -> str:
        """What is known when R was not met, for the error message."""
        why = {**self.reasons(),
               **{node: "its pull of the partition is not in" for node in self.incomplete}}
        reasons = "".join(f"; {node}: {text}" for node, text in sorted(why.items()))
        primaries = (f", {self.primary_replies()} of {self.pr} required from primaries"
                     if self.pr else "")
        complete = len(self.replies) - len(self.incomplete)
        return f"{complete} of {self.r} replies{primaries}{reasons}"

    def stale(self, merged: DVVSet) -> list[str]:
        """Replicas whose copy does not descend the merged answer: read repair targets."""
        return [
            node
            for node, clock in self.replies.items()
            if clock is None or (clock is not merged and not dvvset.descends(clock, merged))
        ]


@dataclass
class PutCore(_Asked):
    """Counts replica acknowledgements against W, and those of primaries against PW."""

    w: int
    n: int
    pw: int = 0
    primaries: int | None = None  # how many of the n replicas written are primaries (None: all)
    acks: set[str] = field(default_factory=set)

    def add_ack(self, node: str, *, fallback: bool = False) -> None:
        self.acks.add(node)
        if fallback:
            self.fallbacks.add(node)

    def answered(self) -> set[str]:
        return set(self.acks)

    def primary_acks(self) -> int:
        return len(self.acks - self.fallbacks)

    def enough(self) -> bool:
        return len(self.acks) >= self.w and (not self.pw or self.primary_acks() >= self.pw)

    def hopeless(self) -> bool:
        """W or PW can no longer be met: too many replicas (primaries) failed, or too few
        primaries were reachable to write to."""
        primaries = self.n if self.primaries is None else self.primaries
        primary_failures = len(set(self.failures) - self.fallbacks)
        return self.n - len(self.failures) < self.w or primaries - primary_failures < self.pw

    def describe(self) -> str:
        """What is known when W was not met, for the error message. The count is of the
        answer's moment: replicas still writing may hold the value later, so the write
        is indeterminate (exit 4), not undone."""
        reasons = "; ".join(f"{node}: {why}" for node, why in sorted(self.reasons().items()))
        text = f"{len(self.acks)} of {self.w} required acknowledgements"
        if self.pw:
            text = f"{text}, {self.primary_acks()} of {self.pw} required from primaries"
        text = f"{text} ({reasons})" if reasons else text
        return f"{text}; the value may still reach other replicas"
