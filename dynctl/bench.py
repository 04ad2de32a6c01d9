"""``dynctl bench``: the YCSB core workloads against dynd (or, for tests/bench, another store).

A run has up to two phases, each executed by ``procs`` client processes (spawned, so that
one Python process is not the bottleneck) that together keep ``concurrency`` requests in
flight over ``connections`` pipelined connections each:

- load: insert records 0..records-1 once (YCSB's load phase, workload "load");
- run: the workload's operation mix for ``ops`` operations or ``duration`` seconds, after
  ``warmup`` seconds whose operations are not measured.

Latencies go into one HDR histogram per operation (microseconds, 1 us..60 s, 3 significant
digits), merged across processes. Each process reports its progress every
``PROGRESS_INTERVAL`` seconds, which drives the live display and the throughput timeline.

What a store must offer is a ``Driver`` (read, update, insert, read_modify_write), opened by
a factory named ``"module:function"`` in a picklable ``Target``. dynd's driver maps YCSB's
operations onto the client API this way: read is a get with the bucket's (or --r) R;
insert is a blind put of a new key; update is a put carrying the context this process last
saw for the key (YCSB's update overwrites the record, and a blind put would instead pile up
siblings), preceded by a get the first time this process updates the key (counted in
``outcomes.reads_before_update``); read-modify-write is a get then a put with the context
it read. A read that finds several siblings is counted (``outcomes.siblings``), not failed.

Limits: concurrency 1..``MAX_CONCURRENCY`` and at least one request per process; procs
1..``MAX_PROCS``; value size 1 B..the client's value limit; the per-process context cache
holds at most ``CONTEXT_CACHE_LIMIT`` keys (the oldest is dropped: its next update is blind).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import click
import trio
from hdrh.histogram import HdrHistogram

from common.errors import DynError, UsageError, error_from_wire
from dynctl.client import LIMITS, Client
from dynctl.output import Outcome, Output
from dynctl.ycsb import (
    RECORD_BYTES,
    WORKLOADS,
    OperationStream,
    WorkloadError,
    key_name,
    load_records,
    workload,
)

if TYPE_CHECKING:
    from dynctl.session import Session

MAX_CONCURRENCY = 4096
MAX_PROCS = 64
CONTEXT_CACHE_LIMIT = 1_000_000
PROGRESS_INTERVAL = 0.25  # seconds between two progress reports of a client process
LATENCY_MAX_US = 60_000_000
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))
PLOT_PERCENTILES = (0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
OPERATIONS = ("read", "update", "insert", "read_modify_write")
CLIENT_BOUND_SHARE = 0.85  # a process busier than this share of one core is the bottleneck
_VALUE_POOL_BYTES = 256 * 1024
_STARTUP_TIMEOUT = 60.0  # seconds for a client process to connect and report


class Driver(Protocol):
    """One store as the benchmark sees it; each method raises on failure. A driver may also
    count notable events in an ``outcomes`` Counter, which the report shows."""

    async def read(self, key: bytes) -> int:
        """Read the record; return how many values (siblings) were found."""

    async def update(self, key: bytes, value: bytes) -> None: ...

    async def insert(self, key: bytes, value: bytes) -> None: ...

    async def read_modify_write(self, key: bytes, value: bytes) -> None: ...


# (target, connections, in_flight) -> async context manager yielding a Driver
DriverFactory = Callable[["Target", int, int], Any]


@dataclass(frozen=True)
class Target:
    """What to benchmark: a driver factory (``module:function``), node addresses, options."""

    name: str
    addrs: tuple[str, ...]
    factory: str = "dynctl.bench:open_dynd"
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
                   f"--value-size must be in 1..{LIMITS.max_value_bytes}")]
        for holds, message in checks:
            if not holds:
                raise UsageError(message)

    def share(self, total: int, proc_index: int) -> int:
        """Process ``proc_index``'s share of ``total`` (requests in flight, operations)."""
        return total // self.procs + (1 if proc_index < total % self.procs else 0)


# -- drivers -----------------------------------------------------------------------------

