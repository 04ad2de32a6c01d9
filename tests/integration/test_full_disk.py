"""A full disk, the commonest disk fault: one node's data dir on a small tmpfs in a
3-node cluster. Writes go on through the others; the full node stops cleanly (one
``event=fatal`` line, exit 1, no traceback); once space is back and it restarts, repair
gives it back every value (docs/operations.md, "DyndDiskAlmostFull").

Needs root to mount the tmpfs; elsewhere it is skipped, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynctl.client import Client, SyncClient
from tests.integration.harness import Cluster, DyndProcess, ctl, form, wait_until

KEYS = range(3000)
VALUE_BYTES = 8192  # 3000 values of 8 KiB: twice what the 12 MB tmpfs holds


def value(i: int) -> bytes:
    return b"%d-" % i + b"x" * VALUE_BYTES


def put_all(node: DyndProcess) -> None:
    """Every write of KEYS through ``node``, 16 at a time; each must be acknowledged."""
    async def main() -> None:
        async with Client.connect(node.addr, timeout=10) as client:
            limit = trio.CapacityLimiter(16)

            async def one(i: int) -> None:
                async with limit:
                    await client.put(f"k{i}", value(i), context=None)

            async with trio.open_nursery() as nursery:
                for i in KEYS:
                    nursery.start_soon(one, i)

    trio.run(main)


def unreadable(node: DyndProcess) -> list[int]:
    with SyncClient.connect(node.addr, timeout=10) as client:
        return [i for i in KEYS
                if [v.value for v in client.get(f"k{i}", r=3).values] != [value(i)]]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_node_cleanly_and_repair_restores_every_value(
        dyn_cluster: Cluster, small_disk: Path) -> None:
    n1, n2, n3 = form(dyn_cluster, 3)
    n3.stop()
    n3.data_dir = small_disk / "n3"
    shutil.move(dyn_cluster.root / "n3", n3.data_dir)  # fits: the cluster holds nothing yet
    n3.start()
    ctl(n1, "cluster", "wait")
    put_all(n1)
    wait_until(lambda: n3.proc is not None and n3.proc.poll() is not None, 60,
               "the node with the full disk to stop")
    log = n3.log()
    assert n3.proc is not None and n3.proc.returncode == 1, log[-2000:]
    assert log.count("event=fatal") == 1 and "Traceback" not in log, log[-3000:]
    assert "No space left on device" in log or "disk full" in log, log[-2000:]

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    n3.start()
    ctl(n3, "--timeout", "120", "repair")
    assert unreadable(n3) == []
