"""Persistent, multiplexed connections to peers: the seam the simulator replaces.

`Transport.call(addr, op, fields, timeout)` is everything the node needs from
the network; `submit` is its task-free variant for fan-outs, where it can. The
real one keeps one pipelined connection per peer address (the same Connection
the Python client uses: request ids, one reader, one coalescing writer),
reconnects with exponential backoff, and turns every network failure or
deadline into Unavailable. tests/sim provides another implementation over a
simulated network."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Protocol

import trio

from common.codec import FrameSizes
from common.errors import Unavailable, Unreachable
from common.wire.connection import Connection, ReplyCallback


class Transport(Protocol):
    async def call(
        self, addr: str, op: str, fields: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Send one request to the node at `addr`; its result, or a DynError."""
        ...

    def submit(self, addr: str, op: str, fields: dict[str, Any],
               on_reply: ReplyCallback) -> Callable[[], None] | None:
        """Send without waiting (Connection.submit) when that needs no task; None when
        it would (no open connection, no free slot): the caller then uses ``call``."""
        ...


class TcpTransport:
    """One lazily opened connection per peer, shared by every task of the node.

    ``may_batch()``: whether peers read batch frames (the daemon sets it to its cluster's
    feature once the node exists, so a peer of an older release never receives one);
    ``frames_in`` and ``frames_out`` count messages per frame, for the metrics."""

    MAX_BACKOFF = 5.0

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.may_batch: Callable[[], bool] | None = None  # None: never
        self.frames_in: FrameSizes | None = None
        self.frames_out: FrameSizes | None = None
        self._connections: dict[str, Connection] = {}
        self._connecting: dict[str, trio.Lock] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # addr -> (retry_at, delay)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections' reader/writer tasks; closes them all when cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for connection in self._connections.values():
                connection.close()
            self._connections.clear()

    async def _connection(self, addr: str, timeout: float) -> Connection:
        connection = self._connections.get(addr)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connecting.setdefault(addr, trio.Lock())
        async with lock:
            connection = self._connections.get(addr)
            if connection is not None and not connection.closed:
                return connection
            retry_at, delay = self._backoff.get(addr, (0.0, 0.0))
            if trio.current_time() < retry_at:
                wait = retry_at - trio.current_time()
                raise Unreachable(f"{addr} unreachable (retrying in {wait:.1f}s)")
            if self._nursery is None:
                raise Unavailable("transport is not running")
            try:
                with trio.fail_after(timeout):
                    connection = await Connection.open(
                        addr, self._nursery, ssl_context=self.ssl_context,
                        may_batch=self.may_batch, frames_in=self.frames_in,
                        frames_out=self.frames_out)
            except (Unavailable, trio.TooSlowError) as exc:
                delay = min(max(delay * 2, 0.1), self.MAX_BACKOFF)
                self._backoff[addr] = (trio.current_time() + delay, delay)
                raise Unreachable(f"cannot reach {addr}: {exc}") from None
            self._backoff.pop(addr, None)
            self._connections[addr] = connection
            return connection

    def submit(self, addr: str, op: str, fields: dict[str, Any],
               on_reply: ReplyCallback) -> Callable[[], None] | None:
        connection = self._connections.get(addr)
        if connection is None or connection.closed:
            return None
        return connection.submit(op, fields, on_reply)

    async def call(
        self, addr: str, op: str, fields: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        if trio.current_effective_deadline() < trio.current_time() + timeout:
            # The caller's deadline comes first (a coordinator's fan-out): ours could never
            # fire, and a cancel scope per replica request is not free.
            return await self._send(addr, op, fields, timeout)
        with trio.move_on_after(timeout) as scope:
            return await self._send(addr, op, fields, timeout)
        assert scope.cancelled_caught
        raise Unavailable(f"{op} to {addr} timed out after {timeout:g}s")

    async def _send(self, addr: str, op: str, fields: dict[str, Any], timeout: float
                    ) -> dict[str, Any]:
        return await (await self._connection(addr, timeout)).call(op, fields)
