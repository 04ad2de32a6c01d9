"""Expiry: how a put's expiry is stamped, what a reader at a given clock sees, which dead
copies may be reaped, the wire validation of ttl/expire_at, and the bucket ttl/grace
properties in the gossiped state (absent at their defaults, so digests stay as before)."""

from __future__ import annotations

import pytest

from common import dvvset, messages
from common.dvvset import Sibling
from common.errors import ProtocolError, Rejected
from common.limits import MAX_TTL_SECONDS, Limits
from dynd import membership as ms
from dynd.antientropy import reap_candidate
from dynd.coordinator import Expiry, result_fields
from tests.support.membership import cluster

NOW = 1_800_000_000_000  # ms
GRACE = 3_600_000  # 1 h in ms


# ---- stamping -------------------------------------------------------------------------


def test_a_ttl_is_counted_from_the_write_on_the_coordinators_clock() -> None:
    assert Expiry(ttl=90).stamp(NOW, bucket_ttl=0, node="n1") == NOW + 90_000


def test_the_bucket_default_applies_unless_the_put_names_one_and_ttl_0_overrides_it() -> None:
    assert Expiry().stamp(NOW, bucket_ttl=3600, node="n1") == NOW + 3_600_000
    assert Expiry().stamp(NOW, bucket_ttl=0, node="n1") is None
    assert Expiry(ttl=0).stamp(NOW, bucket_ttl=3600, node="n1") is None
    assert Expiry(ttl=5).stamp(NOW, bucket_ttl=3600, node="n1") == NOW + 5_000


def test_an_expire_at_is_kept_as_given() -> None:
    assert Expiry(at=NOW + 1).stamp(NOW, bucket_ttl=3600, node="n1") == NOW + 1


@pytest.mark.parametrize("at, shown", [(NOW - 12_000, "12 s"), (NOW, "0 s"),
                                       (NOW - 1_500, "1.5 s")])
def test_an_expire_at_not_after_the_coordinators_now_is_refused_naming_the_node(
        at: int, shown: str) -> None:
    with pytest.raises(Rejected, match=f"expire_at is {shown} in the past on n2's clock"):
        Expiry(at=at).stamp(NOW, bucket_ttl=0, node="n2")


def test_an_expire_at_beyond_the_longest_ttl_is_refused() -> None:
    limit = NOW + MAX_TTL_SECONDS * 1000
    assert Expiry(at=limit).stamp(NOW, bucket_ttl=0, node="n1") == limit
    with pytest.raises(Rejected, match="10 years"):
        Expiry(at=limit + 1).stamp(NOW, bucket_ttl=0, node="n1")


# ---- what a reader sees -----------------------------------------------------------------


def _clock(*siblings: Sibling) -> dvvset.DVVSet:
    """One actor's entry holding ``siblings`` (newest first), as a stored clock."""
    return dvvset.DVVSet((("n1.1", len(siblings), tuple(siblings)),))


def test_a_reader_past_expires_at_sees_nothing_but_the_context_still_covers_it() -> None:
    clock = _clock(Sibling(b"v", NOW - 10, NOW + 1000))
    before = result_fields(clock, NOW)
    assert before["found"] is True
    assert before["values"] == [{"value": b"v", "written_at": NOW - 10,
                                 "expires_at": NOW + 1000}]
    after = result_fields(clock, NOW + 1000)
    assert after == {"found": False, "context": before["context"], "values": []}
    assert dvvset.decode_context(after["context"]) == {"n1.1": 1}


def test_values_without_an_expiry_carry_no_expires_at_field() -> None:
    fields = result_fields(_clock(Sibling(b"v", NOW)), NOW)
    assert fields["values"] == [{"value": b"v", "written_at": NOW}]


def test_concurrent_siblings_expire_one_by_one() -> None:
    clock = _clock(Sibling(b"short", NOW, NOW + 10), Sibling(b"long", NOW - 1, NOW + 99))
    assert [v["value"] for v in result_fields(clock, NOW)["values"]] == [b"short", b"long"]
    assert [v["value"] for v in result_fields(clock, NOW + 10)["values"]] == [b"long"]


# ---- reap candidacy -----------------------------------------------------------------------

OLD = NOW - GRACE  # written exactly one grace ago
RECENT = NOW - GRACE + 1


@pytest.mark.parametrize("siblings, reapable", [
    pytest.param([Sibling(None, OLD)], True, id="tombstone past grace"),
    pytest.param([Sibling(None, RECENT)], False, id="tombstone within grace"),
    pytest.param([Sibling(b"v", OLD, OLD + 1)], True, id="expired past grace"),
    pytest.param([Sibling(b"v", RECENT, RECENT + 1)], False,
                 id="expired but written within grace"),
    pytest.param([Sibling(b"v", OLD, NOW + 1)], False, id="not yet expired"),
    pytest.param([Sibling(b"v", OLD)], False, id="live without expiry"),
    pytest.param([Sibling(None, OLD), Sibling(b"v", OLD, OLD + 5)], True,
                 id="tombstone and expired value"),
    pytest.param([Sibling(None, OLD), Sibling(b"v", OLD)], False,
                 id="tombstone beside a live value"),
    pytest.param([Sibling(b"v", OLD, OLD + 5), Sibling(b"w", RECENT, RECENT + 5)], False,
                 id="expired, one sibling within grace"),
])
def test_reap_candidacy(siblings: list[Sibling], reapable: bool) -> None:
    assert reap_candidate(_clock(*siblings), NOW, GRACE) is reapable


