"""The public Python client of dynd: trio-native ``Client`` and a blocking ``SyncClient``.

One ``Client`` holds one ``Connection`` (the same class carries the node's peer
traffic, see dynd/transport.py). Requests are pipelined: every request gets an id, queues
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
import os
import re
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from common.codec import FrameDecoder, encode_frame
from common.context import InvalidContext, VersionVector, decode_context
from common.errors import (
    Conflict,
    DynError,
    NotFound,
    ProtocolError,
    Rejected,
    Unauthorized,
    Unavailable,
    UsageError,
    error_from_wire,
)
from common.limits import Limits
from common.messages import check_response, request
from dynd.server import FrameWriter

log = logging.getLogger("dynctl.client")

DEFAULT_ADDR = "127.0.0.1:7070"
LIMITS = Limits()
# A get may return up to max_siblings values of max_value_bytes each, plus their envelope.
MAX_REPLY_BYTES = LIMITS.max_siblings * (LIMITS.max_value_bytes + 64) + LIMITS.max_frame_bytes
_RECEIVE_CHUNK = 64 * 1024
_MAX_REQUEST_ID = 2**63 - 1
DEFAULT_REMEMBERED_WRITES = 10_000  # keys whose last written context a client keeps
_HOST_PORT = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d{1,5})$")


class ClientConfigError(UsageError, ValueError):
    """A bad node address or TLS file: the caller's mistake, exit 2."""


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


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``); a clear ClientConfigError otherwise."""
    match = _HOST_PORT.match(addr)
    if match is None:
        raise ClientConfigError(f"bad node address {addr!r}: expected HOST:PORT")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ClientConfigError(f"bad node address {addr!r}: port must be 1..65535")
    return match["ipv6"] or match["host"], port


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


# on_reply(result, None) or on_reply(None, error): how a submitted request is answered.
ReplyCallback = Callable[[dict[str, Any] | None, DynError | None], None]


class _Pending:
    """A request waiting for its reply: a caller blocked in ``call`` (``done``), or a
    ``submit`` callback."""

    __slots__ = ("done", "reply", "error", "on_reply")

    def __init__(self, on_reply: ReplyCallback | None = None) -> None:
        self.done = trio.Event() if on_reply is None else None
        self.reply: dict[str, Any] | None = None
        self.error: DynError | None = None
        self.on_reply = on_reply


class Connection:
    """One pipelined connection: request ids, one reader, one coalescing writer.

    Shared by the Python client and the node's peer transport. ``open`` starts the
    connection's task in a nursery the caller owns; ``close`` (or any network failure)
    ends it and fails every waiting request with Unavailable, after which ``closed`` is
    true and every ``call`` fails at once: the owner opens a new connection. ``call`` has
    no deadline of its own; callers wrap it in theirs.
    """

    def __init__(self, stream: trio.abc.Stream, addr: str) -> None:
        self.addr = addr
        self._stream = stream
        self._decoder = FrameDecoder(MAX_REPLY_BYTES, LIMITS.max_nesting)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._writer = FrameWriter(stream)
        self._slots = trio.Semaphore(LIMITS.max_inflight_per_connection)
        self._broken: DynError | None = None
        self._scope = trio.CancelScope()
        self._tls = isinstance(stream, trio.SSLStream)
        self._answered = False  # a reply arrived: the node accepted this connection

    @classmethod
    async def open(cls, addr: str, nursery: trio.Nursery, *,
                   ssl_context: ssl.SSLContext | None = None) -> Connection:
        """Connect to ``addr`` (TLS when ``ssl_context`` is given) and start serving.

        Unavailable when the node cannot be reached, Unauthorized when TLS is refused.
        Callers bound the time it may take (``trio.fail_after``).
        """
        host, port = parse_addr(addr)
        stream = await _open_stream(addr, host, port, ssl_context)
        connection = cls(stream, addr)
        await nursery.start(connection._run)
        return connection

    @property
    def closed(self) -> bool:
        return self._broken is not None

    def close(self) -> None:
        """Stop the connection's task; pending and later calls fail with Unavailable."""
        if self._broken is None:
            self._fail(Unavailable(f"connection to {self.addr} closed"))

    async def call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the result fields of the reply (without ``id`` and ``ok``).

        Raises the DynError class of an error reply (its partial fields in ``details``).
        """
        try:  # a checkpoint per call costs a scheduler round trip; pending.done.wait() is one
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            if self._broken is not None:
                raise _fresh(self._broken)
            pending = _Pending()
            rid = self._send(op, fields, pending)
            try:
                await pending.done.wait()
            finally:
                del self._pending[rid]
        finally:
            self._slots.release()
        if pending.error is not None:
            raise _fresh(pending.error)
        assert pending.reply is not None
        return _result(pending.reply)

    def submit(self, op: str, fields: dict[str, Any],
               on_reply: ReplyCallback) -> Callable[[], None] | None:
        """Send one request without waiting for it (a coordinator's fan-out: no task per
        request). ``on_reply(result, None)`` or ``on_reply(None, error)`` is called once,
        from the reader, when the reply comes or the connection fails.

        Returns a function that abandons the request (its reply is dropped, ``on_reply``
        is not called); None, with nothing sent, when the connection is closed or has no
        free slot (the caller waits in ``call`` instead). No deadline of its own.
        """
        if self._broken is not None:
            return None
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return None
        try:
            rid = self._send(op, fields, _Pending(on_reply))
        except BaseException:
            self._slots.release()
            raise
        return partial(self._abandon, rid)

    def _send(self, op: str, fields: dict[str, Any], pending: _Pending) -> int:
        """Queue the request's frame under a fresh id; a slot is already held for it."""
        rid = self._next_id
        self._next_id = rid + 1 if rid < _MAX_REQUEST_ID else 1
        frame = encode_frame(request(op, rid, **fields), LIMITS.max_frame_bytes)
        self._pending[rid] = pending
        self._writer.send(frame)
        return rid

    def _abandon(self, rid: int) -> None:
        if self._pending.pop(rid, None) is not None:
            self._slots.release()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._write_loop)
                    task_status.started()
        finally:
            self.close()
            await trio.aclose_forcefully(self._stream)

    async def _write_loop(self) -> None:
        try:
            await self._writer.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(self._network_error(exc))

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_CHUNK)
                if not data:
                    self._fail(self._network_error(None))
                    return
                self._decoder.receive_data(data)
                while (message := self._decoder.next_message()) is not None:
                    self._dispatch(message)
        except DynError as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(self._network_error(exc))

    def _network_error(self, exc: BaseException | None) -> DynError:
        """Unavailable, except that a TLS connection the node drops before its first reply
        was refused (under TLS 1.3 a refused client learns it only on its first read)."""
        error = (_connection_error(self.addr, exc) if exc is not None
                 else Unavailable(f"connection to {self.addr} closed by the node"))
        if self._tls and not self._answered:
            return Unauthorized(f"{error.message}: the node dropped the TLS connection before "
                                f"any reply; it may require a client certificate signed by "
                                f"its CA (--tls-cert/--tls-key)")
        return error

    def _dispatch(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise ProtocolError(f"reply from {self.addr} without an integer id")
        if rid == 0:
            # The node could not read one of our frames: which request is unknown.
            raise error_from_wire(message.get("error"))
        self._answered = True
        pending = self._pending.get(rid)
        if pending is None:  # the request gave up waiting
            return
        if pending.done is not None:
            pending.reply = message
            pending.done.set()
            return
        del self._pending[rid]
        self._slots.release()
        try:
            result, error = _result(message), None
        except DynError as exc:
            result, error = None, exc
        _answer(pending, result, error)

    def _fail(self, error: DynError) -> None:
        """Fail every waiting request, and every later one, and end the connection's task."""
        if self._broken is None:
            self._broken = error
        for rid, pending in list(self._pending.items()):
            if pending.done is not None:
                pending.error = error
                pending.done.set()
            else:
                del self._pending[rid]
                self._slots.release()
                _answer(pending, None, _fresh(error))
        self._scope.cancel()


class WrittenContexts:
    """The context this client's last put or delete of a key answered, for the ``limit``
    keys written most recently (least recently written forgotten first)."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ClientConfigError(f"remembered_writes must be an integer >= 0, not {limit!r}")
        self.limit = limit
        self._contexts: OrderedDict[tuple[str, bytes], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def remember(self, bucket: str, key: bytes, context: str) -> None:
        if not self.limit:
            return
        self._contexts[(bucket, key)] = context
        self._contexts.move_to_end((bucket, key))
        if len(self._contexts) > self.limit:
            self._contexts.popitem(last=False)

    def covered_by(self, bucket: str, key: bytes, context: str) -> bool:
        """Whether a read answering ``context`` saw this client's last write of the key
        (True when none is remembered)."""
        written = self._contexts.get((bucket, key))
        if written is None or written == context:
            return True
        try:
            return descends(decode_context(context), decode_context(written))
        except InvalidContext:  # not ours to judge: the node's context is opaque
            return True


def descends(read: VersionVector, written: VersionVector) -> bool:
    """Whether version vector ``read`` covers every event of ``written``."""
    return all(read.get(actor, 0) >= counter for actor, counter in written.items())


class Client:
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
                  r: int | None = None, pr: int | None = None) -> Object:
        """Read a key; a missing key is ``Object(found=False)``, not an exception.

        ``pr``: how many of the replies must come from the key's primaries (default the
        bucket's PR); Unavailable when fewer can. An answer that misses this client's own
        last write of the key is read again from every replica (module docstring).
        """
        deadline = trio.current_time() + self.timeout
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        fields = _present(bucket=bucket, key=key, r=r, pr=pr)
        first = _parse_object(await self._call_before(deadline, "get", fields))
        if self.written.covered_by(bucket, key, first.context):
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
                  pw: int | None = None) -> str:
        """Write a value and return the new context.

        ``context`` is what a get returned: the write supersedes exactly the siblings that
        context covers. ``None`` is a blind write, a new sibling beside any existing ones.
        ``pw``: how many acknowledgements must come from the key's primaries (default the
        bucket's PW); Unavailable when fewer can.
        """
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        fields = _present(bucket=bucket, key=key,
                          value=as_bytes(value, "value", LIMITS.max_value_bytes),
                          context=context, w=w, pw=pw)
        written = _context_of(await self.call("put", **fields))
        self.written.remember(bucket, key, written)
        return written

    async def delete(self, key: bytes | str, *, bucket: str = "default",
                     context: str | None = None, w: int | None = None,
                     pr: int | None = None, pw: int | None = None) -> str:
        """Write a tombstone and return the new context.

        With ``context=None`` the key is read first (with ``pr``) and the tombstone
        supersedes what was read (a blind tombstone would leave every value visible beside
        it).
        """
        key = as_bytes(key, "key", LIMITS.max_key_bytes)
        if context is None:
            context = (await self.get(key, bucket=bucket, pr=pr)).context or None
        fields = _present(bucket=bucket, key=key, context=context, w=w, pw=pw)
        written = _context_of(await self.call("delete", **fields))
        self.written.remember(bucket, key, written)
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


class SyncClient:
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
            pr: int | None = None) -> Object:
        return self._run(self._client.get, key, bucket=bucket, r=r, pr=pr)

    def put(self, key: bytes | str, value: bytes | str, *, bucket: str = "default",
            context: str | None = None, w: int | None = None, pw: int | None = None) -> str:
        return self._run(self._client.put, key, value, bucket=bucket, context=context, w=w,
                         pw=pw)

    def delete(self, key: bytes | str, *, bucket: str = "default", context: str | None = None,
               w: int | None = None, pr: int | None = None, pw: int | None = None) -> str:
        return self._run(self._client.delete, key, bucket=bucket, context=context, w=w,
                         pr=pr, pw=pw)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self._run(self._client.call, op, **fields)

    def _run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return trio.from_thread.run(partial(method, *args, **kwargs), trio_token=self._token)


@contextmanager
def single_exception_unwrapped() -> Iterator[None]:
    """Re-raise the lone exception of a nursery's ExceptionGroup as itself.

    Trio wraps whatever escapes a nursery in a group; callers of this module expect the
    DynError classes, so a group of one is unwrapped (larger groups pass unchanged).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


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


def _result(message: dict[str, Any]) -> dict[str, Any]:
    """A reply's result fields (without ``id`` and ``ok``), or its error raised."""
    reply = check_response(message)
    return {name: value for name, value in reply.items() if name not in ("id", "ok")}


def _answer(pending: _Pending, result: dict[str, Any] | None, error: DynError | None) -> None:
    """Hand a submitted request its outcome; a callback's bug must not end the reader."""
    assert pending.on_reply is not None
    try:
        pending.on_reply(result, error)
    except Exception:
        log.exception("event=reply_callback_crash")


def _fresh(error: DynError) -> DynError:
    """A new instance per raise: one shared exception object would pile up tracebacks."""
    copy = type(error)(error.message)
    copy.__cause__ = error.__cause__
    return copy


def _tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if ca is None:
        if cert is not None or key is not None:
            raise ClientConfigError("a TLS client certificate needs --tls-ca / tls_ca as well")
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
        elif key is not None:
            raise ClientConfigError("tls_key given without tls_cert")
    except (OSError, ssl.SSLError) as exc:
        raise ClientConfigError(f"cannot load TLS files: {exc}") from exc
    return context


async def _open_stream(addr: str, host: str, port: int,
                       tls: ssl.SSLContext | None) -> trio.abc.Stream:
    """TCP, then the TLS handshake; a stream that fails half-way is closed again."""
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise _connection_error(addr, exc) from exc
    if tls is None:
        return tcp
    stream = trio.SSLStream(tcp, tls, server_hostname=host)
    try:
        await stream.do_handshake()
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.BrokenResourceError | OSError):
            raise _connection_error(addr, exc) from exc
        raise
    return stream


def _connection_error(addr: str, exc: BaseException) -> DynError:
    """Name the root cause of a connection failure: refused, reset, or a TLS refusal."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Unauthorized(f"TLS with {addr} failed: certificate verify failed: "
                                f"{cause.verify_message}")
        if isinstance(cause, ssl.SSLError):
            reason = (cause.reason or str(cause)).lower().replace("_", " ")
            return Unauthorized(f"TLS with {addr} failed: {reason}")
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        elif isinstance(cause, socket.gaierror):
            return Unavailable(f"cannot reach {addr}: {cause.strerror}")
        elif isinstance(cause, OSError) and cause.errno:
            return Unavailable(f"cannot reach {addr}: {os.strerror(cause.errno).lower()}")
        else:
            cause = cause.__cause__
    return Unavailable(f"cannot reach {addr}: {str(exc) or 'connection broken'}")
