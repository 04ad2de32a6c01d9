"""The gossiped record of activated features: activated only once
every member that is not removed reported a feature, grow-only across merges, and absent
from the state (same bytes, same digest, readable by older nodes) while empty."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dynd import membership as ms
from dynd.membership import MembershipError
from tests.support.membership import cluster

SK = frozenset({"sk"})


def test_a_feature_activates_only_once_every_member_not_removed_reported_it() -> None:
    state = cluster(3)
    reported = {"n0": SK, "n1": SK}
    assert ms.activate_features(state, reported) is state
    assert ms.lacking_feature(state, reported, "sk") == ["n2"]
    reported["n2"] = frozenset({"sk", "ttl"})
    active = ms.activate_features(state, reported)
    assert active.features == SK  # ttl: n0 and n1 did not report it
    assert ms.lacking_feature(active, reported, "ttl") == ["n0", "n1"]


def test_a_removed_member_does_not_hold_a_feature_back() -> None:
    state = cluster(3)
    members = dict(state.members)
    members["n2"] = replace(members["n2"], status="removed")
    state = replace(state, members=ms.FrozenMap(members))
    assert ms.activate_features(state, {"n0": SK, "n1": SK}).features == SK


def test_activated_features_are_grow_only_under_reconcile() -> None:
    base = cluster(3)
    active = replace(base, features=SK)
    assert ms.reconcile(base, active).features == SK
    assert ms.reconcile(active, base).features == SK
    assert ms.reconcile(active, replace(base, features=frozenset({"ttl"}))).features == {
        "sk", "ttl"}


def test_an_empty_set_leaves_the_wire_form_and_digest_as_before() -> None:
    state = cluster(3)
    wire = ms.to_wire(state)
    assert "features" not in wire  # what a node that predates features reads and digests
    assert ms.from_wire(wire) == state
    active = replace(state, features=SK)
    assert ms.to_wire(active)["features"] == ["sk"]
    assert ms.from_wire(ms.to_wire(active)) == active
    assert ms.digest(active) != ms.digest(state)


@pytest.mark.parametrize("bad", ["sk", [1], ["with space"], ["x"] * (ms.MAX_FEATURES + 1)])
def test_a_malformed_features_list_is_refused(bad: object) -> None:
    wire = {**ms.to_wire(cluster(2)), "features": bad}
    with pytest.raises(MembershipError):
        ms.from_wire(wire)
