"""Clock offsets from gossip round trips: the arithmetic, the largest offset shown by
``dynctl status``, and a warning logged once per crossing of the threshold."""

from __future__ import annotations

from dynd.clocks import SKEW_WARN_MS, ClockOffsets, offset_ms


def test_the_peer_is_assumed_to_answer_half_way_through_the_round_trip() -> None:
    assert offset_ms(1_000_050, 1_000_000, 1_000_100) == 0  # in sync, 100 ms round trip
    assert offset_ms(1_002_050, 1_000_000, 1_000_100) == 2_000  # peer 2 s ahead
    assert offset_ms(999_050, 1_000_000, 1_000_100) == -1_000  # peer 1 s behind


def test_the_largest_offset_keeps_its_sign() -> None:
    offsets = ClockOffsets()
    assert offsets.largest() is None
    offsets.record("n2", 1_000_300, 1_000_000, 1_000_000)
    offsets.record("n3", 999_200, 1_000_000, 1_000_000)
    assert offsets.per_peer() == {"n2": 300.0, "n3": -800.0}
    assert offsets.largest() == -800.0
    offsets.forget("n3")
    assert offsets.largest() == 300.0


def test_a_warning_is_due_when_an_offset_goes_past_the_threshold_not_every_round() -> None:
    offsets = ClockOffsets()
    over = int(SKEW_WARN_MS) + 1
    assert not offsets.record("n2", 1_000_000 + int(SKEW_WARN_MS), 1_000_000, 1_000_000)
    assert offsets.record("n2", 1_000_000 + over, 1_000_000, 1_000_000)
    assert not offsets.record("n2", 1_000_000 + over, 1_000_000, 1_000_000)
    assert not offsets.record("n2", 1_000_000, 1_000_000, 1_000_000)  # back in sync
    assert offsets.record("n2", 1_000_000 - over, 1_000_000, 1_000_000)  # past it again
    assert ClockOffsets().record("n3", 1_000_000 + over, 1_000_000, 1_000_000)  # first round
