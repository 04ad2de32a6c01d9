"""One dynd node: its parts assembled, its ops registered, its services in one nursery.

The parts (riak_core's, in small): who the node is (dynd.identity), the cluster
state it holds (dynd.cluster, routed by the pure dynd.routing), which members
are up (dynd.liveness), requests to them (dynd.peers) and replica access, local
or remote (dynd.replica_access). The services each name the parts they use and
reach each other through callables handed to them here: gossip, hints,
transfers, the hand-over drop, anti-entropy, the coordinator, the data ops
(dynd.requests) and the operator ops (dynd.admin). Clock and randomness are
injected (trio's clock for intervals and the failure detector, `wall` for
`written_at`), which lets tests/sim run many nodes in one process.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import trio

from common.config import Config
from dynd import backup, identity, membership
from dynd.admin import Admin
from dynd.antientropy import AntiEntropy
from dynd.auth_admin import AuthAdmin
from dynd.cluster import ClusterView, stored_state
from dynd.coordinator import Coordinator
from dynd.detector import PhiAccrualDetector
from dynd.dispatch import Dispatcher
from dynd.features import SUPPORTED, Features
from dynd.gossip import Gossip
from dynd.handover import Handover
from dynd.hints import Hints
from dynd.identity import Identity
from dynd.liveness import Liveness
from dynd.metrics import NodeCollector, Stats
from dynd.peers import Peers
from dynd.query import Queries
from dynd.replica import Replica
from dynd.replica_access import ReplicaAccess
from dynd.requests import Requests
from dynd.storage import Storage
from dynd.transfers import Transfers
from dynd.transport import Transport

log = logging.getLogger("dynd.node")


class Node:
    def __init__(
        self, config: Config, storage: Storage, transport: Transport, *, addr: str,
        wall: Callable[[], float] = time.time, rng: random.Random | None = None,
        features: frozenset[str] = SUPPORTED,
    ) -> None:
        """``features``: what this node reports supporting (a test's stand-in for a node
        of an older version reports less)."""
        rng = rng or random.Random()
        self.config = config
        self.storage = storage
        self.transport = transport
        self.addr = addr
        self.wall = wall
        self.replica = Replica(storage, max_siblings=config.limits.max_siblings,
                               max_object_bytes=config.limits.max_object_bytes)
        self.fresh = identity.is_fresh(storage)
        self.id = identity.node_id(storage, config.node_id, rng)
        self.stats = Stats(self.id)
        state = stored_state(storage)
        self.restored_from = backup.restored_from(storage.path)
        self.identity = Identity(storage, self.replica, self.id, addr, state,
                                 restored=self.restored_from is not None)
        self.view = ClusterView(storage, self.id, state if state is not None else
                                membership.new_cluster(f"{self.id}-{rng.getrandbits(64):016x}",
                                                       self.identity.member(config.zone, "valid"),
                                                       config.ring_size))
        self.features = Features(self.id, self.view, features)
        self.liveness = Liveness(self.id, PhiAccrualDetector(
            threshold=config.detector.phi_threshold,
            min_std_seconds=config.detector.min_std,
            acceptable_pause_seconds=config.detector.acceptable_pause,
            first_interval_seconds=config.gossip.interval,
        ), lambda: self.view.state)
        self.peers = Peers(transport, self.view.addr_of, self.liveness.suspect,
                           config.limits.request_timeout, self._spawn)
        access = ReplicaAccess(self.id, self.replica, self.peers.call, self.stats)

        def push_gossip() -> None:
            self._spawn(self.gossip.push_now)

        self.antientropy = AntiEntropy(
            self.id, self.view, storage, self.replica, access, self.peers, self.stats,
            config.antientropy, is_up=self.liveness.is_up, rng=rng, wall=wall)
        self.handover = Handover(self.id, self.view, storage, self.replica,
                                 self.antientropy.exchange)
        self.transfers = Transfers(
            self.id, self.view, storage, self.replica, self.peers, self.stats, config.handoff,
            push_gossip=push_gossip, on_settled=self.handover.drop_foreign_partitions)
        self.hints = Hints(
            self.id, self.view, storage, access, self.peers, self.stats, config.handoff,
            is_up=self.liveness.is_up, release_hints=self.identity.release_hints,
            push_gossip=push_gossip)
        self.gossip = Gossip(self.view, self.identity, self.liveness.detector, transport, config,
                             self.features, addr=addr, rng=rng,
                             on_disk_recovered=self.transfers.mark_pulled, wall=wall)
        self.coordinator = Coordinator(
            self.id, self.view, self.liveness, self.peers, self.replica, access, self.stats,
            minting_actor=self.identity.minting_actor,
            read_incomplete=self.transfers.read_incomplete,
            request_timeout=config.limits.request_timeout, wall=wall)
        requests = Requests(self.id, self.view, self.coordinator, self.replica, access,
                            self.peers, self.stats, config,
                            read_incomplete=self.transfers.read_incomplete,
                            require_feature=self.features.require)
        queries = Queries(self.id, self.view, self.liveness, self.peers, storage, access,
                          self.stats, config, require_feature=self.features.require,
                          read_incomplete=self.transfers.read_incomplete, wall=wall,
                          spawn=self._spawn)
        auth_admin = AuthAdmin(self.id, self.view, self.peers, self.liveness, self.features,
                               config.tls, push_gossip=push_gossip,
                               confirm_timeout=config.limits.request_timeout / 2)
        admin = Admin(self.view, self.identity, storage, self.liveness, self.peers,
                      push_gossip=push_gossip, features=self.features,
                      antientropy=config.antientropy, wall=wall,
                      clock_offsets=self.gossip.offsets,
                      status_providers=[self.transfers.status_fields,
                                        self.antientropy.status_fields,
                                        self.stats.hint_ages.status_fields],
                      status_fields=auth_admin.status_fields)
        self.gauges = NodeCollector(self.view, self.liveness, storage, self.stats,
                                    gossip_totals=self.gossip.totals,
                                    last_exchange=self.antientropy.last_exchange,
                                    clock_offsets=self.gossip.offsets.per_peer)
        self.dispatch = Dispatcher(self.id, self.view, self.stats, config)
        self.dispatch.register(requests, requests.OPS, requests.NOW_OPS)
        self.dispatch.register(queries, queries.OPS, queries.NOW_OPS)
        for service in (self.gossip, self.hints, self.transfers, self.antientropy, admin,
                        auth_admin):
            self.dispatch.register(service, service.OPS)
        self.dispatch.check_complete()
        self.handle = self.dispatch.handle
        self.answer_now = self.dispatch.answer_now
        self.drain = self.dispatch.drain
        self.record_clean_stop = self.identity.record_clean_stop
        self._nursery: trio.Nursery | None = None

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Start ``task`` in the root nursery (the node runs)."""
        assert self._nursery is not None, "the node is not running"
        self._nursery.start_soon(task)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every service of the node, in one nursery; `task_status.started()` once it serves."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.storage.run)
            nursery.start_soon(self.storage.run_compactions)
            if hasattr(self.transport, "run"):
                await nursery.start(self.transport.run)
            # Serve from here on: fresh peers bootstrapping at the same time may need our
            # gossip answers; data ops wait for `ready` (see Dispatcher.handle).
            task_status.started()
            if self.fresh and self.config.seeds:
                await self.gossip.recover_identity()
            await self.identity.confirm_kept_actor(self.view, self.peers)
            await self.identity.renew_after_restore(self.view, self.peers)
            await self.identity.persist(self.view)
            if not self.identity.actor_kept:
                # Tell every reachable peer about this new life before minting under it: a
                # backup restored soon after asks the peers which life to take next
                # (Identity.renew_after_restore), and a stale answer would repeat its dots.
                with trio.move_on_after(2 * self.config.gossip.interval):
                    await self.gossip.push_now()
            if self.restored_from is not None:
                backup.finish_restore(self.storage.path)
                if backup.older_than_grace(self.restored_from, self.wall(),
                                           self.config.antientropy.tombstone_grace):
                    log.warning("event=restored_backup_older_than_grace node=%s msg=%r",
                                self.id, "values deleted since the backup may come back")
            self.features.activate()  # a one-node cluster has every member's report: its own
            for partition in sorted(self.view.routing().owned_partitions(self.id)):
                await self.replica.rebuild_tree(partition)
                await trio.sleep(0)
            for service in (self.coordinator, self.gossip, self.hints, self.transfers,
                            self.antientropy):
                nursery.start_soon(service.run)
            self.dispatch.ready.set()
            log.info("event=node_ready node=%s actor=%s addr=%s epoch=%d",
                     self.id, self.identity.actor, self.addr, self.view.state.epoch)
