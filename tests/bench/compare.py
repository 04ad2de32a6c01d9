"""Side-by-side YCSB numbers: dynd against etcd (3 members) and Redis (one server).

Every store is started here on 127.0.0.1 on free ports, loaded and driven by the same
client machinery (dynctl.bench: the same processes, concurrency and value size), and
stopped again. Prints Markdown tables (as in docs/benchmarks.md) and, with --json FILE,
the reports.

    python -m tests.bench.compare --all --json FILE     # every target, one table (make bench)
    python -m tests.bench.compare                       # dynd 3 nodes vs etcd vs redis
    python -m tests.bench.compare --nodes 1 --skip etcd --redis-fsync-always  # N=1 vs redis
    python -m tests.bench.compare --scale               # 1/3/5 nodes x value sizes
    python -m tests.bench.compare --single              # one request at a time
    python -m tests.bench.compare --profile             # py-spy on the dynd nodes
    python -m tests.bench.compare --rss --records 1000000   # RSS per node after a load
    python -m tests.bench.compare --ycsb-e --records 20000  # YCSB-E targets, etcd ranges

etcd-server and redis-server come from Debian (``make bench-deps``); a missing one is
skipped with a note. Server CPU is read from /proc; "client-bound" marks a run whose
busiest client process used more than 85% of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from dynctl.bench.report import machine
from tests.bench import profile, targets
from tests.integration.harness import Cluster, DyndProcess, dynctl, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 30.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stdout!r} {result.stderr!r}")


@contextmanager
def dynd_cluster(root: Path, nodes: int, n: int, r: int, w: int, sync: str,
                 code: Path | None = None) -> Iterator[tuple[list[str], list[int]]]:
    """``nodes`` dynd processes, joined and committed, default bucket set to n/r/w; with
    ``code``, the dynd of that source tree (an A/B run against another commit)."""
    with dynd_members(root, nodes, n, r, w, f'sync = "{sync}"\n', code) as members:
        yield [m.addr for m in members], [m.proc.pid for m in members if m.proc]


@contextmanager
def dynd_members(root: Path, nodes: int, n: int, r: int, w: int, config_text: str,
                 code: Path | None = None) -> Iterator[list[DyndProcess]]:
    """``nodes`` dynd processes with the node config ``config_text`` (the dynd of source
    tree ``code`` if given), joined and committed, default bucket set to n/r/w; all stopped
    on exit."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "dynd.toml"
    config.write_text(config_text)
    cluster = Cluster(root)
    try:
        members = [cluster.add(f"n{i + 1}", "-c", str(config), start=False)
                   for i in range(nodes)]
        for member in members:
            member.code = code
            member.start()
        for member in members[1:]:
            _check(dynctl("--node", member.addr, "cluster", "join", members[0].addr), "join")
        if nodes > 1:
            _check(dynctl("--node", members[0].addr, "cluster", "commit"), "commit")
            _check(dynctl("--node", members[0].addr, "cluster", "wait", "--timeout", "120"),
                   "cluster wait")
        _check(dynctl("--node", members[0].addr, "bucket", "set", "default", "--n", str(n),
                      "--r", str(r), "--w", str(w)), "bucket set")
        time.sleep(1.0)  # let the bucket properties gossip to every member
        yield members
    finally:
        cluster.stop_all()


def _spawn(command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT:g}s")


