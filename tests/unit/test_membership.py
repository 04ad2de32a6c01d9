"""Cluster state: staged changes, plans and commits, transfers, reconcile, the wire."""

import copy
import functools
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynd import membership as ms
from dynd.membership import (
    BucketProps,
    Change,
    ClusterState,
    ForeignCluster,
    MembershipError,
)
from tests.support.cluster import finish
from tests.support.membership import RING, cluster, join, member


def statuses(state: ClusterState) -> dict[str, str]:
    return {node: m.status for node, m in state.members.items()}


def check_ring(state: ClusterState, n: int = 3) -> None:
    """Owners are the valid members, balanced within one, and any n consecutive
    partitions are on min(n, members) nodes except across the one seam where the
    member count does not divide the ring size."""
    valid = {node for node, status in statuses(state).items() if status == "valid"}
    owners = ms.effective_owners(state)
    counts = Counter(owners)
    assert set(counts) == valid
    assert max(counts.values()) - min(counts.values()) <= 1
    crowded = [p for p in range(state.ring_size)
               if len({owners[(p + i) % state.ring_size] for i in range(n)}) < min(n, len(valid))]
    assert len(crowded) < n, crowded


# ------------------------------------------------------------------ new cluster


def test_new_cluster_owns_everything_with_default_bucket():
    state = ms.new_cluster("c1", member("n0"), 64)
    assert state.owners == state.next_owners == ("n0",) * 64
    assert state.epoch == 0 and not state.transfers and not state.staged
    assert ms.bucket(state, "default") == BucketProps("default", 3, 2, 2)
    assert ms.ring(state).counts() == {"n0": 64}
    assert ms.member_status(state, "n0") == "valid"


@pytest.mark.parametrize("args", [
    ("c1", member("n0"), 12),
    ("c1", member("n0"), 4),
    ("", member("n0"), 16),
    ("c 1", member("n0"), 16),
    ("c1", replace(member("n0"), status="joining"), 16),
    ("c1", replace(member("n0"), tokens=17), 16),
    ("c1", replace(member("n0"), addr=""), 16),
    ("c1", "n0", 16),
])
def test_new_cluster_refuses_bad_input(args):
    with pytest.raises(MembershipError):
        ms.new_cluster(*args)


# ------------------------------------------------------------------ staging


def test_join_lists_member_as_joining_at_once():
    state = ms.new_cluster("c1", member("n0"), RING)
    staged = join(state, "n1", by="n1", zone="z2", port=7001)
    assert staged.members["n1"].status == "joining"
    assert staged.members["n1"].zone == "z2"
    assert staged.staged == (Change("join", "n1"),)
    assert (staged.staged_version, staged.staged_by) == (1, "n1")
    assert staged.owners == state.owners  # nothing moves before commit


@pytest.mark.parametrize("change, record, message", [
    (Change("join", "n1"), None, "member record"),
    (Change("join", "n1"), member("n2"), "member record"),
    (Change("join", "n0"), member("n0"), "already valid"),
    (Change("join", "n1", "x"), member("n1"), "no argument"),
    (Change("leave", "n0"), member("n0"), "takes no member"),
    (Change("leave", "ghost"), None, "unknown node"),
    (Change("remove", "ghost"), None, "unknown node"),
    (Change("leave", "n0"), None, "last valid member"),
    (Change("remove", "n0"), None, "last valid member"),
    (Change("replace", "n0", "ghost"), None, "must have joined first"),
    (Change("replace", "n0", "n0"), None, "by itself"),
    (Change("replace", "n0", None), None, "replacement node id"),
    (Change("tokens", "n0", 0), None, "tokens of n0"),
    (Change("tokens", "n0", RING + 1), None, "tokens of n0"),
    (Change("tokens", "n0", True), None, "tokens of n0"),
    (Change("tokens", "ghost", 3), None, "unknown node"),
    (Change("evict", "n0"), None, "change kind"),
    (Change("leave", "bad id"), None, "printable"),
])
def test_stage_refuses(change, record, message):
    state = ms.new_cluster("c1", member("n0"), RING)
    with pytest.raises(MembershipError, match=message):
        ms.stage(state, change, "n0", record)


