"""One pipelined connection to a node: the client's, and the node's to its peers.

Every request gets an id, queues its encoded frame, and waits for the reply with that id;
one writer task sends everything queued so far in one ``send_all`` (coalescing is what
makes pipelining pay) and one reader task hands each reply to the request waiting for it.
At most ``Limits.max_inflight_per_connection`` requests are in flight at once (the node's
per-connection limit). Failures are the exceptions of ``common.errors``: an unreachable
node, a broken connection is ``Unavailable``; a TLS refusal ``Unauthorized``; a bad
address ``ClientConfigError``. A reply may be up to ``MAX_REPLY_BYTES``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from common.codec import FrameDecoder, FrameSizes, encode_frame
from common.errors import (
    DynError,
    ProtocolError,
    Unauthorized,
    Unavailable,
    UsageError,
    error_from_wire,
)
from common.limits import Limits
from common.messages import check_response, request
from common.wire.framing import FrameWriter
from common.wire.tls import failure_reason

log = logging.getLogger("wire")

LIMITS = Limits()
# A get may return up to max_siblings values of max_value_bytes each, plus their envelope.
MAX_REPLY_BYTES = LIMITS.max_siblings * (LIMITS.max_value_bytes + 64) + LIMITS.max_frame_bytes
_RECEIVE_CHUNK = 64 * 1024
_MAX_REQUEST_ID = 2**63 - 1
_HOST_PORT = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d{1,5})$")


class ClientConfigError(UsageError, ValueError):
    """A bad node address or TLS file: the caller's mistake, exit 2."""


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``); a clear ClientConfigError otherwise."""
    match = _HOST_PORT.match(addr)
    if match is None:
        raise ClientConfigError(f"bad node address {addr!r}: expected HOST:PORT")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ClientConfigError(f"bad node address {addr!r}: port must be 1..65535")
    return match["ipv6"] or match["host"], port


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

    Requests sent while others are in flight go in batch frames once ``may_batch()`` says
    the node reads them (the peer transport: the cluster's feature; the client:
    ``learn_batching``, the node's ping reply); a request alone goes at once, alone.
    """

    def __init__(self, stream: trio.abc.Stream, addr: str, *,
                 may_batch: Callable[[], bool] | None = None,
                 frames_in: FrameSizes | None = None,
                 frames_out: FrameSizes | None = None) -> None:
        self.addr = addr
        self._stream = stream
        self._decoder = FrameDecoder(MAX_REPLY_BYTES, LIMITS.max_nesting, frames_in)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._writer = FrameWriter(stream, sizes=frames_out)
        if may_batch is not None:
            self._writer.may_batch = may_batch
        self._slots = trio.Semaphore(LIMITS.max_inflight_per_connection)
        self._broken: DynError | None = None
        self._scope = trio.CancelScope()
        self._tls = isinstance(stream, trio.SSLStream)
        self._answered = False  # a reply arrived: the node accepted this connection

    @classmethod
    async def open(cls, addr: str, nursery: trio.Nursery, *,
                   ssl_context: ssl.SSLContext | None = None,
                   may_batch: Callable[[], bool] | None = None,
                   frames_in: FrameSizes | None = None,
                   frames_out: FrameSizes | None = None) -> Connection:
        """Connect to ``addr`` (TLS when ``ssl_context`` is given) and start serving.

        Unavailable when the node cannot be reached, Unauthorized when TLS is refused.
        Callers bound the time it may take (``trio.fail_after``).
        """
        host, port = parse_addr(addr)
        stream = await _open_stream(addr, host, port, ssl_context)
        connection = cls(stream, addr, may_batch=may_batch, frames_in=frames_in,
                         frames_out=frames_out)
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

    def learn_batching(self) -> None:
        """Ask the node (a ping, sent without waiting) whether it reads batch frames, and
        batch once it says so; a node that predates them never announces it."""
        def announced(result: dict[str, Any] | None, error: DynError | None) -> None:
            batch = (result or {}).get("batch")
            if isinstance(batch, int) and not isinstance(batch, bool) and batch > 1:
                self._writer.may_batch = _always

        self.submit("ping", {}, announced)

    def _send(self, op: str, fields: dict[str, Any], pending: _Pending) -> int:
        """Queue the request's frame under a fresh id; a slot is already held for it.
        With other requests in flight it waits for the writer task (at most a scheduler
        pass) to share a batch frame with what is sent in the same pass."""
        rid = self._next_id
        self._next_id = rid + 1 if rid < _MAX_REQUEST_ID else 1
        frame = encode_frame(request(op, rid, **fields), LIMITS.max_frame_bytes)
        defer = bool(self._pending) and self._writer.may_batch()
        self._pending[rid] = pending
        self._writer.send(frame, defer=defer)
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
        error = (connection_error(self.addr, exc) if exc is not None
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


def _always() -> bool:
    return True


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


async def _open_stream(addr: str, host: str, port: int,
                       tls: ssl.SSLContext | None) -> trio.abc.Stream:
    """TCP, then the TLS handshake; a stream that fails half-way is closed again."""
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise connection_error(addr, exc) from exc
    if tls is None:
        return tcp
    stream = trio.SSLStream(tcp, tls, server_hostname=host)
    try:
        await stream.do_handshake()
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.BrokenResourceError | OSError):
            raise connection_error(addr, exc) from exc
        raise
    return stream


def connection_error(addr: str, exc: BaseException) -> DynError:
    """Name the root cause of a connection failure: refused, reset, or a TLS refusal."""
    reason = failure_reason(exc)
    if reason is not None:
        return Unauthorized(f"TLS with {addr} failed: {reason}")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        elif isinstance(cause, socket.gaierror):
            return Unavailable(f"cannot reach {addr}: {cause.strerror}")
        elif isinstance(cause, OSError) and cause.errno:
            return Unavailable(f"cannot reach {addr}: {os.strerror(cause.errno).lower()}")
        else:
            cause = cause.__cause__
    return Unavailable(f"cannot reach {addr}: {str(exc) or 'connection broken'}")
