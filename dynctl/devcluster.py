"""``dynctl cluster up``: a local development cluster of dynd processes, in the foreground.

Node i (1-based) is ``n<i>``, listens on ``127.0.0.1:<base_port + i - 1>``, keeps its data
in ``<dir>/n<i>`` and its log (stdout and stderr) in ``<dir>/n<i>.log``. Once every node
answers ping, nodes 2..K that node 1 does not list as members are joined to node 1 and the
plan is committed; a restart over existing data dirs therefore joins nobody. Ctrl-C or
SIGTERM sends SIGTERM to every node (each runs in its own session, so it gets exactly one
signal), waits ``STOP_GRACE`` seconds, then SIGKILLs what is left.

Limits: at most ``MAX_NODES`` nodes; each must answer ping within ``STARTUP_TIMEOUT``.
A port that already has a listener fails the command before any node starts, and only
a ping answered by the node started for that port, with its id, counts as an answer.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from common.errors import Unavailable, UsageError
from dynctl.client import DEFAULT_ADDR, Client, parse_addr, single_exception_unwrapped
from dynctl.output import Outcome, Output

MAX_NODES = 32
STARTUP_TIMEOUT = 30.0  # seconds for one node to answer ping after it was started
FORMATION_TIMEOUT = 30.0  # seconds for each join / the commit request while forming
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_PING_INTERVAL = 0.1
_LOG_TAIL_LINES = 15


@dataclass(frozen=True, slots=True)
class DevNode:
    node_id: str
    addr: str
    data_dir: Path
    log: Path

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dynd", "--node-id", self.node_id, "--listen", self.addr,
                "--data-dir", str(self.data_dir)]

    def describe(self) -> dict[str, Any]:
        return {"id": self.node_id, "addr": self.addr, "data_dir": str(self.data_dir),
                "log": str(self.log)}


def plan_nodes(count: int, directory: Path, base_port: int) -> list[DevNode]:
    """The nodes of a dev cluster; UsageError when the count or the ports are out of range."""
    if not 1 <= count <= MAX_NODES:
        raise UsageError(f"--nodes must be in 1..{MAX_NODES}, not {count}")
    if not 1 <= base_port <= 65536 - count:
        raise UsageError(f"--base-port {base_port} leaves no room for {count} ports "
                         f"below 65536")
    return [DevNode(node_id=f"n{i}", addr=f"127.0.0.1:{base_port + i - 1}",
                    data_dir=directory / f"n{i}", log=directory / f"n{i}.log")
            for i in range(1, count + 1)]


async def run_dev_cluster(nodes: Sequence[DevNode], output: Output) -> Outcome:
    """Start, form and keep the cluster until a signal; every started process is stopped."""
    _check_ports_free(nodes)
    processes: list[trio.Process] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            with single_exception_unwrapped():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                    for node in nodes:
                        processes.append(await _spawn(node))
                    for node, process in zip(nodes, processes, strict=True):
                        await _wait_ready(node, process)
                    summary = await _form_cluster(nodes)
                    _announce(output, nodes, summary)
                    async with trio.open_nursery() as watchers:
                        for node, process in zip(nodes, processes, strict=True):
                            watchers.start_soon(_watch, node, process, output)
                    raise Unavailable("every node of the dev cluster exited; see their logs")
        finally:
            with trio.CancelScope(shield=True):
                await _stop(processes)
    return Outcome(None, render=lambda out: out.line(f"stopped {len(processes)} nodes"))


async def _cancel_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _spawn(node: DevNode) -> trio.Process:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    with node.log.open("ab") as log:
        return await trio.lowlevel.open_process(
            node.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def _check_ports_free(nodes: Sequence[DevNode]) -> None:
    """Unavailable when a node's port already has a listener: its ping would reach that
    process (another dynd, or an earlier dev cluster) instead of the node started here.

    The probe binds as dynd does (SO_REUSEADDR), so a port left in TIME_WAIT by a stopped
    cluster counts as free.
    """
    for node in nodes:
        host, port = parse_addr(node.addr)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise Unavailable(f"cannot start {node.node_id} on {node.addr}: "
                                  f"{exc.strerror or exc} (another dynd or dev cluster?); "
                                  f"stop it or choose another --base-port") from None


async def _wait_ready(node: DevNode, process: trio.Process) -> None:
    """Until the process started for ``node`` answers ping on its address.

    Only an answer from a live process with the node's id counts: a port taken after
    ``_check_ports_free`` is answered by someone else, or the process exits (port in use).
    """
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            try:
                async with Client.connect(node.addr, timeout=1.0) as client:
                    answer = await client.call("ping")
            except Unavailable:
                answer = None
            if process.poll() is not None:
                raise Unavailable(f"node {node.node_id} exited with code {process.returncode} "
                                  f"during start-up; last lines of {node.log}:\n"
                                  f"{_tail(node.log)}")
            if answer is not None:
                if answer.get("node") != node.node_id:
                    raise Unavailable(f"{node.addr} is answered by node "
                                      f"{answer.get('node')!r}, not by {node.node_id}: the "
                                      f"port is in use; choose another --base-port")
                return
            await trio.sleep(_PING_INTERVAL)
    raise Unavailable(f"node {node.node_id} did not answer on {node.addr} within "
                      f"{STARTUP_TIMEOUT:g}s; see {node.log}")


async def _form_cluster(nodes: Sequence[DevNode]) -> str:
    """Join the nodes node 1 does not know yet, commit; say what was done."""
    first = nodes[0]
    async with Client.connect(first.addr, timeout=FORMATION_TIMEOUT) as seed:
        status = await seed.call("cluster_status")
        members = {member.get("id") for member in status.get("members", [])
                   if member.get("status") != "removed"}
        joining = [node for node in nodes[1:] if node.node_id not in members]
        if not joining:
            return f"cluster of {len(members)} members already formed (epoch {status['epoch']})"
        for node in joining:
            async with Client.connect(node.addr, timeout=FORMATION_TIMEOUT) as client:
                await client.call("cluster_join", seed=first.addr)
        committed = await seed.call("cluster_commit")
    names = ", ".join(node.node_id for node in joining)
    return (f"joined {names} to {first.node_id}; committed epoch {committed.get('epoch')}, "
            f"{committed.get('transfers')} partition transfers")


def _announce(output: Output, nodes: Sequence[DevNode], summary: str) -> None:
    if output.json_mode:
        output.json({"nodes": [node.describe() for node in nodes], "summary": summary})
        return
    output.table("node", ["id", "addr", "data_dir", "log"],
                 [list(node.describe().values()) for node in nodes], title="dev cluster")
    first = "" if nodes[0].addr == DEFAULT_ADDR else f"--node {nodes[0].addr} "
    for text in (summary, "", "Try:",
                 f"  dynctl {first}put greeting hello",
                 f"  dynctl --node {nodes[-1].addr} get greeting",
                 f"  dynctl {first}cluster status",
                 f"  dynctl {first}ring",
                 f"  dynctl {first}cluster wait",
                 "", "Ctrl-C stops every node."):
        output.line(text)
    sys.stdout.flush()


async def _watch(node: DevNode, process: trio.Process, output: Output) -> None:
    code = await process.wait()
    output.warn(f"node {node.node_id} exited with code {code}; see {node.log}")


async def _stop(processes: Sequence[trio.Process]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        for process in processes:
            await process.wait()
    for process in processes:
        if process.poll() is None:
            process.kill()
            await process.wait()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])
