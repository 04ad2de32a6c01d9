"""DVV sets: reference examples, causal-model properties over simulated histories, wire forms.

Histories are generated the way a cluster produces them: three nodes (one actor each)
coordinate puts and deletes on their own replica with blind, fresh or stale contexts,
and replicas sync in random order. A small independent model of causality (which writes
a replica has seen, which client context covered which write) predicts the siblings.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import dvvset as dvv
from common.dvvset import DVVSet, InvalidClock, InvalidContext, Sibling

ACTORS = ("n0.1", "n1.1", "n2.1")
Dot = tuple[str, int]


def sib(name: str, at: int = 0) -> Sibling:
    return Sibling(name.encode(), at)


def put(value: Sibling, stored: DVVSet | None, actor: str,
        context: dvv.VersionVector | None = None) -> DVVSet:
    return dvv.update(dvv.new(value, context), stored, actor)


def dotted_siblings(clock: DVVSet) -> dict[Dot, Sibling]:
    """Each dotted sibling by its dot, read off the entry layout (values newest first)."""
    return {(actor, counter - i): value
            for actor, counter, values in clock.entries for i, value in enumerate(values)}


def covered(dot: Dot, vv: dvv.VersionVector) -> bool:
    return vv.get(dot[0], 0) >= dot[1]


# ---------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Write:
    sibling: Sibling
    dot: Dot
    context: dvv.VersionVector


@dataclass(frozen=True)
class PutStep:
    before: DVVSet
    context: dvv.VersionVector
    actor: str
    sibling: Sibling
    after: DVVSet
    read: DVVSet | None  # the clock the context was just read from, if it was a fresh read


@dataclass
class History:
    replicas: list[DVVSet] = field(default_factory=lambda: [dvv.empty()] * len(ACTORS))
    contexts: list[dvv.VersionVector] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    puts: list[PutStep] = field(default_factory=list)
    clocks: list[DVVSet] = field(default_factory=lambda: [dvv.empty()])


def simulate(ops: list[tuple[str, int, int, int]]) -> History:
    history = History()
    for kind, node, other, choice in ops:
        if kind == "read":
            history.contexts.append(dvv.join(history.replicas[other]))
        elif kind == "sync":
            history.replicas[other] = dvv.sync(history.replicas[other], history.replicas[node])
            history.clocks.append(history.replicas[other])
        else:
            written_at = len(history.writes) + 1  # unique, so siblings are unique too
            value = None if kind == "delete" else f"w{written_at}".encode()
            # Some values expire (3-item siblings): the properties hold for them too.
            expires_at = written_at + choice if value is not None and choice % 5 == 4 else None
            read = None
            if choice % 3 == 0 or (choice % 3 == 2 and not history.contexts):
                context: dvv.VersionVector = {}
            elif choice % 3 == 1:
                read = history.replicas[other]
                context = dvv.join(read)
            else:
                context = history.contexts[choice // 3 % len(history.contexts)]
            actor = ACTORS[node]
            before = history.replicas[node]
            sibling = Sibling(value, written_at, expires_at)
            after = put(sibling, before, actor, context)
            history.writes.append(Write(sibling, (actor, dvv.join(after)[actor]), context))
            history.puts.append(PutStep(before, context, actor, sibling, after, read))
            history.replicas[node] = after
            history.clocks.append(after)
    return history


node_index = st.integers(0, len(ACTORS) - 1)
operation = st.tuples(st.sampled_from(["put", "put", "delete", "sync", "sync", "read"]),
                      node_index, node_index, st.integers(0, 60))
histories = st.lists(operation, max_size=30).map(simulate)


def model_siblings(clock: DVVSet, writes: list[Write]) -> set[Sibling]:
    """Writes this clock has seen that no seen write's client context covered."""
    seen = [w for w in writes if covered(w.dot, dvv.join(clock))]
    return {w.sibling for w in seen
            if not any(covered(w.dot, other.context) for other in seen)}


