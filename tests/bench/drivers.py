"""Benchmark drivers for Redis and etcd, on trio like dynd's, so that all three stores are
driven by the same client machinery (dynctl.bench): same processes, same pipelining model.

- Redis: RESP2 over a few pipelined connections (replies come back in order, so a FIFO of
  waiters is the whole protocol state), sent through dynd's coalescing FrameWriter.
  read = GET, update/insert = SET, read-modify-write = GET then SET.
- etcd: its v3 gRPC-gateway (HTTP/1.1 + JSON, keys and values base64) with one keep-alive
  connection per request in flight (HTTP/1.1 answers in order, one at a time).
  read = POST /v3/kv/range (linearizable, etcd's default), update/insert = /v3/kv/put,
  read-modify-write = range then put. Items (workload E) are keys ``pk/sk``; a scan is one
  range read from ``pk/start`` to the end of the prefix ``pk/`` with ``limit`` L
  (``etcdctl get --prefix --limit L`` from the start key); reversed, from ``pk/`` up to
  and including ``pk/start``, sorted by key descending.

Limits: a reply may be at most ``MAX_REPLY_BYTES``; nothing is retried.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from common.wire.framing import FrameWriter
from dynctl.bench.config import Target
from dynctl.bench.drivers import ScanResult
from dynctl.client import parse_addr

MAX_REPLY_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024


class StoreError(Exception):
    """An error reply or a broken connection of a benchmarked store."""


class _Buffered:
    """A stream with a read buffer: exact reads and line reads for the two protocols."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(_CHUNK)
        if not data:
            raise StoreError("connection closed by the server")
        self.buffer += data
        if len(self.buffer) > MAX_REPLY_BYTES:
            raise StoreError("reply too large")

    async def read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            await self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[:end + len(marker)]
        return line

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


# -- Redis -------------------------------------------------------------------------------

def resp_command(*parts: bytes) -> bytes:
    """One RESP2 command: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisConnection:
    """Pipelined RESP2: one writer coalescing commands, one reader answering a FIFO."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._reader = _Buffered(stream)
        # dynd's coalescing writer, without eager sends: Redis answers in microseconds, so
        # coalescing commands gets it further (84,000 against 63,000 ops/s measured here).
        self._writer = FrameWriter(stream, eager=False)
        self._waiting: deque[tuple[trio.Event, list[Any]]] = deque()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer.run)
            task_status.started()
            await self._read_loop()
            nursery.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        try:
            while True:
                reply = await self._read_reply()
                done, slot = self._waiting.popleft()
                slot.append(reply)
                done.set()
        except (StoreError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            for done, slot in self._waiting:
                slot.append(StoreError(f"redis connection lost: {exc}"))
                done.set()
            raise

    async def _read_reply(self) -> Any:
        line = await self._reader.read_until(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return StoreError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else (await self._reader.read_exactly(size + 2))[:-2]
        raise StoreError(f"unexpected RESP reply {line[:40]!r}")

    async def call(self, *parts: bytes) -> Any:
        done, slot = trio.Event(), []
        self._waiting.append((done, slot))
        self._writer.send(resp_command(*parts))
        await done.wait()
        if isinstance(slot[0], StoreError):
            raise slot[0]
        return slot[0]


class RedisDriver:
    def __init__(self, connections: list[RedisConnection]) -> None:
        self._connections = connections
        self._turn = 0

    def _next(self) -> RedisConnection:
        self._turn = (self._turn + 1) % len(self._connections)
        return self._connections[self._turn]

    async def read(self, key: bytes) -> int:
        return 0 if await self._next().call(b"GET", key) is None else 1

    async def update(self, key: bytes, value: bytes) -> None:
        await self._next().call(b"SET", key, value)

    insert = update

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        connection = self._next()
        await connection.call(b"GET", key)
        await connection.call(b"SET", key, value)


@asynccontextmanager
async def open_redis(target: Target, connections: int, in_flight: int
                     ) -> AsyncIterator[RedisDriver]:
    """The driver factory of Redis (Target.factory = 'tests.bench.drivers:open_redis')."""
    async with trio.open_nursery() as nursery:
        opened = []
        for index in range(connections):
            host, port = parse_addr(target.addrs[index % len(target.addrs)])
            connection = RedisConnection(await trio.open_tcp_stream(host, port))
            await nursery.start(connection.run)
            opened.append(connection)
        yield RedisDriver(opened)
        nursery.cancel_scope.cancel()


# -- etcd --------------------------------------------------------------------------------

class HttpConnection:
    """One HTTP/1.1 keep-alive connection: a POST of JSON, its JSON reply."""

    def __init__(self, host: str, port: int, stream: trio.SocketStream) -> None:
        self._host = f"{host}:{port}".encode()
        self._stream = stream
        self._reader = _Buffered(stream)

    async def post(self, path: bytes, document: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(document).encode()
        await self._stream.send_all(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, self._host, len(body), body))
        head = await self._reader.read_until(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            payload = await self._reader.read_exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = await self._read_chunked()
        else:
            raise StoreError(f"etcd reply without a length: {status_line!r}")
        if status_line.split(b" ")[1] != b"200":
            raise StoreError(f"etcd: {status_line.decode()} {payload[:200]!r}")
        return json.loads(payload)

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self._reader.read_until(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.read_until(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.read_exactly(size))
            await self._reader.read_exactly(2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdDriver:
    def __init__(self, pool: list[HttpConnection]) -> None:
        self._free = pool  # one request per connection at a time

    async def _post(self, path: bytes, document: dict[str, Any]) -> dict[str, Any]:
        while not self._free:  # cannot happen when the pool matches the tasks
            await trio.sleep(0)
        connection = self._free.pop()
        try:
            return await connection.post(path, document)
        finally:
            self._free.append(connection)

    async def read(self, key: bytes) -> int:
        reply = await self._post(b"/v3/kv/range", {"key": _b64(key)})
        return len(reply.get("kvs", ()))

    async def update(self, key: bytes, value: bytes) -> None:
        await self._post(b"/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    insert = update

    async def read_modify_write(self, key: bytes, value: bytes) -> None:
        await self.read(key)
        await self.update(key, value)

    async def insert_item(self, key: bytes, sk: bytes, value: bytes) -> None:
        await self.update(key + b"/" + sk, value)

    async def get_item(self, key: bytes, sk: bytes) -> int:
        return await self.read(key + b"/" + sk)

    async def scan(self, key: bytes, start: bytes, limit: int, reverse: bool) -> ScanResult:
        prefix = key + b"/"
        if reverse:
            document = {"key": _b64(prefix), "range_end": _b64(prefix + start + b"\0"),
                        "sort_order": "DESCEND", "sort_target": "KEY"}
        else:
            # the end of the prefix "pk/" is "pk0" ("0" is "/" + 1)
            document = {"key": _b64(prefix + start), "range_end": _b64(key + b"0")}
        reply = await self._post(b"/v3/kv/range", document | {"limit": limit})
        return ScanResult(len(reply.get("kvs", ())))


@asynccontextmanager
async def open_etcd(target: Target, connections: int, in_flight: int
                    ) -> AsyncIterator[EtcdDriver]:
    """The driver factory of etcd: ``in_flight`` connections spread over the members."""
    async with AsyncExitStack() as stack:
        pool = []
        for index in range(in_flight):
            host, port = parse_addr(target.addrs[index % len(target.addrs)])
            stream = await trio.open_tcp_stream(host, port)
            stack.push_async_callback(stream.aclose)
            pool.append(HttpConnection(host, port, stream))
        yield EtcdDriver(pool)
