"""The coalescing writer every connection uses: frames go straight to the kernel when
nothing is waiting, else in order through the writer task."""

from __future__ import annotations

import trio

from common.wire.framing import FrameWriter


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def _read(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            data += await stream.receive_some(1 << 20)
    return data


async def test_an_idle_writer_sends_at_once_without_its_task() -> None:
    ours, theirs = await _pair()
    writer = FrameWriter(ours)  # its run() task is never started
    writer.send(b"one")
    writer.send(b"two")
    assert await _read(theirs, 6) == b"onetwo"
    await ours.aclose()
    writer.send(b"late")  # a reply after the connection closed: dropped, never raised
    await theirs.aclose()


async def test_a_writer_that_is_not_eager_leaves_every_frame_to_its_task() -> None:
    ours, theirs = await _pair()
    writer = FrameWriter(ours, eager=False)
    writer.send(b"one")
    writer.send(b"two")
    assert writer._queue == [b"one", b"two"]  # coalesced into one send by the task
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        assert await _read(theirs, 6) == b"onetwo"
        nursery.cancel_scope.cancel()


async def test_what_the_kernel_does_not_take_is_queued_in_order() -> None:
    ours, theirs = await _pair()
    writer = FrameWriter(ours)
    frames = [bytes([i % 251]) * 100_000 for i in range(40)]  # far more than socket buffers
    for frame in frames:
        writer.send(frame)
    assert writer._queue  # the kernel's buffer filled up: the rest waits for the task
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        assert await _read(theirs, 4_000_000) == b"".join(frames)
        await writer.drained()
        nursery.cancel_scope.cancel()