class DyndDriver:
    """dynd through the Python client, round-robin over pipelined connections."""

    def __init__(self, clients: Sequence[Client], bucket: str, r: int | None,
                 w: int | None) -> None:
        self._clients = list(clients)
        self._turn = 0
        self._read_fields: dict[str, Any] = {"bucket": bucket} | ({"r": r} if r else {})
        self._write_fields: dict[str, Any] = {"bucket": bucket} | ({"w": w} if w else {})
        self._contexts: dict[bytes, str] = {}
        self.outcomes: Counter[str] = Counter()  # reads_before_update: keys not seen yet

    def _client(self) -> Client:
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    def _remember(self, key: bytes, context: Any) -> None:
        if isinstance(context, str) and context:
            if len(self._contexts) >= CONTEXT_CACHE_LIMIT and key not in self._contexts:
                del self._contexts[next(iter(self._contexts))]
            self._contexts[key] = context

    async def _get(self, key: bytes) -> dict[str, Any]:
        result = await self._client().call("get", key=key, **self._read_fields)
        self._remember(key, result.get("context"))
        return result

    async def _put(self, key: bytes, value: bytes, context: str | None) -> None:
        fields = self._write_fields | ({"context": context} if context else {})
        result = await self._client().call("put", key=key, value=value, **fields)
        self._remember(key, result.get("context"))

    async def read(self, key: bytes) -> int:
        return len((await self._get(key)).get("values") or ())

    async def update(self, key: bytes, value: bytes) -> None:
        context = self._contexts.get(key)
        if context is None:
            self.outcomes["reads_before_update"] += 1
            await self.read_modify_write(key, value)
        else:
            await self._put(key, value, context)

    async def insert(self, key: bytes, value: bytes) -> None:
        await self._put(key, value, None)

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        context = (await self._get(key)).get("context")
        await self._put(key, value, context if isinstance(context, str) else None)


@asynccontextmanager
async def open_dynd(target: Target, connections: int, in_flight: int
                    ) -> AsyncIterator[DyndDriver]:
    """``connections`` clients spread over the target's nodes (the driver factory of dynd);
    pipelining carries the ``in_flight`` requests over them."""
    options = target.options
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client.connect(
            target.addrs[i % len(target.addrs)], timeout=options.get("timeout", 5.0),
            tls_ca=options.get("tls_ca"), tls_cert=options.get("tls_cert"),
            tls_key=options.get("tls_key"))) for i in range(connections)]
        yield DyndDriver(clients, options.get("bucket", "default"), options.get("r"),
                         options.get("w"))


def _factory(spec: str) -> DriverFactory:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load the driver factory {spec!r}: {exc}") from exc


# -- one client process ------------------------------------------------------------------

@dataclass
class _Recorder:
    """What one client process measured in one phase."""

    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    completed: int = 0  # every finished operation, warm-up included
    failed: int = 0
    measuring: bool = False
    measure_start: float = 0.0
    measure_end: float = 0.0

    def record(self, op: str, micros: int, measured: bool) -> None:
        self.completed += 1
        if measured:
            histogram = self.histograms.get(op)
            if histogram is None:
                histogram = self.histograms[op] = HdrHistogram(1, LATENCY_MAX_US, 3)
            histogram.record_value(max(1, min(micros, LATENCY_MAX_US)))
            self.measure_end = time.time()

    def fail(self, op: str, exc: Exception, measured: bool) -> None:
        self.completed += 1
        self.failed += 1
        if measured:
            self.errors[f"{op}:{type(exc).__name__}"] += 1
            self.measure_end = time.time()


def _client_process(target: Target, config: BenchConfig, phase: str, proc_index: int,
                    pipe: Any) -> None:
    """Entry point of a spawned client process: run the phase, send the result back."""
    try:
        result = trio.run(_run_phase, target, config, phase, proc_index, pipe)
        pipe.send(("result", result))
    except BaseException as exc:  # noqa: B036 - reported to the parent, which raises it
        # As a wire error, so that the parent raises the same class and dynctl exits with
        # its code (an unreachable node is 4); anything else is an internal error.
        failure = exc if isinstance(exc, DynError) else DynError(f"{type(exc).__name__}: {exc}")
        pipe.send(("failed", failure.to_wire()))
    finally:
        pipe.close()


