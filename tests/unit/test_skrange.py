"""Sort-key conditions -> [lo, hi) agree with filtering every sort key by the condition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.limits import MAX_SORT_KEY_BYTES
from common.skrange import (
    BadCondition,
    check_condition,
    condition_range,
    prefix_end,
    successor,
)

# Few distinct bytes, the edges among them, so that equal prefixes and 0x00/0xff runs are common.
_SORT_KEYS = st.binary(min_size=1, max_size=4).map(
    lambda raw: bytes(b"\x00\x01\xfe\xff"[byte % 4] for byte in raw))


def _matches(cond: list | None, sk: bytes) -> bool:
    """The condition read literally, as a user would."""
    if cond is None:
        return True
    op, x = cond[0], cond[1]
    return {"eq": sk == x, "lt": sk < x, "le": sk <= x, "gt": sk > x, "ge": sk >= x,
            "prefix": sk.startswith(x), "between": op == "between" and x <= sk <= cond[-1],
            }[op]


_CONDITIONS = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["eq", "lt", "le", "gt", "ge", "prefix"]), _SORT_KEYS).map(list),
    st.tuples(_SORT_KEYS, _SORT_KEYS).map(lambda ab: ["between", *sorted(ab)]),
)


@given(cond=_CONDITIONS, keys=st.lists(_SORT_KEYS, max_size=30))
def test_the_range_holds_exactly_the_matching_sort_keys(cond: list | None,
                                                        keys: list[bytes]) -> None:
    lo, hi = condition_range(cond)
    in_range = {sk for sk in keys if lo <= sk and (hi is None or sk < hi)}
    assert in_range == {sk for sk in keys if _matches(cond, sk)}


@given(sk=_SORT_KEYS, other=_SORT_KEYS)
def test_successor_and_prefix_end_are_tight(sk: bytes, other: bytes) -> None:
    assert (other > sk) == (other >= successor(sk))
    end = prefix_end(sk)
    assert other.startswith(sk) == (other >= sk and (end is None or other < end))


@pytest.mark.parametrize(("prefix", "end"), [
    (b"a", b"b"), (b"a\xff", b"b"), (b"\x00", b"\x01"), (b"\xff", None), (b"\xff\xff", None),
    (b"a\xfe", b"a\xff"),
])
def test_prefix_end_carries_over_0xff(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


@pytest.mark.parametrize(("cond", "message"), [
    ("eq", "a condition is"),
    ([], "a condition is"),
    (["like", b"a"], "unknown condition"),
    (["eq"], "takes 1 sort key"),
    (["eq", b"a", b"b"], "takes 1 sort key"),
    (["between", b"a"], "takes 2 sort key"),
    (["eq", "a"], "takes bytes"),
    (["eq", b""], "must be 1..1024"),
    (["prefix", b"x" * (MAX_SORT_KEY_BYTES + 1)], "must be 1..1024"),
    (["between", b"b", b"a"], "low <= high"),
])
def test_malformed_conditions_are_refused(cond: object, message: str) -> None:
    with pytest.raises(BadCondition, match=message):
        check_condition(cond)


def test_a_well_formed_condition_passes() -> None:
    assert check_condition(["between", b"a", b"a"]) == ["between", b"a", b"a"]
