"""Outgoing frames: one coalescing writer per connection (the daemon's and the client's)."""

from __future__ import annotations

import math
import os

import trio


class FrameWriter:
    """Queue encoded frames; one task sends everything queued in one send_all.

    With ``send_timeout`` a send that the other side does not take within that many seconds
    raises trio.TooSlowError (a client that stopped reading). ``eager`` (plain sockets only)
    hands a frame to the kernel at once when nothing is waiting; without it every frame
    waits for the task, which coalesces more when the other side answers in microseconds.
    """

    def __init__(self, stream: trio.abc.Stream, send_timeout: float = math.inf, *,
                 eager: bool = True) -> None:
        self.stream = stream
        self.eager = eager and isinstance(stream, trio.SocketStream)
        self.send_timeout = send_timeout
        self._queue: list[bytes] = []
        self._wakeup = trio.Event()
        self._sending = False
        self._unsent_bytes = 0
        self._progress = trio.Event()

    def send(self, frame: bytes) -> None:
        if self.eager and not self._queue and not self._sending:
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
                if sent == len(frame):
                    return
                frame = frame[sent:]
        self._queue.append(frame)
        self._unsent_bytes += len(frame)
        self._wakeup.set()

    async def wait_room(self, max_unsent_bytes: int) -> None:
        """Back-pressure: wait while more than ``max_unsent_bytes`` are queued or sending."""
        while self._unsent_bytes > max_unsent_bytes:
            await self._progress.wait()

    async def drained(self) -> None:
        """Wait until everything queued so far has been handed to the stream."""
        while self._queue or self._sending:
            await self._progress.wait()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            data, self._queue = b"".join(self._queue), []
            self._sending = True
            with trio.fail_after(self.send_timeout):
                await self.stream.send_all(data)
            self._sending = False
            self._unsent_bytes -= len(data)
            self._progress.set()
            self._progress = trio.Event()