def test_stage_refuses_bad_staging_node():
    state = ms.new_cluster("c1", member("n0"), RING)
    with pytest.raises(MembershipError, match="staging node"):
        ms.stage(state, Change("tokens", "n0", 4), "")


def test_leaving_every_valid_member_is_refused():
    state = cluster(2)
    state = ms.stage(state, Change("leave", "n0"), "n0")
    with pytest.raises(MembershipError, match="last valid member"):
        ms.stage(state, Change("remove", "n1"), "n0")


def test_leave_needs_a_valid_member():
    state = join(cluster(2), "n2")
    with pytest.raises(MembershipError, match="joining, not valid"):
        ms.stage(state, Change("leave", "n2"), "n0")
    removed = ms.stage(state, Change("remove", "n2"), "n0")  # a joining node can be removed
    assert removed.staged == (Change("remove", "n2"),)


def test_later_change_of_same_node_replaces_earlier_one():
    base = cluster(3)
    state = ms.stage(base, Change("leave", "n2"), "n0")
    state = ms.stage(state, Change("tokens", "n2", 3), "n0")
    state = ms.stage(state, Change("remove", "n2"), "n1")
    state = ms.stage(state, Change("tokens", "n2", 5), "n1")
    assert state.staged == (Change("remove", "n2"), Change("tokens", "n2", 5))
    assert (state.staged_version, state.staged_by) == (base.staged_version + 4, "n1")


def test_replace_needs_a_joined_new_node_once():
    state = join(cluster(3), "n9")
    state = ms.stage(state, Change("replace", "n1", "n9"), "n0")
    with pytest.raises(MembershipError, match="already replaces n1"):
        ms.stage(state, Change("replace", "n2", "n9"), "n0")
    with pytest.raises(MembershipError, match="it replaces n1"):
        ms.stage(state, Change("remove", "n9"), "n0")
    with pytest.raises(MembershipError, match="valid"):
        ms.stage(state, Change("replace", "n9", "n1"), "n0")


# ------------------------------------------------------------- plan and commit


@pytest.mark.parametrize("size", range(1, 7))
def test_growing_cluster_one_node_at_a_time(size):
    state = cluster(size)
    assert state.epoch == (1 if size > 1 else 0)
    assert set(statuses(state).values()) == {"valid"}
    check_ring(state)
    state = join(state, "new")
    planned = ms.plan(state, 3)
    assert sum(planned.owners_after.values()) == RING
    assert set(planned.owners_after) == {f"n{i}" for i in range(size)} | {"new"}
    committed = ms.commit(state, 3, "n0")
    assert committed.epoch == state.epoch + 1
    assert committed.next_owners == planned.next_owners
    assert committed.transfers == planned.transfers
    assert committed.members["new"].status == "valid"
    assert committed.staged == ()
    assert {t.partition for t in committed.transfers} == {
        p for p in range(RING) if committed.owners[p] != committed.next_owners[p]}
    assert sum(t.target == "new" for t in committed.transfers) == planned.owners_after["new"]
    for transfer in committed.transfers:
        assert transfer.target == committed.next_owners[transfer.partition]
        assert transfer.sources[0] == committed.owners[transfer.partition]
    assert ms.effective_owners(committed) == ms.effective_owners(state)  # nothing moved yet
    done = finish(committed)
    assert ms.effective_owners(done) == planned.next_owners
    check_ring(done)


def test_joining_many_at_once_and_transfer_sources():
    state = cluster(3)
    for node in ("n3", "n4", "n5"):
        state = join(state, node)
    committed = ms.commit(state, 3, "n0")
    current = ms.ring(state)
    for transfer in committed.transfers:
        replicas = current.primaries(transfer.partition, 3, ms.zones(state))
        assert transfer.sources == tuple(r for r in replicas if r != transfer.target)
    check_ring(finish(committed))


