"""The listener: one port for clients and peers, frames in, responses out.

Per connection: one reader loop (decode, validate, admit) and one writer task
that coalesces every queued response into a single send. Requests run as
tasks in the connection's nursery, bounded by `max_inflight_per_connection`
(the reader stops reading while the bound is reached: back-pressure, not
unbounded queues); it also stops while more than `max_frame_bytes` of answers
wait for a client that does not read them. Deadlines, all from `Limits`:
`idle_timeout` between frames; `frame_timeout` to deliver a frame once its
first byte arrived (so a slow loris trickling bytes is closed however it paces
them), to complete the TLS handshake, and for each send to a client that does
not read. Nothing a client sends can end `serve`: every failure is confined to
its connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from common import messages
from common.codec import FrameDecoder, encode_frame
from common.errors import DynError, ProtocolError, Unauthorized
from common.limits import Limits
from common.messages import Request
from common.wire.framing import FrameWriter
from common.wire.tls import failure_reason

log = logging.getLogger("dynd.server")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection."""

    address: str
    identity: str | None  # certificate common name under TLS, else None


Handler = Callable[[Request, Peer], Awaitable[dict[str, Any]]]
# reply(result, None) or reply(None, error): called exactly once per request.
Reply = Callable[[dict[str, Any] | None, Exception | None], None]
# Takes a request without a task (returns True and calls reply, now or from a callback),
# or returns False to leave it to the Handler.
ImmediateHandler = Callable[[Request, Peer, Reply], bool]


async def answered(start: Callable[[Reply], bool]) -> dict[str, Any] | None:
    """Wait for a reply-style operation: ``start(reply)`` takes it (True) and calls
    ``reply`` once, now or later, or declines it (False: None is returned). The result,
    or the error raised; what ``start`` raises propagates."""
    done = trio.Event()
    outcome: list[Any] = [None, None]

    def reply(result: dict[str, Any] | None, error: Exception | None) -> None:
        outcome[:] = [result, error]
        done.set()

    if not start(reply):
        return None
    await done.wait()
    result, error = outcome
    if error is not None:
        raise error
    return result