# ---------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(history=histories)
def test_every_replica_keeps_exactly_the_siblings_the_causal_model_predicts(history):
    for clock in history.clocks:
        siblings = dvv.values(clock)
        assert len(siblings) == len(set(siblings))
        assert set(siblings) == model_siblings(clock, history.writes)
        assert dvv.sibling_count(clock) == len(siblings)


@settings(max_examples=100, deadline=None)
@given(history=histories)
def test_put_drops_exactly_the_stored_siblings_its_context_covers(history):
    for step in history.puts:
        kept = {s for dot, s in dotted_siblings(step.before).items()
                if not covered(dot, step.context)}
        assert set(dvv.values(step.after)) == kept | {step.sibling}
        assert dvv.descends(step.after, step.before)
        assert not dvv.descends(step.before, step.after)


@settings(max_examples=100, deadline=None)
@given(history=histories)
def test_write_with_a_read_context_supersedes_every_sibling_it_read(history):
    fresh_reads = [step for step in history.puts if step.read is not None]
    for step in fresh_reads:
        assert not set(dvv.values(step.read)) & set(dvv.values(step.after))
        if step.read == step.before:  # read and written on the same replica: nothing else left
            assert dvv.values(step.after) == [step.sibling]


@settings(max_examples=100, deadline=None)
@given(history=histories, data=st.data())
def test_two_writes_from_one_context_through_one_actor_are_siblings(history, data):
    stored = data.draw(st.sampled_from(history.clocks))
    context = dvv.join(data.draw(st.sampled_from(history.clocks)))
    actor = data.draw(st.sampled_from(ACTORS))
    first = put(sib("first", 10**6), stored, actor, context)
    second = put(sib("second", 10**6 + 1), first, actor, context)
    assert {sib("first", 10**6), sib("second", 10**6 + 1)} <= set(dvv.values(second))


@settings(max_examples=150, deadline=None)
@given(history=histories, data=st.data())
def test_sync_is_commutative_associative_idempotent(history, data):
    a, b, c = (data.draw(st.sampled_from(history.clocks)) for _ in range(3))
    assert dvv.equal(dvv.sync(a, b), dvv.sync(b, a))
    assert dvv.equal(dvv.sync(dvv.sync(a, b), c), dvv.sync(a, dvv.sync(b, c)))
    assert dvv.equal(dvv.sync(a, a), a)
    merged = dvv.sync(a, b)
    assert dvv.descends(merged, a) and dvv.descends(merged, b)
    assert set(dvv.values(merged)) == model_siblings(merged, history.writes)
    assert dvv.equal(dvv.merge_all([c, b, a]), dvv.merge_all([a, b, c]))


@settings(max_examples=100, deadline=None)
@given(history=histories, data=st.data())
def test_descends_means_sync_adds_nothing(history, data):
    a = data.draw(st.sampled_from(history.clocks))
    b = data.draw(st.sampled_from(history.clocks))
    assert dvv.descends(a, b) == dvv.equal(dvv.sync(a, b), a)


@settings(max_examples=100, deadline=None)
@given(history=histories)
def test_clocks_round_trip_through_wire_and_storage_forms(history):
    for clock in history.clocks:
        assert dvv.from_wire(dvv.to_wire(clock)) == clock
        assert dvv.from_wire(cbor2.loads(cbor2.dumps(dvv.to_wire(clock)))) == clock
        assert dvv.decode(dvv.encode(clock)) == clock
        assert dvv.decode_stored(dvv.encode(clock)) == clock
        assert dvv.decode_context(dvv.encode_context(dvv.join(clock))) == dvv.join(clock)
        assert len(dvv.digest(clock)) == 16


@settings(max_examples=100, deadline=None)
@given(history=histories, now=st.integers(min_value=0, max_value=2**40))
def test_stored_visible_agrees_with_visible_values_of_the_decoded_clock(history, now):
    for clock in history.clocks:
        assert dvv.stored_visible(dvv.encode(clock), now) == bool(dvv.visible_values(clock, now))


def test_stored_visible_rejects_a_malformed_copy_with_invalid_clock():
    for data in (b"\xff", cbor2.dumps([1, 2]), cbor2.dumps([[], [[]]])):
        with pytest.raises(dvv.InvalidClock):
            dvv.stored_visible(data, 0)


