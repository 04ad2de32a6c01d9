"""Jepsen's 'set' workload on shopping carts: concurrent clients add unique elements.

Each worker loops: pick a cart key, read it (the bucket's R), take the union of the lines
of every sibling, add one element never used before, and put the result with the context
it read. A put that returns a context is *acknowledged*: that element must survive every
fault. A put that fails (timeout, quorum not met, refused) is *indeterminate*: the element
may or may not have been stored. Reads that fail attempt nothing.

Item workers do the same on threads (partition key = thread, sort key = post): they put
new posts (a sort key never used before), delete one of their acknowledged posts with the
context a get of it returned, then read it again (not found: the delete is *confirmed*),
and query whole threads in pages of a few items, forward or reverse, following every
token as ``dynctl query --all`` does. Every query's sort keys are recorded with the time
it started, for the checker.

Workers connect to a random node and move to another one after any error, like a client
behind a load balancer; every request has a deadline (``op_timeout``), so a paused or
partitioned node costs a worker at most that long.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from common.errors import DynError, Unavailable
from dynctl.client import Client, Object

RECONNECT_PAUSE = 0.1  # seconds between a failed node and the next attempt


def cart_key(i: int) -> str:
    return f"cart-{i:03d}"


def thread_key(i: int) -> str:
    return f"thread-{i:02d}"


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


@dataclass(frozen=True)
class QueryRecord:
    """One query followed to its last page: the sort keys in the order shown."""

    thread: str
    reverse: bool
    started: float  # time.monotonic(), comparable with the nemesis' heal time
    sks: list[str]
    pages: int


@dataclass
class ItemHistory:
    """What the item workers did: posts per thread put and deleted (a delete attempted but
    not acknowledged may or may not have happened), deletes a later read confirmed (with
    when), and every query that completed."""

    attempted: dict[str, set[str]] = field(default_factory=dict)  # thread -> sks put
    acked: dict[str, set[str]] = field(default_factory=dict)
    delete_attempted: dict[str, set[str]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)  # acknowledged deletes
    confirmed: dict[tuple[str, str], float] = field(default_factory=dict)  # -> monotonic
    queries: list[QueryRecord] = field(default_factory=list)
    queries_failed: int = 0

    @property
    def acked_count(self) -> int:
        return sum(map(len, self.acked.values()))

    @property
    def deleted_count(self) -> int:
        return sum(map(len, self.deleted.values()))


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
    items: ItemHistory = field(default_factory=ItemHistory)

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
    """Shape of the load: ``keys`` carts shared by ``workers`` concurrent clients, and
    ``threads`` threads of posts shared by ``item_workers`` more (0: no items)."""

    keys: int = 32
    workers: int = 8
    op_timeout: float = 3.0
    bucket: str = "default"
    threads: int = 4
    item_workers: int = 2
    page_size: int = 3  # small, so queries page and refill

    def __post_init__(self) -> None:
        if (self.keys < 1 or self.workers < 1 or self.op_timeout <= 0 or self.threads < 0
                or self.item_workers < 0 or not 1 <= self.page_size <= 1000):
            raise ValueError(f"keys and workers must be >= 1, threads and item_workers "
                             f">= 0, page_size 1..1000, op_timeout > 0: {self}")


async def run_workload(addrs: list[str], config: WorkloadConfig, history: History,
                       stop: trio.Event, rng: random.Random) -> None:
    """Run every worker until ``stop`` is set; each finishes the operation it is in."""
    if not addrs:
        raise ValueError("no node addresses")
    async with trio.open_nursery() as nursery:
        for worker in range(config.workers):
            nursery.start_soon(_worker, worker, addrs, config, history, stop,
                               random.Random(rng.getrandbits(64)))
        for worker in range(config.item_workers if config.threads else 0):
            nursery.start_soon(_item_worker, worker, addrs, config, history, stop,
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


async def _item_worker(worker: int, addrs: list[str], config: WorkloadConfig,
                       history: History, stop: trio.Event, rng: random.Random) -> None:
    own: list[tuple[str, str]] = []  # this worker's acknowledged posts, not yet deleted
    sequence = 0
    while not stop.is_set():
        try:
            async with Client.connect(rng.choice(addrs), timeout=config.op_timeout) as client:
                while not stop.is_set():
                    choice = rng.random()
                    if choice < 0.5:
                        sequence += 1
                        await _put_post(client, f"post-{worker:02d}-{sequence:07d}", own,
                                        config, history.items, rng)
                    elif choice < 0.7 and own:
                        await _delete_post(client, own.pop(rng.randrange(len(own))), config,
                                           history.items)
                    else:
                        await _query_thread(client, thread_key(rng.randrange(config.threads)),
                                            rng.random() < 0.5, config, history.items)
        except DynError as exc:
            history.errors[exc.code] += 1
            await trio.sleep(RECONNECT_PAUSE)


async def _put_post(client: Client, sk: str, own: list[tuple[str, str]],
                    config: WorkloadConfig, items: ItemHistory, rng: random.Random) -> None:
    """A new post: its sort key never used before, its value the sort key."""
    thread = thread_key(rng.randrange(config.threads))
    items.attempted.setdefault(thread, set()).add(sk)
    try:
        await client.put(thread, sk, sk=sk, bucket=config.bucket)
    except Unavailable:
        raise
    except DynError:  # refused (sort keys not active yet): indeterminate, stay on
        return
    items.acked.setdefault(thread, set()).add(sk)
    own.append((thread, sk))


async def _delete_post(client: Client, post: tuple[str, str], config: WorkloadConfig,
                       items: ItemHistory) -> None:
    """Delete with the context a get returned, then read again: not found confirms it."""
    thread, sk = post
    obj = await client.get(thread, sk=sk, bucket=config.bucket)
    if not obj.found:
        return  # a sloppy read missed it: not deleted, still expected at the end
    items.delete_attempted.setdefault(thread, set()).add(sk)
    await client.delete(thread, sk=sk, context=obj.context, bucket=config.bucket)
    items.deleted.setdefault(thread, set()).add(sk)
    if not (await client.get(thread, sk=sk, bucket=config.bucket)).found:
        items.confirmed[post] = time.monotonic()


async def _query_thread(client: Client, thread: str, reverse: bool, config: WorkloadConfig,
                        items: ItemHistory) -> None:
    """Every page of one thread; a failed page fails the query (and moves the worker on)."""
    try:
        record = await query_thread(client, thread, reverse, config.page_size, config.bucket)
    except DynError:
        items.queries_failed += 1
        raise
    items.queries.append(record)


async def query_thread(client: Client, thread: str, reverse: bool, page_size: int,
                       bucket: str, r: int | None = None) -> QueryRecord:
    """One query of ``thread`` followed to its last page, as ``dynctl query --all``."""
    started = time.monotonic()
    sks: list[str] = []
    after, pages = None, 0
    while True:
        page = await client.query(thread, bucket=bucket, limit=page_size, reverse=reverse,
                                  after=after, r=r)
        pages += 1
        sks += [item.sk.decode() for item in page.items]
        if page.next is None:
            return QueryRecord(thread, reverse, started, sks, pages)
        after = page.next
