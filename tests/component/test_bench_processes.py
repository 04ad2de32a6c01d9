"""dynctl bench's client processes: a process that cannot connect, or that fails otherwise,
ends the run with a clear error (each test spawns bench's client processes)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from click.testing import CliRunner

from common.errors import DynError
from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from dynctl.cli import main


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
