"""Side-by-side YCSB numbers: dynd against etcd (3 members) and Redis (one server).

Every store is started here on 127.0.0.1 on free ports, loaded and driven by the same
client machinery (dynctl.bench: the same processes, concurrency and value size), and
stopped again. Prints Markdown tables (as in docs/benchmarks.md) and, with --json FILE,
the reports.

    python -m tests.bench.compare                       # dynd 3 nodes vs etcd vs redis
    python -m tests.bench.compare --nodes 1 --workload a   # N=1 against redis
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
from tests.bench import profile
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
def redis_server(root: Path) -> Iterator[tuple[list[str], list[int]]]:
    """One redis-server with Debian's defaults minus persistence (no RDB, no AOF)."""
    port = free_port()
    process = _spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", str(root)],
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


def measure(target: Target, config: BenchConfig, server_pids: list[int]) -> dict[str, Any]:
    """Load, then run with the server CPU measured over the run phase."""
    load = trio.run(run_phase, target, config, "load") if config.load else None
    before, started = cpu_seconds(server_pids), time.monotonic()
    run = trio.run(run_phase, target, config, "run")
    run["server_cpu_cores"] = round((cpu_seconds(server_pids) - before)
                                    / (time.monotonic() - started), 2)
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
        if name in args.skip:
            continue
        if shutil.which(binary) is None:
            print(f"note: {binary} not installed (make bench-deps); skipped", file=sys.stderr)
            continue
        with start(root / name) as (addrs, pids):
            target = Target(name, tuple(addrs), factory=f"tests.bench.drivers:{factory}")
            reports.append(measure(target, config, pids))
        if name == "etcd":
            reports[-1]["target"] = "etcd 3 members"
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


def ycsb_e(args: argparse.Namespace, config: BenchConfig, root: Path) -> list[dict[str, Any]]:
    """YCSB-E's targets in one run: on one 3-node cluster (N=3 R=W=2) YCSB-C gets, E forward,
    reverse, as pipelined gets, 50-item scans as a query and as 50 gets, and etcd's range
    reads, interleaved over ``--rounds`` rounds (medians); then one node stopped and E forward
    again through the two live nodes."""
    base = {**config.__dict__, "load": False}
    e = {**base, "workload": "e"}
    fifty = {**e, "min_scan": 50, "max_scan": 50}
    variants = {"C: gets": BenchConfig(**{**base, "workload": "c"}),
                "E forward": BenchConfig(**e),
                "E reverse": BenchConfig(**{**e, "reverse": True}),
                "E as gets": BenchConfig(**{**e, "scan_as_gets": True}),
                "E L=50 query": BenchConfig(**fifty),
                "E L=50 as gets": BenchConfig(**{**fifty, "scan_as_gets": True})}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    etcd_ready = "etcd" not in args.skip and shutil.which("etcd") is not None
    with ExitStack() as stack:
        members = stack.enter_context(dynd_members(root / "dynd", 3, 3, 2, 2,
                                                   f'sync = "{args.sync}"\n'))
        dynd = Target("dynd", tuple(m.addr for m in members))
        pids = [m.proc.pid for m in members if m.proc]
        for workload_name in ("c", "e"):
            trio.run(run_phase, dynd, BenchConfig(**{**base, "workload": workload_name}), "load")
        if etcd_ready:
            etcd_addrs, etcd_pids = stack.enter_context(etcd_cluster(root / "etcd"))
            etcd = Target("etcd", tuple(etcd_addrs), factory="tests.bench.drivers:open_etcd")
            trio.run(run_phase, etcd, BenchConfig(**e), "load")
            results["etcd E forward"] = []
        else:
            print("note: etcd not installed or skipped (make bench-deps)", file=sys.stderr)
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
    print()
    for line in e_targets(medians):
        print(line)
    return [{"target": name, "rounds": rows, "median": medians[name]}
            for name, rows in results.items()]


def e_targets(m: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's YCSB-E targets as met/missed lines, from the medians."""
    forward = m["E forward"]
    items_vs_gets = forward["items_per_s"] / (m["C: gets"]["per_s"] or 1)
    query_vs_gets = m["E L=50 query"]["per_s"] / (m["E L=50 as gets"]["per_s"] or 1)
    cpu_vs_gets = (m["E L=50 as gets"]["server_ms_per_op"]
                   / (m["E L=50 query"]["server_ms_per_op"] or 1))
    reverse = m["E reverse"]["items_per_s"] / (forward["items_per_s"] or 1)
    down = m["E forward, one node down"]
    down_share = down["per_s"] / (forward["per_s"] or 1)

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"
    return [
        f"- items/s >= 5x YCSB-C gets/s: {items_vs_gets:.2f}x ({verdict(items_vs_gets >= 5)})",
        f"- 50-item query >= 10x cheaper than 50 gets: {query_vs_gets:.2f}x the rate, "
        f"{cpu_vs_gets:.2f}x less server CPU ({verdict(min(query_vs_gets, cpu_vs_gets) >= 10)})",
        f"- refills in < 1% of queries without faults: {forward['refilled_pct']}% "
        f"({verdict(forward['refilled_pct'] < 1)})",
        f"- reverse within 10% of forward: {reverse:.2f}x ({verdict(abs(reverse - 1) <= 0.1)})",
        f"- one node down: {down['errors']} errors, {down_share:.2f}x the healthy rate "
        f"({verdict(down['errors'] == 0 and down_share >= 0.6)})"]


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="--ycsb-e: interleaved rounds (medians reported).")
    parser.add_argument("--json", metavar="FILE", help="Also write the reports as JSON.")
    args = parser.parse_args()
    config = BenchConfig(workload="e" if args.ycsb_e else args.workload, records=args.records,
                         duration=args.duration, warmup=args.warmup,
                         concurrency=args.concurrency, procs=args.procs,
                         connections=args.connections, value_size=args.value_size)
    mode = (ycsb_e if args.ycsb_e else scale if args.scale else single if args.single
            else run_profile if args.profile else resident if args.rss else compare)
    print(f"machine: {machine()['cores']} cores, {machine()['date']}; workload "
          f"{config.workload}, {config.records} records, {config.concurrency} in flight, "
          f"{config.procs} client processes, {config.value_size} B values\n", flush=True)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dynd-bench-")))
        reports = mode(args, config, root)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine(), "config": config.__dict__, "reports": reports},
            default=lambda b: b.decode("latin-1")))


if __name__ == "__main__":
    main()