class Server:
    """``handler`` answers a request in a task of its own; ``answer_now``, when given, is
    offered each request first, in the reader loop, and takes what needs no task: a replica
    read answered on the spot, a replica write answered when its group commit lands. No
    spawn, no scheduler pass; the request holds its admission slot until answered."""

    def __init__(
        self, handler: Handler, limits: Limits, ssl_context: ssl.SSLContext | None = None,
        answer_now: ImmediateHandler | None = None,
    ) -> None:
        self.handler = handler
        self.answer_now = answer_now
        self.limits = limits
        self.ssl_context = ssl_context
        self.connections = 0

    async def serve(
        self, listeners: list[trio.SocketListener], *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on already-bound listeners until cancelled."""
        await trio.serve_listeners(self._guarded, listeners, task_status=task_status)

    async def _guarded(self, stream: trio.SocketStream) -> None:
        address = _address_of(stream)
        if self.connections >= self.limits.max_connections:
            log.warning("event=connection_refused peer=%s reason=max_connections", address)
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        # Nurseries wrap errors in groups, hence except*; a bug confined to one connection is
        # logged, never allowed to end serve_listeners (and with it the node).
        try:
            await self.handle_connection(stream, address)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                 OSError) as group:
            log.debug("event=connection_lost peer=%s error=%r", address, group.exceptions[0])
        except* trio.TooSlowError:
            log.info("event=connection_timeout peer=%s reason=client_not_reading", address)
        except* Exception:
            log.exception("event=connection_crash peer=%s", address)
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def handle_connection(self, stream: trio.abc.Stream, address: str) -> None:
        identity = None
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
            try:
                with trio.fail_after(self.limits.frame_timeout):
                    await stream.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                reason = _tls_failure(exc)
                log.warning("event=tls_refused peer=%s reason=%r", address, reason)
                if reason in _NOT_TLS:  # tell a plaintext client why, in its own protocol
                    refusal = Unauthorized("this node accepts only TLS connections: use "
                                           "--tls-ca, --tls-cert and --tls-key")
                    await _say_and_hang_up(stream.transport_stream,
                                           encode_frame(messages.failure(0, refusal)))
                return
            identity = _common_name(stream.getpeercert())
        peer = Peer(address, identity)
        decoder = FrameDecoder(self.limits.max_frame_bytes, self.limits.max_nesting)
        writer = FrameWriter(stream, send_timeout=self.limits.frame_timeout)
        admission = trio.Semaphore(self.limits.max_inflight_per_connection)
        fatal: ProtocolError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            try:
                await self._read_loop(stream, decoder, writer, admission, peer, nursery)
            except ProtocolError as exc:
                fatal = exc
            else:  # the peer stopped sending: answer what it already asked, then close
                with trio.move_on_after(self.limits.request_timeout):
                    for _ in range(self.limits.max_inflight_per_connection):
                        await _admit(admission)  # all slots back: every request answered
                    await writer.drained()
            nursery.cancel_scope.cancel()
        if fatal is not None:
            log.info("event=protocol_error peer=%s error=%r", address, fatal.message)
            await _say_and_hang_up(stream, encode_frame(messages.failure(0, fatal)))

    async def _read_loop(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, writer: FrameWriter,
        admission: trio.Semaphore, peer: Peer, nursery: trio.Nursery,
    ) -> None:
        limits = self.limits
        frame_deadline: float | None = None  # set when the first byte of a frame arrives
        while True:
            await writer.wait_room(limits.max_frame_bytes)
            try:
                message = decoder.next_message()
            except ProtocolError as exc:
                if decoder.failed:
                    raise  # the stream cannot be resynchronised: hang up
                frame_deadline = None
                writer.send(encode_frame(messages.failure(0, exc)))
                continue
            if message is None:
                if not decoder.buffered:
                    frame_deadline = None
                    deadline = trio.current_time() + limits.idle_timeout
                elif frame_deadline is None:
                    deadline = frame_deadline = trio.current_time() + limits.frame_timeout
                else:
                    deadline = frame_deadline
                with trio.move_on_at(deadline) as scope:
                    data = await stream.receive_some(65536)
                if scope.cancelled_caught:
                    log.info("event=connection_timeout peer=%s partial_frame=%s",
                             peer.address, bool(decoder.buffered))
                    return
                if not data:
                    return
                decoder.receive_data(data)
                continue
            frame_deadline = None
            try:
                request = messages.validate_request(message, self.limits)
            except DynError as exc:
                writer.send(encode_frame(messages.failure(messages.reply_id(message), exc)))
                continue
            await _admit(admission)
            reply = partial(_reply, request, writer, admission)
            if self.answer_now is not None:
                try:
                    if self.answer_now(request, peer, reply):
                        continue
                except Exception as exc:  # noqa: BLE001 - answered as the task path would
                    reply(None, exc)
                    continue
            nursery.start_soon(self._answer, request, peer, reply)

    async def _answer(self, request: Request, peer: Peer, reply: Reply) -> None:
        try:
            result = await self.handler(request, peer)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            reply(None, exc)
        else:
            reply(result, None)


async def _admit(admission: trio.Semaphore) -> None:
    """Take a slot, yielding to the scheduler only when none is free: a frame below the
    bound costs no scheduler round trip, and a closed connection with nothing in flight
    takes all its slots back at once (256 round trips kept it counted against
    max_connections after the client had gone)."""
    try:
        admission.acquire_nowait()
    except trio.WouldBlock:
        await admission.acquire()


def _reply(request: Request, writer: FrameWriter, admission: trio.Semaphore,
           result: dict[str, Any] | None, error: Exception | None) -> None:
    """Queue the answer to ``request`` (its result, or the error; a crash is logged) and
    free its admission slot."""
    admission.release()
    if error is None:
        assert result is not None
        writer.send(encode_frame(messages.ok(request.id, **result)))
        return
    if not isinstance(error, DynError):
        log.error("event=handler_crash op=%s", request.op, exc_info=error)
        error = DynError(f"internal error: {error!r}")
    writer.send(encode_frame(messages.failure(request.id, error)))


def _address_of(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def _say_and_hang_up(stream: trio.abc.Stream, frame: bytes) -> None:
    """Send a last frame (why the connection ends), then drain the peer for up to 1 s.

    Closing a socket with unread bytes makes the kernel send a reset, and a reset can
    discard the frame before the peer reads it: read what the peer still sends until it
    hangs up too (or the second is over).
    """
    with trio.move_on_after(1):
        await stream.send_all(frame)
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        while await stream.receive_some(65536):
            pass


# OpenSSL's reasons for a first record that is not TLS at all (a plaintext client).
_NOT_TLS = frozenset({"wrong version number", "http request", "unknown protocol"})


def _tls_failure(exc: BaseException) -> str:
    """Why a handshake failed: OpenSSL's reason, else the exception."""
    reason = failure_reason(exc)
    if reason is not None:
        return reason
    if isinstance(exc, trio.TooSlowError):
        return "handshake not completed in time"
    return repr(exc)


def _common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None
