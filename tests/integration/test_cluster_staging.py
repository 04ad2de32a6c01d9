"""Real dynd processes: planning nothing, clearing a join, rejoining under a removed id."""

from __future__ import annotations

import shutil

from tests.integration.harness import (
    Cluster,
    DyndProcess,
    ctl,
    dynctl,
    dynctl_json,
    form,
    wait_until,
)


def member_statuses(node: DyndProcess) -> dict[str, str]:
    code, status = dynctl_json("--node", node.addr, "cluster", "status")
    assert code == 0, status
    return {m["id"]: m["status"] for m in status["members"]}


def sees_reachable(viewer: DyndProcess, node_id: str) -> bool:
    code, status = dynctl_json("--node", viewer.addr, "status")
    assert code == 0, status
    return any(m["id"] == node_id and m["reachable"] for m in status["members"])


def actor(node: DyndProcess) -> str:
    code, status = dynctl_json("--node", node.addr, "status")
    assert code == 0, status
    return status["actor"]


def test_plan_with_nothing_staged_shows_the_empty_plan(dyn_cluster: Cluster) -> None:
    node = dyn_cluster.add()
    code, plan = dynctl_json("--node", node.addr, "cluster", "plan")
    assert (code, plan) == (0, {"changes": [], "transfers": [], "owners_after": {"n1": 64}})
    assert "no staged changes" in ctl(node, "cluster", "plan").stdout.decode()
    refused = dynctl("--node", node.addr, "cluster", "commit")
    assert refused.returncode == 5 and b"nothing staged" in refused.stderr


def test_a_cleared_join_is_undone_and_the_node_can_join_again(dyn_cluster: Cluster) -> None:
    seed, _ = form(dyn_cluster, 2)
    new = dyn_cluster.add()
    ctl(new, "cluster", "join", seed.addr)
    assert member_statuses(seed)[new.node_id] == "joining"
    cleared = ctl(seed, "cluster", "clear").stdout.decode()
    assert f"join of {new.node_id} undone" in cleared
    assert member_statuses(seed)[new.node_id] == "removed"
    wait_until(lambda: member_statuses(new)[new.node_id] == "removed", 20,
               "the cleared node to learn it is out")

    ctl(new, "cluster", "join", seed.addr)
    ctl(new, "cluster", "join", seed.addr)  # a retry while joining
    _, plan = dynctl_json("--node", seed.addr, "cluster", "plan")
    assert [(c["kind"], c["node"]) for c in plan["changes"]] == [("join", new.node_id)]
    ctl(seed, "cluster", "commit")
    ctl(seed, "cluster", "wait", "--timeout", "60")
    assert member_statuses(seed)[new.node_id] == "valid"


def test_a_removed_id_rejoins_with_a_fresh_data_dir_as_a_new_life(dyn_cluster: Cluster) -> None:
    """The old life's heartbeats ranked (2, counter) on the others and its dots were
    minted under one actor (a clean restart keeps it; the crash renews it): the new life
    must outrank the beats and mint under a new actor."""
    nodes = form(dyn_cluster, 4)
    seed, other, old = nodes[0], nodes[1], nodes[3]
    old_actors = {actor(old)}
    old.stop()
    old.start()  # a clean restart: incarnation 2, the same actor
    assert {actor(old)} == old_actors
    old.kill()
    old.start()  # a crash: incarnation 3 and a new actor
    old_actors.add(actor(old))
    assert len(old_actors) == 2
    # A change made on the restarted node reaches the seed with its whole state, which
    # records incarnation 3 since start-up.
    ctl(old, "bucket", "set", "marker", "--n", "2", "--r", "1", "--w", "1")
    wait_until(lambda: dynctl_json("--node", seed.addr, "bucket", "get", "marker")[1]
               ["bucket"]["n"] == 2, 30, "the restarted node's state at the seed")

    for i in range(20):  # 4 nodes, n=3: the old node holds copies of most of them
        ctl(seed, "put", f"k{i}", "v")
    old.stop()
    ctl(seed, "cluster", "remove", old.node_id)
    ctl(seed, "cluster", "commit")
    ctl(seed, "cluster", "wait", "--timeout", "60")
    # Back with its old copies, it hears it was removed, and may not join with them. A
    # removed node hands its copies to the primaries and drops them once every primary took
    # them: with one primary down that waits, so its copies are still there to refuse.
    down = nodes[2]
    down.stop()
    old.start()
    wait_until(lambda: member_statuses(old)[old.node_id] == "removed", 30,
               "the removed node to hear it")
    refused = dynctl("--node", old.addr, "cluster", "join", seed.addr)
    assert refused.returncode == 5 and b"empty data dir" in refused.stderr, refused.stderr
    old.stop()
    down.start()
    shutil.rmtree(old.data_dir)
    old.start()
    ctl(old, "cluster", "join", seed.addr)
    ctl(seed, "cluster", "commit")
    ctl(seed, "cluster", "wait", "--timeout", "60")

    for viewer in (seed, other):
        wait_until(lambda viewer=viewer: sees_reachable(viewer, old.node_id), 20,
                   f"{viewer.node_id} to hear the rejoined node")
    assert actor(old) not in old_actors
