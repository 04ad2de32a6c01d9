"""dynctl's dashboards: stable plain lines when piped, rich panels and bars on a terminal.

The node is replaced by canned replies (``Settings.connect`` patched), so these tests
exercise exactly the rendering: cli command -> Outcome -> Output.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from dynctl import cli
from dynctl.bench.report import render_report
from dynctl.output import (
    Output,
    ago,
    health_line,
    human_bytes,
    ownership_bar,
    ring_panel,
    status_panel,
)

NOW = 1_800_000_000.0

STATUS = {
    "node": "n1", "actor": "n1.1", "epoch": 7, "storage_bytes": 3 * 1024 * 1024,
    "members": [{"id": "n1", "status": "valid", "reachable": True, "phi": None},
                {"id": "n2", "status": "valid", "reachable": True, "phi": 0.42},
                {"id": "n3", "status": "valid", "reachable": False, "phi": None}],
    "hints": {"n3": 12},
    "transfers": [{"partition": 5, "source": "n3", "target": "n1", "keys": 40,
                   "state": "running"}],
    "antientropy": [{"partition": 0, "last_exchange": NOW - 90, "compared": 10, "repaired": 2},
                    {"partition": 1, "last_exchange": None, "compared": 0, "repaired": 0}],
}
RING = {"ring_size": 8, "epoch": 7, "owners": ["n1", "n2", "n3"] * 2 + ["n1", "n2"],
        "balance": 1.125}
CLUSTER_STATUS = {"epoch": 7, "members": [
    {"id": "n1", "addr": "127.0.0.1:7070", "zone": "a", "status": "valid", "reachable": True,
     "tokens": 3, "pending_transfers": 0},
    {"id": "n2", "addr": "127.0.0.1:7071", "zone": "b", "status": "leaving",
     "reachable": False, "tokens": 5, "pending_transfers": 2}]}
STATS = {"node": "n1", "ops": {"get": {"count": 4, "errors": 1, "p50": 0.5, "p95": 1.25,
                                       "p99": 2.0, "p999": 2.0, "max": 2.0}},
         "events": {"quorum_failure": 1}, "gauges": {"members_up": 2, "storage_bytes": 77}}


class FakeClient:
    """Answers each op with the next canned reply for it."""

    addr = "127.0.0.1:7070"

    def __init__(self, replies: dict[str, list[dict[str, Any]]]) -> None:
        self.replies = replies

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        queue = self.replies[op]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def run(monkeypatch):
    """``run(args, replies, terminal=False)``: dynctl against canned replies, piped or on a
    simulated 100-column terminal."""

    def invoke(args: list[str], replies: dict[str, list[dict[str, Any]]],
               terminal: bool = False):
        client = FakeClient(replies)

        @asynccontextmanager
        async def connect(self: cli.Settings, default_timeout: float = 1.0
                          ) -> AsyncIterator[FakeClient]:
            yield client

        monkeypatch.setattr(cli.Settings, "connect", connect)
        monkeypatch.setattr(cli, "WAIT_POLL_INTERVAL", 0.01)
        monkeypatch.delenv("FORCE_COLOR", raising=False)
        monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
        monkeypatch.setenv("COLUMNS", "100")
        return CliRunner().invoke(cli.main, args, catch_exceptions=False)

    return invoke


# -- piped: stable plain lines ---------------------------------------------------------------

def test_status_piped_is_stable_plain_lines(run):
    result = run(["status"], {"status": [STATUS]})
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "node=n1", "epoch=7", f"storage_bytes={3 * 1024 * 1024}",
        "member id=n1 status=valid reachable=true",
        "member id=n2 status=valid reachable=true",
        "member id=n3 status=valid reachable=false",
        "hint target=n3 count=12",
        "transfer partition=5 source=n3 target=n1 keys=40 state=running",
        "antientropy partition=0 last_exchange=2027-01-15T07:58:30.000Z repaired=2",
        "antientropy partition=1 last_exchange=never repaired=0",
    ]


def test_ring_piped_is_stable_plain_lines(run):
    result = run(["ring"], {"ring": [RING]})
    assert result.stdout.splitlines() == [
        "ring_size=8", "epoch=7", "balance=1.125",
        "owner node=n1 partitions=3 share=0.375",
        "owner node=n2 partitions=3 share=0.375",
        "owner node=n3 partitions=2 share=0.25",
    ]


def test_cluster_status_piped_is_stable_plain_lines(run):
    result = run(["cluster", "status"], {"cluster_status": [CLUSTER_STATUS]})
    assert result.stdout.splitlines() == [
        "member id=n1 addr=127.0.0.1:7070 zone=a status=valid reachable=true tokens=3 "
        "pending_transfers=0",
        "member id=n2 addr=127.0.0.1:7071 zone=b status=leaving reachable=false tokens=5 "
        "pending_transfers=2",
    ]


def test_stats_piped_lists_ops_events_and_gauges(run):
    result = run(["stats"], {"stats": [STATS]})
    assert result.stdout.splitlines() == [
        "op op=get count=4 errors=1 p50=0.5 p95=1.25 p99=2 p999=2 max=2",
        "event name=quorum_failure count=1",
        "gauge name=members_up value=2",
        "gauge name=storage_bytes value=77",
    ]


def test_cluster_wait_piped_prints_one_line_per_change(run):
    pending = {"converged": False, "epochs": {"n1": 7, "n2": 6}, "pending_transfers": 3,
               "unreachable": []}
    done = {"converged": True, "epochs": {"n1": 7, "n2": 7}, "pending_transfers": 0,
            "unreachable": []}
    result = run(["cluster", "wait", "--timeout", "5"],
                 {"cluster_check": [pending, pending, pending, done]})
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "waiting: epochs n1:7 n2:6, 3 transfers pending",
        "converged: epochs n1:7 n2:7, 0 transfers pending",
    ]


def test_repair_piped_prints_only_its_result(run):
    result = run(["repair"], {"repair": [{"compared": 100, "repaired": 3}]})
    assert result.stdout.splitlines() == ["compared=100", "repaired=3"]


BENCH_REPORT = {"target": "dynd", "config": {"workload": "a"}, "phases": [{
    "phase": "run", "throughput": 1000.0, "seconds": 10.0, "client_cpu_us_per_op": 250.0,
    "client_cpu_cores": 0.25, "client_bound": False,
    "operations": {"read": {"count": 9512, "throughput": 951.2, "p50": 1.234, "p95": 3.1,
                            "p99": 5.4, "p999": 9.8, "max": 12.1, "mean": 1.5}},
    "errors": {"read:Unavailable": 3}, "outcomes": {"not_found": 2}}]}


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_bench_report_columns(terminal, monkeypatch, capsys):
    """Piped: `TABLE col=value ...` lines, each column one word; a terminal keeps the
    readable headers."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    render_report(Output(json_mode=False), BENCH_REPORT)
    shown = capsys.readouterr().out
    if terminal:
        assert all(f"{column} ms" in shown for column in ("p50", "p95", "p99", "p999", "max"))
        return
    assert shown.splitlines() == [
        "latency op=read count=9512 ops/s=951.2 p50_ms=1.234 p95_ms=3.1 p99_ms=5.4 "
        "p999_ms=9.8 max_ms=12.1",
        "error op:kind=read:Unavailable count=3",
        "not_found=2"]