def test_transfers_complete_one_by_one_with_dual_writes():
    committed = ms.commit(join(cluster(2), "n2"), 3, "n0")
    pending = ms.pending_transfers(committed)
    assert pending
    first = pending[0]
    assert first.target == "n2" and committed.next_owners[first.partition] == "n2"
    assert ms.effective_owners(committed)[first.partition] != "n2"  # still the old owner
    state = ms.complete_transfer(committed, first.partition)
    assert ms.effective_owners(state)[first.partition] == "n2"
    assert ms.pending_transfers(state) == pending[1:]
    assert ms.complete_transfer(state, first.partition) is state  # idempotent
    with pytest.raises(MembershipError, match="still pending"):
        ms.plan(ms.stage(state, Change("tokens", "n0", 4), "n0"), 3)


def test_complete_transfer_refusals():
    committed = ms.commit(join(cluster(2), "n2"), 3, "n0")
    moving = {t.partition for t in committed.transfers}
    still = next(p for p in range(RING) if p not in moving)
    with pytest.raises(MembershipError, match="no transfer of partition"):
        ms.complete_transfer(committed, still)
    with pytest.raises(MembershipError, match="epoch 1 reported in epoch 2"):
        ms.complete_transfer(committed, min(moving), epoch=1)
    assert min(moving) in ms.complete_transfer(committed, min(moving), epoch=2).done
    for bad in (-1, RING, "3", True):
        with pytest.raises(MembershipError, match="partition"):
            ms.complete_transfer(committed, bad)


def test_leaving_member_hands_off_then_is_removed():
    state = cluster(3)
    owned = [p for p, owner in enumerate(ms.effective_owners(state)) if owner == "n2"]
    assert owned  # else the all() below holds for no transfer at all
    committed = ms.commit(ms.stage(state, Change("leave", "n2"), "n0"), 3, "n0")
    assert committed.members["n2"].status == "leaving"
    assert {t.partition for t in committed.transfers} >= set(owned)
    assert all(t.sources[0] == "n2" for t in committed.transfers if t.partition in owned)
    check_ring(finish(committed))
    *first, last = ms.pending_transfers(committed)
    partial = committed
    for transfer in first:
        partial = ms.complete_transfer(partial, transfer.partition)
    assert ms.member_status(partial, "n2") == "leaving"
    final = ms.complete_transfer(partial, last.partition)
    assert final.members["n2"].status == "removed"  # complete_transfer settles
    # A merge of completions (no complete_transfer call) is settled by member_status/settle.
    merged = replace(partial, done=final.done)
    assert merged.members["n2"].status == "leaving"
    assert ms.member_status(merged, "n2") == "removed"
    assert ms.settle(merged).members["n2"].status == "removed"
    assert ms.settle(final) is final


def test_a_leaver_holding_hints_has_not_left_until_it_says_it_holds_none():
    state = ms.announce_hints(cluster(4), "n3", True)
    leaving = finish(ms.commit(ms.stage(state, Change("leave", "n3"), "n0"), 3, "n0"))
    assert not ms.pending_transfers(leaving)
    assert leaving.members["n3"].status == "leaving"  # complete_transfer did not settle it
    assert ms.member_status(leaving, "n3") == "leaving"
    assert not ms.takes_replicas(leaving, "n3")  # hints for it go elsewhere meanwhile
    assert ms.may_hold_hints(leaving, "n3")
    done = ms.announce_hints(leaving, "n3", False)
    assert ms.member_status(done, "n3") == "removed"
    assert not ms.may_hold_hints(done, "n3")
    assert ms.settle(done).members["n3"].status == "removed"


