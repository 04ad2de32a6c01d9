"""Get/put/delete fan-out over the sloppy preference list, under a deadline.

The quorum arithmetic lives in dynd.quorum; this module only sends, waits and
keeps going in the background after the client has its answer (stragglers are
read-repaired, replication finishes). A replica that fails is marked suspect
and a fallback takes its place, so a freshly dead node costs one retry, not
the write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from common import context
from common.context import DVVSet
from common.errors import DynError, Unavailable, Unreachable
from dynd.quorum import GetCore, PutCore
from dynd.ring import Target

if TYPE_CHECKING:
    from dynd.node import Node


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one key lives right now."""

    partition: int
    n: int
    targets: list[Target]
    extra: list[str]  # future owners of a partition in transfer: written, not counted


def result_fields(clock: DVVSet | None) -> dict[str, Any]:
    """The client's view of a merged object: live values and the opaque context."""
    if clock is None:
        return {"found": False, "context": "", "values": []}
    live = context.live_values(clock)
    return {
        "found": bool(live),
        "context": context.encode_context(context.join(clock)),
        "values": [{"value": s.value, "written_at": s.written_at} for s in live],
    }


class Coordinator:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def get(self, bucket: str, key: bytes, r: int | None) -> dict[str, Any]:
        n, r, _ = self.node.quorum_sizes(bucket, r=r)
        place = self.node.placement(bucket, key, n)
        # R counts distinct replicas: never lowered to the few this node finds reachable.
        core = GetCore(r=r, n=len(place.targets))
        decided = trio.Event()

        async def ask(target: Target) -> None:
            try:
                clock = await self.node.replica_get(target, place.partition, bucket, key)
            except DynError as exc:
                core.add_failure(target.node, exc.message)
            else:
                core.add_reply(target.node, clock, fallback=target.role == "fallback")
            if core.settled():
                decided.set()

        async def repair() -> None:
            await self._read_repair(place, bucket, key, core)

        if not place.targets:
            raise Unavailable("no replica of this key is reachable")
        # Our own copy is a synchronous read: take it here, not in a task of its own.
        remote = [t for t in place.targets if t.node != self.node.id]
        if len(remote) < len(place.targets):
            local = next(t for t in place.targets if t.node == self.node.id)
            core.add_reply(local.node, self.node.replica.get(
                place.partition, bucket, key, None if local.role == "primary" else local.primary),
                fallback=local.role == "fallback")
        self._fan_out([partial(ask, target) for target in remote], decided, then=repair)
        if not core.settled():
            await decided.wait()
        if not core.enough():
            raise Unavailable(
                f"read quorum not met: {len(core.replies)} of {core.r} replies"
                + "".join(f"; {node}: {why}" for node, why in sorted(core.failures.items()))
            )
        return result_fields(core.merged())

    def _fan_out(self, jobs: list[Callable[[], Awaitable[None]]], decided: trio.Event,
                 then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run ``jobs`` as background tasks under one deadline (the request timeout from
        now); once all have ended, finished or timed out, set ``decided`` and run ``then``.

        One task per job, no wrapper task or nursery: the first replica request reaches
        the wire a scheduler pass sooner, and a request costs two tasks fewer.
        """
        if not jobs:
            decided.set()
            return
        deadline = trio.current_time() + self.node.request_timeout
        remaining = len(jobs)

        async def run(job: Callable[[], Awaitable[None]]) -> None:
            nonlocal remaining
            with trio.move_on_at(deadline):
                await job()
            remaining -= 1
            if not remaining:
                decided.set()
                if then is not None:
                    await then()

        for job in jobs:
            self.node.background.start_soon(run, job)

    async def _read_repair(self, place: Placement, bucket: str, key: bytes, core: GetCore) -> None:
        merged = core.merged()
        if merged is None:
            return
        stale = core.stale(merged)
        if not stale:
            return
        by_node = {t.node: t for t in place.targets}
        async with trio.open_nursery() as nursery:
            for node in stale:
                self.node.stats.count("read_repair")
                nursery.start_soon(self._quiet_put, by_node[node], place.partition, bucket, key,
                                   merged)

    async def _quiet_put(
        self, target: Target, partition: int, bucket: str, key: bytes, clock: DVVSet
    ) -> None:
        try:
            await self.node.replica_put(target, partition, bucket, key, clock)
        except DynError:
            pass  # anti-entropy catches what a best-effort repair missed

    async def put(
        self, bucket: str, key: bytes, value: bytes | None, client_context: dict[str, int],
        w: int | None, forward: Callable[[str], Awaitable[dict[str, Any]]] | None,
    ) -> dict[str, Any]:
        """Coordinate a put (value) or delete (value None).

        `forward(node)` sends the original request to another node; it is None
        for a request that was already forwarded once (no forwarding loops).
        """
        n, _, w = self.node.quorum_sizes(bucket, w=w)
        place = self.node.placement(bucket, key, n)
        me = next((t for t in place.targets if t.node == self.node.id), None)
        if (me is None or me.role != "primary") and forward is not None:
            # Only a primary's copy holds every dot its actor minted for the key; a dot
            # minted on a fallback's hint copy can repeat one already handed back and be
            # silently dropped at the primary (tests/sim seed 5). Prefer a primary.
            for target in place.targets:
                if target.role != "primary" or target.node == self.node.id:
                    continue
                try:
                    return await forward(target.node)
                except Unreachable as exc:  # never sent: the next primary may take it
                    self.node.suspect(target.node, exc.message)
        if me is None:  # no preference-list node took the forward: keep it as a hint
            hint_for = place.targets[0].primary if place.targets else None
        else:
            hint_for = None if me.role == "primary" else me.primary
        if hint_for is not None:
            self.node.stats.count("hint_stored")
        actor = self.node.actor if hint_for is None else self.node.fallback_actor()
        clock, ticket = self.node.replica.coordinate(
            place.partition, bucket, key, value, client_context, actor,
            self.node.wall_ms(), hint_for,
        )
        # W counts distinct nodes holding the write: never lowered to the few reachable
        # ones, or one node could acknowledge alone and then lose its disk (tests/sim seed 8).
        core = PutCore(w=w, n=max(len(place.targets), 1))
        decided = trio.Event()
        encoded = context.encode(clock)  # once, not once per replica

        async def local() -> None:
            try:
                await ticket.wait()
            except Exception as exc:  # a failed local write is one missing ack, not a crash
                core.add_failure(self.node.id, f"local write failed: {exc}")
            else:
                core.add_ack(self.node.id)
            if core.enough() or core.hopeless():
                decided.set()

        async def replicate(target: Target, counted: bool) -> None:
            try:
                await self.node.replica_put(target, place.partition, bucket, key, clock,
                                            encoded)
            except DynError as exc:
                if counted:
                    core.add_failure(target.node, exc.message)
                    replacement = self.node.replacement(place, target, tried)
                    if replacement is not None:
                        tried.add(replacement.node)
                        core.n += 1
                        await replicate(replacement, True)
                        return
            else:
                if counted:
                    core.add_ack(target.node)
            if core.enough() or core.hopeless():
                decided.set()

        tried = {t.node for t in place.targets} | {self.node.id}

        jobs = [local]
        jobs += [partial(replicate, target, True)
                 for target in place.targets if target.node != self.node.id]
        jobs += [partial(replicate, Target(node, node, "primary"), False)
                 for node in place.extra if node not in tried]
        self._fan_out(jobs, decided)
        await decided.wait()
        if not core.enough():
            raise Unavailable(f"write quorum not met: {core.describe()}")
        return {"context": context.encode_context(context.join(clock))}