# -- on a terminal: panels and bars ------------------------------------------------------------

def _render(renderable: Any) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_ring_panel_draws_one_ownership_bar_per_node():
    text = _render(ring_panel(RING, bar_width=30))
    rows = {line.split()[1]: line for line in text.splitlines()
            if len(line.split()) > 1 and line.split()[1] in ("n1", "n2", "n3")}
    assert set(rows) == {"n1", "n2", "n3"}
    assert "█" * 30 in rows["n1"] and "█" * 30 in rows["n2"]
    assert "█" * 20 in rows["n3"] and "█" * 21 not in rows["n3"]  # 2/3 of the largest
    assert "balance 1.125" in text
    assert "+12%" in rows["n1"] and "-25%" in rows["n3"]
    assert "partitions 0..7" in text


def test_status_panel_shows_reachability_hints_transfers_and_antientropy():
    text = _render(status_panel(STATUS, now=NOW))
    assert "node n1 · epoch 7" in text
    assert "2 up, 1 down" in text
    assert "3.0 MiB" in text
    assert "pending hints" in text and "12" in text
    assert "○ down" in text and "running" in text
    assert "last exchange 1m ago, 1/2 partitions exchanged, 2 keys repaired" in text


def _styles_of(text: Text, fragment: str) -> set[str]:
    """The styles of the spans of ``text`` that cover ``fragment``."""
    start = text.plain.index(fragment)
    return {str(span.style) for span in text.spans
            if span.start <= start and start + len(fragment) <= span.end}


