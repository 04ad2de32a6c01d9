"""What one benchmark is: the target it measures and the knobs it runs with.

Limits: concurrency 1..``MAX_CONCURRENCY`` and at least one request per process; procs
1..``MAX_PROCS``; value size 1 B..the client's value limit; workload E's items per key
1..``MAX_ITEMS_PER_KEY`` and scans of 1..``MAX_QUERY_LIMIT`` items (one query page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import UsageError
from common.messages import MAX_QUERY_LIMIT
from dynctl.client import LIMITS
from dynctl.ycsb import DEFAULT_MAX_SCAN, MAX_ITEMS_PER_KEY, RECORD_BYTES, workload

MAX_CONCURRENCY = 4096
MAX_PROCS = 64


@dataclass(frozen=True)
class Target:
    """What to benchmark: a driver factory (``module:function``), node addresses, options."""

    name: str
    addrs: tuple[str, ...]
    factory: str = "dynctl.bench.drivers:open_dynd"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    """The knobs of one benchmark, as given on the command line (see ``dynctl bench -h``)."""

    workload: str = "a"
    records: int = 10_000
    ops: int | None = None
    duration: float | None = 10.0
    warmup: float = 2.0
    concurrency: int = 32
    procs: int = 2
    connections: int = 2
    value_size: int = RECORD_BYTES
    load: bool = True
    seed: int | None = None
    items_per_key: int = 1000  # workload E: posts per thread
    min_scan: int = 1
    max_scan: int = DEFAULT_MAX_SCAN
    reverse: bool = False
    scan_as_gets: bool = False  # workload E's baseline: a scan's items read by as many gets

    def __post_init__(self) -> None:
        workload(self.workload)
        if (self.ops is None) == (self.duration is None):
            raise UsageError("give exactly one of --ops and --duration")
        checks = [(self.records >= 1, "--records must be at least 1"),
                  (self.ops is None or self.ops >= 1, "--ops must be at least 1"),
                  (self.duration is None or self.duration > 0, "--duration must be positive"),
                  (self.warmup >= 0, "--warmup cannot be negative"),
                  (1 <= self.procs <= MAX_PROCS, f"--procs must be in 1..{MAX_PROCS}"),
                  (self.procs <= self.concurrency <= MAX_CONCURRENCY,
                   f"--concurrency must be in --procs..{MAX_CONCURRENCY}"),
                  (self.connections >= 1, "--connections must be at least 1"),
                  (1 <= self.value_size <= LIMITS.max_value_bytes,
                   f"--value-size must be in 1..{LIMITS.max_value_bytes}"),
                  (1 <= self.items_per_key <= MAX_ITEMS_PER_KEY,
                   f"--items-per-key must be in 1..{MAX_ITEMS_PER_KEY}"),
                  (1 <= self.min_scan <= self.max_scan <= MAX_QUERY_LIMIT,
                   f"scan lengths need 1 <= --min-scan <= --max-scan <= {MAX_QUERY_LIMIT}"),
                  (self.workload == "e" or not (self.reverse or self.scan_as_gets),
                   "--reverse and --scan-as-gets apply to workload e only")]
        for holds, message in checks:
            if not holds:
                raise UsageError(message)

    @property
    def items(self) -> bool:
        """Whether records are items with sort keys (workload E) rather than plain keys."""
        return self.workload == "e"

    def share(self, total: int, proc_index: int) -> int:
        """Process ``proc_index``'s share of ``total`` (requests in flight, operations)."""
        return total // self.procs + (1 if proc_index < total % self.procs else 0)
