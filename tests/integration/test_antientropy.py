"""Anti-entropy on real processes: a wiped node is rebuilt, deletes never come back."""

from __future__ import annotations

import shutil
import time

from dynctl.client import SyncClient
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    ctl,
    dynctl_json,
    form,
    missing,
    put_many,
    replica_rows,
)


def local_copies(node: DyndProcess, keys: range, holder: str) -> int:
    """How many of `keys` the node `holder` holds as a primary, per `dynctl replicas`."""
    with SyncClient.connect(node.addr) as client:
        return sum(any(r["node"] == holder and r["found"] for r in replica_rows(client, f"k{i}"))
                   for i in keys)


def test_wiped_node_gets_every_key_back_with_a_fresh_incarnation(dyn_cluster: Cluster) -> None:
    nodes = form(dyn_cluster, 3)
    put_many(nodes[0], range(1000), w=3)
    victim = nodes[2]
    _, before = dynctl_json("--node", victim.addr, "status")
    victim.kill()
    shutil.rmtree(victim.data_dir)
    victim.extra_args = ["--seed", nodes[0].addr]
    victim.start()
    _, after = dynctl_json("--node", victim.addr, "status")
    assert after["actor"] != before["actor"]  # no reuse of the old incarnation's counters
    started = time.monotonic()
    _, repaired = dynctl_json("--timeout", "120", "--node", victim.addr, "repair")
    assert repaired["repaired"] >= 1000 * 0.9
    assert time.monotonic() - started < 120
    assert local_copies(nodes[0], range(0, 1000, 25), victim.node_id) == 40
    # New writes through the recovered node are not mistaken for old ones.
    with SyncClient.connect(victim.addr) as client:
        for i in range(20):
            obj = client.get(f"k{i}")
            client.put(f"k{i}", f"w{i}", context=obj.context)
    with SyncClient.connect(nodes[0].addr) as client:
        for i in range(20):
            assert client.get(f"k{i}", r=3).value == f"w{i}".encode()


def test_deletes_while_a_replica_is_down_stay_deleted_after_repair(
        dyn_cluster: Cluster, tmp_path) -> None:
    config = tmp_path / "fast-reap.toml"
    config.write_text("[antientropy]\ntombstone_grace = 1.0\nperiod = 3600.0\n")
    nodes = form(dyn_cluster, 3, "-c", str(config))
    # A grace this short is for the test only; the node says so at start-up.
    assert "event=short_tombstone_grace tombstone_grace=1 period=3600" in nodes[0].log()
    put_many(nodes[0], range(50), w=3)
    down = nodes[2]
    down.stop()
    with SyncClient.connect(nodes[0].addr) as client:
        for i in range(25):
            client.delete(f"k{i}", w=2)
    deleted = time.monotonic()
    down.start()
    # The condition here is the clock itself: the tombstones must be older than the grace
    # (1 s) before the repairs, so this waits out what is left of it, plus a margin.
    time.sleep(max(0.0, deleted + 1.5 - time.monotonic()))
    for _ in range(2):  # the first repair spreads tombstones, the second may reap them
        for node in nodes:
            ctl(node, "--timeout", "120", "repair")
    with SyncClient.connect(nodes[1].addr) as client:
        for i in range(25):
            assert not client.get(f"k{i}", r=3).found, f"k{i} came back"
    assert missing(nodes[1], range(25, 50), r=3) == []
    with SyncClient.connect(nodes[0].addr) as client:
        for i in range(25):  # the tombstones were reaped on every primary
            assert [(r["found"], r["siblings"])
                    for r in replica_rows(client, f"k{i}")] == [(False, 0)] * 3
