"""The set checker and the convergence rule, on hand-made histories (no root needed)."""

from __future__ import annotations

import pytest

from tests.chaos.checker import check_queries, check_set, replicas_agree
from tests.chaos.workload import ItemHistory, QueryRecord


def test_every_acknowledged_element_present_is_ok() -> None:
    result = check_set({"k": {"a", "b", "c"}}, {"k": {"a", "b"}}, {"k": {"a", "b"}})
    assert result.ok
    assert (result.acknowledged, result.indeterminate_present, result.indeterminate_absent) \
        == (2, 0, 1)


def test_lost_and_unexpected_elements_are_reported_per_key() -> None:
    result = check_set({"k": {"a", "b"}, "j": {"x"}}, {"k": {"a", "b"}, "j": {"x"}},
                       {"k": {"a", "zz"}})
    assert result.lost == {"k": ["b"], "j": ["x"]}
    assert result.unexpected == {"k": ["zz"]}
    assert (result.lost_count, result.unexpected_count, result.ok) == (2, 1, False)


def test_an_indeterminate_write_may_be_present() -> None:
    result = check_set({"k": {"a", "b"}}, {"k": {"a"}}, {"k": {"a", "b"}})
    assert result.ok and result.indeterminate_present == 1


def test_an_acknowledgement_without_an_attempt_is_a_broken_history() -> None:
    with pytest.raises(ValueError, match="never attempted"):
        check_set({}, {"k": {"a"}}, {"k": {"a"}})


def row(node: str, context: str, role: str = "primary", reachable: bool = True) -> dict:
    return {"node": node, "role": role, "context": context, "reachable": reachable}


@pytest.mark.parametrize(("rows", "agree"), [
    ([row("n1", "c"), row("n2", "c"), row("n3", "c")], True),
    ([row("n1", ""), row("n2", ""), row("n3", "")], True),   # never written: all empty
    ([row("n1", "c"), row("n2", "d"), row("n3", "c")], False),
    ([row("n1", "c"), row("n2", "c")], False),                # a primary missing
    ([row("n1", "c"), row("n2", "c"), row("n3", "c", reachable=False)], False),
    ([row("n1", "c"), row("n2", "c"), row("n3", "c"), row("n4", "c", "fallback")], False),
])
def test_replicas_agree_only_when_all_primaries_match_and_no_hint_is_left(
        rows: list[dict], agree: bool) -> None:
    assert replicas_agree(rows, 3) is agree


def test_queries_that_keep_every_acknowledged_post_and_no_deleted_one_are_ok() -> None:
    items = ItemHistory(attempted={"t": {"a", "b", "c", "d"}}, acked={"t": {"a", "b", "c"}},
                        delete_attempted={"t": {"b", "c"}}, deleted={"t": {"b"}},
                        confirmed={("t", "b"): 5.0},
                        queries=[QueryRecord("t", False, 1.0, ["a", "b", "c"], 1),
                                 QueryRecord("t", True, 6.0, ["c", "a"], 2)])
    # c: its delete failed, so it may be gone or not; d: never acknowledged.
    final = [QueryRecord("t", False, 20.0, ["a", "d"], 1)]
    result = check_queries(items, final, healed_at=10.0)
    assert result.ok and result.queries == 2


def test_query_violations_are_reported() -> None:
    items = ItemHistory(attempted={"t": {"a", "b", "c"}}, acked={"t": {"a", "b", "c"}},
                        delete_attempted={"t": {"b"}}, deleted={"t": {"b"}},
                        confirmed={("t", "b"): 5.0},
                        queries=[QueryRecord("t", False, 1.0, ["b", "a"], 1),   # out of order
                                 QueryRecord("t", True, 7.0, ["c", "b"], 1),  # under a fault
                                 QueryRecord("t", True, 12.0, ["c", "c"], 2),  # twice
                                 QueryRecord("t", False, 13.0, ["b"], 1)])  # came back
    final = [QueryRecord("t", False, 20.0, ["a", "b", "zz"], 1)]
    result = check_queries(items, final, healed_at=10.0)
    assert not result.ok
    assert len(result.disordered) == 2
    assert result.lost == {"t": ["c"]}
    assert result.resurrected == {"t": ["b"]}
    assert result.unexpected == {"t": ["zz"]}
    assert len(result.reappeared) == 1 and "13.0" in result.reappeared[0]
