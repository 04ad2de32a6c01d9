"""The TTL soak: does a cache workload keep the disk flat once expired items are reclaimed?

Three dynd nodes (N=3 R=W=2) with a short anti-entropy period; a bucket whose items expire
after ``--ttl`` seconds and are reclaimed ``--grace`` seconds later (the grace must be at
least 4 anti-entropy periods, which is why the period is short here). Load ``--records``
records, then run YCSB-D (95% reads of the latest records, 5% inserts, every insert with the
bucket's TTL) for ``--seconds``, sampling the summed size of the data dirs every
``--sample`` seconds. Prints the series and whether it is flat after the warm-up: the
time an item needs to expire and be reclaimed (ttl + grace + 2 periods) after the load.

    make soak-ttl                        # 10 minutes
    make soak-ttl SOAK_SECONDS=300       # shorter

"Flat": the mean size of the second half of the samples after the warm-up is within
``FLAT_TOLERANCE`` of the first half's (RocksDB compactions make the series saw-toothed,
so single samples are not compared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from dynctl.bench.config import BenchConfig, Target
from dynctl.bench.engine import run_phase
from tests.bench.compare import dynd_members
from tests.integration.harness import dynctl

FLAT_TOLERANCE = 0.10
BUCKET = "cache"


def tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (files that vanish meanwhile are skipped)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def is_flat(series: list[tuple[float, int]], warmup: float) -> tuple[bool | None, str]:
    """Whether the sizes after ``warmup`` seconds stay flat; None with the reason when too
    few samples came after it to tell."""
    after = [size for when, size in series if when >= warmup]
    if len(after) < 4:
        return None, f"only {len(after)} samples after the {warmup:.0f} s warm-up"
    half = len(after) // 2
    first, second = statistics.mean(after[:half]), statistics.mean(after[half:])
    growth = (second - first) / first
    return abs(growth) <= FLAT_TOLERANCE, (f"mean of the second half {growth:+.1%} against "
                                            f"the first ({len(after)} samples after warm-up)")


async def soak(args: argparse.Namespace, dirs: list[Path], target: Target
               ) -> tuple[list[tuple[float, int]], dict]:
    """Load, then run YCSB-D for ``args.seconds``, sampling the data dirs' size."""
    config = BenchConfig(workload="d", records=args.records, duration=args.seconds, warmup=0,
                         concurrency=args.concurrency, procs=2, value_size=args.value_size,
                         load=False)
    started = time.monotonic()
    series: list[tuple[float, int]] = []
    report: dict = {}
    loaded: list[float] = []  # seconds from the start to the end of the load

    async def sample_until_done(done: trio.Event) -> None:
        while not done.is_set():
            series.append((time.monotonic() - started, sum(tree_bytes(d) for d in dirs)))
            print(f"{series[-1][0]:7.0f} s  {series[-1][1] / 2**20:8.1f} MiB", flush=True)
            with trio.move_on_after(args.sample):
                await done.wait()

    async def workload(done: trio.Event) -> None:
        await run_phase(target, BenchConfig(**{**config.__dict__, "workload": "load"}), "load")
        loaded.append(time.monotonic() - started)
        print(f"{loaded[0]:7.0f} s  loaded {args.records} records", flush=True)
        report.update(await run_phase(target, config, "run"))
        done.set()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_until_done, done)
        nursery.start_soon(workload, done)
    return series, report | {"loaded_at": loaded[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--grace", type=int, default=60)
    parser.add_argument("--period", type=float, default=15.0,
                        help="Anti-entropy period (the grace must be at least 4 of them).")
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=1000)
    args = parser.parse_args()
    if args.grace < 4 * args.period:
        parser.error("--grace must be at least 4 anti-entropy periods (--period)")
    warmup = args.ttl + args.grace + 2 * args.period
    print(f"TTL soak: {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, 3 nodes N=3 "
          f"R=W=2, ttl {args.ttl} s, grace {args.grace} s, anti-entropy period "
          f"{args.period:g} s, {args.records} records loaded, YCSB-D for {args.seconds:g} s, "
          f"{args.concurrency} in flight; warm-up {warmup:g} s\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="dynd-soak-") as tmp, dynd_members(
            Path(tmp), 3, 3, 2, 2, f"[antientropy]\nperiod = {args.period}\n") as members:
        result = dynctl("--node", members[0].addr, "bucket", "set", BUCKET, "--n", "3",
                        "--r", "2", "--w", "2", "--ttl", f"{args.ttl}s",
                        "--grace", f"{args.grace}s")
        if result.returncode != 0:
            sys.exit(f"bucket set failed: {result.stderr.decode()}")
        time.sleep(1.0)  # the bucket's properties reach every member by gossip
        target = Target("dynd", tuple(m.addr for m in members), options={"bucket": BUCKET})
        series, report = trio.run(soak, args, [m.data_dir for m in members], target)
        print()
        for member in members:  # whether the reaper ran, and whether hints held it back
            result = dynctl("--json", "--node", member.addr, "stats")
            stats = json.loads(result.stdout) if result.returncode == 0 else {}
            print(f"{member.node_id}: reaped {stats.get('events', {}).get('tombstones_reaped')}"
                  f", hints pending {stats.get('gauges', {}).get('hints_pending')}")
    flat, why = is_flat(series, report["loaded_at"] + warmup)
    verdict = {True: "FLAT", False: "NOT FLAT", None: "UNDECIDED"}[flat]
    reads = report["operations"].get("read", {})
    print(f"\nrun: {report['throughput']:,.0f} ops/s, read p99 {reads.get('p99')} ms, "
          f"errors {report['errors'] or 0}, outcomes {report['outcomes']}")
    print(f"disk after warm-up: {verdict}: {why}")
    sys.exit(0 if flat else 1)


if __name__ == "__main__":
    main()
