"""The resolve strategies of dynctl: results, determinism, and the errors they report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import Rejected
from dynctl.resolve import (
    MAX_JSON_DEPTH,
    STRATEGIES,
    ResolveError,
    json_union,
    lww,
    pick,
    union_lines,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Sib:
    value: bytes
    written_at: datetime = T0


def sibs(*values: bytes, step: timedelta = timedelta(seconds=1)) -> list[Sib]:
    return [Sib(value, T0 + i * step) for i, value in enumerate(values)]


def test_union_lines_is_the_sorted_set_of_lines():
    result = union_lines(sibs(b"milk\neggs\n", b"bread\nmilk", b"eggs\r\nzucchini\n"))
    assert result == b"bread\neggs\nmilk\nzucchini\n"


def test_union_lines_of_empty_values_is_empty():
    assert union_lines(sibs(b"", b"")) == b""


def test_json_union_merges_objects_recursively_and_unions_arrays():
    a = {"items": [1, 2], "owner": "alice", "meta": {"tags": ["x"], "v": 1}}
    b = {"items": [2, 3], "meta": {"tags": ["y", "x"], "note": "hi"}}
    result = json.loads(json_union(sibs(json.dumps(a).encode(), json.dumps(b).encode())))
    assert result == {"items": [1, 2, 3], "owner": "alice",
                      "meta": {"tags": ["x", "y"], "v": 1, "note": "hi"}}


def test_json_union_dedupes_array_elements_by_canonical_json():
    result = json.loads(json_union(sibs(b'[{"a":1,"b":2}, true]', b'[{"b":2,"a":1}, 1]')))
    assert result == [{"a": 1, "b": 2}, True, 1]


def test_json_union_keeps_order_of_first_appearance_oldest_sibling_first():
    newer, older = Sib(b"[3, 1]", T0 + timedelta(seconds=5)), Sib(b"[1, 2]", T0)
    assert json.loads(json_union([newer, older])) == [1, 2, 3]


def test_json_union_refuses_conflicting_scalars_naming_the_path():
    with pytest.raises(ResolveError, match=r"\$\.a\.b"):
        json_union(sibs(b'{"a": {"b": 1}}', b'{"a": {"b": 2}}'))


def test_json_union_refuses_object_against_array():
    with pytest.raises(ResolveError, match="cannot merge"):
        json_union(sibs(b'{"a": 1}', b"[1]"))


def test_json_union_refuses_non_json_sibling():
    with pytest.raises(ResolveError, match="not JSON"):
        json_union(sibs(b'{"a": 1}', b"\xff not json"))


def test_json_union_refuses_nesting_beyond_the_limit():
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(ResolveError, match="deeper"):
        json_union(sibs(deep, b"[]"))
    fine = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_union(sibs(fine, fine)) == fine


def test_json_union_survives_nesting_beyond_the_interpreter_recursion_limit():
    hostile = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ResolveError):
        json_union(sibs(hostile, b"[]"))


def test_lww_takes_the_latest_written_at():
    assert lww(sibs(b"old", b"newest", step=timedelta(milliseconds=1))) == b"newest"
    assert lww([Sib(b"late", T0 + timedelta(days=1)), Sib(b"zzz", T0)]) == b"late"


def test_lww_breaks_timestamp_ties_by_value_whatever_the_order():
    tied = [Sib(b"apple"), Sib(b"pear"), Sib(b"fig")]
    assert lww(tied) == lww(list(reversed(tied))) == b"pear"


def test_pick_by_zero_based_index():
    siblings = sibs(b"a", b"b", b"c")
    assert pick(siblings, 0) == b"a"
    assert pick(siblings, 2) == b"c"


@pytest.mark.parametrize("index", [3, 10, -1])
def test_pick_out_of_range_is_rejected_exit_5(index):
    with pytest.raises(ResolveError, match="out of range") as info:
        pick(sibs(b"a", b"b", b"c"), index)
    assert isinstance(info.value, Rejected) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 5


def test_strategy_names_are_the_contract_names():
    assert set(STRATEGIES) == {"union-lines", "json-union", "lww"}


sibling_lists = st.lists(
    st.builds(Sib, value=st.binary(max_size=40),
              written_at=st.integers(0, 5).map(lambda s: T0 + timedelta(seconds=s))),
    min_size=1, max_size=6)

json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from("abc"), children, max_size=3),
    max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(siblings=sibling_lists, seed=st.randoms(use_true_random=False))
def test_line_and_lww_results_do_not_depend_on_sibling_order(siblings, seed):
    shuffled = list(siblings)
    seed.shuffle(shuffled)
    assert union_lines(shuffled) == union_lines(siblings)
    assert lww(shuffled) == lww(siblings)


@settings(max_examples=200, deadline=None)
@given(siblings=sibling_lists)
def test_union_lines_contains_every_line_once(siblings):
    result = union_lines(siblings).splitlines()
    assert len(result) == len(set(result))
    assert set(result) == {line for s in siblings for line in s.value.splitlines()}


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(json_docs, min_size=1, max_size=4), seed=st.randoms(use_true_random=False))
def test_json_union_is_order_independent_and_idempotent(docs, seed):
    siblings = [Sib(json.dumps(doc).encode(), T0 + timedelta(seconds=i))
                for i, doc in enumerate(docs)]
    shuffled = list(siblings)
    seed.shuffle(shuffled)
    try:
        merged = json_union(siblings)
    except ResolveError:
        with pytest.raises(ResolveError):
            json_union(shuffled)
        return
    assert json_union(shuffled) == merged
    assert json_union([Sib(merged), Sib(merged)]) == merged
