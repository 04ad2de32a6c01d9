"""The Python client's memory of its own writes (read your writes): bounded, and judging
whether a read saw the remembered write by comparing version vectors."""

from __future__ import annotations

import pytest

from common.dvvset import encode_context
from dynctl.client import ClientConfigError, WrittenContexts, descends


def test_a_read_covers_a_write_when_its_vector_descends_it() -> None:
    written = WrittenContexts(10)
    written.remember("b", b"k", encode_context({"n1": 2, "n2": 1}))
    assert written.covered_by("b", b"k", encode_context({"n1": 2, "n2": 1}))
    assert written.covered_by("b", b"k", encode_context({"n1": 3, "n2": 1, "n3": 1}))
    assert not written.covered_by("b", b"k", encode_context({"n1": 1, "n2": 5}))
    assert not written.covered_by("b", b"k", "")  # the read found nothing
    assert written.covered_by("b", b"other", "")  # nothing written there: nothing to miss
    assert written.covered_by("other", b"k", "")


def test_only_the_most_recently_written_keys_are_remembered() -> None:
    written = WrittenContexts(2)
    for key in (b"a", b"b", b"a", b"c"):  # b is now the least recently written
        written.remember("b", key, encode_context({"n1": 1}))
    assert len(written) == 2
    assert written.covered_by("b", b"b", "")
    assert not written.covered_by("b", b"a", "") and not written.covered_by("b", b"c", "")


def test_zero_remembers_nothing_and_bad_limits_are_refused() -> None:
    off = WrittenContexts(0)
    off.remember("b", b"k", encode_context({"n1": 1}))
    assert len(off) == 0 and off.covered_by("b", b"k", "")
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ClientConfigError):
            WrittenContexts(bad)  # type: ignore[arg-type]


def test_descends_compares_counters_actor_by_actor() -> None:
    assert descends({"a": 1, "b": 2}, {"b": 2})
    assert descends({}, {})
    assert not descends({"a": 1}, {"a": 1, "b": 1})

