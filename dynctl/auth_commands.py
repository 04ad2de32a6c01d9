"""``dynctl auth``, ``dynctl role`` and ``dynctl user``: access control from the shell.

Each command is one request (dynctl.auth_client); changes return once every reachable
member applied them (exit 4 naming the others). Exit codes: a role or user that does not
exist, or a revoke that matches no grant, 1; an unknown permission, 2; a bad name or
prefix, 5; not an admin, 5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from common.errors import Unauthorized
from common.perms import PERM_NAMES
from dynctl.client import Client
from dynctl.output import Outcome, Output

PREFIX_HELP = "Partition-key prefix (UTF-8); ${cn} stands for the caller's certificate CN."


class PermsType(click.ParamType):
    """A comma list of permission names; an unknown one is a usage error (exit 2)."""

    name = "PERMS"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        perms = [perm.strip() for perm in str(value).split(",") if perm.strip()]
        unknown = [perm for perm in perms if perm not in PERM_NAMES]
        if unknown or not perms:
            self.fail(f"unknown permission {', '.join(unknown) or repr(value)}; one of "
                      f"{', '.join(PERM_NAMES)}", param, ctx)
        return perms


def _prefix(prefix: str | None, prefix_hex: str | None) -> bytes:
    if prefix_hex is None:
        return (prefix or "").encode("utf-8")
    try:
        return bytes.fromhex(prefix_hex)
    except ValueError:
        raise click.UsageError(f"--prefix-hex {prefix_hex!r} is not hexadecimal") from None


def _check_prefix(prefix: str | None, prefix_hex: str | None, **_: Any) -> None:
    if prefix is not None and prefix_hex is not None:
        raise click.UsageError("give at most one of --prefix and --prefix-hex")
    _prefix(prefix, prefix_hex)


def _prefix_document(prefix: bytes) -> dict[str, Any]:
    try:
        return {"prefix": prefix.decode("utf-8")}
    except UnicodeDecodeError:
        return {"prefix": None, "prefix_hex": prefix.hex()}


def _grant_document(grant: dict[str, Any]) -> dict[str, Any]:
    document = {"perms": grant["perms"], "bucket": grant["bucket"],
                **_prefix_document(grant["prefix"])}
    if "role" in grant:
        document = {"role": grant["role"], **document}
    return document


def _role_outcome(result: dict[str, Any]) -> Outcome:
    document = {"name": result["name"],
                "grants": [_grant_document(g) for g in result["grants"]]}

    def render(out: Output) -> None:
        rows = [[",".join(g["perms"]), g["bucket"], g.get("prefix", g.get("prefix_hex"))]
                for g in document["grants"]]
        out.table("grant", ["perms", "bucket", "prefix"], rows,
                  title=f"role {document['name']}", empty=f"role {document['name']}: no grants")
    return Outcome(document, render)


def _user_outcome(result: dict[str, Any]) -> Outcome:
    document = {"user": result["user"], "roles": result["roles"]}
    return Outcome(document, lambda out: out.fields(
        {"user": document["user"], "roles": ", ".join(document["roles"]) or "(none)"}))


def register_auth(group: click.Group, command: Callable[..., Any],
                  key_type: click.ParamType) -> None:
    """Add ``auth``, ``role`` and ``user`` to dynctl's root group with its ``command``
    decorator; ``key_type``: how dynctl reads a KEY argument."""

    @group.group("auth", epilog="Examples:\n\n\b\n  dynctl auth enable\n"
                 "  dynctl auth check get -b app USER#alice#profile --as alice")
    def auth_group() -> None:
        """Access control: enable or disable it, and ask who may do what."""

    @command(auth_group, "enable", "dynctl auth enable")
    async def auth_enable(client: Client) -> Outcome:
        """Enforce the grants on every request (needs [tls], and every member's certificate
        CN equal to its node id)."""
        await client.auth_enable()
        return Outcome({"enabled": True}, lambda out: out.line("access control enabled"))

    @command(auth_group, "disable", "dynctl auth disable")
    async def auth_disable(client: Client) -> Outcome:
        """Stop enforcing the grants (any certificate of the CA may read and write)."""
        await client.auth_disable()
        return Outcome({"enabled": False}, lambda out: out.line("access control disabled"))

    @command(auth_group, "status", "dynctl auth status")
    async def auth_status(client: Client) -> Outcome:
        """Whether access control is enabled."""
        result = await client.auth_status()
        return Outcome({"enabled": result["enabled"]}, lambda out: out.fields(result))

    @command(auth_group, "whoami", "dynctl auth whoami")
    async def auth_whoami(client: Client) -> Outcome:
        """Who the node takes you for: your certificate CN, whether you are an admin, and
        your roles (those of the user `all` included)."""
        result = await client.auth_whoami()
        document = {"user": result["user"], "admin": result["admin"], "roles": result["roles"]}
        return Outcome(document, lambda out: out.fields(
            {**document, "roles": ", ".join(document["roles"]) or "(none)"}))

    @command(auth_group, "check", "dynctl auth check get -b app USER#alice#1",
             "dynctl auth check put -b accounts BRANCH#MUM#7 --as priya")
    @click.argument("op", type=click.Choice(["get", "put", "delete", "query", "admin"]))
    @click.argument("key", type=key_type)
    @click.option("--bucket", "-b", default="default", show_default=True, metavar="NAME",
                  help="Bucket of the key ('*' for admin).")
    @click.option("--as", "user", metavar="CN", help="Check for this user (admin only).")
    async def auth_check(client: Client, op: str, key: bytes, bucket: str,
                         user: str | None) -> Outcome:
        """May you (or --as CN) run OP on KEY? Exit 0 and the grant that allows it, or
        exit 5. Answers from the grants, as if access control were enabled."""
        result = await client.auth_check(op, key, bucket=bucket, user=user)
        grant = result.get("grant")
        document = {"allowed": result["allowed"],
                    "grant": None if grant is None else _grant_document(grant)}
        who = result.get("user")
        if result.get("superuser"):
            reason = f"allowed: {who} is in [tls] admins"
        elif grant is not None:
            reason = (f"allowed by role {grant['role']}: {','.join(grant['perms'])} on "
                      f"{grant['bucket']} prefix {document['grant'].get('prefix')!r}")
        else:
            reason = f"denied: {who} holds no grant of {op} on bucket {bucket!r} for this key"
        error = None if result["allowed"] else Unauthorized(reason)
        return Outcome(document, lambda out: out.line(reason) if error is None else None,
                       error=error)

    @group.group("role", epilog="Examples:\n\n\b\n  dynctl role create self-service\n"
                 "  dynctl role grant self-service readwrite -b app --prefix 'USER#${cn}#'")
    def role_group() -> None:
        """Roles: named sets of grants (PERMS on a bucket and a partition-key prefix)."""

    @command(role_group, "create", "dynctl role create analyst")
    @click.argument("name")
    async def role_create(client: Client, name: str) -> Outcome:
        """Create role NAME (exit 0 also when it exists: "created": false)."""
        created = await client.role_create(name)
        return Outcome({"name": name, "created": created}, lambda out: out.line(
            f"role {name} {'created' if created else 'already exists'}"))

    @command(role_group, "delete", "dynctl role delete analyst")
    @click.argument("name")
    async def role_delete(client: Client, name: str) -> Outcome:
        """Delete role NAME and its grants; a role created again later starts empty."""
        await client.role_delete(name)
        return Outcome({"name": name, "deleted": True},
                       lambda out: out.line(f"role {name} deleted"))

    @command(role_group, "list", "dynctl role list")
    async def role_list(client: Client) -> Outcome:
        """Every role and how many grants it holds."""
        roles = await client.role_list()
        return Outcome({"roles": roles}, lambda out: out.table(
            "role", ["name", "grants"], [[r["name"], r["grants"]] for r in roles],
            empty="no roles"))

    @command(role_group, "get", "dynctl role get analyst")
    @click.argument("name")
    async def role_get(client: Client, name: str) -> Outcome:
        """The grants of role NAME."""
        return _role_outcome(await client.role_get(name))

    def grant_command(verb: str, example: str, doc: str) -> None:
        async def body(client: Client, name: str, perms: list[str], bucket: str,
                       prefix: str | None, prefix_hex: str | None) -> Outcome:
            method = client.role_grant if verb == "grant" else client.role_revoke
            return _role_outcome(await method(name, perms, bucket=bucket,
                                              prefix=_prefix(prefix, prefix_hex)))

        body.__doc__ = doc  # click takes the help text when the decorators below run
        options = (click.argument("name"), click.argument("perms", type=PermsType()),
                   click.option("--bucket", "-b", default="*", show_default=True,
                                metavar="BUCKET", help="A bucket name, or '*' for every bucket."),
                   click.option("--prefix", metavar="P", help=PREFIX_HELP),
                   click.option("--prefix-hex", metavar="H",
                                help="The prefix as hexadecimal bytes."))
        for option in reversed(options):
            body = option(body)
        command(role_group, verb, example, check=_check_prefix)(body)

    grant_command("grant", "dynctl role grant analyst read -b accounts --prefix 'BRANCH#MUM#'",
                  "Grant PERMS (a comma list of get, put, delete, query, admin, read, write, "
                  "readwrite, all) on --bucket to keys starting with --prefix.")
    grant_command("revoke", "dynctl role revoke analyst read -b accounts --prefix 'BRANCH#MUM#'",
                  "Revoke PERMS on exactly that --bucket and --prefix; exit 1, listing the "
                  "role's grants, when no such grant exists.")

    @group.group("user", epilog="Examples:\n\n\b\n  dynctl user grant-role priya analyst\n"
                 "  dynctl user grant-role all self-service")
    def user_group() -> None:
        """Users: certificate CNs (and `all`, every caller) and the roles they hold."""

    @command(user_group, "list", "dynctl user list")
    async def user_list(client: Client) -> Outcome:
        """Every user holding a role, with its roles."""
        users = await client.user_list()
        return Outcome({"users": users}, lambda out: out.table(
            "user", ["user", "roles"], [[u["user"], ", ".join(u["roles"])] for u in users],
            empty="no users hold roles"))

    @command(user_group, "get", "dynctl user get priya")
    @click.argument("user", metavar="CN")
    async def user_get(client: Client, user: str) -> Outcome:
        """The roles user CN holds (exit 1 when none)."""
        return _user_outcome(await client.user_get(user))

    @command(user_group, "grant-role", "dynctl user grant-role priya analyst")
    @click.argument("user", metavar="CN")
    @click.argument("role")
    async def user_grant_role(client: Client, user: str, role: str) -> Outcome:
        """Give user CN (or `all`) ROLE."""
        return _user_outcome(await client.user_grant_role(user, role))

    @command(user_group, "revoke-role", "dynctl user revoke-role priya analyst")
    @click.argument("user", metavar="CN")
    @click.argument("role")
    async def user_revoke_role(client: Client, user: str, role: str) -> Outcome:
        """Take ROLE from user CN (exit 1 when CN does not hold it)."""
        return _user_outcome(await client.user_revoke_role(user, role))