async def _run_phase(target: Target, config: BenchConfig, phase: str, proc_index: int,
                     pipe: Any) -> dict[str, Any]:
    seed = config.seed if config.seed is not None else random.randrange(2**32)
    rng = random.Random(seed * MAX_PROCS + proc_index)
    pool = rng.randbytes(_VALUE_POOL_BYTES + config.value_size)
    recorder = _Recorder()
    in_flight = config.share(config.concurrency, proc_index)
    cpu_start, wall_start = time.process_time(), time.time()
    connections = min(config.connections, in_flight)
    shift = proc_index * connections % len(target.addrs)  # processes cover every node
    target = replace(target, addrs=target.addrs[shift:] + target.addrs[:shift])
    async with _factory(target.factory)(target, connections, in_flight) as driver:
        operations: Any
        if phase == "load":
            records = load_records(config.records, config.procs, proc_index)
            operations = (("insert", record) for record in records)
            recorder.measuring, recorder.measure_start = True, time.time()
            stop_at = None
        else:
            stream = OperationStream(workload(config.workload), config.records, rng,
                                     config.procs, proc_index)
            budget = config.share(config.ops, proc_index) if config.ops else None
            operations = _budgeted(stream, budget, recorder)
            stop_at = (None if config.duration is None
                       else trio.current_time() + config.warmup + config.duration)

        async def worker() -> None:
            calls = {"read": driver.read, "update": driver.update, "insert": driver.insert,
                     "read_modify_write": driver.read_modify_write}
            for op, record in operations:
                if stop_at is not None and trio.current_time() >= stop_at:
                    return
                measured = recorder.measuring  # as issued: --ops counts exactly these
                key = key_name(record)
                offset = rng.randrange(_VALUE_POOL_BYTES)
                started = time.perf_counter_ns()
                try:
                    if op == "read":
                        found = await driver.read(key)
                        if found != 1:
                            recorder.outcomes["not_found" if found == 0 else "siblings"] += 1
                    else:
                        await calls[op](key, pool[offset:offset + config.value_size])
                except Exception as exc:  # noqa: BLE001 - counted by kind, the run goes on
                    recorder.fail(op, exc, measured)
                    continue
                recorder.record(op, (time.perf_counter_ns() - started) // 1000, measured)
                if op == "insert" and phase != "load":
                    stream.inserts.acknowledge()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_progress, pipe, recorder, proc_index)
            if phase != "load":
                nursery.start_soon(_end_warmup, config.warmup, recorder)
            async with trio.open_nursery() as workers:
                for _ in range(in_flight):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel()
        recorder.outcomes.update(getattr(driver, "outcomes", {}))
    return {"histograms": {op: h.encode() for op, h in recorder.histograms.items()},
            "errors": dict(recorder.errors), "outcomes": dict(recorder.outcomes),
            "completed": recorder.completed, "failed": recorder.failed,
            "measure_start": recorder.measure_start, "measure_end": recorder.measure_end,
            "cpu": time.process_time() - cpu_start, "wall": time.time() - wall_start}


def _budgeted(stream: OperationStream, budget: int | None, recorder: _Recorder) -> Any:
    """The stream's operations; with a budget, as many measured ones (warm-up is extra)."""
    issued = 0
    while budget is None or issued < budget:
        if recorder.measuring:
            issued += 1
        yield stream.next()


async def _end_warmup(warmup: float, recorder: _Recorder) -> None:
    await trio.sleep(warmup)
    recorder.measuring, recorder.measure_start = True, time.time()


async def _report_progress(pipe: Any, recorder: _Recorder, proc_index: int) -> None:
    while True:
        pipe.send(("progress", proc_index, recorder.completed, recorder.failed))
        await trio.sleep(PROGRESS_INTERVAL)


# -- the coordinating process ------------------------------------------------------------

ProgressCallback = Callable[[str, float, int, int, float], None]


