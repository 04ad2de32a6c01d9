"""Access-control methods of the Python client: roles, users, enable/disable, checks.

Mixed into ``Client`` (async) and ``SyncClient`` (blocking), so both offer the same
operations as ``dynctl auth``, ``dynctl role`` and ``dynctl user``. Changes return once
every reachable member applied them; otherwise Unavailable (exit 4) names the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _prefix_bytes(prefix: bytes | str) -> bytes:
    return prefix.encode("utf-8") if isinstance(prefix, str) else prefix


class AuthMethods:
    """For ``Client``: each method is one request (``call``)."""

    call: Callable[..., Any]

    async def role_create(self, name: str) -> bool:
        """Create role ``name``; False when it already existed (not an error)."""
        return bool((await self.call("role_create", name=name))["created"])

    async def role_delete(self, name: str) -> None:
        await self.call("role_delete", name=name)

    async def role_list(self) -> list[dict[str, Any]]:
        return (await self.call("role_list"))["roles"]

    async def role_get(self, name: str) -> dict[str, Any]:
        """``{"name", "grants": [{"perms", "bucket", "prefix"}]}``; NotFound if absent."""
        return await self.call("role_get", name=name)

    async def role_grant(self, role: str, perms: Sequence[str], *, bucket: str = "*",
                         prefix: bytes | str = b"") -> dict[str, Any]:
        """Grant ``perms`` (ops or shorthands) on ``bucket`` (or ``*``) to partition keys
        starting with ``prefix`` (``${cn}``: the caller's CN). Returns the role."""
        return await self.call("role_grant", name=role, perms=list(perms), bucket=bucket,
                               prefix=_prefix_bytes(prefix))

    async def role_revoke(self, role: str, perms: Sequence[str], *, bucket: str = "*",
                          prefix: bytes | str = b"") -> dict[str, Any]:
        """Revoke exactly such a grant; NotFound (listing the grants) if none matches."""
        return await self.call("role_revoke", name=role, perms=list(perms), bucket=bucket,
                               prefix=_prefix_bytes(prefix))

    async def user_list(self) -> list[dict[str, Any]]:
        return (await self.call("user_list"))["users"]

    async def user_get(self, user: str) -> dict[str, Any]:
        return await self.call("user_get", user=user)

    async def user_grant_role(self, user: str, role: str) -> dict[str, Any]:
        return await self.call("user_grant_role", user=user, role=role)

    async def user_revoke_role(self, user: str, role: str) -> dict[str, Any]:
        return await self.call("user_revoke_role", user=user, role=role)

    async def auth_enable(self) -> None:
        await self.call("auth_set", enabled=True)

    async def auth_disable(self) -> None:
        await self.call("auth_set", enabled=False)

    async def auth_status(self) -> dict[str, Any]:
        return await self.call("auth_status")

    async def auth_whoami(self) -> dict[str, Any]:
        return await self.call("auth_whoami")

    async def auth_check(self, op: str, key: bytes | str, *, bucket: str = "default",
                         sk: bytes | str | None = None, user: str | None = None
                         ) -> dict[str, Any]:
        """``{"allowed", "grant"}``: may the caller (or ``user``) run ``op`` on the key?"""
        fields: dict[str, Any] = {"check_op": op, "bucket": bucket, "key": _prefix_bytes(key)}
        if sk is not None:
            fields["sk"] = _prefix_bytes(sk)
        if user is not None:
            fields["user"] = user
        return await self.call("auth_check", **fields)


AUTH_METHODS = tuple(name for name in vars(AuthMethods) if not name.startswith("_")
                     and name != "call")


class AuthSyncMethods:
    """For ``SyncClient``: the same methods, blocking (filled in below)."""

    _client: Any
    _run: Callable[..., Any]


def _blocking(name: str) -> Callable[..., Any]:
    def method(self: AuthSyncMethods, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._client, name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(AuthMethods, name).__doc__
    return method


for _name in AUTH_METHODS:
    setattr(AuthSyncMethods, _name, _blocking(_name))
