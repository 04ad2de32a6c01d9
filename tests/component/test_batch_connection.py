"""Batch frames end to end: a Connection and the Server over a socket pair.

Requests ready together go as one frame once the node reads batches; a request alone goes
alone, at once; a node that never announced batches never receives one; a message of a
batch that is not a valid request gets its own error reply while the others are answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import trio

from common.codec import MAX_BATCH_MESSAGES, FrameDecoder, FrameSizes
from common.limits import Limits
from common.messages import Request, request
from common.wire.connection import Connection
from dynd.server import Peer, Reply, Server

LIMITS = Limits()


def _pinged(announce: bool) -> Any:
    def answer_now(request: Request, peer: Peer, reply: Reply) -> bool:
        reply({"node": "n1"} | ({"batch": MAX_BATCH_MESSAGES} if announce else {}), None)
        return True
    return answer_now


async def _unused_handler(request: Request, peer: Peer) -> dict[str, Any]:
    raise AssertionError("every request is answered now")


@asynccontextmanager
async def _connected(announce: bool = True) -> AsyncIterator[tuple[Connection, FrameSizes,
                                                                  FrameSizes]]:
    """A Connection to a Server answering pings; the messages per frame the server read
    and the connection read."""
    server_in, client_in = FrameSizes(), FrameSizes()
    server = Server(_unused_handler, LIMITS, answer_now=_pinged(announce), frames_in=server_in)
    ours, theirs = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, trio.SocketStream(theirs), "client")
        connection = Connection(trio.SocketStream(ours), "node", frames_in=client_in)
        await nursery.start(connection._run)
        yield connection, server_in, client_in
        connection.close()
        nursery.cancel_scope.cancel()


async def _pings(connection: Connection, count: int) -> list[dict[str, Any]]:
    """``count`` pings submitted in one scheduler pass; their results."""
    results: list[dict[str, Any]] = []
    done = trio.Event()

    def replied(result: dict[str, Any] | None, error: Exception | None) -> None:
        assert error is None and result is not None
        results.append(result)
        if len(results) == count:
            done.set()

    for _ in range(count):
        assert connection.submit("ping", {}, replied) is not None
    with trio.fail_after(5):
        await done.wait()
    return results


async def test_requests_ready_together_travel_as_one_frame_and_so_do_their_replies() -> None:
    async with _connected() as (connection, server_in, client_in):
        connection.learn_batching()
        with trio.fail_after(5):
            await connection.call("ping", {})  # answered after the probe: batching is known
        await _pings(connection, 9)
    # The first goes alone, at once; the eight sent while it is in flight share a frame.
    assert server_in.counts[1] == 3 and server_in.counts[8] == 1  # probe, call, first; batch
    assert client_in.counts[8] == 1  # a connection that sent a batch gets batched replies


async def test_one_request_at_a_time_is_never_batched() -> None:
    async with _connected() as (connection, server_in, client_in):
        connection.learn_batching()
        for _ in range(5):
            with trio.fail_after(5):
                await connection.call("ping", {})
    assert server_in.frames == server_in.counts[1] == 6
    assert client_in.frames == client_in.counts[1] == 6


async def test_a_node_that_does_not_announce_batches_never_receives_one() -> None:
    async with _connected(announce=False) as (connection, server_in, _):
        connection.learn_batching()
        with trio.fail_after(5):
            await connection.call("ping", {})  # after the probe's reply
        await _pings(connection, 9)
    assert server_in.frames == server_in.counts[1] == 11


async def test_a_bad_request_in_a_batch_gets_its_error_and_the_others_their_answers() -> None:
    server = Server(_unused_handler, LIMITS, answer_now=_pinged(True))
    ours, theirs = trio.socket.socketpair()
    client = trio.SocketStream(ours)
    batch = cbor2.dumps([request("ping", 1), request("nope", 2),
                         request("ping", 3)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, trio.SocketStream(theirs), "client")
        await client.send_all(len(batch).to_bytes(4, "big") + batch)
        decoder = FrameDecoder(LIMITS.max_frame_bytes)
        replies: dict[int, dict[str, Any]] = {}
        with trio.fail_after(5):
            while len(replies) < 3:
                decoder.receive_data(await client.receive_some(65536))
                while (message := decoder.next_message()) is not None:
                    replies[message["id"]] = message
        nursery.cancel_scope.cancel()
    assert replies[1]["ok"] and replies[3]["ok"]
    assert not replies[2]["ok"] and "nope" in replies[2]["error"]["message"]
