"""One network namespace per node, joined by veth pairs to a bridge, with faults on top.

Layout of one run (every name carries a random suffix, so parallel or leftover runs
never collide):

    root namespace: bridge ``dcb<sfx>`` with 10.77.X.254/24 (X picked free at random)
        veth ``dcv<sfx><i>`` (host end, enslaved to the bridge)
    namespace ``dyn-<sfx>-n<i>``: ``eth0`` = the veth's other end, 10.77.X.<i+1>/24, lo up

Clients run in the root namespace and reach every node through the bridge address, like
Jepsen's clients that can always talk to any node; faults cut the nodes from each other.

Faults (all undone by ``heal``):

- partitions: iptables DROP rules in a chain of each node's own namespace (INPUT from and
  OUTPUT to the peers on the other side), so a partition is silent packet loss, as real
  ones are, and TCP connections hang rather than fail fast;
- link down: the node's host-side veth goes down, cutting it from peers and clients;
- loss: ``tc netem loss`` when the kernel has netem, otherwise an iptables ``statistic``
  match dropping the same share of packets;
- delay: ``tc netem delay`` (needs netem; ``has_netem`` tells whether it is there).

Every rule lives inside a node namespace, so ``close`` (delete the namespaces, the host
veths and the bridge) removes everything even after a crash of the test.
Needs root, iproute2 and iptables; ``NetworkUnavailable`` says which one is missing.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence

CHAIN = "DYNCHAOS"
SUBNET_PREFIX = "10.77"
MAX_NODES = 200  # host addresses .1 .. .200; .254 is the bridge
COMMAND_TIMEOUT = 20.0


class NetworkUnavailable(RuntimeError):
    """Namespaces cannot be built here: not root, a tool missing, or the kernel refused."""


def missing_requirements() -> str | None:
    """Why this machine cannot host a namespace network, or None when it can (as far as
    can be known without trying)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, bridge, iptables)"
    missing = [tool for tool in ("ip", "iptables", "tc") if shutil.which(tool) is None]
    if missing:
        return (f"missing {', '.join(missing)}: install iproute2 and iptables "
                "(make deps-chaos)")
    return None


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one networking command; a failure raises with the command and its stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and result.returncode != 0:
        raise NetworkUnavailable(f"{' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()}")
    return result


def _free_subnet(rng: random.Random) -> str:
    """A 10.77.X.0/24 not on any interface of the root namespace."""
    used = run("ip", "-o", "-4", "addr", "show").stdout
    candidates = [x for x in range(256) if f" {SUBNET_PREFIX}.{x}." not in used]
    if not candidates:
        raise NetworkUnavailable(f"every {SUBNET_PREFIX}.X.0/24 subnet is in use")
    return f"{SUBNET_PREFIX}.{rng.choice(candidates)}"


