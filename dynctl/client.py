"""The public Python client of dynd: trio-native ``Client`` and a blocking ``SyncClient``.

One ``Client`` holds one ``Connection`` (common/wire/connection.py, the same class
that carries the node's peer traffic). Requests are pipelined: every request gets an id, queues
its encoded frame, and waits for the reply with that id. A single writer task sends
everything queued so far in one ``send_all`` (coalescing is what makes pipelining pay), and
a single reader task hands each reply to the request waiting for it. Any number of trio
tasks (or, through ``SyncClient``, threads) may share one client; at most
``Limits.max_inflight_per_connection`` requests are in flight at once (the node's
per-connection limit), the others wait for a slot. Nothing is retried: a blind put is not
idempotent, so retrying is the caller's decision.

Errors are the exceptions of ``common.errors``, whose ``exit_code`` is dynctl's:
the node's error replies come back as their class; an unreachable node, a broken
connection or a request that outlives its deadline is ``Unavailable``; a TLS handshake the
node or the client refuses is ``Unauthorized``; a bad address or unreadable TLS file is
``ClientConfigError`` (a ``UsageError`` and a ``ValueError``).

TLS: with ``tls_ca`` the connection is TLS, the node's certificate must chain to
``tls_ca`` and match the host of ``addr`` (an IP address is checked against the
certificate's IP subject alternative names), and ``tls_cert``/``tls_key`` are presented
as the client certificate when given.

Limits: keys and values larger than the default ``Limits`` (1 KiB, 1 MiB) are refused
before they reach the network (``Rejected``); a reply may be up to ``MAX_REPLY_BYTES``.

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
from collections.abc import AsyncIterator, Iterator
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
from common.limits import MAX_SORT_KEY_BYTES
from common.wire.connection import (
    LIMITS,
    ClientConfigError,
    Connection,
    parse_addr,
)
from common.wire.tls import TLSFileError, new_context
from common.wire.trio_helpers import single_exception_unwrapped
from dynctl.auth_client import AuthMethods, AuthSyncMethods

log = logging.getLogger("dynctl.client")

DEFAULT_ADDR = "127.0.0.1:7070"
DEFAULT_REMEMBERED_WRITES = 10_000  # keys whose last written context a client keeps
@dataclass(frozen=True, slots=True)
class Value:
    """One live sibling: its bytes and when its coordinator wrote it."""

    value: bytes
    written_at: datetime


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


class Client(AuthMethods):
    """The key-value API over one Connection. Obtain one with ``Client.connect``."""

    def __init__(self, connection: Connection, timeout: float, *,
                 remembered_writes: int = DEFAULT_REMEMBERED_WRITES) -> None:
        self.addr = connection.addr
        self.timeout = timeout
        self._connection = connection
        self.written = WrittenContexts(remembered_writes)

    @classmethod
    @asynccontextmanager
    async def connect(cls, addr: str = DEFAULT_ADDR, *, timeout: float = LIMITS.request_timeout,
                      tls_ca: str | None = None, tls_cert: str | None = None,
                      tls_key: str | None = None,
                      remembered_writes: int = DEFAULT_REMEMBERED_WRITES
                      ) -> AsyncIterator[Client]:
        """Connect (within ``timeout`` seconds) and yield a client; closes it on exit.

        ``timeout`` is also the deadline of every request made through the client.
        ``remembered_writes``: keys whose last written context the client keeps to read
        its own writes (module docstring); 0 turns that off.
        """
        if not timeout > 0:
            raise ClientConfigError(f"timeout must be positive, not {timeout}")
        parse_addr(addr)
        WrittenContexts(remembered_writes)  # a bad limit fails before connecting
        tls = _tls_context(tls_ca, tls_cert, tls_key)
        with single_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(timeout):
                        connection = await Connection.open(addr, nursery, ssl_context=tls)
                except trio.TooSlowError:
                    raise Unavailable(f"cannot reach {addr}: timed out after {timeout:g}s"
                                      ) from None
                try:
                    yield cls(connection, timeout, remembered_writes=remembered_writes)
                finally:
                    connection.close()

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
                  pw: int | None = None, sk: bytes | str | None = None) -> str:
        """Write a value (with ``sk``: the key's item of that sort key) and return the new
        context.

        ``context`` is what a get returned: the write supersedes exactly the siblings that
        context covers. ``None`` is a blind write, a new sibling beside any existing ones.
        ``pw``: how many acknowledgements must come from the key's primaries (default the
        bucket's PW); Unavailable when fewer can.
        """
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        sk = as_sort_key(sk)
        fields = _present(bucket=bucket, key=key, sk=sk,
                          value=as_bytes(value, "value", LIMITS.max_value_bytes),
                          context=context, w=w, pw=pw)
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

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the node's result fields (without ``id`` and ``ok``).

        Raises the DynError class of an error reply, or Unavailable when no reply arrives
        within the client's timeout.
        """
        return await self._call_before(trio.current_time() + self.timeout, op, fields)

    async def _call_before(self, deadline: float, op: str, fields: dict[str, Any]
                           ) -> dict[str, Any]:
        with trio.move_on_at(deadline):
            return await self._connection.call(op, fields)
        raise Unavailable(f"{op} on {self.addr} timed out after {self.timeout:g}s")


class SyncClient(AuthSyncMethods):
    """The Client for blocking code: a trio loop in a background thread runs the requests.

    Thread-safe: requests from several threads are pipelined over the one connection.
    """

    def __init__(self, client: Client, token: trio.lowlevel.TrioToken) -> None:
        self._client = client
        self._token = token

    @classmethod
    @contextmanager
    def connect(cls, addr: str = DEFAULT_ADDR, *, timeout: float = LIMITS.request_timeout,
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

        thread = threading.Thread(target=trio.run, args=(serve,), name=f"dynctl-{addr}",
                                  daemon=True)
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
            sk: bytes | str | None = None) -> str:
        return self._run(self._client.put, key, value, bucket=bucket, context=context, w=w,
                         pw=pw, sk=sk)

    def delete(self, key: bytes | str, *, bucket: str = "default", context: str | None = None,
               w: int | None = None, pr: int | None = None, pw: int | None = None,
               sk: bytes | str | None = None) -> str:
        return self._run(self._client.delete, key, bucket=bucket, context=context, w=w,
                         pr=pr, pw=pw, sk=sk)

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
        if not isinstance(value, bytes) or not isinstance(written_at, int):
            raise ProtocolError("get reply holds a malformed value")
        parsed.append(Value(value, datetime.fromtimestamp(written_at / 1000, UTC)))
    found = result.get("found")
    if not isinstance(found, bool):
        raise ProtocolError("get reply without a found flag")
    return Object(found=found, values=parsed, context=_context_of(result))


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
