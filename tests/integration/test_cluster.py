"""Real dynd processes as a cluster: join, sloppy quorum, hinted handoff, transfer, leave."""

from __future__ import annotations

from pathlib import Path

from dynctl.client import SyncClient
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    ctl,
    dynctl,
    dynctl_json,
    form,
    missing,
    put_many,
    replica_rows,
    wait_until,
)


def total_hints(nodes: list[DyndProcess]) -> int:
    """Hints held on the running nodes, per the hints op (what `dynctl hints` shows): a
    dynctl run per node and poll made each poll take seconds."""
    total = 0
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            with SyncClient.connect(node.addr) as client:
                total += sum(client.call("hints")["hints"].values())
    return total


def test_five_nodes_survive_a_kill_and_a_leave_without_losing_a_key(dyn_cluster: Cluster,
                                                                     tmp_path: Path) -> None:
    config = tmp_path / "prompt-handoff.toml"  # hints handed back each second, not each 5 s
    config.write_text("[handoff]\ninterval = 1.0\n")
    nodes = form(dyn_cluster, 5, "-c", str(config))
    code, status = dynctl_json("--node", nodes[2].addr, "cluster", "status")
    assert code == 0 and status["epoch"] >= 1
    assert {m["id"] for m in status["members"] if m["status"] == "valid"} == {
        "n1", "n2", "n3", "n4", "n5"}
    code, ring = dynctl_json("--node", nodes[0].addr, "ring")
    counts = {n: ring["owners"].count(n) for n in set(ring["owners"])}
    assert max(counts.values()) <= 1.25 * (64 / 5)

    put_many(nodes[0], range(300))
    victim = nodes[3]
    victim.kill()
    assert missing(nodes[1], range(300)) == []  # R=2 with one replica gone
    put_many(nodes[1], range(300, 400))        # W=2: sloppy quorum keeps accepting writes
    assert total_hints(nodes) > 0
    victim.start()
    wait_until(lambda: total_hints(nodes) == 0, 60, "hints to drain")

    leaver = nodes[4]
    ctl(nodes[0], "cluster", "leave", leaver.node_id)
    ctl(nodes[0], "cluster", "commit")
    ctl(nodes[0], "cluster", "wait", "--timeout", "90")
    code, status = dynctl_json("--node", nodes[0].addr, "cluster", "status")
    assert {m["id"]: m["status"] for m in status["members"]}[leaver.node_id] == "removed"
    leaver.stop()
    assert missing(nodes[0], range(400), r=3) == []


def test_put_through_a_node_outside_the_preference_list(dyn_cluster: Cluster) -> None:
    nodes = form(dyn_cluster, 4)
    ctl(nodes[0], "bucket", "set", "one", "--n", "1", "--r", "1", "--w", "1")
    # With N=1 every key has one primary; most keys' primary is some other node.
    put_many(nodes[0], range(40), bucket="one")
    with SyncClient.connect(nodes[3].addr) as client:
        for i in range(40):
            assert client.get(f"k{i}", bucket="one").value == f"v{i}".encode()
    primaries = set()
    with SyncClient.connect(nodes[1].addr) as client:
        for i in range(40):
            [row] = [r for r in replica_rows(client, f"k{i}", "one") if r["role"] == "primary"]
            assert row["found"] and row["siblings"] == 1
            primaries.add(row["node"])
    assert len(primaries) > 1  # puts were forwarded to the key's own primary


def test_staged_changes_can_be_cleared_and_bad_changes_are_rejected(dyn_cluster: Cluster) -> None:
    nodes = form(dyn_cluster, 2)
    ctl(nodes[0], "cluster", "leave", "n2")
    _, plan = dynctl_json("--node", nodes[0].addr, "cluster", "plan")
    assert [c["kind"] for c in plan["changes"]] == ["leave"]
    ctl(nodes[0], "cluster", "clear")
    assert dynctl("--node", nodes[0].addr, "cluster", "commit").returncode == 5
    assert dynctl("--node", nodes[0].addr, "cluster", "remove", "nobody").returncode == 5