def test_a_removed_node_that_says_it_holds_hints_is_asked_until_removed_again():
    removed = finish(ms.commit(ms.stage(cluster(4), Change("leave", "n3"), "n0"), 3, "n0"))
    assert removed.members["n3"].status == "removed"
    late = ms.announce_hints(removed, "n3", True)  # it took a hint before hearing of it
    assert ms.member_status(late, "n3") == "removed" and ms.may_hold_hints(late, "n3")
    given_up = ms.commit(ms.stage(late, Change("remove", "n3"), "n0"), 3, "n0")
    assert not ms.may_hold_hints(given_up, "n3")
    with pytest.raises(MembershipError, match="already removed"):
        ms.stage(given_up, Change("remove", "n3"), "n0")
    # Its own word that it still holds some wins over the commit's at the same version.
    says = replace(given_up.members["n3"], hints=True)
    assert ms.reconcile(given_up, replace(given_up, members=ms.FrozenMap(
        {**given_up.members, "n3": says}))).members["n3"].hints


def test_hints_announcements_travel_and_old_states_read_without_them():
    state = cluster(3)
    said = ms.announce_hints(state, "n1", True)
    assert ms.announce_hints(said, "n1", True) is said
    assert ms.reconcile(state, said).members["n1"].hints
    assert ms.from_wire(ms.to_wire(said)) == said
    old = ms.to_wire(state)
    for item in old["members"]:
        del item["hints"]
    assert ms.from_wire(old) == state
    with pytest.raises(MembershipError, match="unknown node"):
        ms.announce_hints(state, "ghost", True)


def test_member_status_of_unknown_node():
    with pytest.raises(MembershipError, match="unknown node"):
        ms.member_status(cluster(1), "ghost")


def test_forced_remove_is_immediate_and_the_dead_node_is_no_source():
    state = cluster(4)
    committed = ms.commit(ms.stage(state, Change("remove", "n3"), "n0"), 3, "n0")
    assert committed.members["n3"].status == "removed"
    assert committed.transfers
    for transfer in committed.transfers:
        assert "n3" not in transfer.sources
        assert transfer.sources  # other replicas still hold the data
    check_ring(finish(committed))


def test_forced_remove_with_one_replica_leaves_nothing_to_copy():
    state = cluster(2, n=1)
    committed = ms.commit(ms.stage(state, Change("remove", "n1"), "n0"), 1, "n0")
    assert all(t.sources == () for t in committed.transfers)
    assert ms.pending_transfers(committed) == []
    assert ms.effective_owners(committed) == ("n0",) * RING


def test_replace_moves_exactly_the_old_nodes_partitions():
    state = join(cluster(3), "n9")
    old = [p for p, owner in enumerate(ms.effective_owners(state)) if owner == "n1"]
    planned = ms.plan(ms.stage(state, Change("replace", "n1", "n9"), "n0"), 3)
    assert [t.partition for t in planned.transfers] == old
    assert all(t.target == "n9" and t.sources[0] == "n1" for t in planned.transfers)
    committed = ms.commit(ms.stage(state, Change("replace", "n1", "n9"), "n0"), 3, "n0")
    assert statuses(committed) == {"n0": "valid", "n1": "leaving", "n2": "valid",
                                   "n9": "valid"}
    done = finish(committed)
    assert statuses(done)["n1"] == "removed"
    check_ring(done)


def test_tokens_change_ownership_share():
    state = ms.stage(cluster(3), Change("tokens", "n0", 4), "n1")
    planned = ms.plan(state, 3)
    assert dict(planned.owners_after) == {"n0": 4, "n1": 6, "n2": 6}
    committed = finish(ms.commit(state, 3, "n1"))
    assert committed.members["n0"].tokens == 4
    assert ms.ring(committed).counts() == {"n0": 4, "n1": 6, "n2": 6}


def test_join_with_tokens_in_one_commit():
    state = join(cluster(2), "n2")
    state = ms.stage(state, Change("tokens", "n2", 2), "n0")
    committed = finish(ms.commit(state, 3, "n0"))
    assert ms.ring(committed).counts()["n2"] == 2
    assert committed.members["n2"] == replace(
        committed.members["n2"], status="valid", tokens=2)


