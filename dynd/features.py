"""Which features the members support, and the gate in front of the new shapes they need.

A node reports the features it supports in its replies to ``p_gossip`` and ``p_status``
(nodes that predate this ignore reply keys they do not read). Once every member that is
not removed has reported a feature, it is recorded in the cluster state's grow-only
``features`` set, which gossip spreads; from then on requests that need it are served
(as Riak's capabilities gate new shapes). Before that they are refused, naming the
members that lack it, so no node ever meets a stored or wire shape it cannot read.
"""

from __future__ import annotations

from typing import Any

from common.errors import Rejected
from dynd import membership
from dynd.cluster import ClusterView

SORT_KEYS = "sk"  # items with a sort key: (bucket, key, sk)
EXPIRY = "ttl"  # siblings with expires_at (3-item wire form), bucket ttl and grace
RBAC = "rbac"  # access control: the `auth` key of the cluster state
BATCHED_REAP = "reap2"  # p_digests and the batched p_reap (items); before it, one key a call
FRAME_BATCHES = "batch"  # batch frames between nodes (several messages in one frame)
SUPPORTED = frozenset({SORT_KEYS, EXPIRY, RBAC, BATCHED_REAP, FRAME_BATCHES})
_NEEDS = {SORT_KEYS: "sort keys", EXPIRY: "writes with an expiry and bucket ttl/grace",
          RBAC: "access control", BATCHED_REAP: "batched reaping",
          FRAME_BATCHES: "batch frames"}


class Features:
    def __init__(self, node_id: str, view: ClusterView,
                 supported: frozenset[str] = SUPPORTED) -> None:
        """``supported``: what this node reports (tests give a node less, to stand for
        one that runs an older version)."""
        self.view = view
        self.supported = supported
        self.reported: dict[str, frozenset[str]] = {node_id: supported}

    def wire(self) -> list[str]:
        """This node's features, as its replies carry them."""
        return sorted(self.supported)

    def record(self, node: str, wire: Any) -> None:
        """A member's reply said it supports ``wire`` (a list of names; anything else is
        ignored): activate what every member has now reported."""
        if not isinstance(wire, list) or not all(isinstance(name, str) for name in wire):
            return
        if node in self.view.state.members:
            self.reported[node] = frozenset(wire[:membership.MAX_FEATURES])
            self.activate()

    def activate(self) -> None:
        """Record in the cluster state every feature all non-removed members reported."""
        state = self.view.state
        activated = membership.activate_features(state, self.reported)
        if activated is not state:
            self.view.set_state(activated)

    def describe(self) -> list[dict[str, Any]]:
        """One row per feature any member reported or the cluster activated: whether it
        is active and, while it is not, which non-removed members have not reported it."""
        state = self.view.state
        names = sorted(state.features.union(*self.reported.values()))
        return [{"feature": name, "active": name in state.features,
                 "lacking": [] if name in state.features
                 else membership.lacking_feature(state, self.reported, name)}
                for name in names]

    def require(self, feature: str) -> None:
        """Refuse (exit 5) a request that needs ``feature`` before the cluster has it."""
        if feature in self.view.state.features:
            return
        self.activate()  # every member may have reported it since the last record
        if feature in self.view.state.features:
            return
        lacking = membership.lacking_feature(self.view.state, self.reported, feature)
        raise Rejected(f"{_NEEDS[feature]} need every member to run this version; "
                       f"not yet: {', '.join(lacking)}")
