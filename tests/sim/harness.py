"""A deterministic dynd cluster in one trio run: real Node code over tests/sim/network.py.

`run(seed, scenario)` builds the cluster (real dynd.node.Node, real RocksDB storage in
a temporary directory per node), runs a shopping-cart workload on plain keys and on
items (a few sort keys of one key) concurrently with seeded faults (frame loss,
duplication, reordering, symmetric and one-way partitions, crashes with storage kept
or wiped, clock jumps, wall-clock skew, a node joining), heals everything, waits until
the cluster converges, runs the checkers and returns a Report. Everything random
comes from the seed: the network, the faults, the workload, every node's rng and
trio's scheduler (seeded here), under trio's MockClock with autojump, so minutes of
cluster time take seconds. String hashing still follows PYTHONHASHSEED: `make sim`
pins it to 0.

A crash drops the writes a node staged but had not yet committed (a real crash
loses what was not yet durable; no acknowledgement ever follows such a write),
closes RocksDB, and optionally deletes the data directory (a lost disk). A clean
stop is dynd's on SIGTERM: drain, end the services, record the clean stop. The
node restarts on the same directory, with the same id and address.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import trio.testing

from common import dvvset
from common.config import Config
from common.errors import DynError, Unavailable
from common.ring import partition_of
from dynd import membership
from dynd.features import SUPPORTED
from dynd.node import Node
from dynd.storage import Storage, StorageError
from tests.sim import checkers
from tests.sim.checkers import Item, decode_value, encode_value
from tests.sim.network import LinkFaults, SimNetwork
from tests.support.cluster import bootstrap_state
from tests.support.nodes import new_node, seed_state

Result = TypeVar("Result")

log = logging.getLogger("sim.harness")

BASE_WALL = 1_700_000_000.0  # wall clock at simulated time 0
BUCKET = "default"
CLIENT_TIMEOUT = 6.0  # a client gives up on a request after this many seconds


@dataclass(frozen=True)
class Scenario:
    """One kind of run; the seed picks everything else."""

    nodes: int = 5
    ring_size: int = 16
    clients: int = 4
    cart_keys: int = 6  # grow-only sets: every acknowledged element must survive
    doomed_keys: int = 4  # put and deleted: superseded values must never come back
    item_keys: int = 1  # partition keys of items, each as carts and as doomed keys
    sort_keys: tuple[bytes, ...] = (b"a", b"a\x00", b"\xff")  # the items of each
    chaos_seconds: float = 150.0
    fault_every: float = 5.0  # mean seconds between fault events
    faults: LinkFaults = LinkFaults(drop=0.01, dup=0.02, max_delay=0.02, tail=0.02)
    max_down: int = 1  # nodes crashed at the same time
    wipes: int = 1  # crashes that also lose the data directory, at most
    partitions: bool = True
    clock_jumps: bool = True
    join_at: float | None = None  # a new node joins (cluster_join + commit) at this time
    converge_within: float = 200.0  # simulated seconds after healing
    gossip_interval: float = 1.0
    handoff_interval: float = 2.0  # seconds between hint hand-back rounds
    antientropy_period: float = 30.0
    antientropy: bool = True  # False: no exchanges at all (gossip measurements)
    tombstone_grace: float = 20.0


def node_config(scenario: Scenario, node_id: str, seeds: tuple[str, ...]) -> Config:
    """The defaults with short service periods: the sim's minutes stand for hours."""
    base = Config.defaults()
    return dataclasses.replace(
        base, node_id=node_id, seeds=seeds, ring_size=scenario.ring_size, sync="none",
        gossip=dataclasses.replace(base.gossip, interval=scenario.gossip_interval),
        handoff=dataclasses.replace(base.handoff, interval=scenario.handoff_interval),
        antientropy=dataclasses.replace(
            base.antientropy, enabled=scenario.antientropy, period=scenario.antientropy_period,
            tombstone_grace=scenario.tombstone_grace),
    )