def test_plan_revalidates_changes_that_gossip_made_stale():
    state = join(cluster(2), "n2")
    committed = finish(ms.commit(state, 3, "n0"))
    stale = replace(committed, staged=(Change("join", "n2"),))
    with pytest.raises(MembershipError, match="already valid"):
        ms.plan(stale, 3)


def test_plan_refuses_impossible_claims():
    state = ms.stage(cluster(2, ring_size=8), Change("tokens", "n0", 8), "n0")
    state = ms.stage(state, Change("tokens", "n1", 8), "n0")
    with pytest.raises(MembershipError, match="cannot plan"):
        ms.plan(state, 3)
    with pytest.raises(MembershipError, match="n must be"):
        ms.plan(state, 0)
    with pytest.raises(MembershipError, match="n must be"):
        ms.plan(state, 17)


def test_plan_caps_n_at_the_ring_size():
    state = join(cluster(2, ring_size=8), "n2")
    assert ms.plan(state, 16) == ms.plan(state, 8)


def test_rejoin_after_removal():
    state = finish(ms.commit(ms.stage(cluster(3), Change("remove", "n2"), "n0"), 3, "n0"))
    again = join(state, "n2", port=7100)
    assert again.members["n2"].status == "joining"
    assert ms.reconcile(state, again) == again
    check_ring(finish(ms.commit(again, 3, "n0")))


# ---------------------------------------------------------- buckets, members


def test_buckets():
    state = cluster(1)
    assert ms.bucket(state, "photos") == BucketProps("photos", 3, 2, 2)
    state = ms.set_bucket(state, "photos", 5, 3, 1, "n0")
    assert ms.bucket(state, "photos") == BucketProps("photos", 5, 3, 1, 1, "n0")
    state = ms.set_bucket(state, "default", 2, 1, 1, "n0")
    assert ms.bucket(state, "default").version == 1
    assert ms.bucket(state, "other") == BucketProps("other", 2, 1, 1, 1, "n0")


@pytest.mark.parametrize("name, n, r, w", [
    ("b", 3, 4, 1), ("b", 3, 1, 4), ("b", 3, 0, 1), ("b", 17, 1, 1), ("b", 0, 1, 1),
    ("b", "3", 1, 1), ("b", True, 1, 1), ("", 3, 2, 2), ("x" * 65, 3, 2, 2), (b"b", 3, 2, 2),
    ("\ud800", 3, 2, 2),
])
def test_set_bucket_refuses(name, n, r, w):
    with pytest.raises(MembershipError):
        ms.set_bucket(cluster(1), name, n, r, w, "n0")


def test_buckets_carry_primary_quorums_checked_against_r_and_w():
    state = ms.set_bucket(cluster(1), "strict", 3, 2, 2, "n0", pr=2, pw=1)
    assert (ms.bucket(state, "strict").pr, ms.bucket(state, "strict").pw) == (2, 1)
    assert ms.bucket(state, "other").pr == 0
    for pr, pw in ((3, 0), (0, 3), (-1, 0), (0, -1), (True, 0), (0, "1")):
        with pytest.raises(MembershipError, match="pr|pw"):
            ms.set_bucket(cluster(1), "strict", 3, 2, 2, "n0", pr=pr, pw=pw)


def test_a_state_without_primary_quorums_reads_back_unchanged():
    """States written before pr/pw existed (persisted, or gossiped by an older node) have
    no such keys; a state that sets none writes none, so its digest is the old one."""
    plain = busy_state()
    wire = ms.to_wire(plain)
    assert all(set(b) == {"name", "n", "r", "w", "version", "writer"} for b in wire["buckets"])
    strict = ms.set_bucket(plain, "photos", 2, 1, 2, "n1", pr=1, pw=2)
    strict_wire = ms.to_wire(strict)
    assert {"pr": 1, "pw": 2}.items() <= strict_wire["buckets"][1].items()
    assert ms.from_wire(copy.deepcopy(strict_wire)) == strict
    assert ms.digest(strict) != ms.digest(plain)


