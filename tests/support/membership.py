"""Cluster states for the membership tests: members n0, n1, ... on 127.0.0.1:7000+i."""

from __future__ import annotations

from typing import Any

from dynd import membership as ms
from dynd.membership import Change, ClusterState, Member
from tests.support.cluster import bootstrap_state

RING = 16


def member(node: str, zone: str = "default", port: int = 7000, incarnation: int = 0) -> Member:
    return Member(node, f"127.0.0.1:{port}", zone, "valid", None, incarnation)


def join(state: ClusterState, node: str, by: str = "n0", **fields: Any) -> ClusterState:
    return ms.stage(state, Change("join", node), by, member(node, **fields))


def cluster(size: int, ring_size: int = RING, n: int = 3) -> ClusterState:
    """n0 .. n{size-1}, all valid, every transfer done (bootstrap_state)."""
    return bootstrap_state([f"n{i}" for i in range(size)],
                           [f"127.0.0.1:{7000 + i}" for i in range(size)], ring_size, n)