async def run_phase(target: Target, config: BenchConfig, phase: str,
                    on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run one phase in ``config.procs`` client processes; the merged measurements.

    ``on_progress(phase, elapsed, completed, failed, current_rate)`` is called about every
    PROGRESS_INTERVAL seconds.
    """
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for index in range(config.procs):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_client_process, name=f"bench-{phase}-{index}",
                                  args=(target, config, phase, index, sender), daemon=True)
        process.start()
        sender.close()
        pipes.append(receiver)
        processes.append(process)
    try:
        return await _collect(pipes, phase, on_progress)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


async def _collect(pipes: list[Any], phase: str,
                   on_progress: ProgressCallback | None) -> dict[str, Any]:
    completed = [0] * len(pipes)
    failed = [0] * len(pipes)
    results: dict[int, dict[str, Any]] = {}
    started = time.monotonic()
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    last_report = started
    while len(results) < len(pipes):
        for index, pipe in enumerate(pipes):
            if index in results:
                continue
            try:
                while index not in results and pipe.poll():
                    message = pipe.recv()
                    if message[0] == "progress":
                        completed[index], failed[index] = message[2], message[3]
                    elif message[0] == "result":
                        results[index] = message[1]
                    else:
                        error = error_from_wire(message[1])
                        raise type(error)(f"client process {index} failed: {error.message}")
            except EOFError:
                raise DynError(f"client process {index} exited without a result") from None
        now = time.monotonic()
        if now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            elapsed, total = now - started, sum(completed)
            timeline.append((elapsed, total))
            if on_progress is not None:
                on_progress(phase, elapsed, total, sum(failed), _recent_rate(timeline))
        await trio.sleep(0.05)
    return summarize(phase, list(results.values()), timeline)


def _recent_rate(timeline: list[tuple[float, int]], window: float = 1.0) -> float:
    """Operations per second over the last ``window`` seconds of the timeline."""
    end_time, end_count = timeline[-1]
    for when, count in reversed(timeline):
        if end_time - when >= window:
            return (end_count - count) / (end_time - when)
    first_time, first_count = timeline[0]
    return (end_count - first_count) / (end_time - first_time) if end_time > first_time else 0.0


def summarize(phase: str, results: list[dict[str, Any]],
              timeline: list[tuple[float, int]]) -> dict[str, Any]:
    """Merge the client processes' measurements into the phase's report (latencies in ms)."""
    merged: dict[str, HdrHistogram] = {}
    errors: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for result in results:
        for op, encoded in result["histograms"].items():
            merged.setdefault(op, HdrHistogram(1, LATENCY_MAX_US, 3)).decode_and_add(encoded)
        errors.update(result["errors"])
        outcomes.update(result["outcomes"])
    starts = [r["measure_start"] for r in results if r["measure_end"]]
    ends = [r["measure_end"] for r in results if r["measure_end"]]
    seconds = max(ends) - min(starts) if ends else 0.0
    measured = sum(h.get_total_count() for h in merged.values()) + sum(errors.values())
    completed = sum(r["completed"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    busiest = max((r["cpu"] / r["wall"] for r in results if r["wall"] > 0), default=0.0)
    operations = {op: _latencies(merged[op], seconds) for op in OPERATIONS if op in merged}
    return {
        "phase": phase, "ops": measured, "seconds": round(seconds, 3),
        "throughput": round(measured / seconds, 1) if seconds > 0 else 0.0,
        "operations": operations, "errors": dict(errors), "outcomes": dict(outcomes),
        "client_cpu_us_per_op": round(cpu / completed * 1e6, 1) if completed else None,
        "client_cpu_cores": round(cpu / max(r["wall"] for r in results), 2),
        "client_bound": busiest >= CLIENT_BOUND_SHARE,
        "timeline": _per_second(timeline),
        "percentiles": {op: [[pct, round(merged[op].get_value_at_percentile(pct) / 1000, 3)]
                             for pct in PLOT_PERCENTILES] for op in operations},
    }


def _latencies(histogram: HdrHistogram, seconds: float) -> dict[str, Any]:
    count = histogram.get_total_count()
    numbers: dict[str, Any] = {"count": count,
                               "throughput": round(count / seconds, 1) if seconds else 0.0}
    for name, pct in PERCENTILES:
        numbers[name] = round(histogram.get_value_at_percentile(pct) / 1000, 3)
    numbers["max"] = round(histogram.get_max_value() / 1000, 3)
    numbers["mean"] = round(histogram.get_mean_value() / 1000, 3)
    return numbers


def _per_second(timeline: list[tuple[float, int]]) -> list[list[float]]:
    """[elapsed, ops/s] at about one-second steps, for the plot."""
    points, (last_time, last_count) = [], timeline[0]
    for when, count in timeline[1:]:
        if when - last_time >= 1.0:
            points.append([round(when, 2), round((count - last_count) / (when - last_time), 1)])
            last_time, last_count = when, count
    return points


async def run_benchmark(target: Target, config: BenchConfig,
                        on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Load (unless ``config.load`` is false or the workload is ``load``), then run."""
    phases = []
    if config.load or config.workload == "load":
        phases.append(await run_phase(target, config, "load", on_progress))
    if config.workload != "load":
        phases.append(await run_phase(target, config, "run", on_progress))
    return {"target": target.name, "addrs": list(target.addrs),
            "options": {k: v for k, v in target.options.items() if not k.startswith("tls")},
            "config": asdict(config), "machine": machine(), "phases": phases}


def machine() -> dict[str, Any]:
    """Where the numbers were taken: cores and date."""
    return {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


# -- rendering ---------------------------------------------------------------------------

LATENCY_COLUMNS = ("p50", "p95", "p99", "p999", "max")


def render_report(out: Output, report: dict[str, Any]) -> None:
    """The final tables: per phase, throughput and latency percentiles per operation."""
    for phase in report["phases"]:
        rows = [[op, numbers["count"], numbers["throughput"],
                 *(numbers[column] for column in LATENCY_COLUMNS)]
                for op, numbers in phase["operations"].items()]
        title = (f"{report['target']} {phase['phase']} "
                 f"(workload {report['config']['workload']}): {phase['throughput']:,.0f} ops/s "
                 f"over {phase['seconds']:.1f} s, client CPU {phase['client_cpu_us_per_op']} "
                 f"us/op on {phase['client_cpu_cores']} cores"
                 + (" (client-bound)" if phase["client_bound"] else ""))
        unit = " ms" if out.terminal else "_ms"  # piped: one word per column (col=value)
        out.table("latency", ["op", "count", "ops/s", *(c + unit for c in LATENCY_COLUMNS)],
                  rows, title=title)
        if phase["errors"]:
            out.table("error", ["op:kind", "count"], sorted(phase["errors"].items()),
                      title="errors by kind")
        if phase["outcomes"]:
            out.fields(phase["outcomes"], title="reads that did not find exactly one value")


def plot(report: dict[str, Any], path: str) -> None:
    """Throughput over time and the latency percentile spectrum of each operation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'dynd[plot]'") from None
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for phase in report["phases"]:
        points = phase["timeline"]
        rate_axis.plot([p[0] for p in points], [p[1] for p in points], label=phase["phase"])
        for op, pairs in phase["percentiles"].items():
            # x: 1/(1 - percentile), the usual HDR percentile-spectrum axis
            xs = [1 / (1 - min(pct, 99.999) / 100) for pct, _ in pairs]
            latency_axis.plot(xs, [ms for _, ms in pairs], marker=".",
                              label=f"{phase['phase']} {op}")
    rate_axis.set(title=f"throughput ({report['target']}, workload "
                        f"{report['config']['workload']})", xlabel="seconds",
                  ylabel="ops/s")
    latency_axis.set(title="latency by percentile", xscale="log", xlabel="percentile",
                     ylabel="ms")
    ticks = [1, 2, 10, 100, 1000, 10000]
    latency_axis.set_xticks(ticks, ["0", "50", "90", "99", "99.9", "99.99"])
    for axis in (rate_axis, latency_axis):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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


# -- the command -------------------------------------------------------------------------

EXAMPLES = (
    "dynctl bench --workload a --records 10000 --duration 30 --concurrency 32",
    "dynctl bench --workload c --no-load --ops 200000 --procs 2 --json > c.json",
    "dynctl --node 127.0.0.1:7071 bench -w f --r 2 --w 2 --plot f.png",
)


def _check(ops: int | None, duration: float | None, **_: Any) -> None:
    if ops is not None and duration is not None:
        raise click.UsageError("--ops and --duration exclude each other")


async def _addresses(session: Session, spread: bool) -> tuple[str, ...]:
    """--node, or with --spread every member that the node lists as valid."""
    if not spread:
        return (session.settings.node,)
    async with session.settings.connect() as client:
        status = await client.call("cluster_status")
    addrs = [m.get("addr") for m in status.get("members", []) if m.get("status") == "valid"]
    members = tuple(sorted(a for a in addrs if isinstance(a, str)))
    return members or (session.settings.node,)


def register(group: click.Group, command: Callable[..., Any]) -> None:
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
    @click.option("--seed", type=int, help="Seed of the generators (default: random).")
    @click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
                  help="Also draw throughput and latency percentiles (needs dynd[plot]).")
    async def bench(session: Session, workload_name: str, records: int, ops: int | None,
                    duration: float | None, warmup: float, concurrency: int, procs: int,
                    connections: int, bucket: str, r: int | None, w: int | None,
                    value_size: int, load: bool, spread: bool, seed: int | None,
                    plot_path: str | None) -> Outcome:
        """Run a YCSB core workload (load, a, b, c, d, f) and report throughput and latency.

        Keys are YCSB's (user + FNV-64 of the record number), requests follow the scrambled
        zipfian (constant 0.99; d: latest), records are --value-size bytes. Latencies are
        in milliseconds (HDR histograms); errors are counted by kind, the run goes on.
        """
        try:
            config = BenchConfig(
                workload=workload_name.lower(), records=records, ops=ops,
                duration=duration if duration is not None or ops is not None else 10.0,
                warmup=warmup, concurrency=concurrency, procs=min(procs, concurrency),
                connections=connections, value_size=value_size, load=load, seed=seed)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from exc
        settings = session.settings
        target = Target("dynd", await _addresses(session, spread), options={
            "bucket": bucket, "r": r, "w": w, "timeout": settings.timeout or 5.0,
            "tls_ca": settings.tls_ca, "tls_cert": settings.tls_cert,
            "tls_key": settings.tls_key})
        with LiveProgress(session.output, config) as progress:
            report = await run_benchmark(target, config, progress)
        if plot_path:
            plot(report, plot_path)
        return Outcome(report, lambda out: render_report(out, report))