@settings(max_examples=100, deadline=None)
@given(history=histories, data=st.data())
def test_digest_tells_clocks_apart(history, data):
    a = data.draw(st.sampled_from(history.clocks))
    b = data.draw(st.sampled_from(history.clocks))
    assert (dvv.digest(a) == dvv.digest(b)) == dvv.equal(a, b)


actors = st.text(min_size=1, max_size=dvv.MAX_ACTOR_CHARS)
version_vectors = st.dictionaries(actors, st.integers(0, dvv.MAX_INT), max_size=8)
# Heads of every width: lengths and ints on both sides of 24, 2**8, 2**16 and 2**32.
# Negative ones too: no decoder accepts them, but encode must still write what cbor2 does.
head_ints = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, dvv.MAX_INT,
                             -1, -24, -25, -(2**63)]) | st.integers(-(2**63), dvv.MAX_INT)
values = st.none() | st.binary(max_size=300) | st.sampled_from([bytes(65536), bytes(70000)])
siblings = st.builds(Sibling, values, head_ints, st.none() | head_ints)
any_clocks = st.builds(
    DVVSet,
    st.lists(st.tuples(actors, head_ints, st.lists(siblings, max_size=3).map(tuple)),
             max_size=4).map(tuple),
    st.lists(siblings, max_size=2).map(tuple))


@settings(max_examples=300, deadline=None)
@given(clock=any_clocks)
def test_encode_writes_exactly_the_canonical_cbor_of_the_wire_form(clock):
    assert dvv.encode(clock) == cbor2.dumps(dvv.to_wire(clock), canonical=True)


@given(vv=version_vectors)
def test_encode_context_writes_exactly_the_canonical_cbor_of_its_pairs(vv):
    payload = cbor2.dumps([[a, n] for a, n in sorted(vv.items())], canonical=True)
    expected = base64.urlsafe_b64encode(payload).rstrip(b"=").decode() if vv else ""
    assert dvv.encode_context(vv) == expected



@given(vv=version_vectors)
def test_context_round_trips_and_is_canonical(vv):
    encoded = dvv.encode_context(vv)
    assert dvv.decode_context(encoded) == vv
    assert dvv.encode_context(dict(reversed(list(vv.items())))) == encoded
    assert "=" not in encoded and (encoded == "") == (not vv)


# ---------------------------------------------------------------------------- garbage in

wire_objects = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=8)
    | st.text(max_size=8) | st.floats(),
    lambda children: st.lists(children, max_size=4),
    max_leaves=25,
)


def clock_like(obj: object) -> object:
    """Nudge arbitrary objects towards the clock shape so validation gets past the first check."""
    return [[obj], []] if not isinstance(obj, list) else obj


@given(obj=wire_objects | wire_objects.map(clock_like))
def test_from_wire_rejects_garbage_with_invalid_clock_only(obj):
    try:
        clock = dvv.from_wire(obj)
    except InvalidClock:
        return
    assert dvv.from_wire(dvv.to_wire(clock)) == clock


@given(data=st.binary(max_size=64) | wire_objects.map(lambda o: cbor2.dumps(clock_like(o))))
def test_decode_rejects_garbage_with_invalid_clock_only(data):
    try:
        dvv.decode_stored(data)  # trusts the shape, but fails only as InvalidClock
    except InvalidClock:
        pass
    try:
        clock = dvv.decode(data)
    except InvalidClock:
        return
    assert dvv.decode(dvv.encode(clock)) == clock


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(text=st.text(max_size=40) | st.binary(max_size=40).map(b64)
       | wire_objects.map(lambda o: b64(cbor2.dumps(o))))
def test_decode_context_rejects_garbage_with_invalid_context_only(text):
    try:
        vv = dvv.decode_context(text)
    except InvalidContext:
        return
    assert dvv.decode_context(dvv.encode_context(vv)) == vv