class Network:
    """The namespaces, veths and bridge of one run; a context manager that always cleans up."""

    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        if not 1 <= size <= MAX_NODES:
            raise ValueError(f"size must be 1..{MAX_NODES}, not {size}")
        self.size = size
        self.rng = rng or random.Random()
        self.suffix = secrets.token_hex(3)
        self.bridge = f"dcb{self.suffix}"
        self.subnet = ""
        self.has_netem = False
        self._built: list[tuple[str, str]] = []  # ("netns"|"link", name) in creation order

    # ---- names and addresses -------------------------------------------------------

    def namespace(self, i: int) -> str:
        return f"dyn-{self.suffix}-n{i}"

    def host_veth(self, i: int) -> str:
        return f"dcv{self.suffix}{i}"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.254"

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix a command with this to run it inside node i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def in_ns(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.exec_prefix(i), *args, check=check)

    # ---- life cycle ------------------------------------------------------------------

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Build bridge, namespaces and veths; NetworkUnavailable if the kernel refuses."""
        reason = missing_requirements()
        if reason:
            raise NetworkUnavailable(reason)
        self.subnet = _free_subnet(self.rng)
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self._built.append(("link", self.bridge))
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i in range(self.size):
            ns, veth = self.namespace(i), self.host_veth(i)
            run("ip", "netns", "add", ns)
            self._built.append(("netns", ns))
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._built.append(("link", veth))
            run("ip", "link", "set", veth, "master", self.bridge)
            run("ip", "link", "set", veth, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            self.in_ns(i, "iptables", "-w", "-N", CHAIN)
            self.in_ns(i, "iptables", "-w", "-I", "INPUT", "-j", CHAIN)
            self.in_ns(i, "iptables", "-w", "-I", "OUTPUT", "-j", CHAIN)
        self.has_netem = self._probe_netem()

    def _probe_netem(self) -> bool:
        probe = self.in_ns(0, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                           "1ms", check=False)
        if probe.returncode != 0:
            return False
        self.in_ns(0, "tc", "qdisc", "del", "dev", "lo", "root", check=False)
        return True

    def close(self) -> None:
        """Delete what this run built, newest first; safe to call twice or after a failure.

        Processes inside the namespaces must be stopped first (a namespace lives as long as
        a process in it).
        """
        errors = []
        while self._built:
            kind, name = self._built.pop()
            if kind == "netns":
                result = run("ip", "netns", "del", name, check=False)
            else:
                result = run("ip", "link", "del", name, check=False)
            if result.returncode != 0 and "Cannot find" not in result.stderr \
                    and "No such" not in result.stderr:
                errors.append(f"{kind} {name}: {result.stderr.strip()}")
        if errors:
            raise NetworkUnavailable("teardown left: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Names of this run still present on the machine (empty after a clean close)."""
        links = run("ip", "-o", "link", "show").stdout
        namespaces = run("ip", "netns", "list").stdout
        return [name for name in (self.bridge, *map(self.host_veth, range(self.size)))
                if f" {name}:" in links or f" {name}@" in links] + \
               [name for name in map(self.namespace, range(self.size)) if name in namespaces]

    # ---- faults ------------------------------------------------------------------------

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Nodes talk only within their group; a node in no group is cut from every peer."""
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        for i in range(self.size):
            for j in range(self.size):
                if i != j and (i not in group_of or group_of.get(j) != group_of[i]):
                    self._drop_between(i, j)

    def bridge_partition(self, middle: int) -> None:
        """Jepsen's bridge: two halves that cannot see each other, both see ``middle``."""
        others = [i for i in range(self.size) if i != middle]
        half = len(others) // 2
        left, right = others[:half], others[half:]
        for a in left:
            for b in right:
                self._drop_between(a, b)
                self._drop_between(b, a)

    def _drop_between(self, i: int, j: int) -> None:
        peer = self.ip(j)
        self.in_ns(i, "iptables", "-w", "-A", CHAIN, "-s", peer, "-j", "DROP")
        self.in_ns(i, "iptables", "-w", "-A", CHAIN, "-d", peer, "-j", "DROP")

    def link_down(self, i: int) -> None:
        run("ip", "link", "set", self.host_veth(i), "down")

    def loss(self, i: int, percent: float) -> None:
        """Drop ``percent`` of node i's packets, both directions."""
        if not 0 < percent < 100:
            raise ValueError(f"loss percent must be in (0, 100), not {percent}")
        if self.has_netem:
            self.in_ns(i, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss",
                       f"{percent}%")
            return
        # The chain is jumped to from INPUT and OUTPUT: one rule drops both ways.
        self.in_ns(i, "iptables", "-w", "-A", CHAIN, "-m", "statistic", "--mode", "random",
                   "--probability", f"{percent / 100:.4f}", "-j", "DROP")

    def delay(self, i: int, millis: int, jitter_millis: int = 0) -> None:
        """Delay node i's outgoing packets; needs netem (check ``has_netem``)."""
        if not self.has_netem:
            raise NetworkUnavailable("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")
        self.in_ns(i, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                   f"{millis}ms", f"{jitter_millis}ms")

    def heal(self) -> None:
        """Undo every fault: flush the chains, drop the qdiscs, bring every link up."""
        for i in range(self.size):
            self.in_ns(i, "iptables", "-w", "-F", CHAIN)
            self.in_ns(i, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
            run("ip", "link", "set", self.host_veth(i), "up")

    def reachable(self, i: int, j: int) -> bool:
        """Does node i have no DROP rule against node j (test helper for the partition logic)."""
        rules = self.in_ns(i, "iptables", "-w", "-S", CHAIN).stdout
        return f"-s {self.ip(j)}/32" not in rules