def test_update_member_keeps_status_and_never_lowers_incarnation():
    state = cluster(2)
    moved = ms.update_member(state, replace(member("n1", port=9000, incarnation=3),
                                            status="removed", tokens=2))
    record = moved.members["n1"]
    assert (record.addr, record.incarnation, record.status, record.tokens) == (
        "127.0.0.1:9000", 3, "valid", None)
    assert record.addr_version == state.members["n1"].addr_version + 1
    older = ms.update_member(moved, member("n1", port=9001, incarnation=1))
    assert older.members["n1"].incarnation == 3
    assert older.members["n1"].addr == "127.0.0.1:9001"
    assert ms.update_member(older, member("n1", port=9001, incarnation=2)) is older
    with pytest.raises(MembershipError, match="must join first"):
        ms.update_member(state, member("ghost"))


# ------------------------------------------------------------------ reconcile


def test_reconcile_takes_the_higher_epoch_and_unions_done():
    base = ms.commit(join(cluster(2), "n2"), 3, "n0")
    moving = [t.partition for t in base.transfers]
    a = ms.complete_transfer(base, moving[0])
    b = ms.complete_transfer(base, moving[1])
    merged = ms.reconcile(a, b)
    assert merged.done == {moving[0], moving[1]}
    newer = ms.commit(ms.stage(finish(base), Change("tokens", "n0", 3), "n0"), 3, "n0")
    assert ms.reconcile(a, newer).epoch == newer.epoch
    assert ms.reconcile(a, newer).next_owners == newer.next_owners


def test_reconcile_per_field_registers():
    base = cluster(2)
    a = ms.set_bucket(ms.stage(base, Change("tokens", "n0", 4), "n0"), "x", 2, 1, 1, "n0")
    b = ms.update_member(ms.set_bucket(base, "y", 2, 2, 2, "n1"), member("n1", port=1234))
    merged = ms.reconcile(a, b)
    assert merged.staged == a.staged
    assert set(merged.buckets) == {"default", "x", "y"}
    assert merged.members["n1"].addr == "127.0.0.1:1234"
    # Concurrent set of one bucket: the writer breaks the version tie, the same way on both.
    c = ms.set_bucket(base, "x", 5, 5, 5, "n9")
    assert ms.reconcile(a, c).buckets["x"] == ms.reconcile(c, a).buckets["x"]
    assert ms.reconcile(a, c).buckets["x"].writer == "n9"


def test_reconcile_refuses_another_cluster():
    other = ms.new_cluster("c2", member("n0"), RING)
    with pytest.raises(ForeignCluster):
        ms.reconcile(cluster(1), other)
    with pytest.raises(ForeignCluster):
        ms.reconcile(cluster(1), ms.new_cluster("c1", member("n0"), 32))


def test_concurrent_commits_of_one_epoch_resolve_the_same_everywhere():
    base = cluster(2)
    a = ms.commit(join(base, "n2"), 3, "n0")
    b = ms.commit(join(base, "n3"), 3, "n1")
    assert a.epoch == b.epoch and a.next_owners != b.next_owners
    assert ms.reconcile(a, b) == ms.reconcile(b, a)


# Random histories: three nodes share one origin, act on their own copies and gossip.
OPS = ("join", "leave", "remove", "replace", "tokens", "clear", "commit", "complete",
       "bucket", "announce", "gossip") + ("join", "commit", "complete", "gossip") * 3
HISTORY = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(OPS), st.integers(0, 999)),
                   min_size=20, max_size=80)