@contextmanager
def etcd_cluster(root: Path, members: int = 3) -> Iterator[tuple[list[str], list[int]]]:
    """A ``members``-member etcd cluster (Debian's etcd-server) on free ports."""
    names = [f"e{i + 1}" for i in range(members)]
    clients = {name: free_port() for name in names}
    peers = {name: free_port() for name in names}
    initial = ",".join(f"{name}=http://127.0.0.1:{peers[name]}" for name in names)
    processes = []
    try:
        for name in names:
            processes.append(_spawn([
                "etcd", "--name", name, "--data-dir", str(root / name),
                "--listen-client-urls", f"http://127.0.0.1:{clients[name]}",
                "--advertise-client-urls", f"http://127.0.0.1:{clients[name]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peers[name]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[name]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "dynd-bench", "--log-level", "warn"],
                root / f"{name}.log"))
        for name in names:
            url = f"http://127.0.0.1:{clients[name]}/health"
            _wait_until(lambda url=url: b"true" in urllib.request.urlopen(url, timeout=1).read(),
                        f"etcd {name}")
        yield [f"127.0.0.1:{clients[name]}" for name in names], [p.pid for p in processes]
    finally:
        _stop(processes)


@contextmanager
def redis_server(root: Path, fsync_always: bool = False) -> Iterator[tuple[list[str], list[int]]]:
    """One redis-server with Debian's defaults minus RDB snapshots; no AOF, or with
    ``fsync_always`` an AOF fsynced before each write is answered (``appendfsync always``,
    as durable as dynd's sync=batch)."""
    port = free_port()
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if fsync_always \
        else ["--appendonly", "no"]
    process = _spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                      "--save", "", *aof, "--dir", str(root)],
                     root / "redis.log")
    try:
        def answers() -> bool:
            probe = subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                   capture_output=True, timeout=5)
            return probe.stdout.strip() == b"PONG"
        _wait_until(answers, "redis-server")
        yield [f"127.0.0.1:{port}"], [process.pid]
    finally:
        _stop([process])


class CpuPerOperation:
    """A progress callback of run_phase: the servers' CPU per completed operation between the
    first and the last progress report that saw operations, so that starting the client
    processes (servers idle) does not dilute it."""

    def __init__(self, server_pids: list[int]) -> None:
        self._pids = server_pids
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None

    def __call__(self, phase: str, elapsed: float, completed: int, failed: int,
                 rate: float) -> None:
        if completed + failed == 0:
            return
        sample = (cpu_seconds(self._pids), completed + failed)
        self._first = self._first or sample
        self._last = sample

    def us_per_op(self) -> float | None:
        if self._first is None or self._last is None or self._last[1] == self._first[1]:
            return None
        return round((self._last[0] - self._first[0]) / (self._last[1] - self._first[1]) * 1e6,
                     1)


def measure(target: Target, config: BenchConfig, server_pids: list[int]) -> dict[str, Any]:
    """Load, then run with the server CPU measured over the run phase."""
    load = trio.run(run_phase, target, config, "load") if config.load else None
    before, started = cpu_seconds(server_pids), time.monotonic()
    per_op = CpuPerOperation(server_pids)
    run = trio.run(run_phase, target, config, "run", per_op)
    run["server_cpu_cores"] = round((cpu_seconds(server_pids) - before)
                                    / (time.monotonic() - started), 2)
    run["server_cpu_us_per_op"] = per_op.us_per_op()
    h = _headline({"run": run})
    print(f"{target.name}: {h['throughput']:,.0f} ops/s, p99 {h['p99']} ms, "
          f"p99.9 {h['p999']} ms, errors {h['errors']}", file=sys.stderr, flush=True)
    return {"target": target.name, "load": load, "run": run}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    run = report["run"]
    worst = {name: max((op[name] for op in run["operations"].values()), default=0.0)
             for name in ("p50", "p99", "p999")}
    return {"throughput": run["throughput"], **worst, "errors": sum(run["errors"].values()),
            "client_us": run["client_cpu_us_per_op"], "client_cores": run["client_cpu_cores"],
            "server_cores": run["server_cpu_cores"], "client_bound": run["client_bound"]}


