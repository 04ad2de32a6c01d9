"""Requests to another member over the transport, by node id.

A member's address comes from the cluster state; a request that finds its
peer unavailable marks it suspect (dynd.liveness), so the next preference
list routes around it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from common.errors import DynError, Unavailable
from dynd.transport import ReplyCallback, Transport

# Starts a task in the node's root nursery.
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class Peers:
    def __init__(self, transport: Transport, addr_of: Callable[[str], str],
                 suspect: Callable[[str, str], None], request_timeout: float,
                 spawn: Spawn) -> None:
        self.transport = transport
        self.addr_of = addr_of
        self.suspect = suspect
        self.request_timeout = request_timeout
        self.spawn = spawn

    async def call(self, node: str, op: str, fields: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        try:
            return await self.transport.call(
                self.addr_of(node), op, fields, timeout or self.request_timeout)
        except Unavailable as exc:
            self.suspect(node, exc.message)
            raise

    async def call_addr(self, addr: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A request to an address that names no member (yet): a seed."""
        return await self.transport.call(addr, op, fields, self.request_timeout)

    def submit(self, node: str, op: str, fields: dict[str, Any],
               on_reply: ReplyCallback) -> Callable[[], None]:
        """Send a request without waiting for it: ``on_reply(result, None)`` or
        ``on_reply(None, error)`` comes once, unless the returned function abandoned it
        first. No task where the transport can do without (an open connection with a free
        slot); else ``call`` in a background task. Unavailable marks the node suspect,
        as in ``call``."""
        def replied(result: dict[str, Any] | None, error: DynError | None) -> None:
            if isinstance(error, Unavailable):
                self.suspect(node, error.message)
            on_reply(result, error)

        try:
            addr = self.addr_of(node)
        except Unavailable as exc:
            replied(None, exc)
            return _nothing
        abandon = self.transport.submit(addr, op, fields, replied)
        if abandon is not None:
            return abandon
        scope = trio.CancelScope()

        async def in_task() -> None:
            with scope:
                try:
                    result = await self.transport.call(addr, op, fields, self.request_timeout)
                except DynError as exc:
                    replied(None, exc)
                else:
                    replied(result, None)

        self.spawn(in_task)
        return scope.cancel


def _nothing() -> None:
    """Nothing to abandon: the request failed before it was sent."""