def act(replicas: list[ClusterState], who: int, op: str, x: int) -> ClusterState:
    state, by = replicas[who], f"n{who}"
    nodes = sorted(state.members)
    node = nodes[x % len(nodes)]
    if op == "join":
        return join(state, f"n{x % 6}", by=by, zone=f"z{x % 2}", port=7000 + x)
    if op in ("leave", "remove"):
        return ms.stage(state, Change(op, node), by)
    if op == "replace":
        joining = [m for m in nodes if state.members[m].status == "joining"] or nodes
        return ms.stage(state, Change("replace", node, joining[x % len(joining)]), by)
    if op == "tokens":
        return ms.stage(state, Change("tokens", node, 1 + x % 4), by)
    if op == "clear":
        return ms.clear(state, by)
    if op == "commit":
        return ms.commit(state, 2, by)
    if op == "complete":  # a few of the pending transfers
        for transfer in ms.pending_transfers(state)[x % 3:x % 3 + 1 + x % 5]:
            state = ms.complete_transfer(state, transfer.partition)
        return state
    if op == "bucket":
        return ms.set_bucket(state, f"b{x % 2}", 1 + x % 3, 1, 1, by)
    if op == "announce":
        return ms.update_member(state, member(node, port=x, incarnation=x % 3))
    return ms.reconcile(state, replicas[x % 3])


def play(history) -> list[ClusterState]:
    replicas = [ms.new_cluster("c1", member("n0"), 8)] * 3
    for who, op, x in history:
        try:
            updated = act(replicas, who, op, x)
        except MembershipError:
            continue
        assert ms.reconcile(replicas[who], updated) == updated, f"{op} went back in the order"
        replicas[who] = updated
    return replicas


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=HISTORY)
def test_reconcile_is_a_semilattice(history):
    a, b, c = play(history)
    assert ms.reconcile(a, a) == a
    assert ms.reconcile(a, b) == ms.reconcile(b, a)
    assert ms.reconcile(b, c) == ms.reconcile(c, b)
    assert ms.reconcile(ms.reconcile(a, b), c) == ms.reconcile(a, ms.reconcile(b, c))
    merged = ms.reconcile(ms.reconcile(a, b), c)
    assert ms.reconcile(merged, a) == merged  # absorbs its parts
    assert ms.from_wire(ms.to_wire(merged)) == merged  # merges are well-formed states
    assert (ms.digest(a) == ms.digest(b)) == (a == b)


# ---------------------------------------------------------------------- wire


@functools.cache
def busy_state() -> ClusterState:
    """Mid-transfer, with staged changes, custom buckets, tokens and zones."""
    state = join(cluster(3), "n3", zone="z2")
    state = ms.set_bucket(state, "photos", 2, 1, 2, "n1")
    state = ms.complete_transfer(ms.commit(state, 3, "n0"),
                                 ms.pending_transfers(ms.commit(state, 3, "n0"))[0].partition)
    state = join(state, "n4")
    state = ms.stage(state, Change("replace", "n1", "n4"), "n2")
    return ms.stage(state, Change("tokens", "n0", 3), "n2")


def test_wire_round_trip():
    state = busy_state()
    wire = ms.to_wire(state)
    assert ms.from_wire(copy.deepcopy(wire)) == state
    assert ms.digest(ms.from_wire(wire)) == ms.digest(state)
    assert ms.digest(state) != ms.digest(ms.clear(state, "n0"))
    assert len(ms.digest(state)) == 16


def _set(path, value):
    def mutate(wire):
        target = wire
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _drop(path):
    def mutate(wire):
        target = wire
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


