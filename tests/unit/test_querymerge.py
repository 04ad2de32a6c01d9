"""dynd/querymerge: pages of a query over replicas that disagree, stop early and fail.

The property: whatever the replicas hold (subsets, stale versions, tombstones, expired
values, fallbacks with a few hints) and however they cut their replies, every page is
the first `limit` visible items of the DVV merge of the full states of the replicas
that covered them, nothing superseded on one of those replicas is emitted, following
the tokens gives the unpaged answer (forward and reverse), and every stale replica
that covered an item is in the repair set.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import dvvset
from common.dvvset import DVVSet, Sibling
from common.errors import Rejected
from common.skrange import condition_range
from dynd.querymerge import (
    BadReply,
    QueryMerge,
    ReplicaPage,
    before,
    decode_token,
    encode_token,
    in_range,
    query_hash,
    resume_range,
    skeleton,
)

NOW = 1_000_000
SORT_KEYS = [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]


def _sibling(kind: str, tag: int) -> Sibling:
    if kind == "delete":
        return Sibling(None, tag)
    expires = NOW - 1 if kind == "expired" else None
    return Sibling(b"v%d" % tag, tag, expires)


@st.composite
def _histories(draw: st.DrawFn) -> list[DVVSet]:
    """Versions of one item: a chain of writes, each from the context of the one before,
    and sometimes a write concurrent with the last one (a sibling)."""
    kinds = st.sampled_from(["put", "put", "delete", "expired"])
    chain: list[DVVSet] = []
    for tag in range(draw(st.integers(1, 3))):
        previous = chain[-1] if chain else None
        context = dvvset.join(previous) if previous is not None else None
        chain.append(dvvset.update(dvvset.new(_sibling(draw(kinds), tag), context),
                                   previous, f"a{tag % 2}"))
    if draw(st.booleans()):
        base = chain[-2] if len(chain) > 1 else None
        concurrent = dvvset.update(
            dvvset.new(_sibling(draw(kinds), 9), dvvset.join(base) if base else None),
            base, "b")
        chain.append(dvvset.sync(chain[-1], concurrent))
        chain.insert(-1, concurrent)
    return chain


@dataclass
class _Replica:
    name: str
    fallback: bool
    state: dict[bytes, DVVSet]


@st.composite
def _replicas(draw: st.DrawFn) -> list[_Replica]:
    histories = {sk: draw(_histories()) for sk in SORT_KEYS}
    replicas = []
    for index in range(draw(st.integers(2, 4))):
        fallback = index > 0 and draw(st.booleans())
        state = {}
        for sk, chain in histories.items():
            # A fallback holds a few hints; a primary most items, some stale.
            if draw(st.integers(0, 3)) < (1 if fallback else 3):
                state[sk] = chain[draw(st.integers(0, len(chain) - 1))]
        replicas.append(_Replica(f"n{index}", fallback, state))
    return replicas


def _reply(replica: _Replica, lo: bytes, hi: bytes | None, reverse: bool, want: int,
           cap: int) -> ReplicaPage:
    """What p_query answers: every item met, live ones counted toward ``want``, at most
    ``cap`` items (the byte or tombstone limit), more exact."""
    keys = sorted((sk for sk in replica.state if in_range(sk, lo, hi)), reverse=reverse)
    items, live = [], 0
    for sk in keys:
        if live >= want or len(items) >= cap:
            break
        items.append((sk, replica.state[sk]))
        live += bool(dvvset.visible_values(replica.state[sk], NOW))
    return ReplicaPage(items, len(items) < len(keys), items[-1][0] if items else None)


def _page(replicas: list[_Replica], lo: bytes, hi: bytes | None, reverse: bool, limit: int,
          r: int, data: st.DataObject, failures: bool
          ) -> tuple[QueryMerge, dict[str, bytes | None]] | None:
    """Drive one page; the merge and, per replica used, where it stopped covering the
    range if it failed during a refill (None: it covered the whole page). None when the
    page could not start (fewer than R first replies)."""
    answering = [rep for rep in replicas
                 if not failures or not data.draw(st.integers(0, 4)) == 0]
    if len(answering) < r:
        return None
    merge = QueryMerge(lo, hi, reverse=reverse, limit=limit, now_ms=NOW)
    by_name = {rep.name: rep for rep in answering}
    for rep in answering:
        merge.add(rep.name, _reply(rep, lo, hi, reverse, limit, data.draw(st.integers(1, 4))),
                  fallback=rep.fallback)
    dropped: dict[str, bytes | None] = {rep.name: None for rep in answering}
    while refills := merge.step():
        for name in refills:
            if failures and data.draw(st.integers(0, 5)) == 0:
                dropped[name] = merge.cursors[name].last
                merge.drop(name)
                continue
            rlo, rhi = merge.request_range(name)
            merge.add(name, _reply(by_name[name], rlo, rhi, reverse, limit,
                                   data.draw(st.integers(1, 4))), fallback=by_name[name].fallback)
        if len(merge.cursors) < r:
            break
    return merge, dropped


def _covering(replicas: list[_Replica], dropped: dict[str, bytes | None], sk: bytes,
              reverse: bool) -> list[_Replica]:
    """The replicas used for ``sk``: answered, and had not failed before reaching it."""
    return [rep for rep in replicas if rep.name in dropped
            and (dropped[rep.name] is None or not before(dropped[rep.name], sk, reverse))]


def _check_page(replicas: list[_Replica], merge: QueryMerge, dropped: dict[str, bytes | None],
                lo: bytes, hi: bytes | None, reverse: bool, limit: int) -> None:
    after = merge.next_after()
    end = sorted(SORT_KEYS, reverse=reverse)
    page_keys = [sk for sk in end if in_range(sk, lo, hi)
                 and (after is None or not before(after, sk, reverse))]
    expected = []
    for sk in page_keys:
        covering = _covering(replicas, dropped, sk, reverse)
        clocks = [rep.state[sk] for rep in covering if sk in rep.state]
        if not clocks:
            continue
        merged = dvvset.merge_all(clocks)
        # (4) every stale replica that covered the item is repaired (a fallback only for a
        # stale copy it returned).
        repaired = {rep.node for rep in merge.repairs if rep.sk == sk}
        for rep in covering:
            held = rep.state.get(sk)
            stale = (held is None and not rep.fallback) or (
                held is not None and not dvvset.descends(held, merged))
            assert not stale or rep.name in repaired, (rep.name, sk)
        if dvvset.visible_values(merged, NOW):
            expected.append((sk, merged))
    # (1) the page is the visible items of the merge of the covering replicas' full states,
    # in scan order, at most `limit`: all of them up to where the page ends.
    assert [(e.sk, e.clock) for e in merge.emitted] == expected[:limit]
    assert len(merge.emitted) <= limit
    for item in merge.emitted:
        assert item.values == dvvset.visible_values(item.clock, NOW)
        # (2) nothing a covering replica has superseded comes back.
        for rep in _covering(replicas, dropped, item.sk, reverse):
            if item.sk in rep.state:
                assert dvvset.descends(item.clock, rep.state[item.sk])


def _unpaged(replicas: list[_Replica], lo: bytes, hi: bytes | None, reverse: bool
             ) -> list[bytes]:
    answer = []
    for sk in sorted(SORT_KEYS, reverse=reverse):
        clocks = [rep.state[sk] for rep in replicas if sk in rep.state]
        if in_range(sk, lo, hi) and clocks and dvvset.visible_values(
                dvvset.merge_all(clocks), NOW):
            answer.append(sk)
    return answer


_CONDS = st.none() | st.sampled_from([["ge", b"b"], ["lt", b"f"], ["between", b"b", b"e"],
                                      ["prefix", b"c"], ["eq", b"d"], ["gt", b"g"]])


@settings(max_examples=300, deadline=None)
@given(replicas=_replicas(), cond=_CONDS, reverse=st.booleans(), limit=st.integers(1, 4),
       data=st.data())
def test_pages_over_disagreeing_replicas(replicas: list[_Replica], cond: list | None,
                                         reverse: bool, limit: int, data: st.DataObject) -> None:
    lo, hi = condition_range(cond)
    qhash = query_hash("b", b"k", cond, reverse)
    # Pages with failures and late replies: each one checked on its own.
    r = data.draw(st.integers(1, len(replicas)))
    plo, phi = lo, hi
    for _ in range(len(SORT_KEYS) + 1):
        driven = _page(replicas, plo, phi, reverse, limit, r, data, failures=True)
        if driven is None:
            break
        merge, dropped = driven
        _check_page(replicas, merge, dropped, plo, phi, reverse, limit)
        after = merge.next_after()
        if after is None:
            break
        plo, phi = resume_range(lo, hi, reverse, decode_token(
            encode_token(after, reverse, qhash), qhash))
    # (3) Without failures, following the tokens gives the unpaged answer.
    seen: list[bytes] = []
    plo, phi = lo, hi
    for _ in range(2 * len(SORT_KEYS) + 2):
        driven = _page(replicas, plo, phi, reverse, limit, len(replicas), data, failures=False)
        assert driven is not None
        merge, dropped = driven
        _check_page(replicas, merge, dropped, plo, phi, reverse, limit)
        seen.extend(item.sk for item in merge.emitted)
        after = merge.next_after()
        if after is None:
            break
        plo, phi = resume_range(lo, hi, reverse, after)
    else:
        pytest.fail("the pages never ended")
    assert seen == _unpaged(replicas, lo, hi, reverse)


def _clock(value: bytes | None, actor: str = "a", context: DVVSet | None = None) -> DVVSet:
    return dvvset.update(dvvset.new(Sibling(value, 1), dvvset.join(context) if context else None),
                         context, actor)


def test_a_tombstone_on_one_replica_hides_a_stale_copy_and_the_short_replica_is_refilled(
        ) -> None:
    """The design's worked example: A `a b c d` live, B `a† b† c d`; limit 2."""
    live = {sk: _clock(b"v") for sk in (b"a", b"b", b"c", b"d")}
    dead = {sk: _clock(None, context=live[sk]) for sk in (b"a", b"b")}
    merge = QueryMerge(b"\x00", None, reverse=False, limit=2, now_ms=NOW)
    merge.add("A", ReplicaPage([(b"a", live[b"a"]), (b"b", live[b"b"])], True, b"b"))
    merge.add("B", ReplicaPage([(b"a", dead[b"a"]), (b"b", dead[b"b"]), (b"c", live[b"c"]),
                                (b"d", live[b"d"])], False, b"d"))
    assert merge.step() == ["A"]
    assert merge.emitted == [] and merge.next_after() == b"b"
    assert merge.request_range("A") == (b"b\x00", None)
    merge.add("A", ReplicaPage([(b"c", live[b"c"]), (b"d", live[b"d"])], False, b"d"))
    assert merge.step() == []
    assert [item.sk for item in merge.emitted] == [b"c", b"d"]
    assert merge.next_after() is None
    assert {(rep.node, rep.sk) for rep in merge.repairs} == {("A", b"a"), ("A", b"b")}


