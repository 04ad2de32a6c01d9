"""GetCore / PutCore: when a get or put may answer, and with what."""

from __future__ import annotations

from common import dvvset
from common.dvvset import Sibling
from dynd.quorum import GetCore, PutCore


def clock_with(value: bytes, actor: str = "a.1", stored=None):
    return dvvset.update(dvvset.new(Sibling(value, 1)), stored, actor)


def test_get_answers_after_r_replies_with_the_merge() -> None:
    core = GetCore(r=2, n=3)
    one = clock_with(b"x")
    core.add_reply("n1", one)
    assert not core.settled()
    other = clock_with(b"y", actor="b.1")
    core.add_reply("n2", other)
    assert core.settled() and core.enough()
    assert sorted(s.value for s in dvvset.live_values(core.merged())) == [b"x", b"y"]


def test_stale_replicas_are_those_that_do_not_descend_the_answer() -> None:
    core = GetCore(r=3, n=3)
    old = clock_with(b"old")
    new = clock_with(b"new", stored=old)
    core.add_reply("n1", new)
    core.add_reply("n2", old)
    core.add_reply("n3", None)
    assert sorted(core.stale(core.merged())) == ["n2", "n3"]


def test_replies_sharing_one_parsed_clock_merge_to_it_and_are_not_stale() -> None:
    old = clock_with(b"old")
    new = clock_with(b"new", stored=old)
    in_sync = GetCore(r=2, n=3)
    in_sync.add_reply("n1", new)
    in_sync.add_reply("n2", new)  # the same bytes as n1's: the coordinator parsed them once
    assert in_sync.merged() is new
    assert in_sync.stale(new) == []
    one_behind = GetCore(r=3, n=3)
    for node, clock in (("n1", new), ("n2", new), ("n3", old)):
        one_behind.add_reply(node, clock)
    assert dvvset.equal(one_behind.merged(), new)
    assert one_behind.stale(one_behind.merged()) == ["n3"]


def test_fallback_misses_do_not_make_a_stored_key_look_missing() -> None:
    core = GetCore(r=2, n=3)
    core.add_reply("f1", None, fallback=True)
    core.add_reply("f2", None, fallback=True)
    assert core.enough() and not core.settled()  # the primary may still hold it
    core.add_reply("p1", clock_with(b"x"))
    assert core.settled() and core.merged() is not None


def test_not_found_is_answered_once_r_primaries_or_everyone_said_so() -> None:
    primaries = GetCore(r=2, n=3)
    primaries.add_reply("p1", None)
    primaries.add_reply("p2", None)
    assert primaries.settled() and primaries.merged() is None
    everyone = GetCore(r=2, n=3)
    everyone.add_reply("f1", None, fallback=True)
    everyone.add_reply("f2", None, fallback=True)
    everyone.add_failure("p1", "timed out")
    assert everyone.settled() and everyone.enough() and everyone.merged() is None


def test_an_incomplete_replica_is_merged_but_never_counted_toward_r() -> None:
    core = GetCore(r=1, n=3)
    core.add_reply("pending", None, incomplete=True)  # its pull of the partition is not in
    assert not core.enough() and not core.settled()
    core.add_reply("p1", clock_with(b"x"))
    assert core.settled() and core.enough()
    assert core.stale(core.merged()) == ["pending"]  # read repair fills it
    merged_in = GetCore(r=1, n=3)
    merged_in.add_reply("pending", clock_with(b"y", actor="b.1"), incomplete=True)
    merged_in.add_reply("p1", clock_with(b"x"))
    assert sorted(s.value for s in dvvset.live_values(merged_in.merged())) == [b"x", b"y"]


def test_incomplete_misses_do_not_answer_not_found() -> None:
    core = GetCore(r=2, n=3)
    core.add_reply("p1", None)
    core.add_reply("pending", None, incomplete=True)
    assert not core.settled()
    core.add_reply("p2", None)
    assert core.settled() and core.merged() is None


def test_a_get_with_too_few_complete_replicas_is_hopeless() -> None:
    core = GetCore(r=2, n=3)
    core.add_reply("p1", None)
    core.add_reply("pending", None, incomplete=True)
    core.add_failure("p2", "timed out")
    assert core.hopeless() and core.settled() and not core.enough()
    assert core.describe() == ("1 of 2 replies; p2: timed out; "
                               "pending: its pull of the partition is not in")


def test_get_is_hopeless_when_too_many_replicas_failed() -> None:
    core = GetCore(r=2, n=3)
    core.add_failure("n1", "refused")
    assert not core.hopeless()
    core.add_failure("n2", "timed out")
    assert core.hopeless() and core.settled() and not core.enough()


