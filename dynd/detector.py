"""Phi-accrual failure detector (Hayashibara et al. 2004, as in Akka and Cassandra).

Liveness is not cluster state: each node judges its peers on its own from the
heartbeats it receives (gossip) and from the requests that time out. Instead of
a yes/no timeout the detector reports phi, the suspicion level: phi = k means
the chance that a heartbeat still arrives, given the intervals seen so far, is
10**-k. A node is available while phi < threshold and no request to it timed
out since its last heartbeat.

Pure: time is the caller's ``now`` (seconds, monotonic). Memory is one window
of intervals per known node; call ``forget`` for nodes that left the cluster.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

_LN10 = math.log(10.0)


@dataclass
class _History:
    """The last ``window`` heartbeat intervals of one node, with running sums."""

    window: int
    last: float
    intervals: deque[float] = field(default_factory=deque)
    total: float = 0.0
    total_squares: float = 0.0
    suspected: bool = False

    def add(self, interval: float) -> None:
        if len(self.intervals) == self.window:
            dropped = self.intervals.popleft()
            self.total -= dropped
            self.total_squares -= dropped * dropped
        self.intervals.append(interval)
        self.total += interval
        self.total_squares += interval * interval

    def mean(self) -> float:
        return self.total / len(self.intervals)

    def std(self) -> float:
        mean = self.mean()
        return math.sqrt(max(0.0, self.total_squares / len(self.intervals) - mean * mean))


def _softplus(z: float) -> float:
    """log(1 + e**z) without overflow for large |z|."""
    if z > 0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


class PhiAccrualDetector:
    """Judge peers by how late their heartbeat is compared with their usual rhythm.

    Limits and parameters (all validated, ValueError otherwise):
    - ``threshold`` > 0: phi at which a node counts as down (8 is Akka's default:
      about one false suspicion in 10**8 checks under the learnt distribution).
    - ``window`` >= 1: intervals remembered per node.
    - ``min_std_seconds`` > 0: floor of the standard deviation, so that
      perfectly regular heartbeats do not make a few milliseconds of jitter fatal.
    - ``acceptable_pause_seconds`` >= 0: added to the mean interval, tolerates
      GC-like pauses without suspicion.
    - ``first_interval_seconds`` > 0: the interval assumed before a second
      heartbeat is seen (seeded as mean +- a quarter, like Akka).
    """

    def __init__(self, threshold: float = 8.0, window: int = 100, min_std_seconds: float = 0.1,
                 acceptable_pause_seconds: float = 0.0,
                 first_interval_seconds: float = 1.0) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if not min_std_seconds > 0:
            raise ValueError(f"min_std_seconds must be > 0, got {min_std_seconds!r}")
        if not acceptable_pause_seconds >= 0:
            raise ValueError(
                f"acceptable_pause_seconds must be >= 0, got {acceptable_pause_seconds!r}")
        if not first_interval_seconds > 0:
            raise ValueError(
                f"first_interval_seconds must be > 0, got {first_interval_seconds!r}")
        self.threshold = float(threshold)
        self.window = window
        self.min_std = float(min_std_seconds)
        self.acceptable_pause = float(acceptable_pause_seconds)
        self.first_interval = float(first_interval_seconds)
        self._nodes: dict[str, _History] = {}

    def heartbeat(self, node: str, now: float) -> None:
        """Record a sign of life; clears a suspicion.

        The interval is learnt only if the node was available just before, so an
        outage does not teach the detector that long silences are normal. A
        timestamp earlier than the last one (clock misuse) teaches nothing.
        """
        history = self._nodes.get(node)
        if history is None:
            history = _History(window=self.window, last=now)
            spread = self.first_interval / 4
            history.add(self.first_interval - spread)
            history.add(self.first_interval + spread)
            self._nodes[node] = history
            return
        interval = now - history.last
        if interval >= 0 and self.is_available(node, now):
            history.add(interval)
        history.last = max(history.last, now)
        history.suspected = False

    def phi(self, node: str, now: float) -> float:
        """Suspicion level of ``node`` at ``now``; ``inf`` for a node never heard of."""
        history = self._nodes.get(node)
        if history is None:
            return math.inf
        elapsed = max(0.0, now - history.last)
        mean = history.mean() + self.acceptable_pause
        std = max(history.std(), self.min_std)
        y = (elapsed - mean) / std
        # Logistic approximation of the normal CDF (as in Akka):
        # P(heartbeat later than elapsed) = 1 / (1 + e**z), phi = -log10 of it.
        z = y * (1.5976 + 0.070566 * y * y)
        return _softplus(z) / _LN10

    def is_available(self, node: str, now: float) -> bool:
        """True while phi is under the threshold and no request to it timed out since."""
        history = self._nodes.get(node)
        if history is None or history.suspected:
            return False
        return self.phi(node, now) < self.threshold

    def suspect(self, node: str, now: float) -> None:
        """A request to ``node`` timed out: treat it as down until its next heartbeat.

        ``now`` is when the request gave up; a timeout older than the last
        heartbeat is stale and ignored. An unknown node is already down, so
        nothing is recorded for it.
        """
        history = self._nodes.get(node)
        if history is not None and now >= history.last:
            history.suspected = True

    def forget(self, node: str) -> None:
        """Drop everything known about ``node`` (it left the cluster)."""
        self._nodes.pop(node, None)

    def snapshot(self, now: float) -> dict[str, dict]:
        """Per known node: phi, seconds since its last heartbeat, suspected, available."""
        return {
            node: {
                "phi": self.phi(node, now),
                "last_heartbeat_age": max(0.0, now - history.last),
                "suspected": history.suspected,
                "available": self.is_available(node, now),
            }
            for node, history in sorted(self._nodes.items())
        }