def test_a_node_whose_clock_is_behind_does_not_find_an_expired_copy_reapable() -> None:
    clock = _clock(Sibling(b"v", OLD - 10_000, NOW - 5_000))
    assert reap_candidate(clock, NOW, GRACE)
    assert not reap_candidate(clock, NOW - 6_000, GRACE)  # not expired on its clock yet


def test_an_empty_clock_is_no_candidate() -> None:
    assert not reap_candidate(dvvset.empty(), NOW, GRACE)


# ---- wire validation ----------------------------------------------------------------------


def _put(**extra: object) -> dict:
    return messages.request("put", 1, bucket="b", key=b"k", value=b"v", **extra)


@pytest.mark.parametrize("ttl", [0, 1, MAX_TTL_SECONDS])
def test_a_ttl_in_range_is_accepted(ttl: int) -> None:
    assert messages.validate_request(_put(ttl=ttl), Limits()).fields["ttl"] == ttl


@pytest.mark.parametrize("extra, error", [
    ({"ttl": -1}, Rejected), ({"ttl": MAX_TTL_SECONDS + 1}, Rejected),
    ({"expire_at": 0}, Rejected), ({"ttl": 1, "expire_at": NOW}, Rejected),
    ({"ttl": 1.5}, ProtocolError), ({"ttl": True}, ProtocolError),
    ({"expire_at": "2026-01-01"}, ProtocolError),
])
def test_a_bad_expiry_is_refused(extra: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        messages.validate_request(_put(**extra), Limits())


def test_a_delete_takes_no_ttl() -> None:
    with pytest.raises(ProtocolError, match="unknown field 'ttl'"):
        messages.validate_request(messages.request("delete", 1, bucket="b", key=b"k", ttl=5),
                                  Limits())


@pytest.mark.parametrize("extra", [{"ttl": -1}, {"grace": 0},
                                   {"grace": MAX_TTL_SECONDS + 1}])
def test_bad_bucket_ttl_or_grace_is_refused(extra: dict) -> None:
    with pytest.raises(Rejected):
        messages.validate_request(messages.request("bucket_set", 1, name="c", **extra),
                                  Limits())


# ---- bucket properties in the gossiped state ------------------------------------------------


def test_bucket_ttl_and_grace_leave_the_wire_form_unchanged_at_their_defaults() -> None:
    state = ms.set_bucket(cluster(3), "cache", 3, 2, 2, "n0")
    wire = ms.to_wire(state)
    cache = next(b for b in wire["buckets"] if b["name"] == "cache")
    assert "ttl" not in cache and "grace" not in cache  # what an older node reads
    with_ttl = ms.set_bucket(state, "cache", 3, 2, 2, "n0", ttl=60, grace=3600)
    cache = next(b for b in ms.to_wire(with_ttl)["buckets"] if b["name"] == "cache")
    assert (cache["ttl"], cache["grace"]) == (60, 3600)
    assert ms.from_wire(ms.to_wire(with_ttl)) == with_ttl
    assert ms.bucket(with_ttl, "cache").ttl == 60


def test_concurrent_bucket_sets_converge_on_ttl_and_grace_too() -> None:
    base = ms.set_bucket(cluster(3), "cache", 3, 2, 2, "n0")
    a = ms.set_bucket(base, "cache", 3, 2, 2, "n1", ttl=60)
    b = ms.set_bucket(base, "cache", 3, 2, 2, "n1", ttl=120)
    assert ms.reconcile(a, b) == ms.reconcile(b, a)


@pytest.mark.parametrize("props", [{"ttl": -1}, {"ttl": MAX_TTL_SECONDS + 1},
                                   {"grace": -5}, {"ttl": "1h"}])
def test_a_state_with_bad_ttl_or_grace_is_refused(props: dict) -> None:
    wire = ms.to_wire(cluster(2))
    wire["buckets"] = [{**wire["buckets"][0], **props}]
    with pytest.raises(ms.MembershipError):
        ms.from_wire(wire)
    with pytest.raises(ms.MembershipError):
        ms.set_bucket(cluster(2), "x", 3, 2, 2, "n0", **props)


def test_a_bucket_never_set_inherits_the_default_buckets_expiry() -> None:
    state = ms.set_bucket(cluster(2), ms.DEFAULT_BUCKET, 3, 2, 2, "n0", ttl=30)
    assert ms.bucket(state, "other").ttl == 30
