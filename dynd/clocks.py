"""Wall-clock offsets between members, measured from gossip round trips (pure).

A gossip reply carries the peer's wall clock (``wall_ms``) as it answered. The sender
took its own wall clock when it sent the request and when the reply came back; the peer
answered somewhere in between, most likely half-way, so ``offset = wall_ms - (sent +
received) / 2``, wrong by at most half the round trip (Cristian's algorithm). Expiry is
the first feature whose results depend on wall clocks across nodes (a value expires when
the reading coordinator's clock passes ``expires_at``), so its precision is the cluster's
clock offset; this only measures and warns, it never stops a node from serving.
"""

from __future__ import annotations

from collections.abc import Mapping

SKEW_WARN_MS = 500.0  # an offset above this (either way) is logged as event=clock_skew


def offset_ms(peer_wall_ms: int, sent_ms: float, received_ms: float) -> float:
    """The peer's clock minus ours: positive when the peer's clock is ahead."""
    return peer_wall_ms - (sent_ms + received_ms) / 2


class ClockOffsets:
    """The latest measured offset of each peer, and which of them are past the warning."""

    def __init__(self, warn_ms: float = SKEW_WARN_MS) -> None:
        self.warn_ms = warn_ms
        self._offsets: dict[str, float] = {}

    def record(self, peer: str, peer_wall_ms: int, sent_ms: float, received_ms: float
               ) -> bool:
        """Keep the offset of one round trip; True when it has just gone past the warning
        (it was within it, or unknown, before): the caller logs once, not every round."""
        offset = offset_ms(peer_wall_ms, sent_ms, received_ms)
        before = self._offsets.get(peer)
        self._offsets[peer] = offset
        return abs(offset) > self.warn_ms and (before is None or abs(before) <= self.warn_ms)

    def forget(self, peer: str) -> None:
        self._offsets.pop(peer, None)

    def per_peer(self) -> Mapping[str, float]:
        """peer -> offset in ms (the peer's clock minus ours), rounded to 0.1 ms."""
        return {peer: round(offset, 1) for peer, offset in sorted(self._offsets.items())}

    def largest(self) -> float | None:
        """The offset of largest magnitude, with its sign (None: nothing measured yet)."""
        return max(self.per_peer().values(), key=abs, default=None)