class SimNode:
    """One node's address, directory and current life (None while crashed)."""

    def __init__(self, cluster: SimCluster, node_id: str, addr: str, config: Config) -> None:
        self.cluster = cluster
        self.id = node_id
        self.addr = addr
        self.config = config
        self.path = os.path.join(cluster.root, node_id)
        self.node: Node | None = None
        self.skew = 0.0  # seconds added to this node's wall clock
        self.features = SUPPORTED  # what its next life reports (less: an older version)
        self.lives = 0
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._clean_stop = False

    @property
    def up(self) -> bool:
        return self.node is not None

    def seed_state(self, state: membership.ClusterState) -> None:
        """Write identity and cluster state before the first start (a pre-built cluster)."""
        storage = Storage.open(self.path, sync="none")
        seed_state(storage, self.id, state)
        storage.close()

    async def start(self) -> None:
        storage = Storage.open(self.path, sync="none")
        self.lives += 1
        node = new_node(self.config, storage, self.cluster.network.transport(self.addr),
                        addr=self.addr, wall=lambda: BASE_WALL + trio.current_time() + self.skew,
                        rng=random.Random(f"{self.cluster.seed}/{self.id}/{self.lives}"),
                        features=self.features)
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._clean_stop = False
        await self.cluster.nursery.start(self._life, node, storage)
        self.node = node

    async def _life(self, node: Node, storage: Storage, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as server:
                    await server.start(node.run)
                    self.cluster.network.attach(self.addr, node.handle, server, node.answer_now)
                    task_status.started()
            if self._clean_stop:
                node.record_clean_stop()  # as dynd's serve after its nursery ended
        except* StorageError:  # its disk failed under a write: it stopped, as dynd exits 1
            self.node = None
        finally:
            self.cluster.network.detach(self.addr)
            storage.close()
            self._stopped.set()

    async def stop(self) -> None:
        """A clean shutdown, as dynd's on SIGTERM: refuse new requests, let in-flight ones
        finish, end the services, record the clean stop."""
        assert self.node is not None
        await self.node.drain(5.0)
        self.cluster.network.detach(self.addr)
        self.node = None
        self._clean_stop = True
        self._scope.cancel()
        await self._stopped.wait()

    async def crash(self, *, wipe: bool = False) -> None:
        """Stop at once, losing staged writes that were not yet committed."""
        assert self.node is not None
        storage = self.node.storage
        self.cluster.network.detach(self.addr)
        storage._queue.clear()  # never written: no acknowledgement followed them
        for overlay in storage._overlay.values():
            overlay.clear()
        self.node = None
        self._scope.cancel()
        await self._stopped.wait()
        if wipe:
            shutil.rmtree(self.path)


@dataclass
class Write:
    """One attempted put or delete and what its client had read before it."""

    wid: str
    key: Item
    kind: str  # "put" or "delete"
    seen_values: frozenset[str]  # write ids of the siblings the read returned
    seen_elements: frozenset[str]  # the union of their carts
    acked: bool = False
    ack_context: str = ""


@dataclass
class History:
    """Everything the clients did, for the checkers."""

    writes: dict[str, Write] = field(default_factory=dict)
    cart_keys: list[Item] = field(default_factory=list)
    doomed_keys: list[Item] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    seed: int
    scenario: Scenario
    violations: list[str]
    converged_after: float | None  # simulated seconds after healing
    history: History
    events: Counter[str]
    frames: Counter[str]
    elapsed: float = 0.0  # simulated seconds of the whole run

    def acked_items(self) -> int:
        """Acknowledged writes to items (keys with a sort key)."""
        return sum(1 for w in self.history.writes.values() if w.acked and w.key[1] is not None)

    def summary(self) -> str:
        acked = sum(1 for w in self.history.writes.values() if w.acked)
        return (f"seed={self.seed} writes={len(self.history.writes)} acked={acked} "
                f"acked_items={self.acked_items()} "
                f"converged_after={self.converged_after} events={dict(self.events)} "
                f"frames={dict(self.frames)} outcomes={dict(self.history.outcomes)}")


class SimCluster:
    def __init__(self, seed: int, scenario: Scenario, root: str,
                 clock: trio.testing.MockClock) -> None:
        self.seed = seed
        self.scenario = scenario
        self.root = root
        self.clock = clock
        self.rng = random.Random(f"{seed}/faults")
        self.network = SimNetwork(random.Random(f"{seed}/network"),
                                  Config.defaults().limits, scenario.faults)
        self.nodes: list[SimNode] = []
        self.history = History()
        self.events: Counter[str] = Counter()
        self.nursery: trio.Nursery
        self._write_ids = 0

    def add_node(self, index: int) -> SimNode:
        node_id, addr = f"n{index}", f"sim-{index}:7070"
        seeds = tuple(f"sim-{i}:7070" for i in range(min(3, self.scenario.nodes)))
        node = SimNode(self, node_id, addr, node_config(self.scenario, node_id, seeds))
        self.nodes.append(node)
        return node

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]

    async def client_call(self, client: str, addr: str, op: str, **fields: Any
                          ) -> dict[str, Any]:
        return await self.network.call(client, addr, op, fields, CLIENT_TIMEOUT)

    async def call_until_answered(self, client: str, addr: str, op: str, **fields: Any
                                  ) -> dict[str, Any]:
        """``client_call`` of an idempotent request, sent again while the simulated network
        loses it (the workloads' links drop a share of frames)."""
        while True:
            try:
                return await self.client_call(client, addr, op, **fields)
            except Unavailable:
                continue

    async def read_values(self, addr: str, bucket: str, key: bytes) -> list[bytes]:
        """The live values a get through ``addr`` answers (client "c")."""
        read = await self.client_call("c", addr, "get", bucket=bucket, key=key)
        return [v["value"] for v in read["values"]]

    async def delete_what_is_read(self, addr: str, bucket: str, key: bytes) -> None:
        """Delete ``key`` through ``addr`` with the context a get there answers, as
        ``dynctl delete`` does."""
        read = await self.client_call("c", addr, "get", bucket=bucket, key=key)
        await self.client_call("c", addr, "delete", bucket=bucket, key=key,
                               context=read["context"])

    # ---- workload -------------------------------------------------------------------

    async def client(self, index: int, stop: trio.Event) -> None:
        """Read, union the siblings, write with the read context; now and then delete."""
        rng = random.Random(f"{self.seed}/client/{index}")
        name = f"client-{index}"
        history = self.history
        while not stop.is_set():
            await trio.sleep(rng.uniform(0.05, 1.0))
            members = [n for n in self.nodes if n.id in self._member_ids()]
            target = rng.choice(members)
            doomed = rng.random() < 0.35
            item = rng.choice(history.doomed_keys if doomed else history.cart_keys)
            key, sk = item
            address: dict[str, Any] = {"bucket": BUCKET, "key": key}
            if sk is not None:
                address["sk"] = sk
            try:
                read = await self.client_call(name, target.addr, "get", **address)
            except DynError as exc:
                history.outcomes[f"get_{exc.code}"] += 1
                continue
            history.outcomes["get_ok"] += 1
            seen = [decode_value(v["value"]) for v in read["values"]]
            seen_values = frozenset(wid for wid, _ in seen)
            elements = frozenset().union(*(els for _, els in seen))
            delete = doomed and seen and rng.random() < 0.4
            self._write_ids += 1
            wid = f"w{self._write_ids}"
            write = Write(wid, item, "delete" if delete else "put", seen_values, elements)
            history.writes[wid] = write
            fields = {**address, "context": read["context"]}
            if not delete:
                fields["value"] = encode_value(wid, elements | {wid})
            try:
                reply = await self.client_call(name, target.addr, write.kind, **fields)
            except DynError as exc:
                history.outcomes[f"{write.kind}_{exc.code}"] += 1
                continue
            history.outcomes[f"{write.kind}_ok"] += 1
            write.acked = True
            write.ack_context = reply["context"]

    def _member_ids(self) -> set[str]:
        founder = self.nodes[0].node
        if founder is None:
            return {n.id for n in self.nodes[:self.scenario.nodes]}
        return {m for m, member in founder.view.state.members.items() if member.status == "valid"}

    # ---- faults ---------------------------------------------------------------------

    async def chaos(self, until: float) -> None:
        """Fault events at random times until `until`; each one undoes itself later."""
        rng = self.rng
        kinds = ["crash", "lossy", "skew"]
        if self.scenario.partitions:
            kinds += ["partition", "oneway"]
        if self.scenario.clock_jumps:
            kinds.append("clock_jump")
        wipes_left = self.scenario.wipes
        async with trio.open_nursery() as nursery:
            while trio.current_time() < until:
                await trio.sleep(rng.expovariate(1 / self.scenario.fault_every))
                kind = rng.choice(kinds)
                if kind == "crash":
                    up = self.live()
                    if len(self.nodes) - len(up) >= self.scenario.max_down:
                        continue
                    victim = rng.choice(up)
                    wipe = wipes_left > 0 and rng.random() < 0.3
                    wipes_left -= wipe
                    self.events["wipe" if wipe else "crash"] += 1
                    await victim.crash(wipe=wipe)
                    nursery.start_soon(self._restart_later, victim, rng.uniform(2, 40))
                elif kind in ("partition", "oneway"):
                    addrs = [n.addr for n in self.nodes]
                    rng.shuffle(addrs)
                    if kind == "partition":
                        cut = rng.randint(1, len(addrs) // 2)
                        before = set(self.network.blocked)
                        self.network.partition([addrs[:cut], addrs[cut:]])
                        links = self.network.blocked - before
                    else:
                        links = {(addrs[0], addrs[1])}
                        self.network.blocked |= links
                    self.events[kind] += 1
                    nursery.start_soon(self._unblock_later, links, rng.uniform(3, 30))
                elif kind == "lossy":
                    self.events[kind] += 1
                    normal = self.network.default_faults
                    self.network.default_faults = dataclasses.replace(
                        normal, drop=0.1, dup=0.1, tail=0.1)
                    nursery.start_soon(self._set_faults_later, normal, rng.uniform(2, 10))
                elif kind == "skew":
                    self.events[kind] += 1
                    rng.choice(self.nodes).skew = rng.uniform(-30, 30)
                else:
                    self.events[kind] += 1
                    self.clock.jump(rng.uniform(2, 20))  # a stall the detectors all notice

    async def _restart_later(self, node: SimNode, delay: float) -> None:
        await trio.sleep(delay)
        if not node.up:
            await node.start()

    async def _unblock_later(self, links: set[tuple[str, str]], delay: float) -> None:
        await trio.sleep(delay)
        self.network.blocked -= links

    async def _set_faults_later(self, faults: LinkFaults, delay: float) -> None:
        await trio.sleep(delay)
        self.network.default_faults = faults

    async def join_new_node(self, at: float) -> None:
        """A new node asks to join through an admin op, then a member commits the plan."""
        await trio.sleep_until(at)
        node = self.add_node(len(self.nodes))
        await node.start()
        self.events["join"] += 1
        for op, addr, fields in (("cluster_join", node.addr, {"seed": self.nodes[0].addr}),
                                 ("cluster_commit", self.nodes[0].addr, {})):
            while True:
                try:
                    await self.client_call("admin", addr, op, **fields)
                    break
                except DynError as exc:
                    self.events[f"{op}_retry"] += 1
                    if "already in a cluster" in exc.message:
                        break  # the first join went through, its answer was lost
                    if op == "cluster_commit" and "nothing" in exc.message.lower():
                        break
                    await trio.sleep(2)

    async def heal(self) -> None:
        self.network.heal()
        self.network.default_faults = dataclasses.replace(
            self.scenario.faults, drop=0.0, dup=0.0, tail=0.0)
        for node in self.nodes:
            if not node.up:
                await node.start()


async def _run(seed: int, scenario: Scenario, clock: trio.testing.MockClock) -> Report:
    async with settled_cluster(scenario, clock, f"dynd-sim-{seed}-", seed=seed,
                               settle=0) as (cluster, _):
        history = cluster.history
        history.cart_keys = [(f"cart-{i}".encode(), None) for i in range(scenario.cart_keys)]
        history.doomed_keys = [(f"doomed-{i}".encode(), None)
                               for i in range(scenario.doomed_keys)]
        for i in range(scenario.item_keys):
            history.cart_keys += [(f"cart-items-{i}".encode(), sk) for sk in scenario.sort_keys]
            history.doomed_keys += [(f"doomed-items-{i}".encode(), sk)
                                    for sk in scenario.sort_keys]
        stop = trio.Event()
        async with trio.open_nursery() as work:
            for i in range(scenario.clients):
                work.start_soon(cluster.client, i, stop)
            if scenario.join_at is not None:
                work.start_soon(cluster.join_new_node, scenario.join_at)
            await cluster.chaos(trio.current_time() + scenario.chaos_seconds)
            stop.set()
        await cluster.heal()
        healed = trio.current_time()
        keys = history.cart_keys + history.doomed_keys
        converged_after = None
        while trio.current_time() - healed < scenario.converge_within:
            await trio.sleep(2.0)
            if not checkers.divergence(cluster.nodes, keys):
                converged_after = trio.current_time() - healed
                break
        violations = list(cluster.network.internal_errors)
        if converged_after is None:
            violations += checkers.divergence(cluster.nodes, keys)[:20]
        else:
            violations += checkers.check_history(history, checkers.final_clocks(
                cluster.nodes, keys))
            await trio.sleep(2.0)  # a transfer loop pass (every second) after the last
            violations += checkers.leftover_cursors(cluster.nodes)
        report = Report(seed, scenario, violations, converged_after, history,
                        cluster.events, cluster.network.frames, trio.current_time())
    return report


def seeded_run(seed: int, workload: Callable[..., Awaitable[Result]], *args: Any) -> Result:
    """``workload(*args, clock)`` under a MockClock in one trio run whose scheduler is seeded
    with ``seed`` too, so that the seed reproduces the run."""
    trio._core._run._r.seed(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(workload, *args, clock, clock=clock)


def run(seed: int, scenario: Scenario = Scenario()) -> Report:
    """One deterministic run of the shopping-cart fault mix."""
    return seeded_run(seed, _run, seed, scenario)


def check(seed: int, scenario: Scenario = Scenario(),
          on_report: Callable[[Report], None] | None = None) -> Report:
    """run() and fail with the seed that reproduces the failure."""
    try:
        report = run(seed, scenario)
    except BaseException as exc:
        raise AssertionError(f"seed={seed}: the run crashed: {exc!r} "
                             f"(PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')})") from exc
    if on_report is not None:
        on_report(report)
    assert not report.violations, (
        f"seed={seed} (PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')}): "
        f"{len(report.violations)} violations:\n  " + "\n  ".join(report.violations[:30])
        + "\n" + report.summary())
    return report


async def until(what: str, condition: Callable[[], bool], limit: float = 300) -> None:
    """Wait (simulated time) until ``condition`` holds; fail naming ``what`` after ``limit``."""
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.5)
        return
    raise AssertionError(f"not reached within {limit}s: {what}")


@asynccontextmanager
async def settled_cluster(scenario: Scenario, clock: trio.testing.MockClock, prefix: str, *,
                          seed: int = 1, settle: float = 5.0
                          ) -> AsyncIterator[tuple[SimCluster, list[SimNode]]]:
    """The founders of ``scenario`` (n=3) started on a simulated network and gossiping for
    ``settle`` seconds (every node has heard every other): the start of the hand-built
    cases and of the gossip measurements."""
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        cluster = SimCluster(seed, scenario, root, clock)
        sims = [cluster.add_node(i) for i in range(scenario.nodes)]
        state = bootstrap_state([s.id for s in sims], [s.addr for s in sims],
                                scenario.ring_size, 3)
        for sim in sims:
            sim.seed_state(state)
        async with trio.open_nursery() as nursery:
            cluster.nursery = nursery
            await nursery.start(cluster.network.run)
            for sim in sims:
                await sim.start()
            if settle:
                await trio.sleep(settle)
            yield cluster, sims
            nursery.cancel_scope.cancel()


@dataclass(frozen=True)
class GossipMeasure:
    nodes: int
    rounds_all: float  # gossip intervals until the last node had the change
    rounds_half: float  # ... until half of them had it
    bytes_per_node_second: float  # p_gossip requests and replies sent, per node


async def _measure_gossip(size: int, ring_size: int, clock: trio.testing.MockClock
                          ) -> GossipMeasure:
    scenario = Scenario(nodes=size, ring_size=ring_size, faults=LinkFaults(max_delay=0.01),
                        antientropy=False)
    settle = 10 * scenario.gossip_interval  # every detector has heard of all
    async with settled_cluster(scenario, clock, f"dynd-sim-scale-{size}-", seed=size,
                               settle=settle) as (cluster, nodes):
        founder = nodes[0].node
        assert founder is not None
        founder.view.set_state(membership.set_bucket(founder.view.state, "scale", 3, 2, 2,
                                                     founder.id))
        cluster.network.bytes_sent.clear()
        start = trio.current_time()
        reached: list[float] = []
        waiting = list(nodes)
        while waiting:
            await trio.sleep(scenario.gossip_interval / 10)
            now = trio.current_time() - start
            still = [n for n in waiting if n.node is not None
                     and "scale" not in n.node.view.state.buckets]
            reached += [now] * (len(waiting) - len(still))
            waiting = still
        await trio.sleep_until(start + max(reached[-1], 10 * scenario.gossip_interval))
        elapsed = trio.current_time() - start
        gossip_bytes = sum(b for (_, op), b in cluster.network.bytes_sent.items()
                           if op == "p_gossip")
    interval = scenario.gossip_interval
    return GossipMeasure(size, reached[-1] / interval, reached[len(reached) // 2] / interval,
                         gossip_bytes / size / elapsed)


def measure_gossip(size: int, ring_size: int = 256) -> GossipMeasure:
    """How a cluster state change spreads by gossip alone (no push) over `size` nodes."""
    return seeded_run(size, _measure_gossip, size, ring_size)


def run_seeds(workload: str, check_seed: Callable[[int], Result]) -> list[Result]:
    """`make sim SEEDS=N [SEED_START=S]`: ``check_seed`` for seeds S..S+N-1 (default 1..20)
    of one workload, every seed run even after a failure; fails naming each failed seed's
    first line, and returns what the passing seeds returned."""
    first = int(os.environ.get("SEED_START", "1"))
    count = int(os.environ.get("SEEDS", "20"))
    failures: list[str] = []
    results: list[Result] = []
    started = time.monotonic()
    for seed in range(first, first + count):
        try:
            results.append(check_seed(seed))
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
            print(exc)
        except Exception as exc:  # the run itself broke: name the seed, go on
            failures.append(f"seed={seed}: the run crashed: {exc!r}")
            traceback.print_exc()
    print(f"{workload}: {count} seeds in {time.monotonic() - started:.0f}s, "
          f"{len(failures)} failed")
    assert not failures, "\n".join(failures)
    return results


async def restart_after(sim: SimNode, delay: float) -> None:
    """Start ``sim`` again ``delay`` seconds from now, unless something else already did."""
    await trio.sleep(delay)
    if not sim.up:
        await sim.start()


async def leave(cluster: SimCluster, node_id: str) -> bool:
    """Stage ``node_id``'s leave through the first node and commit it; False when a fault
    got in the way (the caller tries again later)."""
    try:
        await cluster.client_call("admin", cluster.nodes[0].addr, "cluster_leave",
                                  node=node_id)
        await cluster.client_call("admin", cluster.nodes[0].addr, "cluster_commit")
    except DynError:
        return False
    return True


async def crash_one(cluster: SimCluster, rng: random.Random, spared: str,
                    longest_down: float) -> None:
    """Crash a node other than ``spared`` (one at a time: only while every node is up) and
    restart it 2..``longest_down`` seconds later."""
    victim = rng.choice([s for s in cluster.nodes if s.id != spared])
    if victim.up and len(cluster.live()) == len(cluster.nodes):
        await victim.crash()
        cluster.nursery.start_soon(restart_after, victim, rng.uniform(2, longest_down))


# ---- items of one partition key ------------------------------------------------------


def sort_keys_active(sims: list[SimNode]) -> bool:
    """Every running node records the "sk" feature as switched on."""
    return all(s.node is not None and "sk" in s.node.view.state.features for s in sims)


async def item_call(cluster: SimCluster, sim: SimNode, op: str, *, key: bytes,
                    **fields: Any) -> dict[str, Any]:
    """A client request about ``key`` of BUCKET through ``sim`` (``sk=`` for an item)."""
    return await cluster.client_call("client", sim.addr, op, bucket=BUCKET, key=key, **fields)


def primaries_of(sims: list[SimNode], key: bytes) -> list[SimNode]:
    """The primaries of ``key`` of BUCKET, as the first running node sees them."""
    node = next(s.node for s in sims if s.node is not None)
    partition = partition_of(BUCKET, key, node.view.state.ring_size)
    by_id = {s.id: s for s in sims}
    return [by_id[p] for p in node.view.routing().primaries(partition)]


def stored_items(sim: SimNode, key: bytes) -> dict[bytes | None, dvvset.DVVSet]:
    """Sort key -> ``sim``'s data copy of every item of ``key`` (None: the plain key)."""
    assert sim.node is not None
    partition = partition_of(BUCKET, key, sim.node.view.state.ring_size)
    return {sk: dvvset.decode(raw) for bucket, k, sk, raw
            in sim.node.storage.scan_partition(partition) if (bucket, k) == (BUCKET, key)}
