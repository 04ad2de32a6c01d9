"""The `make bench` harness's process handling: stores take turns (the idle ones paused and
all resumed at the end, so that stopping them works), and node CPU per operation counts only
the CPU spent while operations ran."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.compare import CpuPerOperation, Turns, cpu_seconds

SIGNAL_WAIT = 500


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _states(processes: list[subprocess.Popen], expected: list[str]) -> list[str]:
    """The processes' states once they match ``expected`` (a signal takes effect a moment
    after it is sent), or as they are after ``SIGNAL_WAIT`` polls."""
    for _ in range(SIGNAL_WAIT):
        states = [_state(p.pid) for p in processes]
        if states == expected:
            break
        time.sleep(0.01)
    return states


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen]]:
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_only_the_measured_store_runs_and_all_resume_at_the_end(
        sleepers: list[subprocess.Popen]) -> None:
    turns = Turns()
    turns.RESUME_SETTLE = 0.0
    turns.add("cluster", [sleepers[0].pid, sleepers[1].pid])
    turns.add("other", [sleepers[2].pid])
    turns.only("other")
    assert _states(sleepers, ["T", "T", "S"]) == ["T", "T", "S"]
    turns.only("cluster")
    assert _states(sleepers, ["S", "S", "T"]) == ["S", "S", "T"]
    turns.resume_all()
    assert _states(sleepers, ["S", "S", "S"]) == ["S", "S", "S"]


def _burn(pid: int, ticks: int) -> None:
    """Use CPU until /proc shows ``ticks`` more clock ticks of it."""
    start = cpu_seconds([pid])
    while cpu_seconds([pid]) < start + ticks / os.sysconf("SC_CLK_TCK"):
        sum(range(10_000))


def test_cpu_per_operation_starts_at_the_first_report_with_operations() -> None:
    """CPU used before any operation completed (the client processes starting) is not
    charged; without two reports with operations there is no figure."""
    pid = os.getpid()
    per_op = CpuPerOperation([pid])
    per_op("run", 0.25, 0, 0, 0.0)
    _burn(pid, 20)  # before the first operation: not counted
    before_first = cpu_seconds([pid])
    per_op("run", 0.5, 10, 0, 40.0)
    after_first = cpu_seconds([pid])
    assert per_op.us_per_op() is None
    _burn(pid, 5)
    before_last = cpu_seconds([pid])
    per_op("run", 0.75, 15, 5, 40.0)  # failed operations count as operations
    after_last = cpu_seconds([pid])
    measured = per_op.us_per_op()
    assert measured is not None
    slack = 1.0  # us: float error and the figure's rounding to 0.1 us
    assert (before_last - after_first) / 10 * 1e6 - slack <= measured \
        <= (after_last - before_first) / 10 * 1e6 + slack