@pytest.mark.parametrize(("text", "message"), [
    ("a=b", "base64url"),
    ("abcde", "base64url"),
    ("////", "base64url"),
    (b64(b"\xff\xff"), "CBOR"),
    (b64(cbor2.dumps([["a", 1]]) + b"\x00"), "trailing"),
    (b64(cbor2.dumps({"a": 1})), "must be a list"),
    (b64(cbor2.dumps([["a", 1, 2]])), "list of 2"),
    (b64(cbor2.dumps([["a", -1]])), "0..2**63-1"),
    (b64(cbor2.dumps([["a", 2**63]])), "0..2**63-1"),
    (b64(cbor2.dumps([["a", True]])), "integer"),
    (b64(cbor2.dumps([["a", 1.0]])), "integer"),
    (b64(cbor2.dumps([[b"a", 1]])), "actor"),
    (b64(cbor2.dumps([["", 1]])), "actor"),
    (b64(cbor2.dumps([["a", 1], ["a", 2]])), "twice"),
    (b64(b"\x81" * 20 + b"\x01"), "CBOR"),
    ("A" * 16385, "limit"),
])
def test_decode_context_errors_say_what_is_wrong(text, message):
    with pytest.raises(InvalidContext, match=message.replace("*", r"\*").replace(".", r"\.")):
        dvv.decode_context(text)


def test_decode_context_limit_is_configurable_and_non_strings_rejected():
    assert dvv.decode_context("") == {}
    encoded = dvv.encode_context({"n1.1": 5})
    assert dvv.decode_context(encoded, max_bytes=len(encoded)) == {"n1.1": 5}
    with pytest.raises(InvalidContext, match="limit"):
        dvv.decode_context(encoded, max_bytes=len(encoded) - 1)
    with pytest.raises(InvalidContext, match="string"):
        dvv.decode_context(b"abcd")  # type: ignore[arg-type]


GOOD_SIBLING = [b"v", 1]


@pytest.mark.parametrize(("obj", "message"), [
    ({}, "clock must be a list of 2"),
    ([[], [], []], "clock must be a list of 2"),
    ([{}, []], "entries must be a list"),
    ([[["a", 1]], []], "entry must be a list of 3"),
    ([[[1, 1, []]], []], "actor"),
    ([[["x" * (dvv.MAX_ACTOR_CHARS + 1), 1, []]], []], "actor"),
    ([[["b", 1, []], ["a", 1, []]], []], "sorted and unique"),
    ([[["a", 1, []], ["a", 2, []]], []], "sorted and unique"),
    ([[["a", 0, []]], []], "1..2"),
    ([[["a", -3, []]], []], "1..2"),
    ([[["a", 2**63, []]], []], "1..2"),
    ([[["a", False, []]], []], "integer"),
    ([[["a", 1, [GOOD_SIBLING, GOOD_SIBLING]]], []], "2 values but counter 1"),
    ([[["a", 1, [[b"v"]]]], []], "sibling must be a list of 2"),
    ([[["a", 1, [["v", 1]]]], []], "bytes or None"),
    ([[["a", 1, [[bytearray(b"v"), 1]]]], []], "bytes or None"),
    ([[["a", 1, [[b"v", -1]]]], []], "written_at"),
    ([[["a", 1, [[b"v", 1.5]]]], []], "written_at"),
    ([[], [[b"v", 2**63]]], "written_at"),
    ([[], {}], "anonymous values must be a list"),
])
def test_from_wire_errors_say_what_is_wrong(obj, message):
    with pytest.raises(InvalidClock, match=message.replace("*", r"\*").replace(".", r"\.")):
        dvv.from_wire(obj)



def test_decode_rejects_non_bytes_bad_cbor_and_trailing_data():
    good = dvv.encode(put(sib("v"), None, "a"))
    for data, message in [("text", "must be bytes"), (b"\xff", "CBOR"),
                          (good + b"\x00", "trailing"), (b"\x81" * 20 + b"\x80", "CBOR")]:
        with pytest.raises(InvalidClock, match=message):
            dvv.decode(data)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- examples


