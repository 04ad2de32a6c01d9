"""Outgoing frames: one coalescing writer per connection (the daemon's and the client's)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import trio

from common.codec import FrameSizes, batch_frames
from common.limits import Limits


def _never() -> bool:
    return False


class FrameWriter:
    """Queue encoded frames; one task sends everything queued in one send_all.

    With ``send_timeout`` a send that the other side does not take within that many seconds
    raises trio.TooSlowError (a client that stopped reading). ``eager`` (plain sockets only)
    hands a frame to the kernel at once when nothing is waiting; without it every frame
    waits for the task, which coalesces more when the other side answers in microseconds.

    Once ``may_batch()`` says the other end reads batch frames, the frames the task finds
    queued together go as batch frames of at most ``max_batch_bytes`` body bytes (the
    receiver's frame limit): one frame to decode for several messages. Nothing waits for a
    batch: ``send(frame, defer=True)``, for a frame with more expected right behind it, only
    skips the eager write, and the task sends it in the next scheduler pass.
    """

    def __init__(self, stream: trio.abc.Stream, send_timeout: float = math.inf, *,
                 eager: bool = True, max_batch_bytes: int = Limits().max_frame_bytes,
                 sizes: FrameSizes | None = None) -> None:
        self.stream = stream
        self.eager = eager and isinstance(stream, trio.SocketStream)
        self.send_timeout = send_timeout
        self.may_batch: Callable[[], bool] = _never
        self.max_batch_bytes = max_batch_bytes
        self.sizes = sizes
        self._queue: list[bytes] = []  # whole frames, in order
        self._tail = b""  # the rest of a frame the eager write began: sent first, never batched
        self._wakeup = trio.Event()
        self._sending = False
        self._unsent_bytes = 0
        self._progress = trio.Event()

    def send(self, frame: bytes, *, defer: bool = False) -> None:
        if (self.eager and not defer and not self._queue and not self._sending
                and not self._tail):
            # Nothing queued or being sent: hand the frame to the kernel now, as far as it
            # takes it without blocking, instead of waking the writer task for it (a
            # scheduler pass per frame when requests come one at a time). fileno() is -1
            # once the socket is closed, so a late reply never reaches a reused descriptor.
            fd = self.stream.socket.fileno()
            if fd >= 0:
                try:
                    sent = os.write(fd, frame)
                except OSError:  # would block, or broken: the writer task finds out which
                    sent = 0
                if self.sizes is not None:
                    self.sizes.observe(1)
                if sent == len(frame):
                    return
                self._tail = frame[sent:]
                self._unsent_bytes += len(self._tail)
                self._wakeup.set()
                return
        self._queue.append(frame)
        self._unsent_bytes += len(frame)
        self._wakeup.set()

    async def wait_room(self, max_unsent_bytes: int) -> None:
        """Back-pressure: wait while more than ``max_unsent_bytes`` are queued or sending."""
        while self._unsent_bytes > max_unsent_bytes:
            await self._progress.wait()

    async def drained(self) -> None:
        """Wait until everything queued so far has been handed to the stream."""
        while self._queue or self._tail or self._sending:
            await self._progress.wait()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            frames, self._queue = self._queue, []
            tail, self._tail = self._tail, b""
            data = b"".join((tail, *self._wire(frames)))
            unsent = self._unsent_bytes  # all of it is in data
            self._sending = True
            with trio.fail_after(self.send_timeout):
                await self.stream.send_all(data)
            self._sending = False
            self._unsent_bytes -= unsent
            self._progress.set()
            self._progress = trio.Event()

    def _wire(self, frames: list[bytes]) -> list[bytes]:
        """The queued frames as they go out: batched when the other end reads batches."""
        if len(frames) < 2 or not self.may_batch():
            if self.sizes is not None:
                for _ in frames:
                    self.sizes.observe(1)
            return frames
        wire = batch_frames(frames, self.max_batch_bytes)
        if self.sizes is not None:
            for _, messages in wire:
                self.sizes.observe(messages)
        return [frame for frame, _ in wire]
