"""The access-control commands a node serves: roles, users, enable/disable, whoami, check.

Thin over dynd.auth (which validates and merges). A change is applied to this node's
cluster state, persisted, pushed by gossip, and returns once every reachable member
reports the same auth state (p_status ``auth_digest``); members that do not confirm in
time are named in an exit-4 error (the change stays and spreads by gossip).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from common.config import TLSConfig
from common.errors import DynError, NotFound, Rejected, Unavailable
from dynd import auth
from dynd.auth import AuthError, AuthNotFound, AuthState, Grant
from dynd.cluster import ClusterView
from dynd.features import RBAC, Features
from dynd.liveness import Liveness
from dynd.peers import Peers
from dynd.security import is_admin, principal
from dynd.server import Peer

log = logging.getLogger("dynd.auth")

CONFIRM_POLL = 0.05  # seconds between two rounds of asking members for their auth digest
STATUS_TIMEOUT = 1.0  # seconds one member gets to answer p_status


def certificate_cn(path: str) -> str | None:
    """The common name of the PEM certificate at ``path`` (None: it has none)."""
    decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]  # noqa: SLF001
    for rdn in decoded.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def grant_wire(grant: Grant) -> dict[str, Any]:
    return {"perms": list(grant.ops), "bucket": grant.bucket, "prefix": grant.prefix}


class AuthAdmin:
    OPS = ("role_create", "role_delete", "role_list", "role_get", "role_grant", "role_revoke",
           "user_list", "user_get", "user_grant_role", "user_revoke_role", "auth_set",
           "auth_status", "auth_whoami", "auth_check")

    def __init__(self, node_id: str, view: ClusterView, peers: Peers, liveness: Liveness,
                 features: Features, tls: TLSConfig | None, *,
                 push_gossip: Callable[[], None], confirm_timeout: float) -> None:
        """``confirm_timeout``: how long a change waits for every reachable member."""
        self.node_id = node_id
        self.view = view
        self.peers = peers
        self.liveness = liveness
        self.features = features
        self.tls = tls
        self.push_gossip = push_gossip
        self.confirm_timeout = confirm_timeout
        self.cert_cn = certificate_cn(tls.cert) if tls is not None else None

    # ---- applying a change -------------------------------------------------------------

    async def _change(self, peer: Peer, what: str,
                      change: Callable[[AuthState], AuthState]) -> None:
        """Apply ``change`` to the auth state, then wait for the reachable members."""
        self.features.require(RBAC)  # a node without it could not read the state any more
        reachable = [m for m in self._others() if self.liveness.is_up(m)]
        current = self.view.state
        try:
            updated = change(current.auth)
        except AuthNotFound as exc:
            raise NotFound(str(exc)) from None
        except AuthError as exc:
            raise Rejected(str(exc)) from None
        if updated is not current.auth:
            ticket = self.view.set_state(replace(current, auth=updated))
            if ticket is not None:
                await ticket.wait()
            log.info("event=auth_change node=%s by=%r change=%r", self.node_id,
                     principal(peer), what)
        await self._confirm(reachable)

    async def _confirm(self, members: list[str]) -> None:
        """Return once each of ``members`` (those reachable when the change was made)
        reports our auth digest; else Unavailable naming the others. A member that stops
        answering meanwhile is named too: it may still serve clients with the old grants."""
        waiting = members
        with trio.move_on_after(self.confirm_timeout):
            while True:
                self.push_gossip()
                waiting = await self._unconfirmed(waiting)
                if not waiting:
                    return
                await trio.sleep(CONFIRM_POLL)
        raise Unavailable(f"applied on {self.node_id}, not yet confirmed by: "
                          f"{', '.join(waiting)} (gossip will carry it)")

    async def _unconfirmed(self, members: list[str]) -> list[str]:
        """Those of ``members`` that do not report our auth digest now."""
        ours = auth.digest(self.view.state.auth)
        waiting: list[str] = []

        async def ask(member: str) -> None:
            try:
                reply = await self.peers.call(member, "p_status", {}, STATUS_TIMEOUT)
            except DynError:
                waiting.append(member)
                return
            if reply.get("auth_digest") != ours:
                waiting.append(member)

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(ask, member)
        return sorted(waiting)

    def _others(self) -> list[str]:
        return [m for m, member in self.view.state.members.items()
                if m != self.node_id and member.status != "removed"]

    def status_fields(self) -> dict[str, Any]:
        """What p_status adds: the auth digest, and whether our certificate's CN is our id
        (``auth enable`` needs both from every member)."""
        return {"auth_digest": auth.digest(self.view.state.auth),
                "cn_is_id": self.cert_cn == self.node_id}

    # ---- roles -------------------------------------------------------------------------

    async def op_role_create(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        created: list[bool] = []

        def create(state: AuthState) -> AuthState:
            updated, fresh = auth.create_role(state, fields["name"], self.node_id)
            created.append(fresh)
            return updated

        await self._change(peer, f"role create {fields['name']}", create)
        return {"name": fields["name"], "created": created[0]}

    async def op_role_delete(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        await self._change(peer, f"role delete {fields['name']}",
                           lambda state: auth.delete_role(state, fields["name"], self.node_id))
        return {"name": fields["name"], "deleted": True}

    async def op_role_list(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        state = self.view.state.auth
        return {"roles": [{"name": role, "grants": len(auth.role_grants(state, role))}
                          for role in auth.live_roles(state)]}

    def _role(self, name: str) -> dict[str, Any]:
        try:
            grants = auth.role_grants(self.view.state.auth, name)
        except AuthNotFound as exc:
            raise NotFound(str(exc)) from None
        except AuthError as exc:
            raise Rejected(str(exc)) from None
        return {"name": name, "grants": [grant_wire(g) for g in grants]}

    async def op_role_get(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self._role(fields["name"])

    async def op_role_grant(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._grant(fields, peer, auth.grant, "grant")

    async def op_role_revoke(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return await self._grant(fields, peer, auth.revoke, "revoke")

    async def _grant(self, fields: dict[str, Any], peer: Peer, change: Callable[..., AuthState],
                     verb: str) -> dict[str, Any]:
        name, perms, bucket = fields["name"], fields["perms"], fields["bucket"]
        prefix = fields.get("prefix", b"")
        await self._change(peer, f"role {verb} {name} {','.join(perms)} {bucket} {prefix!r:.80}",
                           lambda state: change(state, name, perms, bucket, prefix,
                                                self.node_id))
        return self._role(name)

    # ---- users -------------------------------------------------------------------------

    async def op_user_list(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        state = self.view.state.auth
        return {"users": [{"user": user, "roles": auth.roles_of(state, user)}
                          for user in auth.users(state)]}

    def _user(self, user: str) -> dict[str, Any]:
        roles = auth.roles_of(self.view.state.auth, user)
        if not roles:
            raise NotFound(f"user {user!r} holds no role")
        return {"user": user, "roles": roles}

    async def op_user_get(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self._user(fields["user"])

    async def op_user_grant_role(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        user, role = fields["user"], fields["role"]
        await self._change(peer, f"user grant-role {user} {role}",
                           lambda state: auth.set_membership(state, user, role, True,
                                                             self.node_id))
        return self._user(user)

    async def op_user_revoke_role(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        user, role = fields["user"], fields["role"]
        await self._change(peer, f"user revoke-role {user} {role}",
                           lambda state: auth.set_membership(state, user, role, False,
                                                             self.node_id))
        return {"user": user, "roles": auth.roles_of(self.view.state.auth, user)}

    # ---- enable, status, whoami, check --------------------------------------------------

    async def op_auth_set(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        enabled = fields["enabled"]
        if enabled:
            await self._check_enable(peer)
        await self._change(peer, f"auth {'enable' if enabled else 'disable'}",
                           lambda state: auth.set_enabled(state, enabled, self.node_id))
        return {"enabled": self.view.state.auth.enabled.present}

    async def _check_enable(self, peer: Peer) -> None:
        """Refuse to enable what could not be enforced: no TLS (no identity), a caller who
        would lock itself out, or a member whose certificate CN is not its node id (peer
        ops are then tied to member ids)."""
        if self.tls is None:
            raise Rejected("access control needs [tls]: without it a caller has no identity")
        if not is_admin(principal(peer), self.tls, self.view.policy()):
            raise Rejected("auth enable needs a CN in [tls] admins or an admin grant")
        wrong: list[str] = [] if self.cert_cn == self.node_id else [self.node_id]
        silent: list[str] = []

        async def ask(member: str) -> None:
            try:
                reply = await self.peers.call(member, "p_status", {}, STATUS_TIMEOUT)
            except DynError:
                silent.append(member)
                return
            if reply.get("cn_is_id") is not True:
                wrong.append(member)

        async with trio.open_nursery() as nursery:
            for member in self._others():
                nursery.start_soon(ask, member)
        if wrong:
            raise Rejected("auth enable needs every member's certificate CN to be its node "
                           f"id; not so on: {', '.join(sorted(wrong))}")
        if silent:
            raise Unavailable("auth enable needs every member to confirm its certificate; "
                              f"no answer from: {', '.join(sorted(silent))}")

    async def op_auth_status(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        state = self.view.state.auth
        return {"enabled": state.enabled.present, "roles": len(auth.live_roles(state)),
                "users": len(auth.users(state))}

    async def op_auth_whoami(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        caller = principal(peer)
        roles = [] if caller is None else auth.roles_of(self.view.state.auth, caller,
                                                         with_all=True)
        admin = self.tls is None or is_admin(caller, self.tls, self.view.policy())
        return {"user": caller, "admin": admin, "roles": roles}

    async def op_auth_check(self, fields: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Would the caller (or ``user``) be allowed ``check_op`` on (bucket, key)? Answers
        from the grants as if access control were enabled, so it can be tried first."""
        user = fields.get("user", principal(peer))
        op, bucket = fields["check_op"], fields["bucket"]
        if op not in auth.OPS:
            raise Rejected(f"unknown operation {op!r:.40}; one of {', '.join(auth.OPS)}")
        if user is None:
            raise Rejected("no caller to check: give a user, or connect with a certificate")
        if self.tls is not None and user in self.tls.admins:
            return {"user": user, "allowed": True, "grant": None, "superuser": True}
        found = self.view.policy().allows(user, op, bucket, fields["key"])
        return {"user": user, "allowed": found is not None,
                "grant": None if found is None else {"role": found.role, **grant_wire(found)}}
