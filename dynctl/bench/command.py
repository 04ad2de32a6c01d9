"""The ``dynctl bench`` command: its options, its checks and the live progress line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from common.errors import UsageError
from common.messages import MAX_QUERY_LIMIT
from dynctl.bench.config import MAX_CONCURRENCY, MAX_PROCS, BenchConfig, Target
from dynctl.client import LIMITS, parse_nodes
from dynctl.invocation import Session
from dynctl.output import Outcome, Output
from dynctl.ycsb import DEFAULT_MAX_SCAN, MAX_ITEMS_PER_KEY, RECORD_BYTES, WORKLOADS, WorkloadError

EXAMPLES = (
    "dynctl bench --workload a --records 10000 --duration 30 --concurrency 32",
    "dynctl bench --workload c --no-load --ops 200000 --procs 2 --json > c.json",
    "dynctl --node 127.0.0.1:7071 bench -w f --r 2 --w 2 --plot f.png",
    "dynctl bench -w e --records 100000 --items-per-key 1000 --max-scan 100 --reverse",
)


def _check(ops: int | None, duration: float | None, **_: Any) -> None:
    if ops is not None and duration is not None:
        raise click.UsageError("--ops and --duration exclude each other")


async def _addresses(session: Session, spread: bool) -> tuple[str, ...]:
    """--node (each of its nodes), or with --spread every member that the node lists as
    valid."""
    if not spread:
        return parse_nodes(session.settings.node)
    async with session.settings.connect() as client:
        status = await client.call("cluster_status")
    addrs = [m.get("addr") for m in status.get("members", []) if m.get("status") == "valid"]
    members = tuple(sorted(a for a in addrs if isinstance(a, str)))
    return members or (session.settings.node,)


class LiveProgress:
    """A rich live line on a terminal with the current throughput; nothing otherwise."""

    def __init__(self, out: Output, config: BenchConfig) -> None:
        self.out = out
        self.config = config
        self._live: Any = None

    def __enter__(self) -> LiveProgress:
        if self.out.terminal:
            from rich.live import Live
            self._live = Live("starting client processes...", console=self.out.console,
                              refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, phase: str, elapsed: float, completed: int, failed: int,
                 rate: float) -> None:
        if self._live is None:
            return
        if phase == "load":
            goal = f"/{self.config.records:,} records"
        elif self.config.duration is not None:
            goal = f" ({elapsed:.0f}/{self.config.warmup + self.config.duration:.0f} s)"
        else:
            goal = f"/{self.config.ops:,} ops + warm-up"
        self._live.update(f"[bold]{phase}[/] {completed:,}{goal}  "
                          f"[green]{rate:,.0f} ops/s[/]  errors {failed:,}  {elapsed:.1f} s")


def register_bench(group: click.Group, command: Callable[..., Any]) -> None:
    """Add ``bench`` to dynctl's root group with its ``command`` decorator."""

    @command(group, "bench", *EXAMPLES, connect=False, check=_check)
    @click.option("--workload", "-w", "workload_name", default="a", show_default=True,
                  type=click.Choice(sorted(WORKLOADS), case_sensitive=False),
                  help="YCSB core workload; 'load' only inserts the records.")
    @click.option("--records", type=click.IntRange(min=1), default=10_000, show_default=True,
                  help="Records loaded (and the key range of the run).")
    @click.option("--ops", type=click.IntRange(min=1), help="Measured operations to run.")
    @click.option("--duration", type=click.FloatRange(min=0, min_open=True),
                  help="Seconds to measure (default 10 unless --ops).")
    @click.option("--warmup", type=click.FloatRange(min=0), default=2.0, show_default=True,
                  help="Seconds run before measuring.")
    @click.option("--concurrency", "-c", type=click.IntRange(1, MAX_CONCURRENCY), default=32,
                  show_default=True, help="Requests in flight, over all client processes.")
    @click.option("--procs", "-p", type=click.IntRange(1, MAX_PROCS), default=2,
                  show_default=True, help="Client processes (at most --concurrency).")
    @click.option("--connections", type=click.IntRange(min=1), default=2, show_default=True,
                  help="Pipelined connections per client process.")
    @click.option("--bucket", "-b", default="default", show_default=True, metavar="NAME")
    @click.option("--r", "r", type=click.IntRange(min=1), help="Read quorum (default: bucket's).")
    @click.option("--w", "w", type=click.IntRange(min=1), help="Write quorum (default: bucket's).")
    @click.option("--value-size", type=click.IntRange(1, LIMITS.max_value_bytes),
                  default=RECORD_BYTES, show_default=True,
                  help="Bytes per record (YCSB: 10 fields x 100 bytes).")
    @click.option("--load/--no-load", default=True, show_default=True,
                  help="Insert the records before the run.")
    @click.option("--spread/--no-spread", default=True, show_default=True,
                  help="Spread connections over every member, not only --node.")
    @click.option("--coordination", type=click.Choice(["server", "client"]), default="server",
                  show_default=True,
                  help="server: each connection goes to one node, which coordinates or "
                       "forwards; client: every connection routes each key to its "
                       "preference list (client-driven, needs several nodes).")
    @click.option("--items-per-key", type=click.IntRange(1, MAX_ITEMS_PER_KEY), default=1000,
                  show_default=True, help="Workload e: items (posts) per partition key "
                                          "(thread); record r is item r % G of key r // G.")
    @click.option("--min-scan", type=click.IntRange(1, MAX_QUERY_LIMIT), default=1,
                  show_default=True, help="Workload e: shortest scan, items.")
    @click.option("--max-scan", type=click.IntRange(1, MAX_QUERY_LIMIT),
                  default=DEFAULT_MAX_SCAN, show_default=True,
                  help="Workload e: longest scan, items (lengths are uniform).")
    @click.option("--reverse", is_flag=True,
                  help="Workload e: scan down from the start item (descending sort keys).")
    @click.option("--scan-as-gets", is_flag=True,
                  help="Workload e's baseline: read a scan's items by one get each, all "
                       "at once, instead of one query.")
    @click.option("--seed", type=int, help="Seed of the generators (default: random).")
    @click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
                  help="Also draw throughput and latency percentiles (needs dynd[plot]).")
    async def bench(session: Session, workload_name: str, records: int, ops: int | None,
                    duration: float | None, warmup: float, concurrency: int, procs: int,
                    connections: int, bucket: str, r: int | None, w: int | None,
                    value_size: int, load: bool, spread: bool, coordination: str,
                    items_per_key: int, min_scan: int, max_scan: int, reverse: bool,
                    scan_as_gets: bool, seed: int | None, plot_path: str | None) -> Outcome:
        """Run a YCSB core workload (load, a, b, c, d, e, f) and report throughput and latency.

        Keys are YCSB's (user + FNV-64 of the record number), requests follow the scrambled
        zipfian (constant 0.99; d: latest), records are --value-size bytes. Workload e
        stores records as items (partition key = thread, sort key = post) and scans them
        with queries: it reports queries/s, items/s and refill rounds per query. Latencies
        are in milliseconds (HDR histograms); errors are counted by kind, the run goes on.
        """
        try:
            config = BenchConfig(
                workload=workload_name.lower(), records=records, ops=ops,
                duration=duration if duration is not None or ops is not None else 10.0,
                warmup=warmup, concurrency=concurrency, procs=min(procs, concurrency),
                connections=connections, value_size=value_size, load=load, seed=seed,
                items_per_key=items_per_key, min_scan=min_scan, max_scan=max_scan,
                reverse=reverse, scan_as_gets=scan_as_gets)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from exc
        settings = session.settings
        target = Target("dynd", await _addresses(session, spread), options={
            "bucket": bucket, "r": r, "w": w, "timeout": settings.timeout or 5.0,
            "coordination": coordination,
            "tls_ca": settings.tls_ca, "tls_cert": settings.tls_cert,
            "tls_key": settings.tls_key})
        # The engine and report (multiprocessing, HDR histograms, the drivers) load only
        # when a benchmark runs: every other dynctl command starts faster without them.
        from dynctl.bench.engine import run_benchmark
        from dynctl.bench.report import plot, render_report
        with LiveProgress(session.output, config) as progress:
            report = await run_benchmark(target, config, progress)
        if plot_path:
            plot(report, plot_path)
        return Outcome(report, lambda out: render_report(out, report))
