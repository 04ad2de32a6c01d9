"""One chaos run end to end, and the long runner behind ``make chaos``.

A run: build the namespace network, start and join the nodes, run the set workload (and
the threads of posts) while the nemesis injects faults, heal, measure the time until
every replica of every cart agrees (hinted handoff and anti-entropy only), ``dynctl
repair`` on every node, read every cart with R=N, query every thread with R=N, and check
that no acknowledged element is lost and nothing unexpected appeared, and the queries
against the acknowledged puts and deletes of posts.

    python -m tests.chaos.run --seconds 300 --nodes 5 [--seed S] [--report FILE]

exits 0 when the check passes and the replicas converged, 1 when not, 2 when this machine
cannot build the network (not root, tools missing). Node logs stay in the run directory
(printed) for a failed run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.chaos.checker import (
    Convergence,
    FinalRead,
    QueryResult,
    SetResult,
    check_queries,
    check_set,
    explain_lost,
    final_queries,
    final_read,
    wait_converged,
)
from tests.chaos.cluster import ChaosCluster, chaos_cluster
from tests.chaos.nemesis import NemesisLog, Schedule, available_faults, run_nemesis
from tests.chaos.netns import NetworkUnavailable, missing_requirements
from tests.chaos.workload import History, WorkloadConfig, run_workload

CALM_TAIL = 2.0        # seconds of healthy load after the last heal
DEFAULT_WORKLOAD = WorkloadConfig()
REPAIR_TIMEOUT = 180.0


@dataclass
class ChaosReport:
    seed: int
    nodes: int
    nrw: tuple[int, int, int]
    has_netem: bool
    load_seconds: float
    history: History
    nemesis: NemesisLog
    convergence: Convergence
    repaired_keys: int
    final: FinalRead
    result: SetResult
    queries: QueryResult
    run_dir: Path
    leftovers: list[str]  # processes, namespaces and links still present after teardown
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.result.ok and self.queries.ok and self.convergence.converged
                and not self.leftovers)

    def render(self) -> str:
        """The report as Markdown lines (what ``make chaos`` prints)."""
        h, nem, conv, res = self.history, self.nemesis, self.convergence, self.result
        n, r, w = self.nrw
        faults = ", ".join(f"{name} x{count}" for name, count in sorted(nem.faults.items()))
        siblings = ", ".join(f"{k}: {v}" for k, v in sorted(h.siblings_seen.items()))
        heal = max(nem.heal_seconds, default=0.0)
        lines = [
            f"- cluster: {self.nodes} nodes, one network namespace each, N={n} R={r} W={w}; "
            f"seed {self.seed}",
            f"- load: {self.load_seconds:.0f} s, of which {nem.fault_seconds:.0f} s under a "
            f"fault; faults injected: {faults or 'none'}",
            f"- writes: {h.attempted_count} attempted, **{h.acked_count} acknowledged**, "
            f"{h.writes_failed} indeterminate (failed or timed out); reads: {h.reads_ok} ok, "
            f"{h.reads_failed} failed",
            f"- check after heal: **lost acknowledged writes: {res.lost_count}**, unexpected "
            f"elements: {res.unexpected_count}; indeterminate writes present "
            f"{res.indeterminate_present}, absent {res.indeterminate_absent}",
            f"- posts: {h.items.acked_count} acknowledged, {h.items.deleted_count} deletes "
            f"acknowledged ({len(h.items.confirmed)} confirmed by a read); queries: "
            f"{self.queries.queries} completed, {h.items.queries_failed} failed; "
            f"**query check: {'ok' if self.queries.ok else 'FAILED'}**"
            + "".join(f"; {name}: {problems}" for name, problems in (
                ("out of order", self.queries.disordered[:3]),
                ("lost", self.queries.lost), ("resurrected", self.queries.resurrected),
                ("unexpected", self.queries.unexpected),
                ("reappeared", self.queries.reappeared[:3])) if problems),
            f"- siblings per client read: max {h.max_siblings} (reads by sibling count: "
            f"{siblings}); max in the final R={n} reads: {self.final.max_siblings}",
            f"- convergence after the last heal ({CALM_TAIL:g} s more load, then handoff and "
            "anti-entropy only, no repair): "
            + (f"**{conv.seconds:.1f} s**" if conv.converged
               else f"NOT within {conv.seconds:.0f} s ({len(conv.diverged_keys)} keys "
                    f"diverged: {conv.diverged_keys[:5]})")
            + f"; then `dynctl repair` on every node repaired {self.repaired_keys} keys",
            f"- slowest heal (restart and wait for every node): {heal:.1f} s; "
            f"client errors: {dict(sorted(h.errors.items()))}",
        ]
        lines += [f"- note: {note}" for note in self.notes]
        if self.leftovers:
            lines.append(f"- teardown left behind: {self.leftovers}")
        lines += [f"- lost: {line}" for line in explain_lost(h, res, self.final)]
        if not self.passed:
            lines.append(f"- FAILED; node logs in {self.run_dir}"
                         + (f"; unexpected: {dict(list(res.unexpected.items())[:3])}"
                            if res.unexpected else ""))
        return "\n".join(lines)

    def events(self) -> str:
        return "\n".join(f"  {event.at:7.1f}s  {event.what}" for event in self.nemesis.events)


def bucket_nrw(cluster: ChaosCluster) -> tuple[int, int, int]:
    props = json.loads(cluster.ctl(cluster.nodes[0], "--json", "bucket", "get", "default"))
    props = props["bucket"]
    return props["n"], props["r"], props["w"]


def repair_everywhere(cluster: ChaosCluster) -> int:
    """``dynctl repair`` on every node in turn; the number of keys they repaired."""
    repaired = 0
    for node in cluster.nodes:
        out = cluster.ctl(node, "--json", "--timeout", str(REPAIR_TIMEOUT), "repair",
                          timeout=REPAIR_TIMEOUT + 30)
        repaired += json.loads(out).get("repaired", 0)
    return repaired


def run_chaos(root: Path, *, nodes: int, seconds: float, schedule: Schedule | None = None,
              workload: WorkloadConfig = DEFAULT_WORKLOAD, seed: int | None = None,
              converge_timeout: float = 120.0, log=print) -> ChaosReport:
    """Run the workload under faults for ``seconds`` against ``nodes`` fresh nodes.

    ``schedule`` defaults to random picks of every fault this machine can inject.
    Raises NetworkUnavailable when the network cannot be built.
    """
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    history, nemesis = History(), NemesisLog()
    with chaos_cluster(nodes, root) as cluster:
        nrw = bucket_nrw(cluster)
        notes = [] if cluster.network.has_netem else [
            "this kernel has no netem: loss was injected with iptables statistic, "
            "delay faults were skipped"]
        schedule = schedule or Schedule(pool=tuple(available_faults(cluster)))
        log(f"cluster up: {cluster.addrs} (network {cluster.network.subnet}.0/24); "
            f"running {seconds:g} s of faults, seed {seed}")

        async def drive() -> float:
            stop = trio.Event()
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_workload, cluster.addrs, workload, history, stop,
                                   random.Random(rng.getrandbits(64)))
                await run_nemesis(cluster, schedule, seconds, rng, nemesis)
                await trio.sleep(CALM_TAIL)
                stop.set()
            return time.monotonic() - started

        load_seconds = trio.run(drive)
        log(f"load done: {history.acked_count} acknowledged writes; waiting for convergence")
        convergence = trio.run(wait_converged, cluster.nodes[0].addr, workload.keys, nrw[0],
                               converge_timeout, nemesis.healed_at, workload.bucket)
        repaired = repair_everywhere(cluster)
        final = trio.run(final_read, cluster.nodes[0].addr, workload.keys,
                                         nrw[0], workload.bucket)
        threads = trio.run(final_queries, cluster.nodes[0].addr, workload.threads, nrw[0],
                           workload.page_size, workload.bucket)
    result = check_set(history.attempted, history.acked, final.elements)
    queries = check_queries(history.items, threads, nemesis.healed_at)
    leftovers = cluster.network.leftovers() + [
        f"process {node.node_id}" for node in cluster.nodes if node.alive]
    return ChaosReport(seed, nodes, nrw, cluster.network.has_netem, load_seconds, history,
                       nemesis, convergence, repaired, final, result, queries, root,
                       leftovers, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="faults for this long")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keys", type=int, default=WorkloadConfig.keys)
    parser.add_argument("--workers", type=int, default=WorkloadConfig.workers)
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"chaos: cannot run: {reason}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="dynd-chaos-"))
    try:
        report = run_chaos(root, nodes=args.nodes, seconds=args.seconds, seed=args.seed,
                           workload=WorkloadConfig(keys=args.keys, workers=args.workers),
                           converge_timeout=max(120.0, args.seconds / 2))
    except NetworkUnavailable as exc:
        print(f"chaos: cannot build the network: {exc}", file=sys.stderr)
        return 2
    print("fault timeline:\n" + report.events())
    text = report.render()
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if report.passed:
        shutil.rmtree(root, ignore_errors=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
