"""The coalescing writer every connection uses: frames go straight to the kernel when
nothing is waiting, else in order through the writer task."""

from __future__ import annotations

import trio

from common.codec import FrameSizes, batch_frames, encode_frame
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


def _always() -> bool:
    return True


async def test_frames_queued_together_go_as_one_batch_frame_once_the_other_end_reads_them(
) -> None:
    ours, theirs = await _pair()
    sizes = FrameSizes()
    writer = FrameWriter(ours, sizes=sizes)
    writer.may_batch = _always
    frames = [encode_frame({"id": rid, "ok": True}) for rid in range(1, 4)]
    for frame in frames:
        writer.send(frame, defer=True)  # more expected right behind: left to the task
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        ((batch, _),) = batch_frames(frames, 1 << 20)
        assert await _read(theirs, len(batch)) == batch
        nursery.cancel_scope.cancel()
    assert sizes.counts[3] == 1 and sizes.frames == 1


async def test_a_frame_alone_is_sent_at_once_even_when_batching() -> None:
    ours, theirs = await _pair()
    writer = FrameWriter(ours)  # its run() task is never started
    writer.may_batch = _always
    frame = encode_frame({"id": 1, "ok": True})
    writer.send(frame)
    assert await _read(theirs, len(frame)) == frame


async def test_without_batching_queued_frames_go_as_they_are() -> None:
    ours, theirs = await _pair()
    writer = FrameWriter(ours, eager=False)  # may_batch: never (an older peer)
    frames = [encode_frame({"id": rid, "ok": True}) for rid in range(1, 4)]
    for frame in frames:
        writer.send(frame)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        assert await _read(theirs, sum(map(len, frames))) == b"".join(frames)
        nursery.cancel_scope.cancel()
