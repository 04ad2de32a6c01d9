"""Claim: balanced, diverse, deterministic, minimal-movement ownership plans."""

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.ring import Ring
from dynd.claim import Claimant, ClaimError, claim, moves, targets


def nodes(count: int, zones: int = 1) -> list[Claimant]:
    return [Claimant(f"n{i:02d}", zone=f"z{i % zones}") for i in range(count)]


def short_windows(owners, n: int, members) -> tuple[int, int]:
    """(windows with fewer than min(n, nodes) nodes, windows with fewer than
    min(n, zones) zones), counted the slow obvious way."""
    zone_of = {m.id: m.zone for m in members}
    size = len(owners)
    node_need = min(n, len(set(owners)))
    zone_need = min(n, len({zone_of[o] for o in owners}))
    short_nodes = short_zones = 0
    for start in range(size):
        window = [owners[(start + i) % size] for i in range(n)]
        short_nodes += len(set(window)) < node_need
        short_zones += len({zone_of[o] for o in window}) < zone_need
    return short_nodes, short_zones


def assert_balanced(ring_size, members, owners, exact=False):
    """Each member owns its target (exact: the very count targets() gives; a
    plan from a current one may hand a round-up to another member)."""
    assert len(owners) == ring_size
    counts = Counter(owners)
    assert set(counts) <= {m.id for m in members}
    want = targets(ring_size, members)
    for member in members:
        assert abs(counts[member.id] - want[member.id]) <= (0 if exact else 1)
    even = [counts[m.id] for m in members if m.tokens is None]
    assert not even or max(even) - min(even) <= 1


def node_diversity_possible(ring_size, n, want) -> bool:
    active = [count for count in want.values() if count]
    return len(active) < n or max(active) <= ring_size // n


def zone_diversity_possible(ring_size, n, members, want) -> bool:
    """Equal-sized zones, and no zone needing more than one partition in n."""
    per_zone = Counter()
    for member in members:
        per_zone[member.zone] += want[member.id]
    sizes = Counter(m.zone for m in members if want[m.id])
    if len(set(sizes.values())) > 1:
        return False
    return len(per_zone) < n or max(per_zone.values()) <= ring_size // n


# ---- targets -------------------------------------------------------------


def test_targets_even_share():
    assert targets(64, nodes(5)) == {"n00": 13, "n01": 13, "n02": 13, "n03": 13, "n04": 12}
    assert targets(64, nodes(4)) == dict.fromkeys(["n00", "n01", "n02", "n03"], 16)


def test_targets_honour_tokens_and_share_the_rest():
    members = [Claimant("a", tokens=32), Claimant("b"), Claimant("c", tokens=0), Claimant("d")]
    assert targets(64, members) == {"a": 32, "b": 16, "c": 0, "d": 16}


def test_targets_all_explicit_below_q_act_as_weights():
    members = [Claimant("a", tokens=2), Claimant("b", tokens=1), Claimant("c", tokens=1)]
    assert targets(64, members) == {"a": 32, "b": 16, "c": 16}


def test_targets_do_not_depend_on_member_order():
    members = nodes(7, zones=3)
    assert targets(128, members) == targets(128, list(reversed(members)))


@pytest.mark.parametrize(
    "members",
    [
        [],
        [Claimant("a"), Claimant("a")],
        [Claimant("a", tokens=40), Claimant("b", tokens=30)],
        [Claimant("a", tokens=0), Claimant("b", tokens=0)],
        [Claimant("a", tokens=-1), Claimant("b")],
        [Claimant("a", tokens=True)],
        [Claimant("")],
        [Claimant("a", zone="")],
        ["a"],
    ],
)
def test_bad_members_are_claim_errors(members):
    with pytest.raises(ClaimError):
        targets(64, members)
    with pytest.raises(ClaimError):
        claim(64, members, None, 3)


@pytest.mark.parametrize(
    "ring_size, current, n",
    [(64, None, 0), (64, None, 65), (64, ("n00",) * 63, 3), (64, (None,) * 64, 3), (48, None, 3)],
)
def test_bad_claim_arguments(ring_size, current, n):
    with pytest.raises(ValueError):
        claim(ring_size, nodes(3), current, n)


