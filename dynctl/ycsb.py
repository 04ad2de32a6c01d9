"""The YCSB core workloads as pure generators: keys, request distributions, operation mix.

Faithful to YCSB's CoreWorkload (site.ycsb.generator) so that numbers compare with
published YCSB results: keys are ``"user"`` + the FNV-64 hash of the record number
(``Utils.hash``, then ``Math.abs``), the request distribution is the scrambled zipfian of
constant 0.99 (a zipfian over 10 billion items whose result is FNV-hashed onto the record
range), and workload D reads the latest inserts (a zipfian distance back from the newest
record). Randomness comes in as a ``random.Random``; nothing here does I/O.

Workload E (short ranges: YCSB's "threaded conversations") stores records as items: record
``r`` is the post ``r % G`` of the thread ``r // G`` (``item_key``), so a scan is one query
over a thread's partition key from the post its zipfian start record names.

One difference from YCSB is deliberate: several client processes share the insert key
space. Process ``p`` of ``P`` inserts record numbers ``records + p``, ``records + p + P``,
... and its "latest" distribution ranges over the loaded records plus its own acknowledged
inserts, so it never asks for a record that no one has written yet.

Limits: ``records`` from 1 to ``MAX_RECORDS``; ``items_per_key`` from 1 to
``MAX_ITEMS_PER_KEY`` (the sort key is 4 bytes); the latest distribution sums the zeta
series over every record once at start (about 0.1 s per million records).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211
ZIPFIAN_CONSTANT = 0.99
SCRAMBLED_ITEM_COUNT = 10_000_000_000  # YCSB's ScrambledZipfianGenerator.ITEM_COUNT
SCRAMBLED_ZETAN = 26.46902820178302  # zeta(ITEM_COUNT, 0.99), precomputed by YCSB
MAX_RECORDS = 10**9
FIELD_COUNT = 10  # YCSB's record: 10 fields of 100 bytes, sent here as one value
FIELD_LENGTH = 100
RECORD_BYTES = FIELD_COUNT * FIELD_LENGTH
MAX_ITEMS_PER_KEY = 2**32
DEFAULT_MAX_SCAN = 100  # YCSB's maxscanlength
_MASK_64 = (1 << 64) - 1


class WorkloadError(ValueError):
    """A workload name or parameter out of range."""


def fnv64(value: int) -> int:
    """YCSB's ``Utils.FNVhash64``: FNV-1a over the 8 little-endian bytes, as a positive long."""
    hashed = FNV_OFFSET_BASIS_64
    for _ in range(8):
        hashed = ((hashed ^ (value & 0xFF)) * FNV_PRIME_64) & _MASK_64
        value >>= 8
    signed = hashed - (1 << 64) if hashed >= 1 << 63 else hashed
    return abs(signed)


def key_name(record: int) -> bytes:
    """The key of record number ``record``: ``user`` + its FNV-64 hash (YCSB's hashed keys)."""
    return b"user%d" % fnv64(record)


