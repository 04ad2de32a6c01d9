"""The Prometheus endpoint: a deliberately tiny HTTP/1.1 server on trio.

It answers ``GET /metrics`` (and ``HEAD``) with the node's registry in the text
exposition format, 404 for any other path, 405 for other methods, and closes
the connection after every answer. Limits, so a scraper gone wrong (or anyone
else who can reach the port: it is plaintext and unauthenticated, keep it on
loopback or a private network) cannot hurt the node:

- the request head (request line and headers) is at most ``MAX_HEAD_BYTES``;
  a body is never read;
- a connection gets ``CONNECTION_TIMEOUT`` seconds from accept to last byte sent;
- at most ``MAX_CONNECTIONS`` are served at once; more are closed on accept.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.config import parse_hostport

log = logging.getLogger("dynd.metrics")

MAX_HEAD_BYTES = 8192
CONNECTION_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
METRICS_PATH = "/metrics"

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False) -> bytes:
    headers = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {content_type}",
               f"Content-Length: {len(body)}", "Connection: close"]
    if status == 405:
        headers.append("Allow: GET, HEAD")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)


def respond(head: bytes, registry: CollectorRegistry) -> bytes:
    """The whole HTTP response to a request head (request line and headers, no body)."""
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"bad request line\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"only GET and HEAD\n")
    if target != METRICS_PATH.encode():
        return _response(404, f"not found; try {METRICS_PATH}\n".encode())
    try:
        body = generate_latest(registry)
    except Exception:  # a broken collector is a 500 for the scraper, not a dead node
        log.exception("event=metrics_failed")
        return _response(500, b"metrics collection failed\n")
    return _response(200, body, CONTENT_TYPE_LATEST, head_only=method == b"HEAD")


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """Bytes up to the blank line ending the head; None if it is over MAX_HEAD_BYTES."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) <= MAX_HEAD_BYTES:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break  # the client half-closed: answer what came
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    return head if len(head) <= MAX_HEAD_BYTES else None


async def _serve_connection(stream: trio.SocketStream, registry: CollectorRegistry,
                            slots: trio.CapacityLimiter) -> None:
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await trio.aclose_forcefully(stream)
        return
    try:
        with trio.move_on_after(CONNECTION_TIMEOUT):
            head = await _read_head(stream)
            answer = (_response(431, b"request head too large\n") if head is None
                      else respond(head, registry))
            await stream.send_all(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the scraper went away; nothing to tell it
    finally:
        slots.release()
        await trio.aclose_forcefully(stream)


async def serve_metrics(listen: str, registry: CollectorRegistry, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `registry` on `listen` (HOST:PORT) until cancelled; `started(port)` once bound."""
    host, port = parse_hostport(listen)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("event=metrics_public listen=%s msg=%r", listen,
                    "the metrics endpoint is plaintext and unauthenticated")
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.CapacityLimiter(MAX_CONNECTIONS)
    log.info("event=metrics_listening addr=%s:%d path=%s", host, bound, METRICS_PATH)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners,
                            lambda stream: _serve_connection(stream, registry, slots), listeners)
        task_status.started(bound)