# ---- shape of a fresh plan ------------------------------------------------


def test_one_node_owns_everything():
    assert claim(64, nodes(1), None, 3) == ("n00",) * 64


def test_fewer_nodes_than_n_is_still_balanced_and_alternates():
    owners = claim(64, nodes(2), None, 3)
    assert Counter(owners) == {"n00": 32, "n01": 32}
    assert short_windows(owners, 3, nodes(2)) == (0, 0)


def test_claim_is_deterministic_and_ignores_member_order():
    members = nodes(9, zones=3) + [Claimant("big", zone="z1", tokens=20)]
    owners = claim(128, members, None, 3)
    assert owners == claim(128, list(reversed(members)), None, 3)
    grown = claim(128, members + [Claimant("new", zone="z2")], owners, 3)
    assert grown == claim(128, list(reversed(members)) + [Claimant("new", zone="z2")], owners, 3)


def test_five_nodes_balance():
    ring = Ring(64, claim(64, nodes(5), None, 3))
    assert ring.balance() <= 1.25
    assert short_windows(ring.owners, 3, nodes(5)) == (0, 0)


def test_four_zones_of_two_give_every_window_three_zones():
    members = nodes(8, zones=4)
    owners = claim(64, members, None, 3)
    assert short_windows(owners, 3, members) == (0, 0)


def test_three_zones_miss_only_at_the_seam():
    # 64 partitions cannot be cut into zone triples; the shortfall stays minimal.
    members = nodes(9, zones=3)
    owners = claim(64, members, None, 3)
    missing_nodes, missing_zones = short_windows(owners, 3, members)
    assert missing_nodes == 0 and missing_zones <= 2


@settings(max_examples=60, deadline=None)
@given(
    ring_size=st.sampled_from([8, 16, 32, 64, 128]),
    count=st.integers(min_value=1, max_value=20),
    zones=st.integers(min_value=1, max_value=4),
    n=st.integers(min_value=1, max_value=4),
)
def test_fresh_plans_are_balanced_and_diverse(ring_size, count, zones, n):
    members = nodes(count, min(zones, count))
    owners = claim(ring_size, members, None, n)
    assert_balanced(ring_size, members, owners, exact=True)
    want = targets(ring_size, members)
    missing_nodes, missing_zones = short_windows(owners, n, members)
    if node_diversity_possible(ring_size, n, want):
        assert missing_nodes == 0
        if zone_diversity_possible(ring_size, n, members, want):
            assert missing_zones == 0


@settings(max_examples=40, deadline=None)
@given(
    ring_size=st.sampled_from([16, 32, 64, 128]),
    tokens=st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=24)),
                    min_size=1, max_size=12),
    n=st.integers(min_value=1, max_value=3),
)
def test_tokens_are_honoured(ring_size, tokens, n):
    members = [Claimant(f"n{i:02d}", tokens=t) for i, t in enumerate(tokens)]
    try:
        targets(ring_size, members)
    except ClaimError:
        return  # tokens over the ring size, or all zero: rejected, tested above
    owners = claim(ring_size, members, None, n)
    assert_balanced(ring_size, members, owners, exact=True)


# ---- moving from a current plan -------------------------------------------


def test_a_sixth_node_moves_little_and_only_to_itself():
    before = claim(64, nodes(5), None, 3)
    after = claim(64, nodes(6), before, 3)
    assert_balanced(64, nodes(6), after)
    moved = moves(before, after)
    assert len(moved) <= 1.5 * 64 / 6
    assert {to for _, _, to in moved} == {"n05"}
    assert short_windows(after, 3, nodes(6)) == (0, 0)


@pytest.mark.parametrize("ring_size, count", [(64, 12), (256, 32)])
def test_a_leave_moves_the_leavers_partitions_and_few_more(ring_size, count):
    before = claim(ring_size, nodes(count), None, 3)
    for leaver in nodes(count):
        rest = [m for m in nodes(count) if m != leaver]
        after = claim(ring_size, rest, before, 3)
        assert_balanced(ring_size, rest, after)
        assert short_windows(after, 3, rest) == (0, 0)
        moved = moves(before, after)
        own = before.count(leaver.id)
        assert {p for p, old, _ in moved if old == leaver.id} == {
            p for p, owner in enumerate(before) if owner == leaver.id}
        assert len(moved) <= own + 2


