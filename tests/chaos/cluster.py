"""dynd processes, one per network namespace, with the process faults: kill -9, SIGSTOP/SIGCONT.

Each node listens on its veth address (``10.77.X.<i+1>:7070``); dynd's warning about a
plaintext listener on a non-loopback address is expected here. The nodes share a chaos
config (``CHAOS_CONFIG``): hints are handed back every second and anti-entropy compares
every partition every 30 s, so convergence after a heal is measured in seconds, not in the
production defaults of 5 s and 300 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import DynError
from dynctl.client import SyncClient
from tests.chaos.netns import Network
from tests.integration.harness import dynctl

PORT = 7070
CHAOS_CONFIG = """\
# dynd config for chaos runs: fast hint handoff and anti-entropy (see tests/chaos/cluster.py).
[handoff]
interval = 1.0

[antientropy]
period = 30.0
"""
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class ChaosNode:
    """One dynd process inside namespace ``index`` of ``network``."""

    index: int
    network: Network
    root: Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    restarts: int = 0

    @property
    def node_id(self) -> str:
        return f"n{self.index + 1}"

    @property
    def addr(self) -> str:
        return f"{self.network.ip(self.index)}:{PORT}"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.node_id}.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> None:
        data_dir = self.root / self.node_id
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # `ip netns exec` enters the namespace and execs python: the pid is dynd's own.
            self.proc = subprocess.Popen(
                [*self.network.exec_prefix(self.index), sys.executable, "-m", "dynd",
                 "-c", str(self.root / "chaos.toml"), "--node-id", self.node_id,
                 "--listen", self.addr, "--data-dir", str(data_dir)],
                stdout=log, stderr=log, env=os.environ.copy(), cwd=Path.cwd(),
            )
        self.paused = False
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.node_id} exited with {self.proc and self.proc.poll()}"
                                   f":\n{self.log_tail()}")
            if self.answers_ping():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.node_id} did not answer ping:\n{self.log_tail()}")

    def answers_ping(self, timeout: float = 1.0) -> bool:
        """One ping over the client protocol (a dynctl process costs ~0.5 s of CPU)."""
        try:
            with SyncClient.connect(self.addr, timeout=timeout) as client:
                client.call("ping")
        except DynError:
            return False
        return True

    def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.paused = False

    def restart(self) -> None:
        self.kill9()
        self.restarts += 1
        self.start()

    def pause(self) -> None:
        if self.alive and not self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """SIGTERM (after SIGCONT if paused); SIGKILL if it does not exit in time."""
        if not self.alive:
            return
        assert self.proc is not None
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


class ChaosCluster:
    """``size`` nodes in ``network``'s namespaces, joined into one cluster."""

    def __init__(self, network: Network, root: Path) -> None:
        self.network = network
        self.root = root
        self.nodes = [ChaosNode(i, network, root) for i in range(network.size)]

    def form(self) -> None:
        """Start every node, join them to the first, commit, wait for the ring to settle."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "chaos.toml").write_text(CHAOS_CONFIG)
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "cluster", "join", seed.addr)
        self.ctl(seed, "cluster", "commit")
        self.ctl(seed, "cluster", "wait", "--timeout", "60", timeout=90)

    def ctl(self, node: ChaosNode, *args: str, timeout: float = 60) -> str:
        result = dynctl("--node", node.addr, *args, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"dynctl {' '.join(args)} on {node.node_id} exited "
                               f"{result.returncode}: {result.stdout!r} {result.stderr!r}")
        return result.stdout.decode()

    @property
    def addrs(self) -> list[str]:
        return [node.addr for node in self.nodes]

    def restore(self) -> None:
        """Every node running and unpaused again (restart the killed, resume the paused)."""
        for node in self.nodes:
            node.resume()
            if not node.alive:
                node.restarts += 1
                node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()

    def stop_all(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                node.kill9()


@contextmanager
def chaos_cluster(size: int, root: Path) -> Iterator[ChaosCluster]:
    """A network and a formed cluster on it; every process, namespace, veth and bridge is
    removed on exit, also when forming or the body fails."""
    with Network(size) as net:
        cluster = ChaosCluster(net, root)
        try:
            cluster.form()
            yield cluster
        finally:
            cluster.stop_all()
