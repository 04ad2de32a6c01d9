"""Node CPU per operation: microseconds of dynd CPU per YCSB operation, summed over the nodes.

Throughput on this shared 2-core machine moves with whatever else runs; CPU per operation
moves much less, and it is what a step that does less work per request must lower. Each
round loads nothing new: the clusters are started and loaded once, then every round runs
a fixed number of operations against each tree in turn (interleaved A/B), reading each
node's utime + stime from /proc before and after. The table gives every round and the
median. ``--profile`` then records each cluster with py-spy for one more run and splits
the median by component (the share of py-spy samples whose innermost project, trio or
library frame belongs to it).

    python -m tests.bench.cpu_budget                      # this tree, 3 rounds
    python -m tests.bench.cpu_budget --base /tmp/old-tree # old tree (A) against this (B)
    python -m tests.bench.cpu_budget --profile            # and the split by component

A tree built with ``make compiled`` runs its compiled modules (Python imports the
extension modules next to the sources); the header says which form each tree runs, so a
pure A against a compiled B of the same commit measures the compiled hot path. py-spy
sees no frames inside compiled code: ``--profile`` charges it to the calling frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from dynctl.bench.report import machine
from tests.bench import profile
from tests.bench.compare import cpu_seconds, dynd_cluster

# Component of a sampled stack: the first rule (in this order) that its innermost matching
# frame fits. Frames are "path:function" as profile._name gives them.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("framing and codec", ("common/codec.py", "common/wire/", "cbor2/")),
    ("validation", ("common/messages.py", "common/config.py")),
    ("DVV work", ("common/dvvset.py",)),
    ("storage", ("dynd/storage.py", "rocksdict/")),
    ("socket I/O", ("trio/_socket.py", "ssl.py", "socket.py")),
    ("scheduling and wake-ups", ("trio/", "outcome/", "selectors.py", "contextvars")),
    ("bookkeeping", ("dynd/", "common/", "dynctl/")),
)
OTHER = "other (stdlib, interpreter)"
THIS_TREE = Path(__file__).resolve().parents[2]


def form(tree: Path) -> str:
    """Whether the nodes of ``tree`` run compiled modules (``make compiled``) or pure Python."""
    extensions = sorted(tree.glob("common/*.so")) + sorted(tree.glob("dynd/*.so"))
    return f"compiled ({len(extensions)} extension files)" if extensions else "pure Python"


def component(frames: list[str]) -> str:
    """The component a sampled stack (outermost first) is charged to."""
    for frame in reversed(frames):
        for name, prefixes in COMPONENTS:
            if frame.startswith(prefixes):
                return name
    return OTHER


def split(path: Path) -> Counter[str]:
    """Samples per component in a raw py-spy file."""
    shares: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        shares[component([profile._name(frame) for frame in stack.split(";")])] += int(count)
    return shares


@contextmanager
def clusters(root: Path, trees: dict[str, Path | None], nodes: int, sync: str
             ) -> Iterator[dict[str, tuple[list[str], list[int]]]]:
    """One running cluster per tree (N=min(3, nodes), R=W=quorum), stopped on exit."""
    n = min(3, nodes)
    quorum = 1 if n == 1 else 2
    with ExitStack() as stack:
        yield {name: stack.enter_context(dynd_cluster(root / name, nodes, n, quorum, quorum,
                                                      sync, code=code))
               for name, code in trees.items()}


def measure(addrs: list[str], pids: list[int], config: BenchConfig) -> dict[str, Any]:
    """One run of ``config.ops`` operations: throughput and node CPU per operation."""
    before = cpu_seconds(pids)
    run = trio.run(run_phase, Target("dynd", tuple(addrs)), config, "run")
    used = cpu_seconds(pids) - before
    ops = run["ops"]
    return {"ops": ops, "throughput": run["throughput"], "errors": sum(run["errors"].values()),
            "us_per_op": used / ops * 1e6 if ops else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="source tree of the A side (e.g. an "
                        "exported older commit); without it only this tree runs")
    parser.add_argument("--workload", default="a")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=30_000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sync", choices=("batch", "none"), default="batch")
    parser.add_argument("--profile", action="store_true",
                        help="then one py-spy run per tree: the split by component")
    args = parser.parse_args()
    config = BenchConfig(workload=args.workload, records=args.records, ops=args.ops,
                         duration=None, warmup=0.0, concurrency=args.concurrency)
    trees: dict[str, Path | None] = {"this tree": None}
    if args.base is not None:
        trees = {"A (base)": args.base.resolve(), "B (this tree)": None}
    print(f"machine: {machine()['cores']} cores, {machine()['date']}; {args.nodes} nodes, "
          f"sync={args.sync}, YCSB-{args.workload.upper()}, {args.ops} ops a round, "
          f"{args.records} records, {args.concurrency} in flight", flush=True)
    for name, code in trees.items():
        print(f"{name}: {form(code or THIS_TREE)}")
    print(flush=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="dynd-cpu-") as tmp, \
            clusters(Path(tmp), trees, args.nodes, args.sync) as running:
        load = BenchConfig(**{**config.__dict__, "ops": None, "duration": 10.0})
        for addrs, _ in running.values():
            trio.run(run_phase, Target("dynd", tuple(addrs)), load, "load")
        for round_index in range(args.rounds):
            order = list(running) if round_index % 2 == 0 else list(reversed(running))
            for name in order:
                row = measure(*running[name], config)
                rows[name].append(row)
                print(f"round {round_index + 1} {name}: {row['us_per_op']:.0f} us/op, "
                      f"{row['throughput']:,.0f} ops/s, errors {row['errors']}",
                      file=sys.stderr, flush=True)
        print("| tree | node CPU us/op, rounds | median us/op | median ops/s |")
        print("|---|---|---|---|")
        medians = {}
        for name, runs in rows.items():
            medians[name] = statistics.median(r["us_per_op"] for r in runs)
            each = " / ".join(f"{r['us_per_op']:.0f}" for r in runs)
            print(f"| {name} | {each} | {medians[name]:.0f} | "
                  f"{statistics.median(r['throughput'] for r in runs):,.0f} |")
        if args.profile:
            print_split(Path(tmp), running, config, medians)


def print_split(root: Path, running: dict[str, tuple[list[str], list[int]]],
                config: BenchConfig, medians: dict[str, float]) -> None:
    """The median us/op of each tree split by the components of a py-spy run."""
    shares: dict[str, Counter[str]] = {}
    for name, (addrs, pids) in running.items():
        with profile.recording(pids, 12.0, root) as outputs:
            timed = BenchConfig(**{**config.__dict__, "ops": None, "duration": 10.0,
                                   "warmup": 1.0})
            trio.run(run_phase, Target("dynd", tuple(addrs)), timed, "run")
        shares[name] = sum((split(path) for path in outputs.values()), Counter())
    names = [name for name, _ in COMPONENTS] + [OTHER]
    print("\n| component | " + " | ".join(f"{name} us/op (%)" for name in running) + " |")
    print("|---|" + "---|" * len(running))
    for part in names:
        cells = []
        for name in running:
            total = sum(shares[name].values()) or 1
            fraction = shares[name][part] / total
            cells.append(f"{medians[name] * fraction:.0f} ({100 * fraction:.0f}%)")
        print(f"| {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
