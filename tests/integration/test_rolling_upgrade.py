"""A rolling upgrade from earlier releases, two versions of the code side by side.

Three nodes start on an earlier release (its tree from `git archive`, run with this
interpreter and its dependencies through PYTHONPATH), a writer keeps writing through
every node, and each node in turn is stopped and started on the current code on the
same data dir, then `dynctl cluster wait`: the procedure docs/operations.md gives.
No acknowledged write may be lost, every node serves at the end, and a feature the
previous release lacks is refused (exit 5, naming the old members) until every member
runs the current code, then works; a feature both have works throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common.errors import DynError
from dynctl.client import SyncClient
from dynd.features import SUPPORTED
from tests.integration.harness import (
    Cluster,
    DyndProcess,
    ctl,
    dynctl,
    join_and_commit,
    wait_until,
)

# Releases upgraded from: the previous one, and the last before features were announced
# (its nodes report none, so the sort-key gate stays shut while one of them is a member).
RELEASES = {"6fa0d95": "the last commit before expiry and access control",
            "4fcb1a2": "the last commit before sort keys and feature announcements"}
REPO = Path(__file__).resolve().parents[2]

# A dynctl command per feature that needs it: refused while a member lacks the feature.
FEATURE_PROBES = {
    "sk": ["put", "--sk", "post-1", "upgrade:sk", "v"],
    "ttl": ["put", "--ttl", "60", "upgrade:ttl", "v"],
    "rbac": ["role", "create", "upgrade-probe"],
}
# Features no command needs: the nodes fall back on the older protocol until they are active.
INTERNAL_FEATURES = {"reap2", "batch"}


def _has_commit(commit: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet",
                           f"{commit}^{{commit}}"], capture_output=True).returncode == 0


@pytest.fixture(params=sorted(RELEASES), ids=lambda commit: f"from-{commit}")
def previous_release(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An earlier release's source tree. A clone without that commit (a shallow one)
    fails here, saying so: skipping would hide that the upgrade went untested."""
    commit = request.param
    if not _has_commit(commit):  # a shallow clone: fetch its history, if the remote answers
        subprocess.run(["git", "-C", str(REPO), "fetch", "--quiet", "--unshallow"],
                       capture_output=True, timeout=120)
    if not _has_commit(commit):
        pytest.fail(f"the rolling upgrade test needs commit {commit} ({RELEASES[commit]}) "
                    f"in the git history of {REPO} (a shallow clone lacks it: "
                    "git fetch --unshallow)",
                    pytrace=False)
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def features_of(tree: Path) -> set[str]:
    """What the dynd of ``tree`` reports supporting (nothing before features existed).

    Read from the file: importing it would fall back on the editable install's finder,
    which supplies the current code's module for one the old tree lacks."""
    if not (tree / "dynd" / "features.py").exists():
        return set()
    out = subprocess.run([sys.executable, "-c", "import json; from dynd.features import "
                          "SUPPORTED; print(json.dumps(sorted(SUPPORTED)))"],
                         cwd=tree, env={"PYTHONPATH": str(tree)}, capture_output=True,
                         check=True).stdout
    return set(json.loads(out))


class Writer:
    """Puts through every node in turn until stopped; remembers what was acknowledged."""

    def __init__(self, nodes: list[DyndProcess]) -> None:
        self.addrs = [node.addr for node in nodes]
        self.acknowledged: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            addr = self.addrs[turn % len(self.addrs)]
            turn += 1
            try:
                with SyncClient.connect(addr, timeout=2) as client:
                    for _ in range(10):
                        key = f"w{len(self.acknowledged) + self.failed}"
                        try:
                            client.put(key, key)
                        except DynError:
                            self.failed += 1
                            break
                        self.acknowledged.append(key)
            except (DynError, OSError):
                self.failed += 1
                self._stop.wait(0.05)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_rolling_upgrade_loses_no_acknowledged_write_and_gates_new_features(
        dyn_cluster: Cluster, previous_release: Path) -> None:
    old_features = features_of(previous_release)
    new_only = sorted(SUPPORTED - old_features)
    unprobed = [f for f in sorted(SUPPORTED - INTERNAL_FEATURES) if f not in FEATURE_PROBES]
    assert not unprobed, f"add a dynctl command that needs each of {unprobed} to FEATURE_PROBES"
    nodes = [dyn_cluster.add(None, start=False) for _ in range(3)]
    for node in nodes:
        node.code = previous_release
        node.start()
    join_and_commit(nodes)
    unknown = dynctl("--node", nodes[0].addr, "backup", "/nonexistent/backup")
    assert b"unknown op 'backup'" in unknown.stderr, "not the previous release's dynd"

    with Writer(nodes) as writer:
        wait_until(lambda: len(writer.acknowledged) >= 50, 30, "writes on the old release")
        for upgraded, node in enumerate(nodes, start=1):
            node.stop()
            node.code = None  # the current code, on the same data dir
            node.start()
            ctl(node, "cluster", "wait", "--timeout", "60")
            old_members = [n.node_id for n in nodes[upgraded:]]
            for feature in sorted(SUPPORTED - INTERNAL_FEATURES):
                probe = dynctl("--node", node.addr, *FEATURE_PROBES[feature])
                if feature in new_only and old_members:
                    assert probe.returncode == 5, (feature, probe.stderr)
                    assert all(m.encode() in probe.stderr for m in old_members), probe.stderr
                else:
                    assert probe.returncode == 0, (feature, probe.stderr)
            before = len(writer.acknowledged)
            wait_until(lambda: len(writer.acknowledged) >= before + 20, 30,  # noqa: B023
                       f"writes after upgrading {node.node_id}")
    assert writer.acknowledged, "the writer never got a write acknowledged"

    for node in nodes:  # every node serves every acknowledged write
        assert dynctl("--node", node.addr, "ping").returncode == 0
        with SyncClient.connect(node.addr, timeout=10) as client:
            lost = [key for key in writer.acknowledged
                    if key.encode() not in [v.value for v in client.get(key).values]]
        assert lost == [], f"{node.node_id} lost {len(lost)} acknowledged writes: {lost[:10]}"