def test_put_counts_distinct_acknowledgements_against_w() -> None:
    core = PutCore(w=2, n=3)
    core.add_ack("n1")
    core.add_ack("n1")
    assert not core.enough()
    core.add_failure("n3", "timed out")
    assert not core.hopeless()
    core.add_ack("n2")
    assert core.enough()


def test_put_failure_message_says_what_is_known() -> None:
    core = PutCore(w=3, n=3)
    core.add_ack("n1")
    core.add_failure("n2", "refused")
    assert core.hopeless()
    assert core.describe() == ("1 of 3 required acknowledgements (n2: refused); "
                               "the value may still reach other replicas")


def test_get_describes_why_r_was_not_met() -> None:
    core = GetCore(r=2, n=3)
    core.add_reply("n1", None)
    core.add_failure("n3", "timed out")
    core.add_failure("n2", "refused")
    assert core.describe() == "1 of 2 replies; n2: refused; n3: timed out"


def test_get_with_pr_waits_for_primaries_beyond_r() -> None:
    core = GetCore(r=2, n=3, pr=2, primaries=2)
    core.add_reply("f1", clock_with(b"x"), fallback=True)
    core.add_reply("p1", None)
    assert not core.enough() and not core.settled()  # R met, but only one primary
    core.add_reply("p2", None)
    assert core.enough() and core.settled()
    assert core.describe() == "3 of 2 replies, 2 of 2 required from primaries"


def test_get_with_pr_fails_rather_than_answer_from_fallbacks() -> None:
    core = GetCore(r=2, n=3, pr=2, primaries=2)
    core.add_reply("f1", clock_with(b"x"), fallback=True)
    core.add_reply("p1", clock_with(b"y"))
    core.add_failure("f2", "refused", fallback=True)
    assert not core.hopeless()  # a fallback failing does not cost a primary
    core.add_failure("p2", "timed out")
    assert core.hopeless() and core.settled() and not core.enough()
    assert core.describe().startswith("2 of 2 replies, 1 of 2 required from primaries")


def test_get_with_pr_above_the_primaries_asked_is_hopeless_at_once() -> None:
    core = GetCore(r=2, n=3, pr=2, primaries=1)  # two primaries known down: fallbacks asked
    assert core.hopeless() and core.settled()
    assert not GetCore(r=2, n=3, pr=0, primaries=1).hopeless()


def test_put_with_pw_counts_only_primary_acknowledgements() -> None:
    core = PutCore(w=2, n=3, pw=2, primaries=3)
    core.add_ack("p1")
    core.add_ack("f1", fallback=True)  # a fallback holding a hint
    assert not core.enough() and not core.hopeless()
    core.add_failure("p2", "refused")
    assert not core.hopeless()
    core.add_ack("p3")
    assert core.enough()


def test_put_with_pw_is_hopeless_once_too_few_primaries_can_acknowledge() -> None:
    core = PutCore(w=2, n=3, pw=2, primaries=2)
    core.add_ack("f1", fallback=True)
    core.add_ack("p1")
    core.add_failure("p2", "refused")
    assert core.hopeless() and not core.enough()
    assert core.describe().startswith(
        "2 of 2 required acknowledgements, 1 of 2 required from primaries")
    assert PutCore(w=1, n=3, pw=1, primaries=0).hopeless()


def test_a_quorum_failure_names_every_replica_asked_that_did_not_count() -> None:
    """A replica that has not answered is named too: "no reply yet" while the request is
    waiting, the deadline's reason once given up on."""
    put = PutCore(w=2, n=3)
    for node in ("n1", "n2", "n3"):
        put.ask(node)
    put.add_ack("n1")
    put.add_failure("n2", "refused")
    assert put.describe() == ("1 of 2 required acknowledgements (n2: refused; n3: no reply "
                              "yet); the value may still reach other replicas")
    put.give_up("no reply within 5s")
    assert put.failures == {"n2": "refused", "n3": "no reply within 5s"}
    get = GetCore(r=2, n=3)
    for node in ("n1", "n2", "n3"):
        get.ask(node, fallback=node == "n3")
    get.add_reply("n1", None)
    assert get.describe() == "1 of 2 replies; n2: no reply yet; n3: no reply yet"
    get.give_up("no reply within 5s")
    assert get.describe() == "1 of 2 replies; n2: no reply within 5s; n3: no reply within 5s"
    assert get.fallbacks == {"n3"}