def comparison_table(reports: list[dict[str, Any]]) -> str:
    """Markdown: one row per store, throughput ratio against the first (dynd)."""
    base = reports[0]["run"]["throughput"] or 1.0
    lines = ["| store | ops/s | vs dynd | p50 ms | p99 ms | p99.9 ms | errors "
             "| client us/op | client cores | server cores |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        h = _headline(report)
        bound = " (client-bound)" if h["client_bound"] else ""
        lines.append(f"| {report['target']} | {h['throughput']:,.0f} | "
                     f"{h['throughput'] / base:.2f}x | {h['p50']} | {h['p99']} | {h['p999']} | "
                     f"{h['errors']} | {h['client_us']} | {h['client_cores']}{bound} | "
                     f"{h['server_cores']} |")
    return "\n".join(lines)


def operations_table(report: dict[str, Any]) -> str:
    lines = [f"{report['target']}:", "",
             "| op | count | ops/s | p50 | p95 | p99 | p99.9 | max (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for op, n in report["run"]["operations"].items():
        lines.append(f"| {op} | {n['count']} | {n['throughput']:,.0f} | {n['p50']} | "
                     f"{n['p95']} | {n['p99']} | {n['p999']} | {n['max']} |")
    return "\n".join(lines)


def _dynd_target(addrs: list[str]) -> Target:
    return Target("dynd", tuple(addrs))


def compare(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    n = min(3, args.nodes)
    quorum = 1 if n == 1 else 2
    reports = []
    with dynd_cluster(root / "dynd", args.nodes, n, quorum, quorum, args.sync) as (addrs, pids):
        reports.append(measure(_dynd_target(addrs), config, pids))
        reports[-1]["target"] = f"dynd {args.nodes} node(s) N={n} R=W={quorum} sync={args.sync}"
    stores = [("etcd", "etcd", etcd_cluster, "open_etcd"),
              ("redis-server", "redis", redis_server, "open_redis")]
    for binary, name, start, factory in stores:
        if not _available(binary, name, args.skip):
            continue
        fsync = {"fsync_always": args.redis_fsync_always} if name == "redis" else {}
        with start(root / name, **fsync) as (addrs, pids):
            target = Target(name, tuple(addrs), factory=f"tests.bench.drivers:{factory}")
            reports.append(measure(target, config, pids))
        if name == "etcd":
            reports[-1]["target"] = "etcd 3 members"
        if fsync.get("fsync_always"):
            reports[-1]["target"] = "redis appendfsync always"
    print(comparison_table(reports))
    print()
    for report in reports:
        print(operations_table(report) + "\n")
    return reports


def scale(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    """Throughput and p99 for 1, 3, 5 nodes and value sizes 100 B..100 KB."""
    rows, reports = [], []
    for nodes in args.scale_nodes:
        n = min(3, nodes)
        quorum = 1 if n == 1 else 2
        with dynd_cluster(root / f"scale{nodes}", nodes, n, quorum, quorum,
                          args.sync) as (addrs, pids):
            for size in args.scale_sizes:
                sized = BenchConfig(**{**config.__dict__, "value_size": size})
                report = measure(_dynd_target(addrs), sized, pids)
                report.update(nodes=nodes, value_size=size)
                reports.append(report)
                h = _headline(report)
                rows.append(f"| {nodes} | N={n} R=W={quorum} | {size:,} | "
                            f"{h['throughput']:,.0f} | {h['p50']} | {h['p99']} | "
                            f"{h['errors']} | {h['server_cores']} |")
                print(rows[-1], flush=True)
    print("\n| nodes | quorum | value B | ops/s | p50 ms | p99 ms | errors | server cores |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return reports


def single(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    """One request at a time: put (insert) and get latencies on 1 and 3 nodes."""
    one = BenchConfig(**{**config.__dict__, "workload": "a", "concurrency": 1, "procs": 1,
                         "connections": 1})
    reports = []
    print("| nodes | op | p50 ms | p99 ms | client us/op |\n|---|---|---|---|---|")
    for nodes in (1, 3):
        n = min(3, nodes)
        quorum = 1 if n == 1 else 2
        with dynd_cluster(root / f"single{nodes}", nodes, n, quorum, quorum,
                          args.sync) as (addrs, pids):
            report = measure(_dynd_target(addrs), one, pids)
            report["nodes"] = nodes
            reports.append(report)
            for phase, op in ((report["load"], "insert"), (report["run"], "read"),
                              (report["run"], "update")):
                numbers = phase["operations"][op]
                print(f"| {nodes} | {op} | {numbers['p50']} | {numbers['p99']} | "
                      f"{phase['client_cpu_us_per_op']} |", flush=True)
    return reports


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def resident(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    """RSS of every node after loading ``--records`` keys, and again after a read run."""
    n = min(3, args.nodes)
    quorum = 1 if n == 1 else 2
    with dynd_cluster(root / "rss", args.nodes, n, quorum, quorum, args.sync) as (addrs, pids):
        target = _dynd_target(addrs)
        idle = [rss_kib(pid) for pid in pids]
        load = trio.run(run_phase, target, config, "load")
        loaded = [rss_kib(pid) for pid in pids]
        reads = BenchConfig(**{**config.__dict__, "workload": "c", "load": False})
        run = trio.run(run_phase, target, reads, "run")
        after = [rss_kib(pid) for pid in pids]
    print(f"load: {load['throughput']:,.0f} inserts/s; then YCSB-C "
          f"{run['throughput']:,.0f} ops/s\n")
    print("| node | RSS idle MiB | after loading MiB | after reads MiB |\n|---|---|---|---|")
    for i, (a, b, c) in enumerate(zip(idle, loaded, after, strict=True)):
        print(f"| n{i + 1} | {a / 1024:.0f} | {b / 1024:.0f} | {c / 1024:.0f} |")
    return [{"target": "dynd", "load": load, "run": run,
             "rss_kib": {"idle": idle, "loaded": loaded, "after_reads": after}}]


def run_profile(args: argparse.Namespace, config: BenchConfig,
                root: Path) -> list[dict[str, Any]]:
    """py-spy on every dynd node during the run phase; top costs per node."""
    with dynd_cluster(root / "profile", args.nodes, min(3, args.nodes), 2 if args.nodes > 1
                      else 1, 2 if args.nodes > 1 else 1, args.sync) as (addrs, pids):
        target = _dynd_target(addrs)
        if config.load:
            trio.run(run_phase, target, config, "load")
        seconds = config.warmup + (config.duration or 10.0)
        with profile.recording(pids, seconds, root) as outputs:
            run = trio.run(run_phase, target, config, "run")
        print(f"throughput under py-spy: {run['throughput']:,.0f} ops/s\n")
        for pid, path in outputs.items():
            print(profile.report(path, title=f"node pid {pid}"))
    return [{"target": "dynd", "run": run}]


def _run_variant(target: Target, config: BenchConfig, pids: list[int]) -> dict[str, Any]:
    """One run phase: its queries (or gets) per second, items, latencies and server CPU."""
    before, started = cpu_seconds(pids), time.monotonic()
    run = trio.run(run_phase, target, config, "run")
    server_cores = (cpu_seconds(pids) - before) / (time.monotonic() - started)
    op = run["operations"]["scan" if "scan" in run["operations"] else "read"]
    scans = run.get("scans", {"queries_per_s": op["throughput"], "items_per_s": op["throughput"],
                              "items_per_query": 1.0, "rounds_per_query": 0.0,
                              "refilled_share": 0.0})
    return {"per_s": scans["queries_per_s"], "items_per_s": scans["items_per_s"],
            "items_per_query": scans["items_per_query"],
            "rounds_per_query": scans["rounds_per_query"],
            "refilled_pct": round(100 * scans["refilled_share"], 2),
            "p50": op["p50"], "p99": op["p99"], "p999": op["p999"],
            "errors": sum(run["errors"].values()),
            "short_scans": run["outcomes"].get("short_scans", 0),
            "server_ms_per_op": round(1000 * server_cores / run["throughput"], 3)
            if run["throughput"] else None}


E_COLUMNS = ("per_s", "items_per_s", "items_per_query", "rounds_per_query", "refilled_pct",
             "p50", "p99", "p999", "errors", "short_scans", "server_ms_per_op")


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {column: statistics.median(row[column] or 0 for row in rows) for column in E_COLUMNS}


def e_variants(config: BenchConfig) -> dict[str, BenchConfig]:
    """YCSB-E's variants on already loaded items: C gets, E forward and reverse, E as gets,
    and 50-item scans as a query and as 50 gets."""
    base = {**config.__dict__, "load": False}
    e = {**base, "workload": "e"}
    fifty = {**e, "min_scan": 50, "max_scan": 50}
    return {"C: gets": BenchConfig(**{**base, "workload": "c"}),
            "E forward": BenchConfig(**e),
            "E reverse": BenchConfig(**{**e, "reverse": True}),
            "E as gets": BenchConfig(**{**e, "scan_as_gets": True}),
            "E L=50 query": BenchConfig(**fifty),
            "E L=50 as gets": BenchConfig(**{**fifty, "scan_as_gets": True})}


def _load(target: Target, config: BenchConfig, workloads: tuple[str, ...]) -> None:
    for workload_name in workloads:
        trio.run(run_phase, target, BenchConfig(**{**config.__dict__, "workload": workload_name,
                                                   "load": True}), "load")


def ycsb_e(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    """YCSB-E's targets in one run: on one 3-node cluster (N=3 R=W=2) YCSB-C gets, E forward,
    reverse, as pipelined gets, 50-item scans as a query and as 50 gets, and etcd's range
    reads, interleaved over ``--rounds`` rounds (medians); then one node stopped and E forward
    again through the two live nodes."""
    variants = e_variants(config)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    etcd_ready = _available("etcd", "etcd", args.skip)
    with ExitStack() as stack:
        members = stack.enter_context(dynd_members(root / "dynd", 3, 3, 2, 2,
                                                   f'sync = "{args.sync}"\n'))
        dynd = Target("dynd", tuple(m.addr for m in members))
        pids = [m.proc.pid for m in members if m.proc]
        _load(dynd, config, ("c", "e"))
        if etcd_ready:
            etcd_addrs, etcd_pids = stack.enter_context(etcd_cluster(root / "etcd"))
            etcd = Target("etcd", tuple(etcd_addrs), factory="tests.bench.drivers:open_etcd")
            _load(etcd, config, ("e",))
            results["etcd E forward"] = []
        for round_index in range(args.rounds):
            for name, variant in variants.items():
                results[name].append(_run_variant(dynd, variant, pids))
                print(f"round {round_index + 1} {name}: {results[name][-1]}", file=sys.stderr,
                      flush=True)
            if etcd_ready:
                results["etcd E forward"].append(
                    _run_variant(etcd, variants["E forward"], etcd_pids))
        members[-1].stop()
        live = Target("dynd", tuple(m.addr for m in members[:-1]))
        results["E forward, one node down"] = [
            _run_variant(live, variants["E forward"], pids[:-1]) for _ in range(args.rounds)]
    medians = {name: _medians(rows) for name, rows in results.items()}
    print("| variant | queries/s | items/s | items/query | refill rounds/query | "
          "queries refilled % | p50 ms | p99 ms | p99.9 ms | errors | short scans | "
          "server CPU ms/op |\n|" + "---|" * 12)
    for name, row in medians.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:,.4g}" if abs(row[c]) < 1000
                                           else f"{row[c]:,.0f}" for c in E_COLUMNS) + " |")
    rounds = [targets.round_figures({
        "e": {name: results[name][index] for name in variants},
        "e_down": results["E forward, one node down"][index]}) for index in range(args.rounds)]
    print()
    print(targets.table([row for row in targets.evaluate(rounds) if row["key"].startswith("e_")]))
    return [{"target": name, "rounds": rows, "median": medians[name]}
            for name, rows in results.items()]


class Turns:
    """Stores take turns: the one measured runs, every other one is paused (SIGSTOP), so that
    an idle store's background work does not take CPU from the measured one."""

    RESUME_SETTLE = 1.0  # seconds for a resumed store's heartbeats and timers to catch up

    def __init__(self) -> None:
        self._stores: dict[str, list[int]] = {}
        self._running: str | None = None

    def add(self, name: str, pids: list[int]) -> None:
        self._stores[name] = pids

    def only(self, name: str) -> None:
        """Pause every store but ``name``, and resume ``name`` if it was paused."""
        if self._running == name:
            return
        for other, pids in self._stores.items():
            if other != name:
                _signal(pids, signal.SIGSTOP)
        _signal(self._stores[name], signal.SIGCONT)
        self._running = name
        time.sleep(self.RESUME_SETTLE)

    def resume_all(self) -> None:
        for pids in self._stores.values():
            _signal(pids, signal.SIGCONT)
        self._running = None


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        os.kill(pid, signum)


def _a_figures(report: dict[str, Any]) -> dict[str, Any]:
    h = _headline(report)
    return {"throughput": h["throughput"], "p999": h["p999"], "errors": h["errors"],
            "cpu_us_per_op": report["run"]["server_cpu_us_per_op"]}


def _one_at_a_time_figures(report: dict[str, Any]) -> dict[str, Any]:
    operations = report["run"]["operations"]
    return {"update_p50": operations["update"]["p50"], "read_p50": operations["read"]["p50"],
            "errors": _headline(report)["errors"]}


def suite(args: argparse.Namespace, config: BenchConfig, root: Path) -> dict[str, Any]:
    """Every target of issues 16 and 19 in one run, ending with one table: 3 nodes (N=3
    R=W=2) against a 3-member etcd (YCSB-A, its p99.9 and node CPU per operation), 1 node
    against Redis with ``appendfsync always``, one request at a time against etcd, and
    YCSB-E's variants; ``--rounds`` interleaved rounds (each store's side first in turn, the
    idle stores paused), then YCSB-E forward with one of the 3 nodes stopped."""
    ycsb_a = BenchConfig(**{**config.__dict__, "workload": "a", "load": False})
    one_at_a_time = BenchConfig(**{**ycsb_a.__dict__, "concurrency": 1, "procs": 1,
                                   "connections": 1})
    variants = e_variants(config)
    measured: list[dict[str, Any]] = [{} for _ in range(args.rounds)]
    turns = Turns()
    load_at_start = os.getloadavg()[0]  # others' work on the machine skews every figure
    with ExitStack() as stack:
        members = stack.enter_context(dynd_members(root / "dynd3", 3, 3, 2, 2,
                                                   f'sync = "{args.sync}"\n'))
        three = Target("dynd", tuple(m.addr for m in members))
        three_pids = [m.proc.pid for m in members if m.proc]
        one_addrs, one_pids = stack.enter_context(dynd_cluster(root / "dynd1", 1, 1, 1, 1,
                                                               args.sync))
        one = Target("dynd", tuple(one_addrs))
        stores = {"dynd3": (three, three_pids, ("a", "e")), "dynd1": (one, one_pids, ("a",))}
        if _available("etcd", "etcd", args.skip):
            addrs, pids = stack.enter_context(etcd_cluster(root / "etcd"))
            stores["etcd"] = (Target("etcd", tuple(addrs),
                                     factory="tests.bench.drivers:open_etcd"), pids, ("a",))
        if _available("redis-server", "redis", args.skip):
            addrs, pids = stack.enter_context(redis_server(root / "redis", fsync_always=True))
            stores["redis"] = (Target("redis", tuple(addrs),
                                      factory="tests.bench.drivers:open_redis"), pids, ("a",))
        for name, (_, pids, _) in stores.items():
            turns.add(name, pids)
        stack.callback(turns.resume_all)  # a paused process would not see its SIGTERM
        for name, (target, _, workloads) in stores.items():
            turns.only(name)
            _load(target, config, workloads)

        def run(name: str, what: BenchConfig) -> dict[str, Any]:
            target, pids, _ = stores[name]
            turns.only(name)
            return measure(target, what, pids)
        pairs = [("a3", "dynd3", "etcd", ycsb_a, _a_figures),
                 ("a1", "dynd1", "redis", ycsb_a, _a_figures),
                 ("single", "dynd3", "etcd", one_at_a_time, _one_at_a_time_figures)]
        for index, figures in enumerate(measured):
            for part, ours, theirs, what, summary in pairs:
                sides = [("dynd", ours), (theirs, theirs)]
                for side, name in sides if index % 2 == 0 else reversed(sides):
                    if name in stores:
                        figures.setdefault(part, {})[side] = summary(run(name, what))
            turns.only("dynd3")
            figures["e"] = {name: _run_variant(three, variant, three_pids)
                            for name, variant in variants.items()}
            print(f"round {index + 1}: {figures}", file=sys.stderr, flush=True)
        turns.only("dynd3")
        members[-1].stop()
        turns.add("dynd3", three_pids[:-1])  # the stopped node's pid may be reused
        live = Target("dynd", tuple(m.addr for m in members[:-1]))
        for figures in measured:
            figures["e_down"] = _run_variant(live, variants["E forward"], three_pids[:-1])
    rounds = [targets.round_figures(figures) for figures in measured]
    rows = targets.evaluate(rounds)
    where = {"commit": _commit(), "load_average": {"start": load_at_start,
                                                   "end": os.getloadavg()[0]}}
    print(f"commit {where['commit']}, load average {load_at_start:.1f} at the start and "
          f"{where['load_average']['end']:.1f} at the end; {args.rounds} rounds of "
          f"{config.duration:g} s\n")
    print(targets.table(rows))
    return {**where, "measured": measured, "figures": rounds, "targets": rows}


def _commit() -> str:
    """The commit of the tree measured (``-dirty`` with uncommitted changes)."""
    described = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe",
                                "--always", "--dirty"], capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def _available(binary: str, name: str, skip: list[str]) -> bool:
    """Whether to run the store ``name``: not ``--skip``ped, and installed (else says so)."""
    if name in skip:
        return False
    if shutil.which(binary) is None:
        print(f"note: {binary} not installed (make bench-deps); skipped", file=sys.stderr)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="a")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--value-size", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sync", choices=("batch", "none"), default="batch")
    parser.add_argument("--skip", action="append", default=[], choices=("etcd", "redis"))
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--scale-nodes", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--scale-sizes", type=int, nargs="+",
                        default=[100, 1000, 10_000, 100_000])
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rss", action="store_true",
                        help="Load --records keys, then report each node's RSS.")
    parser.add_argument("--ycsb-e", action="store_true",
                        help="YCSB-E against YCSB-C, pipelined gets and etcd range reads.")
    parser.add_argument("--all", action="store_true",
                        help="Every target of issues 16 and 19 in interleaved rounds; one "
                        "table of target, median, rounds, threshold and verdict.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--ycsb-e, --all: interleaved rounds (medians reported).")
    parser.add_argument("--redis-fsync-always", action="store_true",
                        help="Redis with an AOF fsynced before each reply (--all always is).")
    parser.add_argument("--json", metavar="FILE", help="Also write the reports as JSON.")
    args = parser.parse_args()
    config = BenchConfig(workload="e" if args.ycsb_e else args.workload, records=args.records,
                         duration=args.duration, warmup=args.warmup,
                         concurrency=args.concurrency, procs=args.procs,
                         connections=args.connections, value_size=args.value_size)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    mode: Any = (suite if args.all else ycsb_e if args.ycsb_e else scale if args.scale
                 else single if args.single else run_profile if args.profile
                 else resident if args.rss else compare)
    print(f"machine: {machine()['cores']} cores, {machine()['date']}; workload "
          f"{'a, c, e' if args.all else config.workload}, {config.records} records, "
          f"{config.concurrency} in flight, {config.procs} client processes, "
          f"{config.value_size} B values\n", flush=True)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dynd-bench-")))
        reports = mode(args, config, root)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine(), "config": config.__dict__, "reports": reports},
            default=lambda b: b.decode("latin-1")))


if __name__ == "__main__":
    main()