def test_a_replica_missing_an_item_gets_it_and_nothing_past_the_horizon_is_emitted() -> None:
    clocks = {sk: _clock(b"v") for sk in (b"a", b"b", b"c")}
    merge = QueryMerge(b"\x00", None, reverse=False, limit=2, now_ms=NOW)
    merge.add("A", ReplicaPage([(b"a", clocks[b"a"]), (b"c", clocks[b"c"])], True, b"c"))
    merge.add("B", ReplicaPage([(b"a", clocks[b"a"]), (b"b", clocks[b"b"])], True, b"b"))
    assert merge.step() == []
    assert [item.sk for item in merge.emitted] == [b"a", b"b"]
    assert merge.next_after() == b"b"
    assert [(rep.node, rep.sk) for rep in merge.repairs] == [("A", b"b")]


def test_a_late_reply_is_repaired_up_to_its_own_last() -> None:
    clocks = {sk: _clock(b"v") for sk in (b"a", b"b", b"c")}
    merge = QueryMerge(b"\x00", None, reverse=False, limit=5, now_ms=NOW)
    merge.add("A", ReplicaPage([(sk, clocks[sk]) for sk in (b"a", b"b", b"c")], False, b"c"))
    assert merge.step() == []
    late = ReplicaPage([(b"b", _clock(b"old", "z"))], True, b"b")
    assert [(rep.node, rep.sk) for rep in merge.late_repairs("C", late, fallback=False)] == [
        ("C", b"a"), ("C", b"b")]
    assert [rep.sk for rep in merge.late_repairs("F", late, fallback=True)] == [b"b"]