HOSTILE = {
    "missing key": _drop(["epoch"]),
    "extra key": _set(["extra"], 1),
    "format": _set(["format"], 2),
    "format bool": _set(["format"], True),
    "cluster id type": _set(["cluster_id"], 5),
    "cluster id empty": _set(["cluster_id"], ""),
    "ring size": _set(["ring_size"], 12),
    "ring size huge": _set(["ring_size"], 2**70),
    "epoch negative": _set(["epoch"], -1),
    "epoch text": _set(["epoch"], "1"),
    "epoch bool": _set(["epoch"], True),
    "members type": _set(["members"], {}),
    "no members": _set(["members"], []),
    "member missing key": _drop(["members", 0, "zone"]),
    "member status": _set(["members", 0, "status"], "zombie"),
    "member tokens": _set(["members", 0, "tokens"], 0),
    "member id space": _set(["members", 0, "id"], "n 0"),
    "member addr huge": _set(["members", 0, "addr"], "a" * 10_000),
    "member version": _set(["members", 0, "status_version"], -3),
    "member not map": _set(["members", 0], ["n0"]),
    "duplicate member": lambda w: w["members"].append(dict(w["members"][0])),
    "owners short": lambda w: w["owners"].pop(),
    "owner index": _set(["owners", 0], 99),
    "owner negative": _set(["owners", 0], -1),
    "owner name": _set(["owners", 0], "n0"),
    "next owners type": _set(["next_owners"], "n0"),
    "transfer dropped": lambda w: w["transfers"].pop(),
    "transfer shape": _set(["transfers", 0], [1, 2]),
    "transfer target": lambda w: w["transfers"][0].__setitem__(1, w["owners"][0]),
    "transfer source is target": lambda w: w["transfers"][0][2].append(w["transfers"][0][1]),
    "transfer sources duplicate": lambda w: w["transfers"][0][2].append(w["transfers"][0][2][0]),
    "done without transfer": lambda w: w["done"].append(
        next(p for p in range(RING) if w["owners"][p] == w["next_owners"][p])),
    "done out of range": _set(["done"], [RING]),
    "staged kind": _set(["staged", 0, 0], "evict"),
    "staged node unknown": _set(["staged", 0, 1], "ghost"),
    "staged replace unknown": _set(["staged", 1, 2], "ghost"),
    "staged tokens type": _set(["staged", 2, 2], "3"),
    "staged shape": _set(["staged", 0], "join n4"),
    "staged duplicate": lambda w: w["staged"].append(list(w["staged"][2])),
    "staged by": _set(["staged_by"], 5),
    "no default bucket": lambda w: w["buckets"].pop(0),
    "bucket r over n": _set(["buckets", 0, "r"], 4),
    "bucket n": _set(["buckets", 0, "n"], 17),
    "bucket pr over r": _set(["buckets", 0, "pr"], 3),
    "bucket pw over w": _set(["buckets", 1, "pw"], 3),
    "bucket pr negative": _set(["buckets", 0, "pr"], -1),
    "bucket unknown key": _set(["buckets", 0, "px"], 1),
    "bucket name": _set(["buckets", 1, "name"], "x" * 65),
    "duplicate bucket": lambda w: w["buckets"].append(dict(w["buckets"][0])),
    "not a map": lambda w: w.clear(),
}


@pytest.mark.parametrize("mutation", HOSTILE.values(), ids=HOSTILE.keys())
def test_from_wire_refuses_malformed_states(mutation):
    wire = ms.to_wire(busy_state())
    assert [c[0] for c in wire["staged"]] == ["join", "replace", "tokens"]
    mutation(wire)
    with pytest.raises(MembershipError):
        ms.from_wire(wire)


@pytest.mark.parametrize("obj", [None, [], "state", 3, b"\x00"])
def test_from_wire_refuses_non_maps(obj):
    with pytest.raises(MembershipError):
        ms.from_wire(obj)


def _paths(obj, prefix=()):
    yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for key, value in children:
        yield from _paths(value, (*prefix, key))


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.text(max_size=5)
    | st.binary(max_size=3) | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(pick=st.integers(0, 10**6), junk=JUNK)
def test_from_wire_never_crashes_on_junk(pick, junk):
    wire = ms.to_wire(busy_state())
    paths = [p for p in _paths(wire) if p]
    _set(list(paths[pick % len(paths)]), junk)(wire)
    try:
        ms.from_wire(wire)
    except MembershipError:
        pass