def test_dvvset_reference_update_examples():
    v1, v2, v3, v4, v5 = (sib(f"v{i}", i) for i in range(1, 6))
    a0 = put(v1, None, "a")
    a1 = put(v2, a0, "a", dvv.join(a0))
    a2 = put(v3, a1, "b", dvv.join(a1))
    a3 = put(v4, a1, "b", dvv.join(a0))
    a4 = put(v5, a1, "a", dvv.join(a0))
    assert a0 == DVVSet((("a", 1, (v1,)),))
    assert a1 == DVVSet((("a", 2, (v2,)),))
    assert a2 == DVVSet((("a", 2, ()), ("b", 1, (v3,))))
    assert a3 == DVVSet((("a", 2, (v2,)), ("b", 1, (v4,))))
    assert a4 == DVVSet((("a", 3, (v5, v2)),))


def test_concurrent_blind_write_and_stale_context_write_keep_each_other():
    v1, v2, v3 = sib("v1", 1), sib("v2", 2), sib("v3", 3)
    a0 = put(v1, None, "a")  # Mary writes v1 without context
    peter_context = dvv.join(a0)  # Peter reads v1
    a1 = put(v2, a0, "a")  # Mary writes v2 blind: sibling of v1
    a2 = put(v3, a1, "a", peter_context)  # Peter's v3 supersedes v1 only
    assert a1 == DVVSet((("a", 2, (v2, v1)),))
    assert a2 == DVVSet((("a", 3, (v3, v2)),))
    assert dvv.join(a2) == {"a": 3}


def test_dvvset_reference_sync_examples():
    v1, v2, v3 = sib("v1", 1), sib("v2", 2), sib("v3", 3)
    w = DVVSet((("a", 1, ()),))
    z = DVVSet((("a", 2, (v2, v1)),))
    assert dvv.sync(w, z) == DVVSet((("a", 2, (v2,)),)) == dvv.sync(z, w)
    a = put(v1, None, "a")
    a1 = put(v2, a, "a", dvv.join(a))
    via_b = put(v3, a1, "b", dvv.join(a1))
    via_c = put(v3, a1, "c", dvv.join(a1))
    assert dvv.sync(via_b, via_c) == DVVSet((("a", 2, ()), ("b", 1, (v3,)), ("c", 1, (v3,))))
    x = DVVSet((("x", 1, ()),))
    assert dvv.sync(x, a) == DVVSet((("a", 1, (v1,)), ("x", 1, ())))
    y = put(v2, None, "b")
    assert dvv.sync(a, y) == DVVSet((("a", 1, (v1,)), ("b", 1, (v2,))))


def test_same_context_same_actor_gives_two_siblings_not_false_dominance():
    base = put(sib("base", 1), None, "n1.1")
    context = dvv.join(base)
    first = put(sib("x", 2), base, "n1.1", context)
    second = put(sib("y", 3), first, "n1.1", context)
    assert set(dvv.values(second)) == {sib("x", 2), sib("y", 3)}
    assert dvv.join(second) == {"n1.1": 3}


def test_tombstones_supersede_what_they_saw_and_hide_from_readers():
    stored = put(sib("v", 1), None, "n1.1")
    deleted = put(Sibling(None, 2), stored, "n1.1", dvv.join(stored))
    assert dvv.values(deleted) == [Sibling(None, 2)]
    assert dvv.live_values(deleted) == []
    assert dvv.is_tombstone(deleted)
    beside = put(sib("blind", 3), deleted, "n2.1")
    assert set(dvv.values(beside)) == {Sibling(None, 2), sib("blind", 3)}
    assert dvv.live_values(beside) == [sib("blind", 3)]
    assert not dvv.is_tombstone(beside)
    revived = put(sib("new", 4), deleted, "n1.1", dvv.join(deleted))
    assert dvv.values(revived) == [sib("new", 4)]


def test_empty_clock_has_no_history_and_is_not_a_tombstone():
    assert dvv.join(dvv.empty()) == {}
    assert dvv.values(dvv.empty()) == []
    assert not dvv.is_tombstone(dvv.empty())
    assert dvv.merge_all([]) == dvv.empty()
    assert dvv.encode_context({}) == ""
    assert dvv.descends(put(sib("v"), None, "a"), dvv.empty())
    assert not dvv.descends(dvv.empty(), put(sib("v"), None, "a"))


