"""Jepsen's 'set' workload on shopping carts: concurrent clients add unique elements.

Each worker loops: pick a cart key, read it (the bucket's R), take the union of the lines
of every sibling, add one element never used before, and put the result with the context
it read. A put that returns a context is *acknowledged*: that element must survive every
fault. A put that fails (timeout, quorum not met, refused) is *indeterminate*: the element
may or may not have been stored. Reads that fail attempt nothing.

Workers connect to a random node and move to another one after any error, like a client
behind a load balancer; every request has a deadline (``op_timeout``), so a paused or
partitioned node costs a worker at most that long.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import trio

from common.errors import DynError, Unavailable
from dynctl.client import Client, Object

RECONNECT_PAUSE = 0.1  # seconds between a failed node and the next attempt


def cart_key(i: int) -> str:
    return f"cart-{i:03d}"


def elements_of(obj: Object) -> set[str]:
    """The union of every sibling's elements: how the application resolves a conflict."""
    return {line for value in obj.values for line in value.value.decode().split("\n") if line}


def encode_elements(elements: set[str]) -> bytes:
    return "\n".join(sorted(elements)).encode()


@dataclass(frozen=True)
class Ack:
    """An acknowledged put: where it went, the context it read and the one it got back
    (the evidence a lost element is examined with)."""

    node: str
    read_context: str
    context: str
    at: float  # trio clock


@dataclass
class History:
    """What the clients did and saw; the checker compares it with the final reads."""

    attempted: dict[str, set[str]] = field(default_factory=dict)  # key -> elements put
    acked: dict[str, set[str]] = field(default_factory=dict)      # key -> puts acknowledged
    acks: dict[str, Ack] = field(default_factory=dict)            # element -> its ack
    reads_ok: int = 0
    reads_failed: int = 0
    writes_failed: int = 0  # indeterminate: attempted, not acknowledged
    siblings_seen: Counter[int] = field(default_factory=Counter)  # siblings per read -> reads
    errors: Counter[str] = field(default_factory=Counter)         # error code -> count

    @property
    def acked_count(self) -> int:
        return sum(map(len, self.acked.values()))

    @property
    def attempted_count(self) -> int:
        return sum(map(len, self.attempted.values()))

    @property
    def max_siblings(self) -> int:
        return max(self.siblings_seen, default=0)


@dataclass(frozen=True)
class WorkloadConfig:
    """Shape of the load: ``keys`` carts shared by ``workers`` concurrent clients."""

    keys: int = 32
    workers: int = 8
    op_timeout: float = 3.0
    bucket: str = "default"

    def __post_init__(self) -> None:
        if self.keys < 1 or self.workers < 1 or self.op_timeout <= 0:
            raise ValueError(f"keys and workers must be >= 1, op_timeout > 0: {self}")


async def run_workload(addrs: list[str], config: WorkloadConfig, history: History,
                       stop: trio.Event, rng: random.Random) -> None:
    """Run every worker until ``stop`` is set; each finishes the operation it is in."""
    if not addrs:
        raise ValueError("no node addresses")
    async with trio.open_nursery() as nursery:
        for worker in range(config.workers):
            nursery.start_soon(_worker, worker, addrs, config, history, stop,
                               random.Random(rng.getrandbits(64)))


async def _worker(worker: int, addrs: list[str], config: WorkloadConfig, history: History,
                  stop: trio.Event, rng: random.Random) -> None:
    sequence = 0
    while not stop.is_set():
        try:
            async with Client.connect(rng.choice(addrs), timeout=config.op_timeout) as client:
                while not stop.is_set():
                    sequence += 1
                    await _add_one(client, f"w{worker:02d}-{sequence:07d}", config, history,
                                   rng)
        except DynError as exc:
            history.errors[exc.code] += 1
            await trio.sleep(RECONNECT_PAUSE)


async def _add_one(client: Client, element: str, config: WorkloadConfig, history: History,
                   rng: random.Random) -> None:
    """Read, union, add, put with the read context. Unavailable moves the worker on."""
    key = cart_key(rng.randrange(config.keys))
    try:
        obj = await client.get(key, bucket=config.bucket)
    except DynError:
        history.reads_failed += 1
        raise
    history.reads_ok += 1
    history.siblings_seen[len(obj.values)] += 1
    history.attempted.setdefault(key, set()).add(element)
    try:
        context = await client.put(key, encode_elements(elements_of(obj) | {element}),
                         bucket=config.bucket, context=obj.context or None)
    except Unavailable:
        history.writes_failed += 1
        raise
    except DynError as exc:  # refused (e.g. too many siblings): indeterminate, stay on
        history.writes_failed += 1
        history.errors[exc.code] += 1
        return
    history.acked.setdefault(key, set()).add(element)
    history.acks[element] = Ack(client.addr, obj.context, context, trio.current_time())
