"""Real dynd processes on 127.0.0.1 for integration tests: start, stop, kill, drive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.errors import DynError
from dynctl.client import Client, SyncClient

# The processes started here and still running, so that a failing test's report carries
# the end of their logs (tests/conftest.py).
STARTED: list[DyndProcess] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DyndProcess:
    node_id: str
    data_dir: Path
    port: int
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    code: Path | None = None  # run the dynd of this source tree (another release) instead

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynd", "--node-id", self.node_id, "--listen", self.addr,
             "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=log, cwd=self.code, env={**os.environ, **(env or {}), **(
                {} if self.code is None else {"PYTHONPATH": str(self.code)})},
        )
        log.close()
        STARTED[:] = [node for node in STARTED if node.running() and node is not self]
        STARTED.append(self)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            if answers_ping(self.addr):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.node_id} did not answer ping:\n"
                           + self.log_path.read_text()[-3000:])

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def answers_ping(addr: str) -> bool:
    """Does the node at ``addr`` answer a ping? Asked in this process: a dynctl run per
    poll is a process start, which competes with the starting node for the CPU. In a
    thread of its own, so that a test may start a node from inside trio.run."""
    async def ping() -> None:
        async with Client.connect(addr, timeout=1) as client:
            await client.call("ping")

    with ThreadPoolExecutor(1) as thread:
        try:
            thread.submit(trio.run, ping).result()
        except DynError:
            return False
    return True


def dynctl(*args: str, input: bytes | None = None, timeout: float = 60.0
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynctl", *args], input=input,
                          capture_output=True, timeout=timeout)


def dynctl_json(*args: str, input: bytes | None = None) -> tuple[int, dict]:
    result = dynctl("--json", *args, input=input)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {result.stdout!r} stderr={result.stderr!r}") from None
    return result.returncode, document


class Cluster:
    """A set of dynd processes, all stopped on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[DyndProcess] = []

    def add(self, node_id: str | None = None, *extra: str, start: bool = True) -> DyndProcess:
        node_id = node_id or f"n{len(self.nodes) + 1}"
        node = DyndProcess(node_id, self.root / node_id, free_port(),
                           self.root / f"{node_id}.log", list(extra))
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                node.kill()


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    c = Cluster(root)
    try:
        yield c
    finally:
        c.stop_all()


def one_node(root: Path, *extra: str) -> Iterator[DyndProcess]:
    """A node (dynd options ``extra``) alone in its cluster, stopped after the last use:
    for a module-scoped fixture whose tests each use keys and buckets of their own, so
    that the module starts one process, not one per test."""
    with cluster(root) as c:
        yield c.add("n1", *extra)


def ctl(node: DyndProcess, *args: str) -> subprocess.CompletedProcess:
    """dynctl against ``node``, which must succeed (``args`` may start with TLS options)."""
    result = dynctl("--node", node.addr, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def join_and_commit(nodes: list[DyndProcess], *client_args: str) -> None:
    """The one way tests form a cluster of processes: ``nodes[1:]`` join ``nodes[0]``, it
    commits the plan, and every transfer is done. ``client_args``: dynctl's TLS options."""
    for node in nodes[1:]:
        ctl(node, *client_args, "cluster", "join", nodes[0].addr)
    ctl(nodes[0], *client_args, "cluster", "plan")
    ctl(nodes[0], *client_args, "cluster", "commit")
    ctl(nodes[0], *client_args, "cluster", "wait", "--timeout", "60")


def form(cluster: Cluster, size: int, *extra: str) -> list[DyndProcess]:
    """``size`` new nodes (started with dynd options ``extra``) formed into one cluster."""
    nodes = [cluster.add(None, *extra) for _ in range(size)]
    join_and_commit(nodes)
    return nodes


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (often dynctl calls) every 0.5 s; fail naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def put_many(node: DyndProcess, keys: range, prefix: str = "k", **kw: object) -> None:
    """Put ``{prefix}{i}`` = ``v{i}`` for every i in ``keys`` through ``node``, 16 at a time."""
    async def main() -> None:
        async with Client.connect(node.addr, timeout=10) as client:
            limit = trio.CapacityLimiter(16)

            async def one(i: int) -> None:
                async with limit:
                    await client.put(f"{prefix}{i}", f"v{i}", **kw)

            async with trio.open_nursery() as nursery:
                for i in keys:
                    nursery.start_soon(one, i)

    trio.run(main)


def replica_rows(client: SyncClient, key: str, bucket: str = "default") -> list[dict]:
    """What ``dynctl replicas`` shows for ``key``, asked on an open client: one connection
    for many keys, where a dynctl run per key takes seconds."""
    return client.call("replicas", bucket=bucket, key=key.encode())["replicas"]


def missing(node: DyndProcess, keys: range, prefix: str = "k", r: int | None = None) -> list[int]:
    """The i in ``keys`` whose ``{prefix}{i}`` does not read back as ``v{i}``."""
    lost = []
    with SyncClient.connect(node.addr, timeout=10) as client:
        for i in keys:
            obj = client.get(f"{prefix}{i}", r=r)
            if not obj.found or obj.values[0].value != f"v{i}".encode():
                lost.append(i)
    return lost
