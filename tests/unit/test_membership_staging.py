"""Staging corner cases: rejoining under a known id, clearing joins, planning nothing."""

from collections import Counter

import pytest

from dynd import membership as ms
from dynd.membership import Change, MembershipError
from tests.support.cluster import finish
from tests.support.membership import RING, cluster, join, member


def test_a_known_id_joins_under_an_incarnation_above_the_clusters_record():
    """Heartbeats rank by (incarnation, counter) and dots are minted as id.incarnation:
    a node rejoining under an id the cluster knew must outrank every earlier life."""
    removed = finish(ms.commit(ms.stage(cluster(3), Change("remove", "n2"), "n0"), 3, "n0"))
    removed = ms.update_member(removed, member("n2", port=7002, incarnation=3))
    fresh = join(removed, "n2", port=7002, incarnation=1)  # wiped data dir: starts at 1
    assert fresh.members["n2"].incarnation == 4
    assert join(removed, "n2", incarnation=7).members["n2"].incarnation == 7  # higher stays
    again = join(fresh, "n2", incarnation=1)  # a repeated join is a new life too
    assert again.members["n2"].incarnation == 5
    assert join(cluster(1), "n9", incarnation=1).members["n9"].incarnation == 1  # new id


def test_clear_undoes_staged_joins():
    """As Riak's `cluster clear`: a joining node exists only for its staged join, so
    clearing marks it removed (members are never deleted); it can join again."""
    state = join(join(cluster(2), "n2"), "n3")
    state = ms.stage(state, Change("replace", "n1", "n3"), "n0")
    cleared = ms.clear(state, "n1")
    assert cleared.staged == ()
    assert (cleared.staged_version, cleared.staged_by) == (state.staged_version + 1, "n1")
    assert {n: m.status for n, m in cleared.members.items()} == {
        "n0": "valid", "n1": "valid", "n2": "removed", "n3": "removed"}
    assert ms.reconcile(state, cleared) == cleared  # moves up in the order
    with pytest.raises(MembershipError, match="nothing staged"):
        ms.commit(cleared, 3, "n0")
    again = join(cleared, "n2", port=7999)
    assert again.members["n2"].status == "joining"
    assert again.members["n2"].addr == "127.0.0.1:7999"
    assert finish(ms.commit(again, 3, "n0")).members["n2"].status == "valid"


@pytest.mark.parametrize("pending", [False, True])
def test_plan_with_nothing_staged_is_empty_and_commit_refuses_it(pending):
    state = cluster(3)
    if pending:  # a commit whose transfers are still running
        state = ms.commit(join(state, "n3"), 3, "n0")
        assert ms.pending_transfers(state)
    planned = ms.plan(state, 3)
    assert (planned.changes, planned.transfers) == ((), ())
    assert planned.next_owners == state.next_owners
    assert dict(planned.owners_after) == Counter(state.next_owners)
    assert sum(planned.owners_after.values()) == RING
    with pytest.raises(MembershipError, match="nothing staged"):
        ms.commit(state, 3, "n0")