def test_replace_keeps_the_old_nodes_partitions():
    members = nodes(6, zones=3)
    before = claim(64, members, None, 3)
    renamed = tuple("fresh" if owner == "n02" else owner for owner in before)
    replaced = [Claimant("fresh", zone="z2") if m.id == "n02" else m for m in members]
    assert claim(64, replaced, renamed, 3) == renamed


def test_unchanged_membership_moves_nothing():
    members = nodes(7, zones=2)
    owners = claim(128, members, None, 3)
    assert claim(128, members, owners, 3) == owners


def test_raising_tokens_moves_about_the_difference():
    members = nodes(8)
    before = claim(128, members, None, 3)
    heavier = [replace(m, tokens=32) if m.id == "n03" else m for m in members]
    after = claim(128, heavier, before, 3)
    assert_balanced(128, heavier, after)
    assert Counter(after)["n03"] == 32
    # Only 3 of the 7 donors own a spot 4 away from n03: the others trade places.
    assert len(moves(before, after)) <= 2 * (32 - 16)
    assert short_windows(after, 3, heavier) == (0, 0)


@settings(max_examples=30, deadline=None)
@given(
    ring_size=st.sampled_from([16, 32, 64, 128]),
    count=st.integers(min_value=2, max_value=16),
    zones=st.integers(min_value=1, max_value=3),
    n=st.integers(min_value=1, max_value=3),
    change=st.sampled_from(["join", "leave"]),
    who=st.integers(min_value=0, max_value=15),
)
def test_membership_changes_keep_the_invariants(ring_size, count, zones, n, change, who):
    members = nodes(count, min(zones, count))
    before = claim(ring_size, members, None, n)
    if change == "join":
        after_members = members + [Claimant("joiner", zone=f"z{who % zones}")]
    else:
        after_members = [m for i, m in enumerate(members) if i != who % count]
    after = claim(ring_size, after_members, before, n)
    assert_balanced(ring_size, after_members, after)
    want = targets(ring_size, after_members)
    if node_diversity_possible(ring_size, n, want):
        assert short_windows(after, n, after_members)[0] == 0
    assert after == claim(ring_size, after_members, before, n)


def test_moves_lists_changed_partitions():
    assert moves(("a", "b", "c"), ("a", "c", "c")) == [(1, "b", "c")]
    with pytest.raises(ClaimError):
        moves(("a",), ("a", "b"))


# ---- the Dynamo load-balance table ----------------------------------------


def balance_and_join(count: int, ring_size: int, n: int = 3) -> tuple[float, float]:
    """(largest owner over mean, fraction of partitions moved when one more
    node joins) for `count` equal nodes."""
    before = claim(ring_size, nodes(count), None, n)
    after = claim(ring_size, nodes(count + 1), before, n)
    return Ring(ring_size, before).balance(), len(moves(before, after)) / ring_size


def check_and_print(counts, ring_sizes) -> None:
    print(f"\n{'S':>3} {'Q':>5} {'max/mean':>9} {'moved':>7} {'ideal':>7}")
    for count in counts:
        for ring_size in ring_sizes:
            balance, moved = balance_and_join(count, ring_size)
            ideal = 1 / (count + 1)
            print(f"{count:>3} {ring_size:>5} {balance:>9.3f} {moved:>7.3f} {ideal:>7.3f}")
            # The ceiling of an even share over the share itself, and a join
            # moves at most 1.5x the share the new node has to take.
            assert balance <= -(-ring_size // count) / (ring_size / count) + 1e-9
            assert moved <= 1.5 * ideal


def test_load_balance_table_quick():
    check_and_print([3, 8, 16], [64, 256])


@pytest.mark.slow
def test_load_balance_table():
    check_and_print([3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64], [64, 128, 256, 512, 1024])
