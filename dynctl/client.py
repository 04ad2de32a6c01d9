"""The public Python client of dynd: trio-native ``Client`` and a blocking ``SyncClient``.

A ``Client`` holds one ``Connection`` (common/wire/connection.py, the same class that
carries the node's peer traffic) per node it talks to. Requests are pipelined: every
request gets an id, queues its encoded frame, and waits for the reply with that id. A
single writer task sends everything queued so far in one ``send_all`` (coalescing is what
makes pipelining pay), and a single reader task hands each reply to the request waiting for
it. Any number of trio tasks (or, through ``SyncClient``, threads) may share one client; at
most ``Limits.max_inflight_per_connection`` requests are in flight at once per connection
(the node's per-connection limit), the others wait for a slot.

Several nodes (``Client.connect("a:7070,b:7070,c:7070")`` or a list): client-driven
coordination (Dynamo, section 6.4). The client learns the ring from any node
(dynctl/topology.py) and sends each request about a key (one naming a bucket and a key: get,
put, delete, replicas, queries) straight to a node of the key's preference list; every
other request goes to the first node that answers (``answered_by`` says which). When a node
does not answer (connection refused or reset: at once; silent: after its share of the
request's deadline, ``attempt_budget``), the request goes to the next node, and the node is
tried last for ``SUSPECT_SECONDS``. A node's own error reply is final, except that a read
(``READ_OPS``) its coordinator could not serve (Unavailable: R replicas not reached) is
asked of the next node; a write that failed so may have reached replicas and is not sent
again. The ring is asked again when a put comes back forwarded by a node of a
newer epoch (the client's ring is old), after a node failed to answer, and at least every
``RING_MAX_AGE`` seconds. A retried put or delete may have been applied by the node that
did not answer in time: the node's copy and the retry's then become two siblings (Dynamo's
semantics: nothing acknowledged is lost, and the next write with a context that covers
both replaces them). With one node, everything goes to it and nothing is retried.

Errors are the exceptions of ``common.errors``, whose ``exit_code`` is dynctl's:
the node's error replies come back as their class; an unreachable node, a broken
connection or a request that outlives its deadline is ``Unavailable`` (with several nodes:
when no node answered in time); a TLS handshake the
node or the client refuses is ``Unauthorized``; a bad address or unreadable TLS file is
``ClientConfigError`` (a ``UsageError`` and a ``ValueError``).

TLS: with ``tls_ca`` the connection is TLS, the node's certificate must chain to
``tls_ca`` and match the host of its address (an IP address is checked against the
certificate's IP subject alternative names), and ``tls_cert``/``tls_key`` are presented
as the client certificate when given.

Limits: keys and values larger than the default ``Limits`` (1 KiB, 1 MiB) are refused
before they reach the network (``Rejected``); a reply may be up to ``MAX_REPLY_BYTES``;
at most ``MAX_NODES`` node addresses.

Read your own writes: a client remembers the context each of its puts and deletes
answered, for the ``remembered_writes`` keys it wrote last (default
``DEFAULT_REMEMBERED_WRITES``; 0 turns this off). A get whose answer does not descend
the remembered context (the sloppy quorum's read set missed the replicas holding the
write) asks again with R = N, every replica of the key's preference list, within the
same deadline, and answers that. Best effort: where the write's replicas are not
reachable from the node, or the read with R = N fails, the first answer stands. For a
guarantee that holds across clients and processes, use primary quorums (PR + PW > N).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from common.dvvset import InvalidContext, VersionVector, decode_context
from common.errors import (
    Conflict,
    DynError,
    NotFound,
    ProtocolError,
    Rejected,
    Unavailable,
)
from common.limits import MAX_SORT_KEY_BYTES, MAX_TTL_SECONDS
from common.messages import MAX_QUERY_LIMIT
from common.wire.connection import (
    LIMITS,
    ClientConfigError,
    Connection,
    parse_addr,
)
from common.wire.tls import TLSFileError, new_context
from common.wire.trio_helpers import single_exception_unwrapped
from dynctl.auth_client import AuthMethods, AuthSyncMethods
from dynctl.topology import Topology

log = logging.getLogger("dynctl.client")

DEFAULT_ADDR = "127.0.0.1:7070"
DEFAULT_REMEMBERED_WRITES = 10_000  # keys whose last written context a client keeps
MAX_NODES = 256  # node addresses one client may be given
SUSPECT_SECONDS = 5.0  # a node that did not answer is tried last for this long
RING_MAX_AGE = 60.0  # seconds after which the next request about a key asks for the ring again
RING_MIN_INTERVAL = 1.0  # seconds between two requests for the ring
# Requests that only read: one whose coordinator answers Unavailable is asked of the next node.
READ_OPS = frozenset({"get", "replicas", "query", "ring"})
MAX_ATTEMPT_SHARES = 3  # an attempt waits at least a third of what is left of the deadline
@dataclass(frozen=True, slots=True)
class Value:
    """One live sibling: its bytes, when its coordinator wrote it and, if it expires,
    when (it is no longer read once the reading node's clock passes that)."""

    value: bytes
    written_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Object:
    """The result of a get: the live siblings and the context that covers all of them.

    Pass ``context`` to the next put or delete so that it supersedes every value seen here.
    """

    found: bool
    values: list[Value]
    context: str

    @property
    def value(self) -> bytes:
        """The single live value; NotFound when there is none, Conflict when there are several."""
        if not self.values:
            raise NotFound("key not found")
        if len(self.values) > 1:
            raise Conflict(f"key has {len(self.values)} siblings")
        return self.values[0].value


class SK:
    """Sort-key conditions for ``Client.query``: ``SK.ge(b"ORDER#2025")``, ... Each is the
    request's ``cond``; sort keys are compared bytewise and ``between`` is inclusive."""

    @staticmethod
    def eq(sk: bytes | str) -> list[Any]:
        return ["eq", _condition_key(sk)]

    @staticmethod
    def lt(sk: bytes | str) -> list[Any]:
        return ["lt", _condition_key(sk)]

    @staticmethod
    def le(sk: bytes | str) -> list[Any]:
        return ["le", _condition_key(sk)]

    @staticmethod
    def gt(sk: bytes | str) -> list[Any]:
        return ["gt", _condition_key(sk)]

    @staticmethod
    def ge(sk: bytes | str) -> list[Any]:
        return ["ge", _condition_key(sk)]

    @staticmethod
    def begins_with(sk: bytes | str) -> list[Any]:
        return ["prefix", _condition_key(sk)]

    @staticmethod
    def between(low: bytes | str, high: bytes | str) -> list[Any]:
        low, high = _condition_key(low), _condition_key(high)
        if low > high:
            raise Rejected("between needs low <= high")
        return ["between", low, high]


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a query page: its sort key, live values and the context covering them
    (pass it to ``put(key, ..., sk=item.sk, context=item.context)``). ``values`` is empty
    for a keys-only query."""

    sk: bytes
    values: list[Value]
    context: str
    siblings: int

    @property
    def conflict(self) -> bool:
        """Several live siblings: resolve them as for a key (``dynctl resolve KEY --sk``)."""
        return self.siblings > 1


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query; ``next`` is the token for ``after=`` while more may remain
    (a page can be short, even empty, and still have one: loop while it is set)."""

    items: list[Item]
    next: str | None


def as_bytes(data: bytes | str, what: str, limit: int) -> bytes:
    """Keys and values as bytes (str is UTF-8 encoded), refused above ``limit`` bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")
    if len(data) > limit:
        raise Rejected(f"{what} of {len(data)} bytes exceeds the limit of {limit} bytes")
    return data


def expiry_fields(ttl: int | None, expire_at: datetime | None) -> dict[str, int]:
    """A put's ``ttl`` (seconds, 0: never) or ``expire_at`` (an aware datetime) as the
    request's fields; Rejected for both, a bad ttl or a naive datetime."""
    if ttl is not None and expire_at is not None:
        raise Rejected("give ttl or expire_at, not both")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL_SECONDS:
            raise Rejected(f"ttl must be whole seconds in 0..{MAX_TTL_SECONDS} (10 years), "
                           f"not {ttl!r}")
        return {"ttl": ttl}
    if expire_at is not None:
        if not isinstance(expire_at, datetime) or expire_at.tzinfo is None:
            raise Rejected(f"expire_at must be a datetime with a timezone, not {expire_at!r}")
        return {"expire_at": int(expire_at.timestamp() * 1000)}
    return {}


def as_sort_key(sk: bytes | str | None) -> bytes | None:
    """An item's sort key as bytes (None: the plain key), refused unless 1..1024 bytes."""
    if sk is None:
        return None
    sk = as_bytes(sk, "sort key", MAX_SORT_KEY_BYTES)
    if not sk:
        raise Rejected(f"a sort key must be 1..{MAX_SORT_KEY_BYTES} bytes, not empty")
    return sk


class WrittenContexts:
    """The context this client's last put or delete of a key answered, for the ``limit``
    keys written most recently (least recently written forgotten first)."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ClientConfigError(f"remembered_writes must be an integer >= 0, not {limit!r}")
        self.limit = limit
        self._contexts: OrderedDict[tuple[str, bytes, bytes | None], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def remember(self, bucket: str, key: bytes, context: str, sk: bytes | None = None) -> None:
        if not self.limit:
            return
        self._contexts[(bucket, key, sk)] = context
        self._contexts.move_to_end((bucket, key, sk))
        if len(self._contexts) > self.limit:
            self._contexts.popitem(last=False)

    def covered_by(self, bucket: str, key: bytes, context: str, sk: bytes | None = None
                   ) -> bool:
        """Whether a read answering ``context`` saw this client's last write of the item
        (True when none is remembered)."""
        written = self._contexts.get((bucket, key, sk))
        if written is None or written == context:
            return True
        try:
            return descends(decode_context(context), decode_context(written))
        except InvalidContext:  # not ours to judge: the node's context is opaque
            return True


def descends(read: VersionVector, written: VersionVector) -> bool:
    """Whether version vector ``read`` covers every event of ``written``."""
    return all(read.get(actor, 0) >= counter for actor, counter in written.items())


def parse_nodes(nodes: str | Sequence[str]) -> tuple[str, ...]:
    """Node addresses from ``"host:port,host:port"`` or a list of ``host:port``: each one
    checked, in order; ClientConfigError for an empty list or item, a duplicate, or more
    than ``MAX_NODES``."""
    items = nodes.split(",") if isinstance(nodes, str) else list(nodes)
    addrs = tuple(item.strip() if isinstance(item, str) else item for item in items)
    if not addrs or len(addrs) > MAX_NODES:
        raise ClientConfigError(f"give 1..{MAX_NODES} node addresses, not {len(addrs)}")
    for addr in addrs:
        if not isinstance(addr, str) or not addr:
            raise ClientConfigError(f"bad node list {nodes!r}: an empty or non-text address")
        parse_addr(addr)
    duplicates = sorted({addr for addr in addrs if addrs.count(addr) > 1})
    if duplicates:
        raise ClientConfigError(f"node {duplicates[0]} is listed twice")
    return addrs


def attempt_budget(time_left: float, attempts_left: int) -> float:
    """How long one attempt may wait for its node: an equal share of what is left of the
    request's deadline among the attempts left (at most MAX_ATTEMPT_SHARES of them), so that
    a silent node leaves time for the next; the last attempt gets all that is left."""
    return time_left / max(1, min(attempts_left, MAX_ATTEMPT_SHARES))


class Client(AuthMethods):
    """The key-value API over connections to one or several nodes. Obtain one with
    ``Client.connect``."""

    def __init__(self, nodes: tuple[str, ...], timeout: float, nursery: trio.Nursery | None,
                 tls: ssl.SSLContext | None, *,
                 remembered_writes: int = DEFAULT_REMEMBERED_WRITES) -> None:
        self.nodes = nodes
        self.addr = nodes[0]  # the node that serves requests not about a key
        self.answered_by: str | None = None  # who answered the last such request
        self.timeout = timeout
        self.written = WrittenContexts(remembered_writes)
        self._nursery = nursery
        self._tls = tls
        self._connections: dict[str, Connection] = {}
        self._opening: dict[str, trio.Lock] = {}
        self._suspect_until: dict[str, float] = {}
        self._topology: Topology | None = None
        self._topology_asked_at: float | None = None  # None: never asked
        self._refreshing = False

    @classmethod
    def over(cls, connection: Connection, timeout: float, *,
             remembered_writes: int = DEFAULT_REMEMBERED_WRITES) -> Client:
        """A one-node client over a connection the caller opened and owns (a simulated
        network's, in tests): it never opens another."""
        client = cls((connection.addr,), timeout, None, None,
                     remembered_writes=remembered_writes)
        client._connections[connection.addr] = connection
        return client

    @property
    def ring_epoch(self) -> int | None:
        """The epoch of the ring this client routes by; None while it routes by the given
        node order (one node given, or no node described its ring)."""
        return None if self._topology is None else self._topology.epoch

    @classmethod
    @asynccontextmanager
    async def connect(cls, addr: str | Sequence[str] = DEFAULT_ADDR, *,
                      timeout: float = LIMITS.request_timeout,
                      tls_ca: str | None = None, tls_cert: str | None = None,
                      tls_key: str | None = None,
                      remembered_writes: int = DEFAULT_REMEMBERED_WRITES
                      ) -> AsyncIterator[Client]:
        """Connect to the first of the nodes ``addr`` names (one address, a comma-separated
        list, or a list) that answers within ``timeout`` seconds, and yield a client;
        closes every connection on exit.

        ``timeout`` is also the deadline of every request made through the client.
        ``remembered_writes``: keys whose last written context the client keeps to read
        its own writes (module docstring); 0 turns that off.
        """
        if not timeout > 0:
            raise ClientConfigError(f"timeout must be positive, not {timeout}")
        nodes = parse_nodes(addr)
        WrittenContexts(remembered_writes)  # a bad limit fails before connecting
        tls = _tls_context(tls_ca, tls_cert, tls_key)
        with single_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                client = cls(nodes, timeout, nursery, tls, remembered_writes=remembered_writes)
                try:
                    await client._first_connection(trio.current_time() + timeout)
                    yield client
                finally:
                    client._close()

    async def _first_connection(self, deadline: float) -> None:
        """Open a connection to the first node that takes one: it serves requests not
        about a key until it stops answering."""
        failures: list[str] = []
        for index, addr in enumerate(self.nodes):
            left = deadline - trio.current_time()
            with trio.move_on_after(attempt_budget(left, len(self.nodes) - index)):
                try:
                    await self._connection(addr)
                except Unavailable as exc:
                    failures.append(exc.message)
                    continue
                self.addr = addr
                return
            failures.append(f"cannot reach {addr}: timed out after {self.timeout:g}s"
                            if len(self.nodes) == 1 else f"cannot reach {addr}: timed out")
        raise Unavailable(failures[0] if len(failures) == 1
                          else f"no node answered: {'; '.join(failures)}")

    def _close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _connection(self, addr: str) -> Connection:
        """The open connection to ``addr``, opened now if there is none (or it broke)."""
        connection = self._connections.get(addr)
        if connection is not None and not connection.closed:
            return connection
        lock = self._opening.setdefault(addr, trio.Lock())
        async with lock:  # one opening per node, however many requests wait for it
            connection = self._connections.get(addr)
            if connection is None or connection.closed:
                if self._nursery is None:
                    raise Unavailable(f"connection to {addr} closed")
                connection = await Connection.open(addr, self._nursery, ssl_context=self._tls)
                connection.learn_batching()
                self._connections[addr] = connection
            return connection

    def _suspect(self, addr: str) -> None:
        """``addr`` did not answer: try it last for a while, and ask for the ring again
        (the node may have left the cluster)."""
        self._suspect_until[addr] = trio.current_time() + SUSPECT_SECONDS
        self._refresh_later()

    def _answering_first(self, addrs: Sequence[str]) -> list[str]:
        """``addrs`` with the nodes that recently failed to answer moved to the end."""
        now = trio.current_time()
        return sorted(addrs, key=lambda addr: self._suspect_until.get(addr, 0.0) > now)

    async def _send(self, addrs: Sequence[str], deadline: float, op: str,
                    fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Send the request to the first of ``addrs`` that answers before ``deadline``: the
        node that answered and its result. Fails over only when a node does not answer
        (module docstring), or when a read (READ_OPS) comes back Unavailable (its
        coordinator could not reach R replicas: another may); raises any other error
        reply as it is."""
        failures: list[str] = []
        refusal: Unavailable | None = None  # a read's last Unavailable reply
        for index, addr in enumerate(addrs):
            left = deadline - trio.current_time()
            if left <= 0:
                break
            connection: Connection | None = None
            with trio.move_on_after(attempt_budget(left, len(addrs) - index)):
                try:
                    connection = await self._connection(addr)
                    return addr, await connection.call(op, fields)
                except Unavailable as exc:
                    if len(addrs) == 1:
                        raise
                    if connection is not None and not connection.closed:
                        if op not in READ_OPS:
                            raise  # a write may have reached replicas: not retried
                        refusal = exc
                        continue
                    failures.append(exc.message)
                    self._suspect(addr)
                    continue
            failures.append(f"{addr} did not answer in time")
            self._suspect(addr)
        if refusal is not None:
            raise refusal
        if len(self.nodes) == 1:
            raise Unavailable(f"{op} on {self.addr} timed out after {self.timeout:g}s")
        raise Unavailable(f"{op}: no node answered within {self.timeout:g}s "
                          f"({'; '.join(failures) or 'no time left'})")

    # -- the key-value API ---------------------------------------------------------------

    async def get(self, key: bytes | str, *, bucket: str = "default",
                  r: int | None = None, pr: int | None = None,
                  sk: bytes | str | None = None) -> Object:
        """Read a key, or with ``sk`` the key's item of that sort key; a missing one is
        ``Object(found=False)``, not an exception.

        ``pr``: how many of the replies must come from the key's primaries (default the
        bucket's PR); Unavailable when fewer can. An answer that misses this client's own
        last write of the key is read again from every replica (module docstring).
        """
        deadline = trio.current_time() + self.timeout
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        sk = as_sort_key(sk)
        fields = _present(bucket=bucket, key=key, sk=sk, r=r, pr=pr)
        first = _parse_object(await self._call_before(deadline, "get", fields))
        if self.written.covered_by(bucket, key, first.context, sk):
            return first
        return await self._read_own_write(deadline, fields, first)

    async def _read_own_write(self, deadline: float, fields: dict[str, Any],
                              first: Object) -> Object:
        """Ask again with R = N (every replica of the key's preference list, not just the
        first R to answer); the first answer when that fails or runs out of time."""
        try:
            props = await self._call_before(deadline, "bucket_get", {"name": fields["bucket"]})
            n = props["bucket"]["n"]
            return _parse_object(await self._call_before(deadline, "get", {**fields, "r": n}))
        except (DynError, KeyError, TypeError) as exc:
            log.debug("event=read_own_write_failed addr=%s reason=%s", self.addr, exc)
            return first

    async def put(self, key: bytes | str, value: bytes | str, *, bucket: str = "default",
                  context: str | None = None, w: int | None = None,
                  pw: int | None = None, sk: bytes | str | None = None,
                  ttl: int | None = None, expire_at: datetime | None = None) -> str:
        """Write a value (with ``sk``: the key's item of that sort key) and return the new
        context.

        ``context`` is what a get returned: the write supersedes exactly the siblings that
        context covers. ``None`` is a blind write, a new sibling beside any existing ones.
        ``pw``: how many acknowledgements must come from the key's primaries (default the
        bucket's PW); Unavailable when fewer can. ``ttl`` (seconds; 0: never, whatever the
        bucket's default) or ``expire_at`` (an aware datetime, Rejected once past on the
        coordinating node's clock): when the value expires and reads as deleted.
        """
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        sk = as_sort_key(sk)
        fields = _present(bucket=bucket, key=key, sk=sk,
                          value=as_bytes(value, "value", LIMITS.max_value_bytes),
                          context=context, w=w, pw=pw, **expiry_fields(ttl, expire_at))
        written = _context_of(await self.call("put", **fields))
        self.written.remember(bucket, key, written, sk)
        return written

    async def delete(self, key: bytes | str, *, bucket: str = "default",
                     context: str | None = None, w: int | None = None,
                     pr: int | None = None, pw: int | None = None,
                     sk: bytes | str | None = None) -> str:
        """Write a tombstone (with ``sk``: of the key's item of that sort key) and return
        the new context.

        With ``context=None`` the key is read first (with ``pr``) and the tombstone
        supersedes what was read (a blind tombstone would leave every value visible beside
        it).
        """
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        sk = as_sort_key(sk)
        if context is None:
            context = (await self.get(key, bucket=bucket, pr=pr, sk=sk)).context or None
        fields = _present(bucket=bucket, key=key, sk=sk, context=context, w=w, pw=pw)
        written = _context_of(await self.call("delete", **fields))
        self.written.remember(bucket, key, written, sk)
        return written

    async def query(self, key: bytes | str, *, bucket: str = "default",
                    where: list[Any] | None = None, limit: int = 100, reverse: bool = False,
                    after: str | None = None, r: int | None = None,
                    keys_only: bool = False) -> Page:
        """One page of the items of ``key`` whose sort key matches ``where`` (an ``SK``
        condition; None: every item with a sort key), in sort-key order (``reverse``:
        descending), at most ``limit`` (1..1000). ``after``: a previous page's ``next``.
        Pages are not a snapshot: an item written behind the cursor is not seen."""
        result = await self.call("query", **_query_fields(
            key, bucket, where, limit, reverse, after, r, "keys" if keys_only else "items"))
        items = result.get("items")
        if not isinstance(items, list):
            raise ProtocolError("query reply without an items list")
        return Page([_parse_item(item, keys_only) for item in items], _next_of(result))

    async def query_all(self, key: bytes | str, *, bucket: str = "default",
                        where: list[Any] | None = None, reverse: bool = False,
                        r: int | None = None, page_size: int = 100) -> AsyncIterator[Item]:
        """Every matching item, following the pages' tokens."""
        after = None
        while True:
            page = await self.query(key, bucket=bucket, where=where, limit=page_size,
                                    reverse=reverse, after=after, r=r)
            for item in page.items:
                yield item
            if page.next is None:
                return
            after = page.next

    async def count(self, key: bytes | str, *, bucket: str = "default",
                    where: list[Any] | None = None, r: int | None = None,
                    after: str | None = None) -> int:
        """How many items match (after the token ``after``, if given): the pages' counts
        summed; no values are moved."""
        total = 0
        while True:
            result = await self.call("query", **_query_fields(
                key, bucket, where, 1000, False, after, r, "count"))
            count = result.get("count")
            if type(count) is not int:
                raise ProtocolError("query reply without a count")
            total += count
            after = _next_of(result)
            if after is None:
                return total

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the node's result fields (without ``id`` and ``ok``).

        Raises the DynError class of an error reply, or Unavailable when no reply arrives
        within the client's timeout.
        """
        return await self._call_before(trio.current_time() + self.timeout, op, fields)

    async def _call_before(self, deadline: float, op: str, fields: dict[str, Any]
                           ) -> dict[str, Any]:
        """Send a request about a key to the key's preference list, any other to the node
        that answers requests not about a key (module docstring)."""
        bucket, key = fields.get("bucket"), fields.get("key")
        if len(self.nodes) > 1 and isinstance(bucket, str) and isinstance(key, bytes):
            addrs = await self._addresses_for(deadline, bucket, key)
            _, result = await self._send(addrs, deadline, op, fields)
            epoch = result.get("epoch")  # only on a put a node had to forward
            if self._topology is not None and isinstance(epoch, int) \
                    and epoch > self._topology.epoch:
                self._refresh_later()
            return result
        home = [self.addr, *(addr for addr in self.nodes if addr != self.addr)]
        self.addr, result = await self._send(self._answering_first(home), deadline, op, fields)
        self.answered_by = self.addr
        return result

    async def _addresses_for(self, deadline: float, bucket: str, key: bytes) -> list[str]:
        """Where to send a request about the key, in failover order: the preference list
        from the ring (asked for the first time now, within part of the deadline), then the
        given nodes; without a ring, the given nodes."""
        if self._topology_asked_at is None:
            left = deadline - trio.current_time()
            await self._ask_ring(trio.current_time() + attempt_budget(left, 2))
        elif trio.current_time() - self._topology_asked_at > RING_MAX_AGE:
            self._refresh_later()
        routed = self._topology.addresses_for(bucket, key) if self._topology else ()
        return self._answering_first([*routed, *(a for a in self.nodes if a not in routed)])

    async def _ask_ring(self, deadline: float) -> None:
        """Learn the ring from any node; keep the old one (or none: the given nodes in
        order) when no node tells."""
        self._topology_asked_at = trio.current_time()
        try:
            _, reply = await self._send(self._answering_first(self.nodes), deadline, "ring", {})
            topology = Topology.from_reply(reply)
        except DynError as exc:
            log.debug("event=ring_unknown reason=%s", exc)
            return
        if topology is not None and (self._topology is None
                                     or topology.epoch >= self._topology.epoch):
            self._topology = topology

    def _refresh_later(self) -> None:
        """Ask for the ring again in the background: one request at a time, at most one
        per RING_MIN_INTERVAL."""
        asked_at = self._topology_asked_at
        if self._refreshing or len(self.nodes) == 1 or (
                asked_at is not None and trio.current_time() - asked_at < RING_MIN_INTERVAL):
            return
        self._refreshing = True
        assert self._nursery is not None  # several nodes: made by connect

        async def refresh() -> None:
            try:
                await self._ask_ring(trio.current_time() + self.timeout)
            finally:
                self._refreshing = False

        self._nursery.start_soon(refresh)


class SyncClient(AuthSyncMethods):
    """The Client for blocking code: a trio loop in a background thread runs the requests.

    Thread-safe: requests from several threads are pipelined over the one connection.
    """

    def __init__(self, client: Client, token: trio.lowlevel.TrioToken) -> None:
        self._client = client
        self._token = token

    @classmethod
    @contextmanager
    def connect(cls, addr: str | Sequence[str] = DEFAULT_ADDR, *,
                timeout: float = LIMITS.request_timeout,
                tls_ca: str | None = None, tls_cert: str | None = None,
                tls_key: str | None = None,
                remembered_writes: int = DEFAULT_REMEMBERED_WRITES) -> Iterator[SyncClient]:
        """Connect as ``Client.connect`` does; the thread and connection end with the block."""
        started = threading.Event()
        state: dict[str, Any] = {}

        async def serve() -> None:
            try:
                async with Client.connect(addr, timeout=timeout, tls_ca=tls_ca,
                                          tls_cert=tls_cert, tls_key=tls_key,
                                          remembered_writes=remembered_writes) as client:
                    state["stop"] = trio.Event()
                    state["client"] = cls(client, trio.lowlevel.current_trio_token())
                    started.set()
                    await state["stop"].wait()
            except BaseException as exc:  # noqa: B036 - handed to the calling thread
                state["error"] = exc
            finally:
                started.set()

        thread = threading.Thread(target=trio.run, args=(serve,),
                                  name=f"dynctl-{parse_nodes(addr)[0]}", daemon=True)
        thread.start()
        started.wait()
        if "client" not in state:
            thread.join()
            raise state["error"]
        sync_client: SyncClient = state["client"]
        try:
            yield sync_client
        finally:
            trio.from_thread.run_sync(state["stop"].set, trio_token=sync_client._token)
            thread.join()
        if "error" in state:
            raise state["error"]

    def get(self, key: bytes | str, *, bucket: str = "default", r: int | None = None,
            pr: int | None = None, sk: bytes | str | None = None) -> Object:
        return self._run(self._client.get, key, bucket=bucket, r=r, pr=pr, sk=sk)

    def put(self, key: bytes | str, value: bytes | str, *, bucket: str = "default",
            context: str | None = None, w: int | None = None, pw: int | None = None,
            sk: bytes | str | None = None, ttl: int | None = None,
            expire_at: datetime | None = None) -> str:
        return self._run(self._client.put, key, value, bucket=bucket, context=context, w=w,
                         pw=pw, sk=sk, ttl=ttl, expire_at=expire_at)

    def delete(self, key: bytes | str, *, bucket: str = "default", context: str | None = None,
               w: int | None = None, pr: int | None = None, pw: int | None = None,
               sk: bytes | str | None = None) -> str:
        return self._run(self._client.delete, key, bucket=bucket, context=context, w=w,
                         pr=pr, pw=pw, sk=sk)

    def query(self, key: bytes | str, *, bucket: str = "default",
              where: list[Any] | None = None, limit: int = 100, reverse: bool = False,
              after: str | None = None, r: int | None = None, keys_only: bool = False) -> Page:
        return self._run(self._client.query, key, bucket=bucket, where=where, limit=limit,
                         reverse=reverse, after=after, r=r, keys_only=keys_only)

    def query_all(self, key: bytes | str, *, bucket: str = "default",
                  where: list[Any] | None = None, reverse: bool = False, r: int | None = None,
                  page_size: int = 100) -> Iterator[Item]:
        after = None
        while True:
            page = self.query(key, bucket=bucket, where=where, limit=page_size,
                              reverse=reverse, after=after, r=r)
            yield from page.items
            if page.next is None:
                return
            after = page.next

    def count(self, key: bytes | str, *, bucket: str = "default",
              where: list[Any] | None = None, r: int | None = None,
              after: str | None = None) -> int:
        return self._run(self._client.count, key, bucket=bucket, where=where, r=r, after=after)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self._run(self._client.call, op, **fields)

    def _run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return trio.from_thread.run(partial(method, *args, **kwargs), trio_token=self._token)


def _present(**fields: Any) -> dict[str, Any]:
    """Optional request fields (None) are left out of the request, as the protocol wants."""
    return {name: value for name, value in fields.items() if value is not None}


def _context_of(result: dict[str, Any]) -> str:
    context = result.get("context")
    if not isinstance(context, str):
        raise ProtocolError("reply without a context string")
    return context


def _parse_object(result: dict[str, Any]) -> Object:
    values = result.get("values")
    if not isinstance(values, list):
        raise ProtocolError("get reply without a values list")
    parsed = []
    for item in values:
        value = item.get("value") if isinstance(item, dict) else None
        written_at = item.get("written_at") if isinstance(item, dict) else None
        expires_at = item.get("expires_at") if isinstance(item, dict) else None
        if not isinstance(value, bytes) or not isinstance(written_at, int) or not (
                expires_at is None or isinstance(expires_at, int)):
            raise ProtocolError("get reply holds a malformed value")
        parsed.append(Value(value, _moment(written_at),
                            None if expires_at is None else _moment(expires_at)))
    found = result.get("found")
    if not isinstance(found, bool):
        raise ProtocolError("get reply without a found flag")
    return Object(found=found, values=parsed, context=_context_of(result))


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _condition_key(sk: bytes | str) -> bytes:
    key = as_sort_key(sk)
    assert key is not None
    return key


def _query_fields(key: bytes | str, bucket: str, where: list[Any] | None, limit: int,
                  reverse: bool, after: str | None, r: int | None, select: str
                  ) -> dict[str, Any]:
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise Rejected(f"limit must be in 1..{MAX_QUERY_LIMIT}, not {limit}")
    return _present(bucket=bucket, key=as_bytes(key, "key", LIMITS.max_key_bytes), cond=where,
                    limit=limit, reverse=reverse or None, after=after, r=r,
                    select=None if select == "items" else select)


def _next_of(result: dict[str, Any]) -> str | None:
    token = result.get("next")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("query reply with a malformed next token")
    return token


def _parse_item(item: Any, keys_only: bool) -> Item:
    if not isinstance(item, dict) or not isinstance(item.get("sk"), bytes):
        raise ProtocolError("query reply holds a malformed item")
    if keys_only:
        siblings = item.get("siblings")
        if type(siblings) is not int:
            raise ProtocolError("query reply holds a malformed item")
        return Item(item["sk"], [], _context_of(item), siblings)
    parsed = _parse_object({**item, "found": True})
    return Item(item["sk"], parsed.values, parsed.context, len(parsed.values))


def _tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if ca is None:
        if cert is not None or key is not None:
            raise ClientConfigError("a TLS client certificate needs --tls-ca / tls_ca as well")
        return None
    if cert is None and key is not None:
        raise ClientConfigError("tls_key given without tls_cert")
    try:
        return new_context(server_side=False, ca=ca, cert=cert, key=key)
    except TLSFileError as exc:
        raise ClientConfigError(f"cannot load TLS files: {exc.cause}") from exc
