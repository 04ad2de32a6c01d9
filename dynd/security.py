"""TLS contexts of a node, and who may run which operation.

With ``[tls]`` configured every connection is mutual TLS against one CA (``tls.ca``): the
listener requires a client certificate, and a node dialling a peer presents its own
certificate (serverAuth + clientAuth) and checks the peer's against the CA and the peer's
host, exactly as dynctl does. The handshake is therefore the first gate: plaintext, no
certificate, or a certificate of another CA never reaches a handler.

The second gate, ``authorize``, decides per request from the certificate's common name (CN):

- data and read-only ops (get, put, delete, status, ...): any certificate the CA signed;
- admin ops (``messages.ADMIN_OPS``: membership changes, tokens, bucket set, repair): a CN
  listed in ``tls.admins``;
- peer ops (``p_*``): a CN that is the id of a member of this node's cluster state (any
  status but ``removed``). Peer ops can overwrite replicas, reap tombstones and gossip a
  cluster state, so "any certificate of the CA" would let every data client act as a node;
  tying the node certificate's CN to the node id is the price. The one exception is
  ``p_join``, which a node sends before it is a member: there the CN must be the id of the
  member asking to join (a node may only stage itself, and a staged join still needs an
  admin's ``cluster commit``).

With access control (dynd/auth.py) the caller is resolved to a principal by one function,
``principal`` (today: the certificate CN). While it is enabled, key-scoped data ops need a
grant of their op on the request's bucket and partition key (``KEYED_OPS``), and peer ops
need a member's certificate whatever ``peer_identity`` says: otherwise any certificate of
the CA could write replicas or gossip a cluster state, around every grant, and even rewrite
the grants. Admin ops, and every change to roles, users and access control itself
(``AUTH_ADMIN_OPS``), need a CN in ``tls.admins`` (superusers: no gossiped mistake can lock
them out) or an ``admin`` grant, which counts whether access control is enabled or not.
The check reads this node's own copy of the grants, compiled once per cluster state, so it
keeps working through partitions and costs a dict look-up and a few prefix tests.

Without ``[tls]`` nothing is checked (the node then listens on loopback by default).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping

from common.config import TLSConfig
from common.errors import Unauthorized
from common.messages import ADMIN_OPS, AUTH_ADMIN_OPS, PEER_OPS, Request
from common.wire.tls import TLSFileError, new_context
from dynd.auth import ANY_BUCKET, EMPTY, Policy
from dynd.membership import Member
from dynd.server import Peer

log = logging.getLogger("dynd.security")

# Data ops tied to one key -> the permission they need on its bucket and partition key
# (``key``; a plain key is its own partition key). `resolve` is a get and a put.
KEYED_OPS = {"get": "get", "put": "put", "delete": "delete", "replicas": "get",
             "query": "query"}
OPEN_POLICY = Policy(EMPTY)  # access control never enabled: no grant needed

class TLSSetupError(ValueError):
    """A TLS file that is missing, unreadable or not a usable PEM (dynd exits 2)."""


def check_files(tls: TLSConfig) -> None:
    """Fail early, naming the setting, when a configured TLS file cannot be read."""
    for setting in ("ca", "cert", "key"):
        path = getattr(tls, setting)
        if not os.path.isfile(path):
            raise TLSSetupError(f"[tls] {setting} = {path!r}: no such file")
        if not os.access(path, os.R_OK):
            raise TLSSetupError(f"[tls] {setting} = {path!r}: not readable by this user")


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The listener's context: this node's certificate, and a client certificate required."""
    return _context(tls, server_side=True)


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """The context a node dials peers with: it presents its own certificate and checks the
    peer's against the CA and the host of the peer's address."""
    return _context(tls, server_side=False)


def _context(tls: TLSConfig, *, server_side: bool) -> ssl.SSLContext:
    try:
        return new_context(server_side=server_side, ca=tls.ca, cert=tls.cert, key=tls.key)
    except TLSFileError as exc:
        if exc.setting == "ca":
            raise TLSSetupError(f"[tls] ca = {tls.ca!r}: cannot load CA certificates: "
                                f"{exc.cause}") from exc
        raise TLSSetupError(f"[tls] cert = {tls.cert!r}, key = {tls.key!r}: cannot load the "
                            f"certificate and its key (do they match?): {exc.cause}") from exc


def principal(peer: Peer) -> str | None:
    """Who the caller is for access control: its certificate's CN (None: no CN). The one
    place identity is resolved, so that another source can be added here later."""
    return peer.identity


def is_admin(caller: str | None, tls: TLSConfig, policy: Policy) -> bool:
    """A superuser ([tls] admins) or a holder of ``admin`` on ``*``."""
    return caller is not None and (caller in tls.admins
                                   or policy.allows(caller, "admin", ANY_BUCKET) is not None)


def authorize(request: Request, peer: Peer, tls: TLSConfig | None,
              members: Mapping[str, Member], policy: Policy = OPEN_POLICY) -> None:
    """Raise Unauthorized (exit 5), and log it, unless ``peer`` may run ``request``.

    ``members`` is this node's current view of the cluster, for peer ops; ``policy`` its
    compiled grants (ClusterView.policy).
    """
    if tls is None:
        return
    caller = principal(peer)
    reason = _refusal(request, caller, tls, members, policy)
    if reason is None:
        return
    log.warning("event=unauthorized op=%s peer=%s caller=%r reason=%r",
                request.op, peer.address, caller, reason)
    raise Unauthorized(f"{request.op}: not authorized: {reason}")


def _refusal(request: Request, identity: str | None, tls: TLSConfig,
             members: Mapping[str, Member], policy: Policy) -> str | None:
    """Why ``identity`` may not run ``request``, or None when it may."""
    op = request.op
    who = f"certificate CN {identity!r}" if identity is not None else "a certificate without CN"
    if op in ADMIN_OPS or op in AUTH_ADMIN_OPS or (op == "auth_check"
                                                    and "user" in request.fields):
        if is_admin(identity, tls, policy):
            return None
        return (f"admin command needs a certificate whose CN is in [tls] admins or holds "
                f"admin on '*'; {who} does not")
    if op in PEER_OPS and tls.peer_identity == "ca" and not policy.enabled:
        return None  # a certificate of the same CA may gossip and replicate (docs/security.md)
    if op == "p_join":
        joining = request.fields["member"].get("id")
        if identity is not None and identity == joining:
            return None
        return f"a node may only ask to join as itself; {who} asked for {joining!r:.70}"
    if op in PEER_OPS:
        member = members.get(identity) if identity is not None else None
        if member is not None and member.status != "removed":
            return None
        return f"peer operation needs the certificate of a cluster member; {who} is not one"
    permission = KEYED_OPS.get(op)
    if permission is None or not policy.enabled or identity in tls.admins:
        return None
    bucket, key = request.fields["bucket"], request.fields["key"]
    if identity is not None and policy.allows(identity, permission, bucket, key) is not None:
        return None
    return f"{who} holds no grant of {permission} on bucket {bucket!r} for key {key!r:.80}"
