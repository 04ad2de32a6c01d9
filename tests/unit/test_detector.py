"""The phi-accrual detector: quiet under a steady or jittery rhythm, loud after silence."""

import math
import random

import pytest

from dynd.detector import PhiAccrualDetector


def steady(detector: PhiAccrualDetector, node: str = "a", beats: int = 20,
           interval: float = 1.0, start: float = 0.0) -> float:
    """Send `beats` heartbeats `interval` apart; return the time of the last one."""
    now = start
    for i in range(beats):
        now = start + i * interval
        detector.heartbeat(node, now)
    return now


def test_unknown_node_is_down():
    detector = PhiAccrualDetector()
    assert detector.phi("ghost", 0.0) == math.inf
    assert not detector.is_available("ghost", 0.0)
    assert detector.snapshot(0.0) == {}


def test_regular_heartbeats_keep_a_node_available():
    detector = PhiAccrualDetector()
    now = 0.0
    for _ in range(200):
        detector.heartbeat("a", now)
        assert detector.is_available("a", now + 0.99)
        now += 1.0


def test_first_heartbeat_uses_the_first_interval_estimate():
    detector = PhiAccrualDetector(first_interval_seconds=1.0)
    detector.heartbeat("a", 100.0)
    assert detector.is_available("a", 101.0)
    assert not detector.is_available("a", 105.0)


def test_silence_of_a_few_intervals_makes_a_node_unavailable():
    detector = PhiAccrualDetector()
    last = steady(detector)
    assert detector.is_available("a", last + 1.2)
    assert not detector.is_available("a", last + 4.0)


def test_phi_grows_with_silence():
    detector = PhiAccrualDetector()
    last = steady(detector)
    values = [detector.phi("a", last + dt / 10) for dt in range(0, 100)]
    assert values == sorted(values)
    assert values[0] < 0.5 < detector.threshold < values[-1]


def test_phi_stays_finite_and_defined_far_from_the_mean():
    detector = PhiAccrualDetector()
    last = steady(detector)
    assert detector.phi("a", last - 1e6) == pytest.approx(0.0, abs=1e-9)  # clock misuse: age 0
    assert detector.phi("a", last + 1e6) > 1e6
    assert detector.phi("a", last + 1e300) == math.inf
    assert not detector.is_available("a", last + 1e300)


def test_heartbeat_after_silence_recovers():
    detector = PhiAccrualDetector()
    last = steady(detector)
    assert not detector.is_available("a", last + 30.0)
    detector.heartbeat("a", last + 30.0)
    assert detector.is_available("a", last + 30.5)


def test_an_outage_is_not_learnt_as_a_normal_interval():
    detector = PhiAccrualDetector(window=10)
    last = steady(detector)
    detector.heartbeat("a", last + 60.0)  # back after a minute of silence
    last = steady(detector, beats=3, start=last + 61.0)
    assert not detector.is_available("a", last + 5.0)


def test_jittery_heartbeats_raise_no_false_suspicion():
    rng = random.Random(7)
    detector = PhiAccrualDetector()
    now = 0.0
    for _ in range(500):
        detector.heartbeat("a", now)
        now += rng.uniform(0.5, 1.5)
        assert detector.is_available("a", now), "suspected just before an on-time heartbeat"
    assert not detector.is_available("a", now + 6.0)


def test_acceptable_pause_tolerates_longer_silence():
    strict, lenient = PhiAccrualDetector(), PhiAccrualDetector(acceptable_pause_seconds=3.0)
    last = steady(strict)
    steady(lenient)
    assert not strict.is_available("a", last + 4.0)
    assert lenient.is_available("a", last + 4.0)


def test_suspect_marks_down_until_next_heartbeat():
    detector = PhiAccrualDetector()
    last = steady(detector)
    detector.suspect("a", last + 0.2)
    assert not detector.is_available("a", last + 0.3)
    assert detector.phi("a", last + 0.3) < detector.threshold  # phi itself is unaffected
    detector.heartbeat("a", last + 1.0)
    assert detector.is_available("a", last + 1.1)


def test_interval_spanning_a_suspicion_is_not_learnt():
    detector = PhiAccrualDetector(window=5)
    last = steady(detector)
    detector.suspect("a", last + 0.5)
    detector.heartbeat("a", last + 9.0)  # the 9 s gap must not widen the window
    last = steady(detector, beats=1, start=last + 10.0)
    assert not detector.is_available("a", last + 5.0)


def test_stale_suspicion_and_unknown_nodes_are_ignored():
    detector = PhiAccrualDetector()
    last = steady(detector)
    detector.suspect("a", last - 0.5)  # a timeout older than the last heartbeat
    assert detector.is_available("a", last + 0.1)
    detector.suspect("ghost", last)
    assert "ghost" not in detector.snapshot(last)


def test_heartbeat_going_back_in_time_teaches_nothing():
    detector = PhiAccrualDetector()
    last = steady(detector)
    before = detector.phi("a", last + 2.0)
    detector.heartbeat("a", last - 5.0)
    assert detector.phi("a", last + 2.0) == before


def test_forget_and_snapshot():
    detector = PhiAccrualDetector()
    last = steady(detector, node="a")
    steady(detector, node="b")
    detector.suspect("b", last)
    snap = detector.snapshot(last + 0.5)
    assert list(snap) == ["a", "b"]
    assert snap["a"]["last_heartbeat_age"] == pytest.approx(0.5)
    assert snap["a"]["available"] and not snap["a"]["suspected"]
    assert snap["b"]["suspected"] and not snap["b"]["available"]
    assert snap["a"]["phi"] == detector.phi("a", last + 0.5)
    detector.forget("a")
    assert not detector.is_available("a", last + 0.5)
    assert list(detector.snapshot(last)) == ["b"]


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0.0}, {"threshold": -1.0}, {"threshold": math.nan}, {"window": 0},
    {"window": 2.5}, {"window": True}, {"min_std_seconds": 0.0},
    {"acceptable_pause_seconds": -0.1}, {"first_interval_seconds": 0.0},
])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        PhiAccrualDetector(**kwargs)
