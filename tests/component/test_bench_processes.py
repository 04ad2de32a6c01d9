"""dynctl bench's client processes: a process that cannot connect, or that fails otherwise,
ends the run with a clear error (each test spawns bench's client processes); workload E
against one real node returns the items the load wrote."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from common.errors import DynError, UsageError
from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from dynctl.cli import main
from dynctl.client import SyncClient
from dynctl.ycsb import item_key
from tests.integration.harness import cluster


def _closed_addr() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_bench_against_an_unreachable_node_exits_4() -> None:
    """A client process that cannot connect is Unavailable (4), not a usage error (2)."""
    addr = _closed_addr()
    result = CliRunner().invoke(main, ["--json", "--node", addr, "bench", "--no-spread",
                                       "--ops", "5", "--records", "5", "--warmup", "0",
                                       "-c", "1", "-p", "1"])
    assert result.exit_code == 4, result.output
    assert json.loads(result.stdout) == {"error": {
        "code": "unavailable",
        "message": f"client process 0 failed: cannot reach {addr}: connection refused"}}


def broken_driver(target: Target, connections: int, in_flight: int) -> Any:
    """A driver factory (run in a spawned client process) that fails like a bug would."""
    raise RuntimeError("driver broke")


async def test_a_client_process_failing_otherwise_is_an_internal_error() -> None:
    target = Target("broken", (_closed_addr(),),
                    factory="tests.component.test_bench_processes:broken_driver")
    config = BenchConfig(ops=1, duration=None, records=1, warmup=0, concurrency=1,
                         procs=1)
    with pytest.raises(DynError) as failure:
        await run_phase(target, config, "run")
    assert type(failure.value) is DynError and failure.value.code == "internal"
    assert failure.value.exit_code == 4
    assert failure.value.message == "client process 0 failed: RuntimeError: driver broke"


def _bench_e(node: str, *args: str) -> dict[str, Any]:
    """A small ``dynctl bench -w e`` run against ``node``: its run phase from --json."""
    result = CliRunner().invoke(main, ["--json", "--node", node, "bench", "-w", "e",
                                       "--records", "300", "--items-per-key", "100",
                                       "--ops", "60", "--warmup", "0", "-c", "4", "-p", "1",
                                       "--seed", "7", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["phases"][-1]


def test_workload_e_loads_items_and_scans_them_with_queries(tmp_path: Path) -> None:
    """The load writes items with sort keys (a thread holds G of them); forward, reverse
    and get-per-item scans each return what the thread holds from the start item on; on an
    empty store every scan is counted short."""
    with cluster(tmp_path) as nodes:
        node = nodes.add("n1").addr
        forward = _bench_e(node, "--min-scan", "100", "--max-scan", "100")
        assert set(forward["operations"]) <= {"scan", "insert"}
        scans = forward["scans"]
        assert scans["queries"] == forward["operations"]["scan"]["count"] > 0
        assert set(scans) == {"queries", "queries_per_s", "items", "items_per_s",
                              "items_per_query", "rounds_per_query", "refilled_share"}
        assert 1 <= scans["items_per_query"] <= 100
        assert scans["items"] == round(scans["items_per_query"] * scans["queries"])
        assert forward["errors"] == {} and "short_scans" not in forward["outcomes"]
        with SyncClient.connect(node) as client:
            assert client.count(item_key(0, 100)[0]) == 100
            assert client.count(item_key(299, 100)[0]) >= 100
        for mode in (["--reverse"], ["--scan-as-gets"], ["--scan-as-gets", "--reverse"]):
            run = _bench_e(node, "--no-load", *mode)
            assert run["errors"] == {} and "short_scans" not in run["outcomes"], mode
            assert run["scans"]["items_per_query"] >= 1
        empty = _bench_e(node, "--no-load", "--bucket", "empty")
        assert empty["scans"]["items"] == 0  # outcomes count the warm-up's scans too
        assert empty["outcomes"]["short_scans"] >= empty["scans"]["queries"] > 0


@asynccontextmanager
async def keys_only_driver(target: Target, connections: int, in_flight: int
                           ) -> AsyncIterator[object]:
    """A driver factory of a store with plain keys only (like Redis here)."""
    yield object()


async def test_workload_e_on_a_store_without_items_is_a_usage_error() -> None:
    target = Target("plain", (_closed_addr(),),
                    factory="tests.component.test_bench_processes:keys_only_driver")
    config = BenchConfig(workload="e", ops=1, duration=None, records=1, warmup=0,
                         concurrency=1, procs=1)
    with pytest.raises(UsageError, match="plain cannot store items"):
        await run_phase(target, config, "run")