def test_status_health_turns_red_exactly_where_an_alert_would_fire():
    """Below 10% free (DyndDiskAlmostFull), hints older than an hour
    (DyndHintsPendingTooLong), a clock offset past a second (DyndClockOffsetHigh)."""
    gib = 1024**3
    calm = health_line({**STATUS, "disk_free_bytes": 50 * gib, "disk_total_bytes": 100 * gib,
                        "oldest_hint_seconds": 600.0, "clock_offset_ms": {"n2": 3, "n3": -40}})
    assert calm.plain == ("disk 50.0 GiB free of 100.0 GiB (50%)   oldest hint 10m   "
                          "clock offset -40 ms")
    assert "bold red" not in {str(span.style) for span in calm.spans}
    alarming = health_line({**STATUS, "disk_free_bytes": 9 * gib, "disk_total_bytes": 100 * gib,
                            "oldest_hint_seconds": 3601.0, "clock_offset_ms": 1500})
    for fragment in ("9.0 GiB free", "1h", "+1500 ms"):
        assert "bold red" in _styles_of(alarming, fragment), fragment
    assert health_line(STATUS).plain == ""  # an older node reports none of them


def test_status_piped_adds_the_health_readings_a_node_reports(run):
    reply = {**STATUS, "disk_free_bytes": 10, "disk_total_bytes": 100,
             "oldest_hint_seconds": 5.0, "clock_offset_ms": 2}
    lines = run(["status"], {"status": [reply]}).stdout.splitlines()
    assert lines[3:7] == ["disk_free_bytes=10", "disk_total_bytes=100",
                          "oldest_hint_seconds=5", "clock_offset_ms=2"]


@pytest.mark.parametrize("args, op, reply", [
    (["status"], "status", STATUS), (["ring"], "ring", RING),
    (["cluster", "status"], "cluster_status", CLUSTER_STATUS), (["stats"], "stats", STATS),
])
def test_commands_render_on_a_terminal(run, args, op, reply):
    result = run(args, {op: [reply]}, terminal=True)
    assert result.exit_code == 0
    assert "n1" in result.stdout
    assert "=" not in result.stdout.replace("==", "")  # a table or panel, not key=value lines


def test_ring_on_a_terminal_has_bars(run):
    result = run(["ring"], {"ring": [RING]}, terminal=True)
    assert "█" in result.stdout and "balance" in result.stdout


def test_cluster_wait_and_repair_on_a_terminal_end_with_their_result(run):
    done = {"converged": True, "epochs": {"n1": 7}, "pending_transfers": 0, "unreachable": []}
    result = run(["cluster", "wait"], {"cluster_check": [done]}, terminal=True)
    assert result.exit_code == 0 and "converged: epochs n1:7" in result.stdout
    result = run(["repair"], {"repair": [{"compared": 100, "repaired": 3}]}, terminal=True)
    assert result.exit_code == 0 and "repaired" in result.stdout and "100" in result.stdout


# -- helpers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction, expected", [
    (0.0, " " * 4), (1.0, "████"), (0.5, "██  "), (1 / 32, "▏   "), (2.0, "████"),
    (-1.0, " " * 4),
])
def test_ownership_bar_fills_to_an_eighth_of_a_cell(fraction, expected):
    assert ownership_bar(fraction, 4) == expected


def test_ownership_bar_refuses_a_zero_width():
    with pytest.raises(ValueError, match="width"):
        ownership_bar(0.5, 0)


def test_human_bytes_and_ago():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(None) == "-"
    assert ago(None, NOW) == "never"
    assert ago(NOW - 5, NOW) == "5s ago"
    assert ago(NOW - 7200, NOW) == "2h ago"
