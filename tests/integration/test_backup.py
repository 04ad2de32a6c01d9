"""Backup and restore on real processes: `dynctl backup` writes a checkpoint a node can be
started on; the restored node takes a new incarnation and catches up from its peers."""

from __future__ import annotations

import shutil
from pathlib import Path

from dynctl.client import SyncClient
from dynd.backup import MARKER
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    dynctl,
    dynctl_json,
    form,
    missing,
    put_many,
)


def take_backup(node: DyndProcess, target: Path) -> dict:
    code, document = dynctl_json("--node", node.addr, "backup", str(target))
    assert code == 0, document
    return document


def restore(node: DyndProcess, backup: Path) -> None:
    """The documented restore: stop, put the backup's files in place of the data dir, start."""
    node.stop()
    shutil.rmtree(node.data_dir)
    shutil.copytree(backup, node.data_dir)
    node.start()


def test_a_single_node_restored_has_exactly_the_data_of_its_backup(
        dyn_cluster: Cluster, tmp_path: Path) -> None:
    node = dyn_cluster.add("n1")
    put_many(node, range(200))
    with SyncClient.connect(node.addr) as client:
        client.delete("k7", context=client.get("k7").context)
    target = tmp_path / "backups" / "n1"
    target.parent.mkdir()
    document = take_backup(node, target)
    assert document["path"] == str(target)
    assert document["bytes"] > 0
    assert (target / MARKER).exists()
    _, before = dynctl_json("--node", node.addr, "status")
    put_many(node, range(200, 300))  # after the backup
    put_many(node, range(0, 5), prefix="k", w=1)  # rewrites of keys the backup holds
    with SyncClient.connect(node.addr) as client:
        client.put("k3", "changed", context=client.get("k3").context)

    restore(node, target)

    assert missing(node, range(200)) == [7]  # as it was: k7 deleted, k0-k4 one value each
    with SyncClient.connect(node.addr) as client:
        for i in range(5):
            assert [v.value for v in client.get(f"k{i}").values] == [f"v{i}".encode()]
        assert not client.get("k7").found
        assert not any(client.get(f"k{i}").found for i in range(200, 300))
    _, after = dynctl_json("--node", node.addr, "status")
    assert after["actor"] != before["actor"]
    assert not (node.data_dir / MARKER).exists()  # consumed once the new life is durable


def test_backup_into_an_existing_or_relative_directory_is_refused(
        dyn_cluster: Cluster, tmp_path: Path) -> None:
    node = dyn_cluster.add("n1")
    existing = tmp_path / "taken"
    existing.mkdir()
    refused = dynctl("--node", node.addr, "backup", str(existing))
    assert refused.returncode == 5
    assert b"exists" in refused.stderr
    relative = dynctl("--node", node.addr, "backup", "relative/dir")
    assert relative.returncode == 5
    assert list(existing.iterdir()) == []


def test_a_restored_node_never_collides_with_its_writes_after_the_backup(
        dyn_cluster: Cluster, tmp_path: Path) -> None:
    """The restored copy lacks the dots the node minted after the backup; other replicas
    (and clients) hold them. Here the node crashed after the backup and minted under its
    next incarnation, the one its copy alone would take again: a blind write through the
    restored node would repeat those dots and one of two concurrent values would vanish."""
    nodes = form(dyn_cluster, 3)
    victim = nodes[2]
    put_many(nodes[0], range(100), prefix="a", w=3)  # before the backup
    target = tmp_path / "n3-backup"
    take_backup(victim, target)
    put_many(victim, range(100), prefix="b", w=3)  # after it, same life
    victim.kill()  # a crash: the next start takes the next incarnation
    victim.start()
    put_many(victim, range(100), prefix="c", w=3)  # minted under that next incarnation

    restore(victim, target)

    with SyncClient.connect(victim.addr) as client:
        for i in range(100):
            client.put(f"c{i}", f"again{i}")  # blind: a sibling beside c{i}, never instead
        for i in range(100):  # read-modify-write of keys the backup holds
            obj = client.get(f"a{i}", r=3)
            client.put(f"a{i}", f"new{i}", context=obj.context)
    _, repaired = dynctl_json("--timeout", "120", "--node", victim.addr, "repair")
    assert "repaired" in repaired, repaired
    with SyncClient.connect(victim.addr) as client:
        lost = [i for i in range(100) if sorted(
            v.value for v in client.get(f"c{i}", r=3).values) != [f"again{i}".encode(),
                                                                f"v{i}".encode()]]
        assert lost == [], f"c keys without exactly both values: {lost[:10]}"
        stale = [i for i in range(100)
                 if [v.value for v in client.get(f"a{i}", r=3).values] != [f"new{i}".encode()]]
        assert stale == [], f"a keys with siblings or an old value: {stale[:10]}"
    for node in nodes:  # every key written before and after the backup, on every node
        assert missing(node, range(100), prefix="b", r=3) == []
