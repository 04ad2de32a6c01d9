"""The stores a benchmark drives: the ``Driver`` protocol, dynd's driver, factory loading.

What a store must offer is a ``Driver`` (read, update, insert, read_modify_write), opened by
a factory named ``"module:function"`` in a picklable ``Target``. dynd's driver maps YCSB's
operations onto the client API this way: read is a get with the bucket's (or --r) R;
insert is a blind put of a new key; update is a put carrying the context this process last
saw for the key (YCSB's update overwrites the record, and a blind put would instead pile up
siblings), preceded by a get the first time this process updates the key (counted in
``outcomes.reads_before_update``); read-modify-write is a get then a put with the context
it read. A read that finds several siblings is counted (``outcomes.siblings``), not failed.
Workload E's items: insert_item is a blind put with the sort key; scan is a query from the
start sort key (``ge``, or ``le`` reversed) with limit L, following the page's token while
a page ends early (``outcomes.scan_continuations``); get_item is a get with the sort key.

Limits: the per-process context cache holds at most ``CONTEXT_CACHE_LIMIT`` keys (the
oldest is dropped: its next update is blind).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import UsageError
from dynctl.bench.config import Target
from dynctl.client import Client

CONTEXT_CACHE_LIMIT = 1_000_000


class Driver(Protocol):
    """One store as the benchmark sees it; each method raises on failure. A driver may also
    count notable events in an ``outcomes`` Counter, which the report shows."""

    async def read(self, key: bytes) -> int:
        """Read the record; return how many values (siblings) were found."""

    async def update(self, key: bytes, value: bytes) -> None: ...

    async def insert(self, key: bytes, value: bytes) -> None: ...

    async def read_modify_write(self, key: bytes, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one scan returned: items, and the refill rounds the coordinator needed."""

    items: int
    rounds: int = 0


class ItemDriver(Driver, Protocol):
    """A store that also holds items (partition key, sort key) and scans them in order:
    what workload E needs."""

    async def insert_item(self, key: bytes, sk: bytes, value: bytes) -> None: ...

    async def get_item(self, key: bytes, sk: bytes) -> int:
        """Read one item; return how many values were found."""

    async def scan(self, key: bytes, start: bytes, limit: int, reverse: bool) -> ScanResult:
        """Up to ``limit`` items of ``key`` from the sort key ``start`` on (reverse: down)."""


# (target, connections, in_flight) -> async context manager yielding a Driver
DriverFactory = Callable[[Target, int, int], Any]


class DyndDriver:
    """dynd through the Python client, round-robin over pipelined connections."""

    def __init__(self, clients: Sequence[Client], bucket: str, r: int | None,
                 w: int | None) -> None:
        self._clients = list(clients)
        self._turn = 0
        self._read_fields: dict[str, Any] = {"bucket": bucket} | ({"r": r} if r else {})
        self._write_fields: dict[str, Any] = {"bucket": bucket} | ({"w": w} if w else {})
        self._contexts: dict[bytes, str] = {}
        self.outcomes: Counter[str] = Counter()  # reads_before_update: keys not seen yet

    def _client(self) -> Client:
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    def _remember(self, key: bytes, context: Any) -> None:
        if isinstance(context, str) and context:
            if len(self._contexts) >= CONTEXT_CACHE_LIMIT and key not in self._contexts:
                del self._contexts[next(iter(self._contexts))]
            self._contexts[key] = context

    async def _get(self, key: bytes) -> dict[str, Any]:
        result = await self._client().call("get", key=key, **self._read_fields)
        self._remember(key, result.get("context"))
        return result

    async def _put(self, key: bytes, value: bytes, context: str | None) -> None:
        fields = self._write_fields | ({"context": context} if context else {})
        result = await self._client().call("put", key=key, value=value, **fields)
        self._remember(key, result.get("context"))

    async def read(self, key: bytes) -> int:
        return len((await self._get(key)).get("values") or ())

    async def update(self, key: bytes, value: bytes) -> None:
        context = self._contexts.get(key)
        if context is None:
            self.outcomes["reads_before_update"] += 1
            await self.read_modify_write(key, value)
        else:
            await self._put(key, value, context)

    async def insert(self, key: bytes, value: bytes) -> None:
        await self._put(key, value, None)

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        context = (await self._get(key)).get("context")
        await self._put(key, value, context if isinstance(context, str) else None)

    async def insert_item(self, key: bytes, sk: bytes, value: bytes) -> None:
        await self._client().call("put", key=key, sk=sk, value=value, **self._write_fields)

    async def get_item(self, key: bytes, sk: bytes) -> int:
        result = await self._client().call("get", key=key, sk=sk, **self._read_fields)
        return len(result.get("values") or ())

    async def scan(self, key: bytes, start: bytes, limit: int, reverse: bool) -> ScanResult:
        fields = self._read_fields | {"key": key, "cond": ["le" if reverse else "ge", start]}
        if reverse:
            fields["reverse"] = True
        items = rounds = 0
        while True:
            result = await self._client().call("query", limit=limit - items, **fields)
            items += len(result.get("items") or ())
            rounds += result.get("rounds", 0)
            if items >= limit or not result.get("next"):
                return ScanResult(items, rounds)
            self.outcomes["scan_continuations"] += 1
            fields["after"] = result["next"]


@asynccontextmanager
async def open_dynd(target: Target, connections: int, in_flight: int
                    ) -> AsyncIterator[DyndDriver]:
    """``connections`` clients spread over the target's nodes (the driver factory of dynd);
    pipelining carries the ``in_flight`` requests over them. With the option
    ``coordination="client"`` each client is given every node and routes each key to its
    preference list."""
    options = target.options
    routed = options.get("coordination") == "client"
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client.connect(
            target.addrs if routed else target.addrs[i % len(target.addrs)],
            timeout=options.get("timeout", 5.0),
            tls_ca=options.get("tls_ca"), tls_cert=options.get("tls_cert"),
            tls_key=options.get("tls_key"))) for i in range(connections)]
        yield DyndDriver(clients, options.get("bucket", "default"), options.get("r"),
                         options.get("w"))


def load_driver_factory(spec: str) -> DriverFactory:
    """The factory that ``Target.factory`` names; a bad name is a usage error."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load the driver factory {spec!r}: {exc}") from exc
