"""A simulated network for many dynd nodes in one trio run: the seam of dynd/transport.py.

Every call is encoded with common.codec, travels as one frame over a link with a
seeded delay, may be dropped, duplicated or overtaken by a later frame (the delay
of each frame is drawn independently, with a long tail), is decoded and validated
with common.messages exactly as the real server does, and runs in the target
node's server nursery, so that a crash cancels it and a caller giving up does not.
The reply travels back the same way.

Faults, all decided by the network's `random.Random`:
- per-link loss, duplication and delay (`LinkFaults`), changeable at any time;
- partitions: `block(src, dst)` loses every frame from src to dst (one-way),
  `partition(groups)` blocks every link between groups (symmetric); `heal()`;
- a detached (crashed) node refuses connections at once, as TCP does, and the
  calls waiting on it fail fast; a blocked link makes calls time out instead.

Limits: a call waits at most its `timeout` (the caller's); frames above
`limits.max_frame_bytes` are refused at encoding, as on a real connection.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from common import messages
from common.codec import decode_body, encode_frame
from common.errors import DynError, Unavailable, Unreachable
from common.limits import Limits
from common.messages import Request
from dynd.server import ImmediateHandler, Peer, answered

log = logging.getLogger("sim.network")

Handler = Callable[[Request, Peer], Awaitable[dict[str, Any]]]
_PREFIX_BYTES = 4
_NOT_IDEMPOTENT = frozenset({"p_forward", "p_join", "put", "delete"})  # each mints a dot


@dataclass(frozen=True)
class LinkFaults:
    """What happens to frames on a link: loss and duplication probabilities, delay range.

    `tail` is the probability that a frame is delayed ten times longer: it lets later
    frames overtake earlier ones (reordering) and exercises deadlines.
    """

    drop: float = 0.0
    dup: float = 0.0
    min_delay: float = 0.0005
    max_delay: float = 0.01
    tail: float = 0.0


@dataclass
class _Endpoint:
    handler: Handler
    nursery: trio.Nursery
    life: int  # changes on every attach: a reply from a past life is lost
    answer_now: ImmediateHandler | None = None


@dataclass(eq=False)
class _Box:
    """Where the first reply to one call lands (duplicates find it already full)."""

    done: trio.Event
    frame: bytes | None = None
    error: DynError | None = None


class SimNetwork:
    def __init__(self, rng: random.Random, limits: Limits,
                 faults: LinkFaults = LinkFaults()) -> None:
        self.rng = rng
        self.limits = limits
        self.default_faults = faults
        self.link_faults: dict[tuple[str, str], LinkFaults] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.endpoints: dict[str, _Endpoint] = {}
        self.pending: dict[str, dict[_Box, None]] = {}  # dst -> calls waiting on it (ordered)
        self.bytes_sent: Counter[tuple[str, str]] = Counter()  # (sender addr, op) -> bytes
        self.frames = Counter[str]()  # sent, dropped, duplicated, blocked
        self.internal_errors: list[str] = []  # handler crashes: product bugs
        self.nursery: trio.Nursery | None = None  # frames in flight live here
        self._lives = 0
        self._next_id = 1

    # ---- topology and faults ---------------------------------------------------------

    def attach(self, addr: str, handler: Handler, nursery: trio.Nursery,
               answer_now: ImmediateHandler | None = None) -> None:
        """`addr` accepts calls, served by `handler` in `nursery` (cancelled on a crash),
        offered to `answer_now` first as dynd/server.py does."""
        self._lives += 1
        self.endpoints[addr] = _Endpoint(handler, nursery, self._lives, answer_now)

    def detach(self, addr: str) -> None:
        """`addr` crashed: refuse new calls, reset the ones waiting on it."""
        self.endpoints.pop(addr, None)
        for box in self.pending.pop(addr, {}):
            if not box.done.is_set():
                box.error = Unavailable(f"connection to {addr} reset")
                box.done.set()

    def faults(self, src: str, dst: str) -> LinkFaults:
        return self.link_faults.get((src, dst), self.default_faults)

    def block(self, src: str, dst: str) -> None:
        """Lose every frame from src to dst (a one-way partition)."""
        self.blocked.add((src, dst))

    def partition(self, groups: list[list[str]]) -> None:
        """Block every link between different groups, both ways."""
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                for a in group:
                    for b in other:
                        self.block(a, b)
                        self.block(b, a)

    def heal(self) -> None:
        self.blocked.clear()

    def transport(self, addr: str) -> SimTransport:
        return SimTransport(self, addr)

    # ---- frames -----------------------------------------------------------------------

    async def _travel(self, src: str, dst: str, frame: bytes) -> bool:
        """Carry one frame across the link; False when it is lost on the way."""
        faults = self.faults(src, dst)
        self.frames["sent"] += 1
        delay = self.rng.uniform(faults.min_delay, faults.max_delay)
        if self.rng.random() < faults.tail:
            delay *= 10
        lost = self.rng.random() < faults.drop
        await trio.sleep(delay)
        if (src, dst) in self.blocked:
            self.frames["blocked"] += 1
            return False
        if lost:
            self.frames["dropped"] += 1
        return not lost

    async def call(self, src: str, dst: str, op: str, fields: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        """One request from src to dst, as `Transport.call` promises: result or DynError."""
        rid = self._next_id
        self._next_id += 1
        frame = encode_frame(messages.request(op, rid, **fields), self.limits.max_frame_bytes)
        box = _Box(trio.Event())
        with trio.move_on_after(timeout):
            if dst not in self.endpoints:  # a crashed node: refused at once, as TCP does
                await trio.sleep(self.faults(src, dst).min_delay)
                raise Unreachable(f"connection to {dst} refused")
            self.bytes_sent[(src, op)] += len(frame)
            self.pending.setdefault(dst, {})[box] = None
            try:
                # TCP never delivers a request twice; what repeats in real life is a
                # resend of an idempotent peer op (merges, reads). A put is never resent
                # after it may have been delivered (coordinator: only Unreachable is retried).
                duplicable = op not in _NOT_IDEMPOTENT
                copies = 2 if duplicable and self.rng.random() < self.faults(src, dst).dup else 1
                self.frames["duplicated"] += copies - 1
                assert self.nursery is not None, "the network is not running"
                for _ in range(copies):
                    self.nursery.start_soon(self._request_in_flight, src, dst, frame, box)
                await box.done.wait()
            finally:
                self.pending.get(dst, {}).pop(box, None)
            if box.error is not None:
                raise box.error
            assert box.frame is not None
            reply = messages.check_response(
                decode_body(box.frame[_PREFIX_BYTES:], self.limits.max_nesting))
            return {name: value for name, value in reply.items() if name not in ("id", "ok")}
        raise Unavailable(f"{op} to {dst} timed out after {timeout:g}s")

    async def _request_in_flight(self, src: str, dst: str, frame: bytes, box: _Box) -> None:
        if not await self._travel(src, dst, frame):
            return
        endpoint = self.endpoints.get(dst)
        if endpoint is None:
            return
        endpoint.nursery.start_soon(self._serve, src, dst, endpoint, frame, box)

    async def _serve(self, src: str, dst: str, endpoint: _Endpoint, frame: bytes,
                     box: _Box) -> None:
        """What dynd/server.py does with one frame: decode, validate, handle, answer."""
        message = decode_body(frame[_PREFIX_BYTES:], self.limits.max_nesting)
        rid = messages.reply_id(message)
        try:
            request = messages.validate_request(message, self.limits)
            response = messages.ok(rid, **await _answer(endpoint, request, Peer(src, None)))
        except DynError as exc:
            response = messages.failure(rid, exc)
        except Exception as exc:
            log.exception("event=handler_crash node=%s op=%s", dst, message.get("op"))
            self.internal_errors.append(f"{dst} {message.get('op')}: {exc!r}")
            response = messages.failure(rid, DynError(f"internal error: {exc!r}"))
        reply = encode_frame(response)
        self.bytes_sent[(dst, str(message.get("op")))] += len(reply)
        if not await self._travel(dst, src, reply):
            return
        current = self.endpoints.get(dst)
        if current is None or current.life != endpoint.life:
            return  # the node crashed after answering: the connection is gone
        if not box.done.is_set():
            box.frame = reply
            box.done.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the frames in flight until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()


async def _answer(endpoint: _Endpoint, request: Request, peer: Peer) -> dict[str, Any]:
    """The result of one request: from the endpoint's fast path if it takes it, else from
    its handler."""
    if endpoint.answer_now is not None:
        result = await answered(partial(endpoint.answer_now, request, peer))
        if result is not None:
            return result
    return await endpoint.handler(request, peer)


class SimTransport:
    """dynd.transport.Transport for one node (or client) address on a SimNetwork."""

    def __init__(self, network: SimNetwork, addr: str) -> None:
        self.network = network
        self.addr = addr

    async def call(self, addr: str, op: str, fields: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        return await self.network.call(self.addr, addr, op, fields, timeout)

    def submit(self, addr: str, op: str, fields: dict[str, Any],
               on_reply: Any) -> None:
        """Every simulated request takes a trip through the network's tasks: the node
        falls back to ``call`` in a task of its own, as for a busy real connection."""
        return None