@pytest.mark.parametrize("page", [
    ReplicaPage([(b"b", _clock(b"v")), (b"a", _clock(b"v"))], False, None),  # out of order
    ReplicaPage([(b"z", _clock(b"v"))], False, None),  # past hi
    ReplicaPage([(b"b", _clock(b"v"))], False, b"a"),  # last before its own item
    ReplicaPage([], True, None),  # more without having scanned anything
])
def test_replies_that_are_not_a_scan_of_the_range_are_refused(page: ReplicaPage) -> None:
    merge = QueryMerge(b"a", b"c", reverse=False, limit=5, now_ms=NOW)
    with pytest.raises(BadReply):
        merge.add("A", page)
    assert merge.cursors == {}


def test_skeletons_keep_tombstones_and_expiry_but_no_values() -> None:
    clock = dvvset.sync(_clock(b"value", "a"), _clock(None, "b"))
    bare = skeleton(clock)
    assert sorted(s.value is None for s in dvvset.values(bare)) == [False, True]
    assert all(s.value in (None, b"") for s in dvvset.values(bare))
    assert dvvset.join(bare) == dvvset.join(clock)


def test_tokens_are_bound_to_their_query() -> None:
    mine = query_hash("b", b"k", ["ge", b"a"], False)
    token = encode_token(b"last", False, mine)
    assert decode_token(token, mine) == b"last"
    for other in (query_hash("b", b"k", ["ge", b"a"], True), query_hash("b", b"j", None, False),
                  query_hash("c", b"k", ["ge", b"a"], False)):
        with pytest.raises(Rejected, match="belongs to another query"):
            decode_token(token, other)
    for bad in ("", "!!!", "x" * 5000, encode_token(b"last", False, mine)[:-3],
                "oQ"):  # a CBOR map, not the token's array
        with pytest.raises(Rejected, match="malformed continuation token"):
            decode_token(bad, mine)
