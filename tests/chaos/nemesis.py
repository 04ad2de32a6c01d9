"""The nemesis: injects one fault (or two at once), holds it, heals everything, rests.

Faults, by name (``FAULTS``); each picks its victims with the run's seeded rng and returns
a description for the log:

- ``kill9``        kill -9 one node (restarted, same data dir, at the heal)
- ``kill9-two``    kill -9 two nodes at once (N=3: some keys keep only one replica)
- ``pause``        SIGSTOP one node (SIGCONT at the heal): a GC-like freeze, peers see
                   open connections that never answer
- ``partition``    a random split of the nodes into two sides (iptables DROP)
- ``isolate``      one node cut from every peer; clients still reach it
- ``bridge``       two halves that cannot see each other, one node seeing both
- ``link-down``    one node's veth down: cut from peers and clients
- ``loss``         25% packet loss on two nodes
- ``delay``        150 ms +- 50 ms on two nodes (only with netem in the kernel)

The heal is the same for every fault: flush every network fault, SIGCONT the paused,
restart the killed, wait until every node answers.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from tests.chaos.cluster import ChaosCluster

LOSS_PERCENT = 25.0
DELAY_MS, DELAY_JITTER_MS = 150, 50


def _victims(cluster: ChaosCluster, rng: random.Random, count: int) -> list[int]:
    return sorted(rng.sample(range(len(cluster.nodes)), count))


def _names(cluster: ChaosCluster, indices: list[int]) -> str:
    return ",".join(cluster.nodes[i].node_id for i in indices)


def kill9(cluster: ChaosCluster, rng: random.Random, count: int = 1) -> str:
    victims = _victims(cluster, rng, count)
    for i in victims:
        cluster.nodes[i].kill9()
    return f"kill -9 {_names(cluster, victims)}"


def pause(cluster: ChaosCluster, rng: random.Random) -> str:
    [victim] = _victims(cluster, rng, 1)
    cluster.nodes[victim].pause()
    return f"SIGSTOP {_names(cluster, [victim])}"


def partition(cluster: ChaosCluster, rng: random.Random) -> str:
    order = list(range(len(cluster.nodes)))
    rng.shuffle(order)
    cut = rng.randint(1, len(order) - 1)
    sides = [sorted(order[:cut]), sorted(order[cut:])]
    cluster.network.partition(sides)
    return "partition " + " | ".join(_names(cluster, side) for side in sides)


def isolate(cluster: ChaosCluster, rng: random.Random) -> str:
    [victim] = _victims(cluster, rng, 1)
    # A node in no group is cut from every peer.
    cluster.network.partition([[i for i in range(len(cluster.nodes)) if i != victim]])
    return f"isolate {_names(cluster, [victim])} from its peers"


def bridge(cluster: ChaosCluster, rng: random.Random) -> str:
    [middle] = _victims(cluster, rng, 1)
    cluster.network.bridge_partition(middle)
    return f"bridge through {_names(cluster, [middle])}"


def link_down(cluster: ChaosCluster, rng: random.Random) -> str:
    [victim] = _victims(cluster, rng, 1)
    cluster.network.link_down(victim)
    return f"link down {_names(cluster, [victim])}"


def loss(cluster: ChaosCluster, rng: random.Random) -> str:
    victims = _victims(cluster, rng, 2)
    for i in victims:
        cluster.network.loss(i, LOSS_PERCENT)
    how = "netem" if cluster.network.has_netem else "iptables statistic"
    return f"{LOSS_PERCENT:g}% loss ({how}) on {_names(cluster, victims)}"


def delay(cluster: ChaosCluster, rng: random.Random) -> str:
    victims = _victims(cluster, rng, 2)
    for i in victims:
        cluster.network.delay(i, DELAY_MS, DELAY_JITTER_MS)
    return f"delay {DELAY_MS}+-{DELAY_JITTER_MS} ms on {_names(cluster, victims)}"


Fault = Callable[[ChaosCluster, random.Random], str]
FAULTS: dict[str, Fault] = {
    "kill9": kill9,
    "kill9-two": lambda cluster, rng: kill9(cluster, rng, 2),
    "pause": pause,
    "partition": partition,
    "isolate": isolate,
    "bridge": bridge,
    "link-down": link_down,
    "loss": loss,
    "delay": delay,
}
NEEDS_NETEM = {"delay"}
# Faults that may be combined with another one; two process faults at once could take
# down three nodes, more than this workload is about.
NETWORK_FAULTS = ("partition", "isolate", "bridge", "link-down", "loss", "delay")


def available_faults(cluster: ChaosCluster) -> list[str]:
    """Every fault this machine can inject (delay needs netem)."""
    return [name for name in FAULTS
            if cluster.network.has_netem or name not in NEEDS_NETEM]


def heal(cluster: ChaosCluster) -> None:
    cluster.network.heal()
    cluster.restore()


@dataclass
class Event:
    at: float        # seconds since the nemesis started
    what: str


@dataclass
class NemesisLog:
    events: list[Event] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)   # fault name -> times injected
    fault_seconds: float = 0.0                               # time spent with a fault active
    heal_seconds: list[float] = field(default_factory=list)  # how long each heal took
    healed_at: float = 0.0                                   # time.monotonic() of the last heal


@dataclass(frozen=True)
class Schedule:
    """Either a fixed ``sequence`` of fault names (each a list of faults applied together),
    or random picks from ``pool`` (a second network fault joins with ``combine_p``)."""

    hold: tuple[float, float] = (4.0, 10.0)   # seconds a fault is held (uniform)
    rest: tuple[float, float] = (2.0, 5.0)    # seconds of calm after a heal (uniform)
    sequence: tuple[tuple[str, ...], ...] = ()
    pool: tuple[str, ...] = ()
    combine_p: float = 0.25

    def __post_init__(self) -> None:
        unknown = {name for group in self.sequence for name in group} | set(self.pool)
        unknown -= set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        if bool(self.sequence) == bool(self.pool):
            raise ValueError("give exactly one of sequence and pool")

    def next(self, step: int, rng: random.Random) -> tuple[str, ...] | None:
        if self.sequence:
            return self.sequence[step] if step < len(self.sequence) else None
        first = rng.choice(self.pool)
        second = [name for name in self.pool if name in NETWORK_FAULTS and name != first]
        if second and rng.random() < self.combine_p:
            return (first, rng.choice(second))
        return (first,)


async def run_nemesis(cluster: ChaosCluster, schedule: Schedule, seconds: float,
                      rng: random.Random, log: NemesisLog) -> None:
    """Inject faults for ``seconds`` (a fixed sequence may end earlier); always ends healed.

    Faults and heals block on subprocesses, so they run in a worker thread while the
    workload keeps going on the trio loop.
    """
    start = time.monotonic()
    step = 0
    try:
        while time.monotonic() - start < seconds:
            names = schedule.next(step, rng)
            if names is None:
                break
            step += 1
            injected = time.monotonic()
            for name in names:
                what = await trio.to_thread.run_sync(FAULTS[name], cluster, rng)
                log.faults[name] += 1
                log.events.append(Event(time.monotonic() - start, what))
            await trio.sleep(rng.uniform(*schedule.hold))
            healing = time.monotonic()
            log.fault_seconds += healing - injected
            await trio.to_thread.run_sync(heal, cluster)
            log.heal_seconds.append(time.monotonic() - healing)
            log.events.append(Event(time.monotonic() - start, "healed"))
            await trio.sleep(rng.uniform(*schedule.rest))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(heal, cluster)
            log.healed_at = time.monotonic()
