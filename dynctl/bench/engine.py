"""The workload engine: client processes that run a phase, and the process that leads them.

A run has up to two phases, each executed by ``procs`` client processes (spawned, so that
one Python process is not the bottleneck) that together keep ``concurrency`` requests in
flight over ``connections`` pipelined connections each:

- load: insert records 0..records-1 once (YCSB's load phase, workload "load");
- run: the workload's operation mix for ``ops`` operations or ``duration`` seconds, after
  ``warmup`` seconds whose operations are not measured.

Workload E loads and inserts items (``dynctl.ycsb.item_key``) and scans them; a scan that
returns fewer items than its thread holds from its start is counted as ``short_scans``.

Each process records its latencies in one HDR histogram per operation (see
``dynctl.bench.report``, which merges them) and reports its progress every
``PROGRESS_INTERVAL`` seconds, which drives the live display and the throughput timeline.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

from common.errors import DynError, UsageError, error_from_wire
from dynctl.bench.config import MAX_PROCS, BenchConfig, Target
from dynctl.bench.drivers import ScanResult, load_driver_factory
from dynctl.bench.report import LATENCY_MAX_US, latency_histogram, machine, summarize
from dynctl.ycsb import (
    OperationStream,
    item_key,
    key_name,
    load_records,
    scan_expectation,
    workload,
)

PROGRESS_INTERVAL = 0.25  # seconds between two progress reports of a client process
_VALUE_POOL_BYTES = 256 * 1024
ITEM_METHODS = ("insert_item", "get_item", "scan")  # what workload E asks of a driver


# -- one client process ------------------------------------------------------------------

@dataclass
class _Recorder:
    """What one client process measured in one phase."""

    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    scans: Counter[str] = field(default_factory=Counter)  # measured scans: items, rounds
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
                histogram = self.histograms[op] = latency_histogram()
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
    async with load_driver_factory(target.factory)(target, connections, in_flight) as driver:
        if config.items and not all(hasattr(driver, method) for method in ITEM_METHODS):
            raise UsageError(f"{target.name} cannot store items: workload e needs a driver "
                             f"with {', '.join(ITEM_METHODS)}")
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
                value = pool[offset:offset + config.value_size]
                started = time.perf_counter_ns()
                try:
                    if op == "read":
                        found = await driver.read(key)
                        if found != 1:
                            recorder.outcomes["not_found" if found == 0 else "siblings"] += 1
                    elif config.items:
                        await _item_operation(driver, config, op, record, value, rng,
                                              recorder, measured)
                    else:
                        await calls[op](key, value)
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
            "scans": dict(recorder.scans),
            "completed": recorder.completed, "failed": recorder.failed,
            "measure_start": recorder.measure_start, "measure_end": recorder.measure_end,
            "cpu": time.process_time() - cpu_start, "wall": time.time() - wall_start}


async def _item_operation(driver: Any, config: BenchConfig, op: str, record: int,
                          value: bytes, rng: random.Random, recorder: _Recorder,
                          measured: bool) -> None:
    """Workload E's insert (a new post) or scan (a query over the start record's thread,
    or with ``scan_as_gets`` the same posts read by one get each, all at once)."""
    key, sk = item_key(record, config.items_per_key)
    if op == "insert":
        await driver.insert_item(key, sk, value)
        return
    length = rng.randint(config.min_scan, config.max_scan)
    if config.scan_as_gets:
        post = record % config.items_per_key
        first, last = ((max(0, post - length + 1), post) if config.reverse
                       else (post, min(config.items_per_key, post + length) - 1))
        found = [0] * (last - first + 1)

        async def get(index: int) -> None:
            found[index] = min(1, await driver.get_item(
                key, (first + index).to_bytes(4, "big")))

        async with trio.open_nursery() as nursery:
            for index in range(len(found)):
                nursery.start_soon(get, index)
        result = ScanResult(sum(found))
    else:
        result = await driver.scan(key, sk, length, config.reverse)
    if result.items < scan_expectation(record, length, config.items_per_key, config.records,
                                       config.reverse):
        recorder.outcomes["short_scans"] += 1
    if measured:
        recorder.scans.update(items=result.items, rounds=result.rounds,
                              refilled=1 if result.rounds else 0)


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
