"""The one way tests form a cluster in process: the state joins and a commit would leave."""

from __future__ import annotations

from dynd import membership
from dynd.membership import Change, Member


def bootstrap_state(ids: list[str], addrs: list[str], ring_size: int, n: int
                    ) -> membership.ClusterState:
    """A committed, settled cluster of `ids` (first one the founder), every transfer done:
    a test starts from a formed cluster without running joins over a network."""
    founder = Member(ids[0], addrs[0], "default", "valid", None, 1)
    state = membership.new_cluster("sim", founder, ring_size)
    for node_id, addr in zip(ids[1:], addrs[1:], strict=True):
        state = membership.stage(state, Change("join", node_id, None), ids[0],
                                 Member(node_id, addr, "default", "joining", None, 1))
    if len(ids) == 1:
        return state  # a new cluster's founder owns every partition already
    return finish(membership.commit(state, n, ids[0]))


def finish(state: membership.ClusterState) -> membership.ClusterState:
    """Every pending transfer completed, as the new owners' pulls would leave the state."""
    for transfer in membership.pending_transfers(state):
        state = membership.complete_transfer(state, transfer.partition)
    return state