def test_new_sorts_the_context_and_drops_zero_counters():
    clock = dvv.new(sib("v"), {"b": 2, "a": 1, "z": 0})
    assert clock == DVVSet((("a", 1, ()), ("b", 2, ())), (sib("v"),))
    assert dvv.join(put(sib("w"), None, "c", {"z": 0})) == {"c": 1}


def test_update_needs_exactly_one_new_value():
    with pytest.raises(ValueError, match="exactly one new value"):
        dvv.update(dvv.empty(), None, "a")
    with pytest.raises(ValueError, match="exactly one new value"):
        dvv.update(DVVSet((), (sib("x", 1), sib("y", 2))), None, "a")


def test_anonymous_values_follow_dvvset_and_stay_canonical():
    older = dvv.new(sib("old", 1))
    newer = dvv.new(sib("new", 2), {"a": 1})
    assert dvv.sync(older, newer) == newer == dvv.sync(newer, older)
    concurrent = dvv.new(sib("other", 3), {"b": 1})
    merged = dvv.sync(newer, concurrent)
    assert merged == dvv.sync(concurrent, newer)
    assert merged.anonymous == (sib("new", 2), sib("other", 3))
    assert dvv.values(merged) == [sib("new", 2), sib("other", 3)]
    wire = [[], [[b"z", 5], [None, 1], [b"z", 5]]]
    assert dvv.from_wire(wire).anonymous == (Sibling(None, 1), sib("z", 5))


def test_values_order_is_anonymous_then_actor_then_newest_first():
    clock = DVVSet((("a", 3, (sib("a3"), sib("a2"))), ("b", 1, (sib("b1"),))), (sib("anon"),))
    assert dvv.values(clock) == [sib("anon"), sib("a3"), sib("a2"), sib("b1")]
    assert dvv.to_wire(clock) == [[["a", 3, [[b"a3", 0], [b"a2", 0]]], ["b", 1, [[b"b1", 0]]]],
                                  [[b"anon", 0]]]


def test_context_encoding_is_stable():
    assert dvv.encode_context({"b": 2, "a": 1}) == b64(cbor2.dumps([["a", 1], ["b", 2]]))
    assert dvv.digest(dvv.empty()) == dvv.digest(DVVSet())


def test_update_starts_a_new_actor_entry_after_the_floor() -> None:
    first = dvv.update(dvv.new(dvv.Sibling(b"a", 1)), None, "n1.1", floor=6)
    assert dvv.join(first) == {"n1.1": 7}
    second = dvv.update(dvv.new(dvv.Sibling(b"b", 2)), first, "n1.1", floor=9)
    assert dvv.join(second) == {"n1.1": 8}  # an entry with values counts on from itself
    third = dvv.update(dvv.new(dvv.Sibling(b"c", 3), dvv.join(second)), second, "n1.1",
                       floor=9)
    assert dvv.join(third) == {"n1.1": 10}  # its values covered: after the floor again
    assert [s.value for s in dvv.values(third)] == [b"c"]


def test_a_context_read_before_a_reaped_delete_never_reuses_the_tombstones_dot() -> None:
    """Issue 14: the context named the actor at 1, the tombstone at 2 was reaped on the
    coordinator but not on another replica, and the new write minted 2 again: merged one
    way the write vanished, the other way the tombstone did, and each clock descended
    the other, so read repair never mended it."""
    v1 = dvv.update(dvv.new(sib("v1", 1)), None, "r1")
    stale = dvv.join(v1)
    tombstone = dvv.update(dvv.new(Sibling(None, 2), dvv.join(v1)), v1, "r1")
    write = dvv.update(dvv.new(sib("new", 3), stale), None, "r1", floor=2)  # reaped here
    assert dotted_siblings(tombstone) == {("r1", 2): Sibling(None, 2)}
    assert dotted_siblings(write) == {("r1", 3): sib("new", 3)}
    assert dvv.live_values(dvv.sync(tombstone, write)) == [sib("new", 3)]
    assert dvv.live_values(dvv.sync(write, tombstone)) == [sib("new", 3)]
    assert dvv.descends(write, tombstone) and not dvv.descends(tombstone, write)