def item_key(record: int, items_per_key: int) -> tuple[bytes, bytes]:
    """Workload E's (partition key, sort key) of record ``record``: post ``record % G`` of
    thread ``record // G``, the thread named like a YCSB key and the post a 4-byte
    big-endian number, so that sort-key order is post order."""
    return b"thread%d" % fnv64(record // items_per_key), \
        (record % items_per_key).to_bytes(4, "big")


def scan_expectation(record: int, length: int, items_per_key: int, loaded: int,
                     reverse: bool) -> int:
    """The fewest items a scan of ``length`` from ``record`` must return when records
    0..loaded-1 exist: it stops at the end (or, reverse, the start) of the thread. Inserts
    may add more to the thread's last loaded post range, never fewer."""
    post = record % items_per_key
    if reverse:
        return min(length, post + 1)
    thread_end = min(items_per_key, loaded - (record - post))
    return max(0, min(length, thread_end - post))


def zeta(count: int, theta: float, start: int = 0, initial: float = 0.0) -> float:
    """The sum of 1/i^theta for i in (start, count], added to ``initial`` (incremental)."""
    return initial + math.fsum(1.0 / (i ** theta) for i in range(start + 1, count + 1))


class Zipfian:
    """YCSB's ZipfianGenerator (Gray et al., 'Quickly generating billion-record synthetic
    databases'): item 0 most popular. ``zetan`` may be given to skip its O(items) sum; a
    growing item count (``next(items)``) extends the sum incrementally."""

    def __init__(self, items: int, rng: random.Random, theta: float = ZIPFIAN_CONSTANT,
                 zetan: float | None = None) -> None:
        if items < 1:
            raise WorkloadError(f"a zipfian needs at least one item, not {items}")
        if not 0 < theta < 1:
            raise WorkloadError(f"zipfian constant must be in (0, 1), not {theta}")
        self.rng = rng
        self.theta = theta
        self.alpha = 1.0 / (1.0 - theta)
        self.zeta2theta = zeta(2, theta)
        self.items = items
        self.zetan = zeta(items, theta) if zetan is None else zetan
        self.eta = self._eta()

    def _eta(self) -> float:
        return (1 - (2.0 / self.items) ** (1 - self.theta)) / (1 - self.zeta2theta / self.zetan)

    def next(self, items: int | None = None) -> int:
        """An item in [0, items) (default: the constructor's count; it may only grow)."""
        if items is not None and items != self.items:
            if items < self.items:
                raise WorkloadError("a zipfian's item count may only grow")
            self.zetan = zeta(items, self.theta, self.items, self.zetan)
            self.items = items
            self.eta = self._eta()
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + 0.5 ** self.theta:
            return 1
        return min(self.items - 1,
                   int(self.items * (self.eta * u - self.eta + 1) ** self.alpha))


class ScrambledZipfian:
    """YCSB's ScrambledZipfianGenerator: zipfian popularity, hot items spread over the range."""

    def __init__(self, records: int, rng: random.Random) -> None:
        self.records = records
        self._zipfian = Zipfian(SCRAMBLED_ITEM_COUNT, rng, zetan=SCRAMBLED_ZETAN)

    def next(self) -> int:
        return fnv64(self._zipfian.next()) % self.records


class InsertSequence:
    """Record numbers this process inserts, and which of them are acknowledged."""

    def __init__(self, records: int, procs: int = 1, proc_index: int = 0) -> None:
        if not 0 <= proc_index < procs:
            raise WorkloadError(f"process index {proc_index} not in 0..{procs - 1}")
        self.records = records
        self.procs = procs
        self.proc_index = proc_index
        self.issued = 0
        self.acknowledged = 0

    def next_insert(self) -> int:
        """The record number of the next insert of this process."""
        record = self.records + self.proc_index + self.procs * self.issued
        self.issued += 1
        return record

    def acknowledge(self) -> None:
        """One insert succeeded. Out-of-order completions only blur 'latest' by a record or
        two, which is what YCSB's acknowledged counter tolerates too."""
        self.acknowledged += 1

    @property
    def known(self) -> int:
        """How many records this process knows to exist: the loaded ones plus its own."""
        return self.records + self.acknowledged

    def record_at(self, index: int) -> int:
        """Map an index in [0, known) onto a record number (own inserts interleave)."""
        if index < self.records:
            return index
        return self.records + self.proc_index + self.procs * (index - self.records)


class SkewedLatest:
    """YCSB's SkewedLatestGenerator: the newest known record most popular."""

    def __init__(self, sequence: InsertSequence, rng: random.Random) -> None:
        self.sequence = sequence
        self._zipfian = Zipfian(sequence.known, rng)

    def next(self) -> int:
        known = self.sequence.known
        return self.sequence.record_at(known - 1 - self._zipfian.next(known))


@dataclass(frozen=True, slots=True)
class Workload:
    """One YCSB core workload: the proportions of its operations and how keys are chosen."""

    name: str
    description: str
    read: float = 0.0
    update: float = 0.0
    insert: float = 0.0
    read_modify_write: float = 0.0
    scan: float = 0.0
    distribution: str = "zipfian"  # or "latest"

    def operations(self) -> list[tuple[str, float]]:
        mix = [("read", self.read), ("update", self.update), ("insert", self.insert),
               ("read_modify_write", self.read_modify_write), ("scan", self.scan)]
        return [(op, share) for op, share in mix if share > 0]


WORKLOADS: dict[str, Workload] = {
    "load": Workload("load", "insert every record once", insert=1.0),
    "a": Workload("a", "update heavy: 50% read, 50% update", read=0.5, update=0.5),
    "b": Workload("b", "read mostly: 95% read, 5% update", read=0.95, update=0.05),
    "c": Workload("c", "read only", read=1.0),
    "d": Workload("d", "read latest: 95% read, 5% insert", read=0.95, insert=0.05,
                  distribution="latest"),
    "e": Workload("e", "short ranges: 95% scan, 5% insert", scan=0.95, insert=0.05),
    "f": Workload("f", "50% read, 50% read-modify-write", read=0.5, read_modify_write=0.5),
}


def workload(name: str) -> Workload:
    """The workload called ``name`` (case-insensitive: load, a, b, c, d, e, f)."""
    try:
        return WORKLOADS[name.lower()]
    except KeyError:
        raise WorkloadError(f"unknown workload {name!r}; choose from "
                            f"{', '.join(WORKLOADS)}") from None


class OperationStream:
    """The (operation, record number) pairs of a run phase of one client process."""

    def __init__(self, chosen: Workload, records: int, rng: random.Random, procs: int = 1,
                 proc_index: int = 0) -> None:
        if not 1 <= records <= MAX_RECORDS:
            raise WorkloadError(f"records must be in 1..{MAX_RECORDS}, not {records}")
        self.rng = rng
        self.inserts = InsertSequence(records, procs, proc_index)
        operations = chosen.operations()
        total = sum(share for _, share in operations)
        self._ops = [op for op, _ in operations]
        self._cumulative = list(_accumulate(share / total for _, share in operations))
        self._chooser: ScrambledZipfian | SkewedLatest = (
            SkewedLatest(self.inserts, rng) if chosen.distribution == "latest"
            else ScrambledZipfian(records, rng))

    def next(self) -> tuple[str, int]:
        """The next operation and the record it targets."""
        u = self.rng.random()
        op = self._ops[-1]
        for name, bound in zip(self._ops, self._cumulative, strict=True):
            if u < bound:
                op = name
                break
        if op == "insert":
            return op, self.inserts.next_insert()
        return op, self._chooser.next()


def load_records(records: int, procs: int = 1, proc_index: int = 0) -> Iterator[int]:
    """The record numbers process ``proc_index`` of ``procs`` inserts in the load phase."""
    return iter(range(proc_index, records, procs))


def _accumulate(shares: Iterator[float]) -> Iterator[float]:
    total = 0.0
    for share in shares:
        total += share
        yield total
