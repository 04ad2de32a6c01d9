"""Epidemic dissemination of the cluster state, and heartbeats for the detector.

Every `gossip.interval` the node pushes its state to one random member (or a
configured seed, which lets partitioned views meet) and merges the state it
gets back (push-pull), so a change reaches every node in O(log S) rounds.
Liveness rides along Cassandra-style: each node bumps its own heartbeat
(incarnation, counter) every round and the map of the newest heartbeats
seen travels with the state; a newer heartbeat for X, from any path, is a
heartbeat of X for the phi-accrual detector. A state from another cluster is
refused: a stranger cannot gossip its way into the ring.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import cbor2
import trio

from common.config import Config
from common.errors import DynError, Rejected
from dynd import membership
from dynd.clocks import ClockOffsets
from dynd.cluster import ClusterView
from dynd.detector import PhiAccrualDetector
from dynd.features import Features
from dynd.identity import Identity
from dynd.membership import MembershipError
from dynd.server import Peer
from dynd.transport import Transport

log = logging.getLogger("dynd.gossip")

# (incarnation, counter): the incarnation is persisted and bumped at every start, so a
# restarted node's beats always rank above its old ones, whatever its wall clock says
# (a boot timestamp did not: a node restarted after a clock jump back was never heard
# again, and hints for it never drained; tests/sim seed 215).
Heartbeat = tuple[int, int]


class Gossip:
    OPS = ("p_gossip",)

    def __init__(self, view: ClusterView, identity: Identity, detector: PhiAccrualDetector,
                 transport: Transport, config: Config, features: Features, *, addr: str,
                 rng: random.Random, on_disk_recovered: Callable[[int], None],
                 wall: Callable[[], float]) -> None:
        """``on_disk_recovered(epoch)``: this node took its state back from a seed
        (recover_identity) in ``epoch``; ``wall``: the wall clock (seconds) whose offset
        to each peer's a round measures (dynd.clocks)."""
        self.view = view
        self.identity = identity
        self.detector = detector
        self.transport = transport
        self.config = config
        self.addr = addr
        self.rng = rng
        self.on_disk_recovered = on_disk_recovered
        self.features = features
        self.wall = wall
        self.offsets = ClockOffsets()
        self.counter = 0
        self.heartbeats: dict[str, Heartbeat] = {}
        self.rounds = 0
        self.bytes_sent = 0
        self._digested: membership.ClusterState | None = None
        self._last_digest = b""

    def totals(self) -> tuple[int, int]:
        """(rounds completed, bytes sent) since start, for the metrics."""
        return self.rounds, self.bytes_sent

    def _heartbeat_wire(self) -> dict[str, list[int]]:
        self.heartbeats[self.identity.id] = (self.identity.incarnation, self.counter)
        return {node: list(hb) for node, hb in self.heartbeats.items()
                if node in self.view.state.members}

    def _absorb_heartbeats(self, wire: Any) -> None:
        """Record the newer beats of members; a name that is no member (or a removed one)
        is ignored, so what a peer sends cannot grow this node's memory."""
        if not isinstance(wire, dict):
            return
        now = trio.current_time()
        members = self.view.state.members
        for node, hb in wire.items():
            if (not isinstance(node, str) or node == self.identity.id or not isinstance(hb, list)
                    or len(hb) != 2 or not all(isinstance(x, int) for x in hb)):
                continue
            member = members.get(node)
            if member is None or member.status == "removed":
                continue
            beat = (hb[0], hb[1])
            if beat > self.heartbeats.get(node, (-1, -1)):
                self.heartbeats[node] = beat
                self.detector.heartbeat(node, now)

    def _merge(self, wire: Any) -> None:
        try:
            remote = membership.from_wire(wire)
            merged = membership.reconcile(self.view.state, remote)
        except membership.ForeignCluster as exc:
            raise Rejected(f"refusing gossip from another cluster: {exc}") from None
        except MembershipError as exc:
            raise Rejected(f"invalid cluster state: {exc}") from None
        self.view.set_state(merged)
        self._forget_departed()

    def _forget_departed(self) -> None:
        """Drop the beats and detector history of members that are removed (or gone)."""
        members = self.view.state.members
        for node in [n for n in self.heartbeats if n != self.identity.id]:
            member = members.get(node)
            if member is None or member.status == "removed":
                del self.heartbeats[node]
                self.detector.forget(node)
                self.offsets.forget(node)

    def _digest(self) -> bytes:
        """Digest of the current state, computed once per state object."""
        if self._digested is not self.view.state:
            self._digested = self.view.state
            self._last_digest = membership.digest(self.view.state)
        return self._last_digest

    async def op_p_gossip(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Heartbeats always; our state only when the caller's digest says it differs.
        A state comes first: its new members' beats count at once."""
        if "state" in fields:
            self._merge(fields["state"])
        self._absorb_heartbeats(fields.get("heartbeats"))
        reply: dict[str, Any] = {"heartbeats": self._heartbeat_wire(), "digest": self._digest(),
                                 "features": self.features.wire(),
                                 "wall_ms": int(self.wall() * 1000)}
        if "state" not in fields and fields.get("digest") != reply["digest"]:
            reply["state"] = membership.to_wire(self.view.state)
        return reply

    def _pick_peer(self) -> str | None:
        """A random live-or-not member address; now and then a seed."""
        peers = [m.addr for m in self.view.state.members.values()
                 if m.id != self.identity.id and m.status != "removed"]
        seeds = [s for s in self.config.seeds if s != self.addr]
        if seeds and (not peers or self.rng.random() < 0.1):
            return self.rng.choice(seeds)
        return self.rng.choice(peers) if peers else None

    async def exchange(self, addr: str) -> None:
        """One round with the node at `addr`: digests first, whole states only when they differ.

        Steady state costs two small messages; a change costs one state each way.
        """
        timeout = self.config.gossip.interval * 2
        hello = {"digest": self._digest(), "heartbeats": self._heartbeat_wire()}
        sent_ms = self.wall() * 1000
        reply = await self._send(addr, hello, timeout)
        received_ms = self.wall() * 1000
        self.rounds += 1
        if "state" in reply:
            self._merge(reply["state"])
        self._absorb_heartbeats(reply.get("heartbeats"))
        self._record_features(addr, reply.get("features"))
        self._record_offset(addr, reply.get("wall_ms"), sent_ms, received_ms)
        if reply.get("digest") != self._digest():
            push = {"state": membership.to_wire(self.view.state),
                    "heartbeats": self._heartbeat_wire()}
            await self._send(addr, push, timeout)

    def _record_features(self, addr: str, wire: Any) -> None:
        """What the member at ``addr`` said it supports (nothing: it predates features)."""
        for member in self.view.state.members.values():
            if member.addr == addr and member.status != "removed":
                self.features.record(member.id, [] if wire is None else wire)
                return

    def _record_offset(self, addr: str, wall_ms: Any, sent_ms: float, received_ms: float
                       ) -> None:
        """The clock offset of the member at ``addr`` (a reply without ``wall_ms``: a node
        that predates it, nothing measured)."""
        if type(wall_ms) is not int:
            return
        member = next((m for m in self.view.state.members.values()
                       if m.addr == addr and m.status != "removed"), None)
        if member is None or member.id == self.identity.id:
            return
        if self.offsets.record(member.id, wall_ms, sent_ms, received_ms):
            log.warning("event=clock_skew node=%s peer=%s offset_ms=%.0f rtt_ms=%.0f",
                        self.identity.id, member.id, self.offsets.per_peer()[member.id],
                        received_ms - sent_ms)

    async def _send(self, addr: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.bytes_sent += len(cbor2.dumps(message))
        return await self.transport.call(addr, "p_gossip", message, timeout)

    async def push_now(self) -> None:
        """After a local change (commit, staged change) tell every member at once."""
        async with trio.open_nursery() as nursery:
            for member in list(self.view.state.members.values()):
                if member.id != self.identity.id and member.status != "removed":
                    nursery.start_soon(self._quiet_exchange, member.addr)

    async def _quiet_exchange(self, addr: str) -> None:
        try:
            await self.exchange(addr)
        except DynError as exc:
            log.debug("event=gossip_failed node=%s peer=%s error=%r", self.identity.id, addr,
                      exc.message)

    async def run(self) -> None:
        """A round every interval (jittered) with `fanout` peers, within the byte budget."""
        config = self.config.gossip
        window_start, window_bytes = trio.current_time(), self.bytes_sent
        while True:
            self.counter += 1
            now = trio.current_time()
            if now - window_start >= 1.0:
                window_start, window_bytes = now, self.bytes_sent
            if self.bytes_sent - window_bytes < config.max_bytes_per_second:
                for addr in {self._pick_peer() for _ in range(config.fanout)} - {None}:
                    await self._quiet_exchange(addr)
            await trio.sleep(config.interval * (0.5 + self.rng.random()))

    async def recover_identity(self) -> None:
        """A fresh data dir with seeds: ask them who we are before serving data.

        If a seed's cluster lists our id, we are that member recovering a lost
        disk: adopt its state and take an incarnation above the old one. If the
        seeds answer without us, we are new: keep our own one-node cluster. While
        no seed answers, keep asking: forming a cluster of our own then would
        split the ring (tests/sim seed 10).
        """
        delay = 0.5
        while True:
            for addr in self.config.seeds:
                if addr == self.addr:
                    continue
                try:
                    reply = await self.transport.call(addr, "p_gossip", {}, 2.0)
                    remote = membership.from_wire(reply["state"])
                except (DynError, MembershipError, KeyError) as exc:
                    log.info("event=seed_unreachable node=%s seed=%s error=%r",
                             self.identity.id, addr, getattr(exc, "message", str(exc)))
                    continue
                member = remote.members.get(self.identity.id)
                if member is not None and member.status != "removed":
                    self.identity.set_incarnation(
                        max(self.identity.incarnation, member.incarnation + 1))
                    self.view.set_state(remote)
                    # Anti-entropy and `dynctl repair` restore a lost disk, all of it; the
                    # epoch's pull would bring back only what the epoch moved.
                    self.on_disk_recovered(remote.epoch)
                    log.warning("event=recovering_lost_disk node=%s incarnation=%d seed=%s",
                                self.identity.id, self.identity.incarnation, addr)
                return
            if all(addr == self.addr for addr in self.config.seeds):
                return
            log.warning("event=waiting_for_seeds node=%s seeds=%s retry_in=%.1fs",
                        self.identity.id, ",".join(self.config.seeds), delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
