"""What access control costs: YCSB-C with it enabled against disabled, interleaved runs.

A local 3-node TLS cluster (certificates by trustme, node CN = node id) holds 100 roles
with 1,000 grants (10 each, over 10 buckets and several prefixes, some with ``${cn}``);
the benchmark's client CN ``bench`` holds 5 of the roles and the user ``all`` 10 more,
one of which grants ``read`` on the bucket the benchmark reads. Runs alternate off, on,
off, on, ... on the same loaded records, so a drift of the machine hits both sides.

    python -m tests.bench.rbac_cost                  # 3 pairs of 10 s runs
    python -m tests.bench.rbac_cost --pairs 5 --duration 20 --json rbac.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import trustme

from dynctl.client import SyncClient
from tests.integration.harness import cluster, dynctl, join_and_commit
from tests.integration.test_tls import Identity, issue, start_tls_node, wait_until_reachable

ROLES = 100
GRANTS_PER_ROLE = 10
BUCKETS = [f"b{i}" for i in range(10)]


def _ctl(node_addr: str, who: Identity, *args: str) -> dict[str, Any]:
    result = dynctl("--node", node_addr, *who.args(), "--json", *args, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"dynctl {' '.join(args)}: {result.stdout!r} {result.stderr!r}")
    return json.loads(result.stdout)


def _grants(addr: str, ops: Identity) -> None:
    """100 roles of 10 grants; `bench` holds 5 of them, `all` 10 (one reads `default`)."""
    with SyncClient.connect(addr, timeout=30, tls_ca=str(ops.ca), tls_cert=str(ops.cert),
                            tls_key=str(ops.key)) as client:
        for i in range(ROLES):
            role = f"role{i:03d}"
            client.role_create(role)
            for j in range(GRANTS_PER_ROLE):
                prefix = f"T{j}#${{cn}}#" if j % 2 else f"T{i}#{j}#"
                client.role_grant(role, ["readwrite" if j % 3 else "read"],
                                  bucket=BUCKETS[(i + j) % len(BUCKETS)], prefix=prefix)
        client.role_create("bench-admin")
        client.role_grant("bench-admin", ["admin"], bucket="*")  # for --spread
        client.role_grant("role099", ["read"], bucket="default", prefix="user")
        for i in range(5):
            client.user_grant_role("bench", f"role{i * 7:03d}")
        client.user_grant_role("bench", "bench-admin")
        for i in range(90, 100):
            client.user_grant_role("all", f"role{i:03d}")


def _run(addr: str, who: Identity, duration: float, records: int) -> dict[str, Any]:
    report = _ctl(addr, who, "bench", "--workload", "c", "--no-load", "--records",
                  str(records), "--duration", str(duration), "--warmup", "2")
    phase = report["phases"][-1]
    read = phase["operations"]["read"]
    return {"throughput": phase["throughput"], "p50": read["p50"], "p99": read["p99"],
            "errors": phase["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rbac-cost-") as tmp:
        root = Path(tmp)
        ca = trustme.CA()
        ops, bench = issue(ca, root / "certs", "ops"), issue(ca, root / "certs", "bench")
        with cluster(root) as c:
            nodes = [start_tls_node(c, f"n{i}", issue(ca, root / "certs", f"n{i}"), ops)
                     for i in (1, 2, 3)]
            join_and_commit(nodes, *ops.args())
            for node in nodes:
                wait_until_reachable(node, ops, {"n1", "n2", "n3"})
            addr = nodes[0].addr
            _grants(addr, ops)
            _ctl(addr, ops, "bench", "--workload", "load", "--records", str(args.records))
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for _ in range(args.pairs):
                for mode in ("off", "on"):
                    _ctl(addr, ops, "auth", "enable" if mode == "on" else "disable")
                    runs[mode].append(_run(addr, bench, args.duration, args.records))
                    print(mode, runs[mode][-1], flush=True)
    summary = {mode: {key: statistics.median(r[key] for r in results)
                      for key in ("throughput", "p50", "p99")}
               for mode, results in runs.items()}
    print("| access control | ops/s (median) | read p50 ms | read p99 ms |")
    print("|---|---|---|---|")
    for mode, row in summary.items():
        print(f"| {mode} | {row['throughput']:.0f} | {row['p50']} | {row['p99']} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