def test_a_forged_context_counter_never_reuses_a_dot_or_drops_an_unseen_value() -> None:
    """Whatever counter a context names for the coordinator's actor, the new dot is above
    every dot of it the copy holds, and values the context did not cover stay."""
    stored = dvv.update(dvv.new(sib("a", 1)), None, "r1", floor=4)  # r1:5
    stored = dvv.update(dvv.new(sib("b", 2)), stored, "r1", floor=4)  # r1:6, a sibling
    for forged in (0, 1, 5, 6, 7, 1000):
        write = dvv.update(dvv.new(sib("w", 3), {"r1": forged}), stored, "r1", floor=4)
        dots = dotted_siblings(write)
        new_dot = next(dot for dot, s in dots.items() if s == sib("w", 3))
        assert new_dot == ("r1", max(forged, 6) + 1)
        kept = {s for dot, s in dotted_siblings(stored).items() if dot[1] > forged}
        assert set(dots.values()) == kept | {sib("w", 3)}
    with pytest.raises(InvalidContext, match=r"counter of 'r1' is at 2\*\*63-1"):
        dvv.update(dvv.new(sib("w", 3), {"r1": dvv.MAX_INT}), stored, "r1", floor=4)


# ---------------------------------------------------------------------------- expiry


@settings(max_examples=150, deadline=None)
@given(history=histories, data=st.data())
def test_visibility_is_monotone_in_now_and_hides_tombstones_and_expired_values(history, data):
    clock = data.draw(st.sampled_from(history.clocks))
    earlier = data.draw(st.integers(0, 200))
    later = earlier + data.draw(st.integers(0, 200))
    seen_later = dvv.visible_values(clock, later)
    assert set(seen_later) <= set(dvv.visible_values(clock, earlier))
    assert all(s.value is not None and (s.expires_at is None or s.expires_at > later)
               for s in seen_later)
    assert dvv.is_dead(clock, later) == (bool(dvv.values(clock)) and not seen_later)


def test_an_expired_value_is_dead_like_a_tombstone_and_a_live_one_keeps_the_clock_alive():
    expiring = put(Sibling(b"v", 10, 60), None, "n0.1")
    assert dvv.visible_values(expiring, 59) == [Sibling(b"v", 10, 60)]
    assert dvv.visible_values(expiring, 60) == []
    assert dvv.is_dead(expiring, 60) and not dvv.is_dead(expiring, 59)
    both = dvv.sync(expiring, put(Sibling(b"w", 11), None, "n1.1"))
    assert [s.value for s in dvv.visible_values(both, 10**6)] == [b"w"]
    assert not dvv.is_dead(both, 10**6)
    assert not dvv.is_dead(dvv.empty(), 0)


def test_clocks_without_expiry_keep_their_two_item_bytes_and_digests():
    clock = put(Sibling(b"v", 10), None, "n0.1")
    assert dvv.encode(clock) == cbor2.dumps([[["n0.1", 1, [[b"v", 10]]]], []], canonical=True)
    expiring = put(Sibling(b"v", 10, 70), None, "n0.1")
    assert dvv.to_wire(expiring) == [[["n0.1", 1, [[b"v", 10, 70]]]], []]
    for decoder in (dvv.decode, dvv.decode_stored):
        assert decoder(dvv.encode(expiring)) == expiring
        assert decoder(dvv.encode(clock)) == clock
    assert dvv.digest(expiring) != dvv.digest(clock)


@pytest.mark.parametrize(("sibling", "message"), [
    ([None, 10, 20], "tombstone carries no expires_at"),
    ([b"v", 10, 10], "expires_at must be an integer in 11"),
    ([b"v", 10, 20, 30], "list of 2 or 3 items"),
    ([b"v"], "list of 2 or 3 items"),
])
def test_from_wire_refuses_bad_expiry(sibling, message):
    with pytest.raises(InvalidClock, match=message):
        dvv.from_wire([[["n0.1", 1, [sibling]]], []])
