"""dynctl: the command line of dynd, a thin layer over ``dynctl.client``.

One pattern for every command: ``@command(group, name, examples...)`` turns an
``async def body(client, **params) -> Outcome`` into a click command that carries the
shared ``--json`` flag, an ``Examples:`` epilog, and runs the body through ``_execute``,
the single place that connects, catches DynError and exits with its ``exit_code``.
Click usage errors are handled in ``DynGroup.main``: exit 2, with a JSON error document
in ``--json`` mode. Nothing prompts; colour and tables only on a terminal.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import trio
from click.shell_completion import get_completion_class

from common.errors import Conflict, DynError, NotFound, Unavailable, UsageError
from common.limits import MAX_N, MAX_SORT_KEY_BYTES, MAX_TTL_SECONDS
from dynctl import devcluster
from dynctl.auth_commands import register_auth
from dynctl.bench.command import register_bench
from dynctl.client import (
    DEFAULT_ADDR,
    LIMITS,
    Client,
    ClientConfigError,
    Item,
    Object,
    Value,
    as_sort_key,
    parse_nodes,
)
from dynctl.invocation import Session, Settings
from dynctl.output import (
    Outcome,
    Output,
    human_bytes,
    rfc3339,
    ring_panel,
    stats_panel,
    status_panel,
    text_or_base64,
)
from dynctl.resolve import STRATEGIES, pick

REPAIR_TIMEOUT = 300.0  # default deadline of `repair`, which waits for its exchanges
WAIT_TIMEOUT = 60.0  # default of `cluster wait --timeout`
WAIT_POLL_INTERVAL = 0.5  # seconds between two cluster_check polls
MEMBER_FIELDS = ("id", "addr", "status", "reachable", "tokens", "pending_transfers")
_CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DynGroup(click.Group):
    """The root group: turns click's usage errors into exit 2 (and JSON when asked)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(args, prog_name=prog_name or "dynctl",
                                  complete_var=complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if _wants_json(args):
                Output(json_mode=True).json({"error": {"code": UsageError.code,
                                                       "message": exc.format_message()}})
            else:
                exc.show()
            result = UsageError.exit_code
        except click.Abort:
            sys.stderr.write("aborted\n")
            result = 130
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _wants_json(args: Sequence[str]) -> bool:
    """--json anywhere before a ``--``: known even when parsing failed half-way."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _examples(lines: Iterable[str]) -> str:
    """An epilog, so that every --help ends with examples (``\\b`` keeps the lines as-is)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json = True


json_option = click.option("--json", is_flag=True, expose_value=False, callback=_set_json,
                           help="Print one JSON document (also accepted before COMMAND).")


def command(group: click.Group, name: str, *examples: str, connect: bool = True,
            default_timeout: float = LIMITS.request_timeout,
            check: Callable[..., None] | None = None,
            ) -> Callable[[Callable[..., Awaitable[Outcome]]], click.Command]:
    """Register ``body`` as a command of ``group``; see the module docstring.

    ``check(**params)`` runs before anything connects and raises click.UsageError for
    combinations of options click cannot express (exit 2 even when the node is down).
    """

    def decorate(body: Callable[..., Awaitable[Outcome]]) -> click.Command:
        @functools.wraps(body)
        def callback(**params: Any) -> None:
            if check is not None:
                check(**params)
            _execute(body, params, connect=connect, default_timeout=default_timeout)

        return group.command(name, epilog=_examples(examples))(json_option(callback))

    return decorate


def _execute(body: Callable[..., Awaitable[Outcome]], params: dict[str, Any], *, connect: bool,
             default_timeout: float) -> None:
    """The one error exit path of dynctl: run, render, exit with the outcome's code."""
    ctx = click.get_current_context()
    settings = ctx.ensure_object(Settings)
    output = Output(settings.json)

    async def run() -> Outcome:
        if not connect:
            return await body(Session(settings, output), **params)
        async with settings.connect(default_timeout) as client:
            outcome = await body(client, **params)
            if len(parse_nodes(settings.node)) > 1 and client.answered_by is not None:
                _say_who_answered(outcome, output, client.answered_by)
            return outcome

    try:
        outcome = trio.run(run)
    except DynError as exc:
        outcome = Outcome(None, error=exc)
    output.emit(outcome)
    ctx.exit(outcome.exit_code)


def _say_who_answered(outcome: Outcome, output: Output, addr: str) -> None:
    """Given several nodes, a command about one node names the one that answered: a line
    on stderr, or ``answered_by`` in the JSON document."""
    if output.json_mode:
        if isinstance(outcome.document, dict):
            outcome.document["answered_by"] = addr
    else:
        sys.stderr.write(f"answered by {addr}\n")


# -- input helpers -----------------------------------------------------------------------

class RawArgument(click.ParamType):
    """A key or value: the UTF-8 bytes of the argument, or raw stdin for ``-``.

    Stdin is read once per command line (a second ``-`` is a usage error) and at most
    ``limit + 1`` bytes of it, so that the client's own size check can refuse (exit 5).
    """

    name = "raw"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        if value != "-":
            return str(value).encode("utf-8", "surrogateescape")
        if ctx is not None:
            if ctx.meta.get("dynctl.stdin_read"):
                self.fail("only one argument can be read from stdin ('-')", param, ctx)
            ctx.meta["dynctl.stdin_read"] = True
        return sys.stdin.buffer.read(self.limit + 1)


KEY = RawArgument(LIMITS.max_key_bytes)
VALUE = RawArgument(LIMITS.max_value_bytes)

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds of a duration: a whole number with an optional unit s, m, h or d (``90``,
    ``90s``, ``5m``, ``2h``, ``1d``), at most 10 years. ValueError otherwise."""
    number, unit = text[:len(text.rstrip("smhd"))], text[len(text.rstrip("smhd")):]
    if not number.isascii() or not number.isdigit() or unit not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration: a whole number of seconds, or with a "
                         f"unit s, m, h or d (90, 90s, 5m, 2h, 1d)")
    seconds = int(number) * _DURATION_UNITS[unit]
    if seconds > MAX_TTL_SECONDS:
        raise ValueError(f"{text!r} is more than 10 years ({MAX_TTL_SECONDS} s)")
    return seconds


class Duration(click.ParamType):
    """A duration (parse_duration) as seconds; a bad one is a usage error (exit 2)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Moment(click.ParamType):
    """An RFC 3339 date and time with its offset (``2026-12-01T00:00:00Z``)."""

    name = "rfc3339"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an RFC 3339 date and time", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no offset: add Z (UTC) or +hh:mm", param, ctx)
        return moment


DURATION = Duration()
MOMENT = Moment()


def _shown(key: bytes, sk: bytes | None = None) -> str:
    """How a message names a key, or an item: the key and its sort key."""
    shown = repr(text_or_base64(key)[0])
    return shown if sk is None else f"{shown} sort key {text_or_base64(sk)[0]!r}"


def _rows(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[list[Any]]:
    return [[record.get(column) for column in columns] for record in records]


def _staged(message: str) -> Callable[[Output], None]:
    def render(out: Output) -> None:
        out.line(f"{message}; review with `dynctl cluster plan`, "
                 f"apply with `dynctl cluster commit`")
    return render


bucket_option = click.option("--bucket", "-b", default="default", show_default=True,
                             metavar="NAME", help="Bucket of the key.")
w_option = click.option("--w", "w", type=click.IntRange(min=1), metavar="W",
                        help="Write quorum for this request (default: the bucket's W).")
pr_option = click.option("--pr", "pr", type=click.IntRange(min=0), metavar="PR",
                         help="Replies of the read that must come from the key's primaries, "
                              "not fallbacks, else exit 4 (default: the bucket's PR).")
def _sort_key_given(ctx: click.Context, param: click.Parameter, value: str | None
                    ) -> bytes | None:
    """--sk as its UTF-8 bytes, --sk-hex decoded; giving both is a usage error (exit 2)."""
    if value is None:
        return None
    other = "sk_hex" if param.name == "sk" else "sk"
    if ctx.params.get(other) is not None:
        raise click.UsageError("--sk and --sk-hex exclude each other")
    if param.name == "sk":
        return value.encode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not hex", ctx, param) from None


def sort_key_options(body: Callable[..., Awaitable[Outcome]]
                     ) -> Callable[..., Awaitable[Outcome]]:
    """--sk / --sk-hex: the command acts on the key's item of that sort key; ``body``
    gets it as ``sk`` (None: the plain key). Put right above the ``def``."""

    @functools.wraps(body)
    async def with_sort_key(client: Any, *, sk: bytes | None, sk_hex: bytes | None,
                            **params: Any) -> Outcome:
        return await body(client, sk=as_sort_key(sk if sk_hex is None else sk_hex), **params)

    limit = f"1..{MAX_SORT_KEY_BYTES} bytes"
    hex_option = click.option("--sk-hex", "sk_hex", metavar="HEX", callback=_sort_key_given,
                              help=f"The sort key as hex digits ({limit}).")
    text_option = click.option("--sk", "sk", metavar="SK", callback=_sort_key_given,
                               help=f"Sort key of the item under KEY, UTF-8 ({limit}).")
    return text_option(hex_option(with_sort_key))


pw_option = click.option("--pw", "pw", type=click.IntRange(min=0), metavar="PW",
                         help="Acknowledgements that must come from the key's primaries, "
                              "not fallbacks, else exit 4 (default: the bucket's PW).")


# -- the root group ----------------------------------------------------------------------

def _node_list(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--node / DYN_NODE: one HOST:PORT or several, comma-separated; else exit 2."""
    try:
        parse_nodes(value)
    except ClientConfigError as exc:
        raise click.BadParameter(exc.message, ctx, param) from None
    return value


@click.group(cls=DynGroup, name="dynctl", context_settings=_CONTEXT_SETTINGS,
             epilog=_examples(["dynctl put cart:42 '{\"items\": [1]}'",
                               "dynctl get cart:42",
                               "dynctl --node 127.0.0.1:7071 --json cluster status"]))
@click.option("--node", envvar="DYN_NODE", default=DEFAULT_ADDR, show_default=True,
              metavar="HOST:PORT[,...]", callback=_node_list,
              help="Node to talk to (env DYN_NODE); any node serves. Several, comma-"
                   "separated: a key's request goes to a node of its preference list, "
                   "failing over to the others.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help=f"Deadline of each request [default: {LIMITS.request_timeout:g}; "
                   f"repair: {REPAIR_TIMEOUT:g}].")
@click.option("--json", "json_mode", is_flag=True, help="Print exactly one JSON document.")
@click.option("--tls-ca", envvar="DYN_TLS_CA", type=click.Path(exists=True, dir_okay=False),
              help="CA certificate that signed the node's certificate (env DYN_TLS_CA).")
@click.option("--tls-cert", envvar="DYN_TLS_CERT",
              type=click.Path(exists=True, dir_okay=False),
              help="Client certificate (env DYN_TLS_CERT).")
@click.option("--tls-key", envvar="DYN_TLS_KEY", type=click.Path(exists=True, dir_okay=False),
              help="Key of the client certificate (env DYN_TLS_KEY).")
@click.version_option(package_name="dynd", prog_name="dynctl")
@click.pass_context
def main(ctx: click.Context, node: str, timeout: float | None, json_mode: bool,
         tls_ca: str | None, tls_cert: str | None, tls_key: str | None) -> None:
    """Control a dynd cluster: read and write keys, manage buckets and membership.

    Exit codes: 0 success, 1 not found, 2 usage error, 3 conflict (siblings),
    4 unavailable (quorum, timeout, unreachable), 5 rejected or not authorised.
    """
    ctx.obj = Settings(node=node, timeout=timeout, json=json_mode, tls_ca=tls_ca,
                       tls_cert=tls_cert, tls_key=tls_key)


@command(main, "ping", "dynctl ping", "dynctl --node 127.0.0.1:7071 ping")
async def ping(client: Client) -> Outcome:
    """Check that the node answers; prints its id and ring epoch."""
    result = await client.call("ping")

    def render(out: Output) -> None:
        if out.terminal:
            out.line(f"{result.get('node')} at {client.addr} answered (epoch "
                     f"{result.get('epoch')})")
        else:
            out.fields(result)
    return Outcome(result, render)


# -- data commands -----------------------------------------------------------------------

def _value_documents(values: list[Value]) -> list[dict[str, Any]]:
    """The JSON of a key's or an item's values (get, query)."""
    documents = []
    for sibling in values:
        text, encoding = text_or_base64(sibling.value)
        documents.append({"value": text, "encoding": encoding,
                          "written_at": rfc3339(sibling.written_at),
                          **({} if sibling.expires_at is None else
                             {"expires_at": rfc3339(sibling.expires_at)})})
    return documents


def _object_document(obj: Object) -> dict[str, Any]:
    return {"found": obj.found, "context": obj.context, "values": _value_documents(obj.values)}


@command(main, "get", "dynctl get cart:42", "dynctl get --all cart:42",
         "dynctl --json get -b users alice | jq -r .context")
@click.argument("key", type=KEY)
@bucket_option
@click.option("--r", "r", type=click.IntRange(min=1), metavar="R",
              help="Read quorum for this request (default: the bucket's R).")
@pr_option
@click.option("--all", "show_all", is_flag=True,
              help="Print every sibling, each followed by a newline.")
@sort_key_options
async def get(client: Client, key: bytes, bucket: str, r: int | None, pr: int | None,
              show_all: bool, sk: bytes | None) -> Outcome:
    """Print the value of KEY ('-': read the key from stdin) as raw bytes.

    Exit 1 when the key is missing or deleted, 3 when it has several siblings (with --all
    they are printed, one per line, and the exit code is still 3).
    """
    obj = await client.get(key, bucket=bucket, r=r, pr=pr, sk=sk)
    error: DynError | None = None
    if not obj.values:
        error = NotFound(f"key {_shown(key, sk)} not found in bucket {bucket!r}")
    elif len(obj.values) > 1:
        error = Conflict(f"key {_shown(key, sk)} has {len(obj.values)} siblings; "
                         f"see them with `dynctl get --all`, settle with `dynctl resolve`")

    def render(out: Output) -> None:
        if show_all:
            out.raw(b"".join(sibling.value + b"\n" for sibling in obj.values))
        elif len(obj.values) == 1:
            out.raw(obj.values[0].value)
    return Outcome(_object_document(obj), render, error)


def _check_put(context: str | None, blind: bool, ttl: int | None,
               expire_at: datetime | None, **_: Any) -> None:
    if blind and context is not None:
        raise click.UsageError("--context and --blind exclude each other")
    if ttl is not None and expire_at is not None:
        raise click.UsageError("--ttl and --expire-at exclude each other")


@command(main, "put", "dynctl put greeting hello", "dynctl put -b carts cart:42 - < cart.json",
         "dynctl put --blind counter:1 +1", "dynctl put --ttl 5m session:9 token",
         "dynctl put --expire-at 2026-12-01T00:00:00Z offer:7 50%", check=_check_put)
@click.argument("key", type=KEY)
@click.argument("value", type=VALUE)
@bucket_option
@click.option("--context", metavar="CTX", help="Supersede exactly what CTX saw.")
@click.option("--blind", is_flag=True, help="Write with an empty context (adds a sibling).")
@click.option("--ttl", type=DURATION, metavar="DURATION",
              help="Expire this long after the write: 90, 90s, 5m, 2h, 1d, at most 10 years; "
                   "0 never (default: the bucket's ttl).")
@click.option("--expire-at", "expire_at", type=MOMENT, metavar="RFC3339",
              help="Expire at this time (e.g. 2026-12-01T00:00:00Z).")
@w_option
@pr_option
@pw_option
@sort_key_options
async def put(client: Client, key: bytes, value: bytes, bucket: str, context: str | None,
              blind: bool, ttl: int | None, expire_at: datetime | None, w: int | None,
              pr: int | None, pw: int | None, sk: bytes | None) -> Outcome:
    """Write VALUE ('-': raw bytes from stdin) under KEY; prints the new context.

    Without --context the key is read first (with the bucket's R, and PR) and the write
    supersedes every sibling that read saw. An expired value reads as deleted; an
    --expire-at already past on the coordinating node's clock is refused (exit 5).
    """
    if context is None and not blind:
        context = (await client.get(key, bucket=bucket, pr=pr, sk=sk)).context or None
    new_context = await client.put(key, value, bucket=bucket, context=context, w=w, pw=pw,
                                   sk=sk, ttl=ttl, expire_at=expire_at)
    document = {"context": new_context}
    return Outcome(document, lambda out: out.fields(document))


@command(main, "delete", "dynctl delete cart:42",
         "dynctl delete --context \"$(dynctl --json get cart:42 | jq -r .context)\" cart:42")
@click.argument("key", type=KEY)
@bucket_option
@click.option("--context", metavar="CTX", help="Supersede what CTX saw (default: read first).")
@w_option
@pr_option
@pw_option
@sort_key_options
async def delete(client: Client, key: bytes, bucket: str, context: str | None,
                 w: int | None, pr: int | None, pw: int | None, sk: bytes | None) -> Outcome:
    """Delete KEY: write a tombstone that supersedes what was read (or CTX saw).

    Deleting a missing key succeeds.
    """
    new_context = await client.delete(key, bucket=bucket, context=context, w=w, pr=pr, pw=pw,
                                      sk=sk)
    document = {"context": new_context}
    return Outcome(document, lambda out: out.fields(document))


def _check_resolve(pick_index: int | None, value: bytes | None, merge: str | None,
                   **_: Any) -> None:
    if sum(choice is not None for choice in (pick_index, value, merge)) != 1:
        raise click.UsageError("give exactly one of --pick, --value and --merge")


@command(main, "resolve", "dynctl resolve --merge union-lines todo:alice",
         "dynctl resolve --pick 0 cart:42",
         "echo '{\"items\": []}' | dynctl resolve --value - cart:42", check=_check_resolve)
@click.argument("key", type=KEY)
@bucket_option
@click.option("--pick", "pick_index", type=click.IntRange(min=0), metavar="INDEX",
              help="Keep sibling INDEX (0-based, the order of `get --all`).")
@click.option("--value", type=VALUE, metavar="VALUE", help="Write VALUE ('-': stdin) instead.")
@click.option("--merge", type=click.Choice(sorted(STRATEGIES)), help="Merge the siblings.")
@w_option
@pr_option
@pw_option
@sort_key_options
async def resolve(client: Client, key: bytes, bucket: str, pick_index: int | None,
                  value: bytes | None, merge: str | None, w: int | None, pr: int | None,
                  pw: int | None, sk: bytes | None) -> Outcome:
    """Settle the siblings of KEY into one value that supersedes all of them.

    union-lines: sorted set union of the lines; json-union: recursive union of JSON objects
    and arrays (different scalars at one path are an error, exit 5); lww: the latest
    written_at wins. A key without a conflict is left as it is (exit 0). --pick with an
    INDEX beyond the siblings is exit 5.
    """
    obj = await client.get(key, bucket=bucket, pr=pr, sk=sk)
    siblings = len(obj.values)
    if siblings < 2:
        document = {"resolved": False, "siblings": siblings, "context": obj.context}
        return Outcome(document, lambda out: out.line(
            f"nothing to resolve: key {_shown(key, sk)} has {siblings} value(s)"))
    if pick_index is not None:
        resolved = pick(obj.values, pick_index)
    elif value is not None:
        resolved = value
    else:
        assert merge is not None
        resolved = STRATEGIES[merge](obj.values)
    new_context = await client.put(key, resolved, bucket=bucket, context=obj.context, w=w,
                                   pw=pw, sk=sk)
    document = {"resolved": True, "siblings": siblings, "context": new_context}
    return Outcome(document, lambda out: out.line(
        f"resolved {siblings} siblings of {_shown(key, sk)}; context={new_context}"))


@command(main, "replicas", "dynctl replicas cart:42", "dynctl --json replicas -b users alice")
@click.argument("key", type=KEY)
@bucket_option
@sort_key_options
async def replicas(client: Client, key: bytes, bucket: str, sk: bytes | None) -> Outcome:
    """Show the local copy of KEY (or of its item --sk) on every node of its preference
    list."""
    item = {} if sk is None else {"sk": sk}
    result = await client.call("replicas", bucket=bucket, key=key, **item)
    columns = ["node", "role", "found", "siblings", "context", "reachable"]
    rows = _rows(result.get("replicas", []), columns)
    return Outcome({"replicas": result.get("replicas", [])}, lambda out: out.table(
        "replica", columns, rows, title=f"partition {result.get('partition')}"))


_CONDITION_OPTIONS = ("eq", "lt", "le", "gt", "ge", "between", "prefix")


def _condition(params: Mapping[str, Any]) -> list[Any] | None:
    """The query's one sort-key condition (--hex: its sort keys are hex), or None; exit 2
    for two conditions, bad hex or --between with LO > HI."""
    given = [op for op in _CONDITION_OPTIONS if params.get(op) is not None]
    if len(given) > 1:
        raise click.UsageError(f"give at most one condition, not --{' and --'.join(given)}")
    if not given:
        return None
    op = given[0]
    raw = params[op] if op == "between" else (params[op],)
    try:
        keys = [bytes.fromhex(text) if params["hex_keys"] else
                text.encode("utf-8", "surrogateescape") for text in raw]
    except ValueError:
        raise click.UsageError(f"--{op}: not hex") from None
    if op == "between" and keys[0] > keys[1]:
        raise click.UsageError("--between needs LO <= HI")
    return [op, *keys]


def _check_query(**params: Any) -> None:
    _condition(params)
    modes = [name for name in ("keys_only", "count", "exists") if params[name]]
    if len(modes) > 1:
        raise click.UsageError("--keys-only, --count and --exists exclude each other")
    if params["after"] is not None and params["follow_all"]:
        raise click.UsageError("--after and --all exclude each other")


def _item_document(item: Item) -> dict[str, Any]:
    sk, sk_encoding = text_or_base64(item.sk)
    return {"sk": sk, "sk_encoding": sk_encoding, "context": item.context,
            "conflict": item.conflict, "values": _value_documents(item.values)}


def _piped(data: bytes) -> str:
    text, encoding = text_or_base64(data)
    return text if encoding == "utf-8" else f"b64:{text}"


@command(main, "query", "dynctl query USER#alice", "dynctl query -b app USER#alice --prefix ORDER#",
         "dynctl query USER#alice --between ORDER#2025 ORDER#2026 --reverse --limit 10",
         "dynctl query USER#alice --all --keys-only", "dynctl query USER#alice --count",
         "if dynctl query USER#alice --prefix CART# --exists; then ...; fi", check=_check_query)
@click.argument("key", type=KEY)
@bucket_option
@click.option("--eq", metavar="SK", help="Sort key equal to SK.")
@click.option("--lt", metavar="SK", help="Sort key below SK.")
@click.option("--le", metavar="SK", help="Sort key at most SK.")
@click.option("--gt", metavar="SK", help="Sort key above SK.")
@click.option("--ge", metavar="SK", help="Sort key at least SK.")
@click.option("--between", nargs=2, metavar="LO HI", help="Sort key in LO..HI, both included.")
@click.option("--prefix", metavar="P", help="Sort key starting with P.")
@click.option("--hex", "hex_keys", is_flag=True, help="The condition's sort keys are hex.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Items per page, 1..1000.")
@click.option("--reverse", is_flag=True, help="Descending sort-key order.")
@click.option("--after", metavar="TOKEN", help="Continue after a page's `next` token.")
@click.option("--all", "follow_all", is_flag=True, help="Follow every token: all pages.")
@click.option("--r", "r", type=click.IntRange(min=1), metavar="R",
              help="Read quorum for this request (default: the bucket's R).")
@click.option("--keys-only", is_flag=True, help="Only the sort keys, one per line.")
@click.option("--count", is_flag=True, help="Only how many items match.")
@click.option("--exists", is_flag=True, help="Exit 0 if an item matches, else 1; no output.")
async def query(client: Client, key: bytes, bucket: str, limit: int, reverse: bool,
                after: str | None, follow_all: bool, r: int | None, keys_only: bool,
                count: bool, exists: bool, **conditions: Any) -> Outcome:
    """List the items of KEY that have a sort key and match at most one condition, in
    sort-key order, a page of --limit at a time.

    Piped: one `SK<TAB>VALUE` line per live value (`b64:` and base64 for bytes that are
    not UTF-8); an item with several live siblings appears once with all of them
    (`"conflict": true` in JSON), exit 0. While items may remain, `next: TOKEN` goes to
    stderr (JSON: "next"); pass it to --after. Exit 0 (an empty result too), 1 with
    --exists and no match, 2 for bad options, 4 when R replicas did not answer, 5 for a
    bad or foreign token or a refused request.
    """
    where = _condition(conditions)
    if where is not None:  # a sort key over the limit is refused here: exit 5, not 2
        where = [where[0], *(as_sort_key(sk) for sk in where[1:])]
    if count:
        total = await client.count(key, bucket=bucket, where=where, r=r, after=after)
        return Outcome({"count": total}, lambda out: out.line(str(total)))
    if exists:
        while True:
            page = await client.query(key, bucket=bucket, where=where, limit=1,
                                      reverse=reverse, after=after, r=r, keys_only=True)
            if page.items or page.next is None:
                break
            after = page.next
        found = bool(page.items)
        return Outcome({"exists": found}, None,
                       None if found else NotFound(f"no item of {_shown(key)} matches"))
    items: list[Item] = []
    while True:
        page = await client.query(key, bucket=bucket, where=where, limit=limit,
                                  reverse=reverse, after=after, r=r, keys_only=keys_only)
        items.extend(page.items)
        after = page.next
        if not follow_all or after is None:
            break
    token = after

    def render(out: Output) -> None:
        if out.terminal:
            if keys_only:
                out.table("item", ["sk", "siblings"],
                          [[_piped(item.sk), item.siblings] for item in items],
                          empty="no items match")
            else:
                out.table("item", ["sk", "value", "written_at"],
                          [[_piped(item.sk), _piped(v.value), rfc3339(v.written_at)]
                           for item in items for v in item.values], empty="no items match")
        elif keys_only:
            out.raw(b"".join(_piped(item.sk).encode() + b"\n" for item in items))
        else:
            out.raw(b"".join(f"{_piped(item.sk)}\t{_piped(v.value)}\n".encode()
                             for item in items for v in item.values))
        if token is not None:
            sys.stderr.write(f"next: {token}\n")

    document = {"items": [_item_document(item) for item in items], "next": token}
    return Outcome(document, render)


# -- buckets -----------------------------------------------------------------------------

@main.group(epilog=_examples(["dynctl bucket set sessions --n 3 --r 1 --w 1",
                              "dynctl bucket list"]))
def bucket() -> None:
    """Bucket properties: replication N, read quorum R, write quorum W, primary quorums
    PR and PW."""


_BUCKET_COLUMNS = ["name", "n", "r", "w", "pr", "pw", "ttl", "grace"]


@command(bucket, "set", "dynctl bucket set carts --n 3 --r 2 --w 2",
         "dynctl bucket set logs --w 1", "dynctl bucket set ledger --pr 2 --pw 2",
         "dynctl bucket set cache --ttl 1h --grace 6h")
@click.argument("name")
# Plain ints: the node decides the ranges, so that every out-of-range value is exit 5.
@click.option("--n", "n", type=int, help=f"Replicas per key, 1 to {MAX_N}.")
@click.option("--r", "r", type=int, help="Replies a read waits for, 1 to N.")
@click.option("--w", "w", type=int, help="Acknowledgements a write waits for, 1 to N.")
@click.option("--pr", "pr", type=int,
              help="Of the R replies, how many must come from primaries, 0 (default) to R.")
@click.option("--pw", "pw", type=int,
              help="Of the W acknowledgements, how many must come from primaries, 0 to W.")
@click.option("--ttl", type=DURATION, metavar="DURATION",
              help="Default expiry of later writes (90, 5m, 2h, 1d; 0: none).")
@click.option("--grace", type=DURATION, metavar="DURATION",
              help="How long deleted and expired objects stay before they are reaped "
                   "(default: the node's tombstone_grace; at least 4 anti-entropy periods).")
async def bucket_set(client: Client, name: str, n: int | None, r: int | None,
                     w: int | None, pr: int | None, pw: int | None, ttl: int | None,
                     grace: int | None) -> Outcome:
    """Create or update bucket NAME cluster-wide (1 <= R, W <= N and 0 <= PR <= R,
    0 <= PW <= W, else exit 5; R + W <= N is warned). With PR + PW > N a read that
    succeeds sees every write acknowledged before it, or fails with exit 4. A grace
    under 4 anti-entropy periods is exit 5."""
    fields = {field: value for field, value in (("n", n), ("r", r), ("w", w), ("pr", pr),
                                                ("pw", pw), ("ttl", ttl), ("grace", grace))
              if value is not None}
    result = await client.call("bucket_set", name=name, **fields)
    props = result.get("bucket", {})
    warning = result.get("warning")
    if not warning and all(isinstance(props.get(f), int) for f in "nrw") \
            and props["r"] + props["w"] <= props["n"]:
        warning = (f"r + w = {props['r'] + props['w']} <= n = {props['n']}: "
                   f"a read may miss the latest acknowledged write")
    return Outcome(result, lambda out: out.fields(props), warnings=[warning] if warning else [])


@command(bucket, "get", "dynctl bucket get default")
@click.argument("name")
async def bucket_get(client: Client, name: str) -> Outcome:
    """Show the properties of bucket NAME."""
    result = await client.call("bucket_get", name=name)
    return Outcome(result, lambda out: out.fields(result.get("bucket", {})))


@command(bucket, "list", "dynctl bucket list", "dynctl --json bucket list")
async def bucket_list(client: Client) -> Outcome:
    """List every bucket with its N, R, W, PR and PW."""
    result = await client.call("bucket_list")
    rows = _rows(result.get("buckets", []), _BUCKET_COLUMNS)
    return Outcome(result, lambda out: out.table("bucket", _BUCKET_COLUMNS, rows,
                                                 title="buckets"))


# -- cluster membership ------------------------------------------------------------------

@main.group(epilog=_examples(["dynctl --node 127.0.0.1:7073 cluster join 127.0.0.1:7070",
                              "dynctl cluster plan", "dynctl cluster commit",
                              "dynctl cluster wait --timeout 120"]))
def cluster() -> None:
    """Membership: stage changes, review the plan, commit, wait for convergence."""


@command(cluster, "join", "dynctl --node 127.0.0.1:7073 cluster join 127.0.0.1:7070")
@click.argument("seed", metavar="SEED_HOST:PORT")
async def cluster_join(client: Client, seed: str) -> Outcome:
    """Stage the node of --node joining the cluster SEED belongs to."""
    result = await client.call("cluster_join", seed=seed)
    return Outcome(result, _staged(f"staged: {client.addr} joins the cluster of {seed}"))


@command(cluster, "leave", "dynctl cluster leave n3", "dynctl --node 127.0.0.1:7072 cluster leave")
@click.argument("node", metavar="[NODE_ID]", required=False)
async def cluster_leave(client: Client, node: str | None) -> Outcome:
    """Stage a graceful leave of NODE_ID (default: the node of --node)."""
    result = await client.call("cluster_leave", **({"node": node} if node else {}))
    return Outcome(result, _staged(f"staged: {node or client.addr} leaves"))


@command(cluster, "remove", "dynctl cluster remove n3")
@click.argument("node", metavar="NODE_ID")
async def cluster_remove(client: Client, node: str) -> Outcome:
    """Stage the forced removal of a dead node."""
    result = await client.call("cluster_remove", node=node)
    return Outcome(result, _staged(f"staged: removal of {node}"))


@command(cluster, "replace", "dynctl cluster replace n3 n4")
@click.argument("old", metavar="OLD_ID")
@click.argument("new", metavar="NEW_ID")
async def cluster_replace(client: Client, old: str, new: str) -> Outcome:
    """Stage NEW_ID taking over every partition of OLD_ID."""
    result = await client.call("cluster_replace", old=old, new=new)
    return Outcome(result, _staged(f"staged: {new} replaces {old}"))


@command(cluster, "plan", "dynctl cluster plan",
         "dynctl --json cluster plan | jq '.transfers | length'")
async def cluster_plan(client: Client) -> Outcome:
    """Show the staged changes and the partitions that would move."""
    result = await client.call("cluster_plan")

    def render(out: Output) -> None:
        changes = result.get("changes", [])
        if not changes:
            out.line("no staged changes")
            return
        out.table("change", ["kind", "node", "arg"], _rows(changes, ["kind", "node", "arg"]),
                  title="staged changes")
        transfer_columns = ["partition", "source", "target"]
        out.table("transfer", transfer_columns,
                  _rows(result.get("transfers", []), transfer_columns),
                  title="partitions that would move", empty="no partition would move")
        owners = result.get("owners_after", {})
        out.table("owner", ["node", "partitions"], sorted(owners.items()),
                  title="partitions per node after commit")
    return Outcome(result, render)


@command(cluster, "commit", "dynctl cluster commit && dynctl cluster wait")
async def cluster_commit(client: Client) -> Outcome:
    """Apply the staged changes (bumps the epoch, starts the transfers)."""
    result = await client.call("cluster_commit")
    return Outcome(result, lambda out: out.fields(result))


@command(cluster, "clear", "dynctl cluster clear")
async def cluster_clear(client: Client) -> Outcome:
    """Drop the staged changes; a staged join is undone (the node is listed as removed)."""
    result = await client.call("cluster_clear")

    def render(out: Output) -> None:
        out.line("staged changes dropped")
        for node in result.get("undone_joins", []):
            out.line(f"join of {node} undone: it is removed until it runs `cluster join` again")
    return Outcome(result, render)


@command(cluster, "status", "dynctl cluster status", "dynctl members",
         "dynctl --json cluster status | jq '.members[].id'")
async def cluster_status(client: Client) -> Outcome:
    """One row per member: id, address, zone, status, reachable, tokens, pending transfers."""
    result = await client.call("cluster_status")
    members = result.get("members", [])
    document = {"epoch": result.get("epoch"),
                "members": [{name: member.get(name) for name in MEMBER_FIELDS}
                            for member in members]}
    columns = ["id", "addr", "zone", "status", "reachable", "tokens", "pending_transfers"]
    return Outcome(document, lambda out: out.table(
        "member", columns, _rows(members, columns), title=f"epoch {document['epoch']}"))


main.add_command(cluster_status, "members")


@command(cluster, "features", "dynctl cluster features",
         "dynctl --json cluster features | jq '.features[] | select(.active | not)'")
async def cluster_features(client: Client) -> Outcome:
    """What the members support: each feature, whether the cluster has switched it on
    (once every member reported it; it then stays on), and who has not reported it."""
    result = await client.call("cluster_features")
    rows = [[row["feature"], "yes" if row["active"] else "no", " ".join(row["lacking"]) or "-"]
            for row in result["features"]]
    return Outcome({"features": result["features"]}, lambda out: out.table(
        "feature", ["feature", "active", "lacking"], rows))


def _describe_check(check: Mapping[str, Any]) -> str:
    epochs = " ".join(f"{node}:{epoch}" for node, epoch in sorted(check.get("epochs", {}).items()))
    text = f"epochs {epochs}, {check.get('pending_transfers')} transfers pending"
    unreachable = check.get("unreachable") or []
    holding = check.get("leavers_holding_hints") or []
    return (text + (f", unreachable: {' '.join(unreachable)}" if unreachable else "")
            + (f", leavers holding hints: {' '.join(holding)}" if holding else ""))


def _convergence_steps(check: Mapping[str, Any], peak_transfers: int) -> tuple[int, int]:
    """(done, total) for the wait's progress bar: members at the newest epoch, plus the
    transfers finished out of the most seen pending at once."""
    epochs = check.get("epochs") or {}
    newest = max(epochs.values(), default=0)
    agreeing = sum(1 for epoch in epochs.values() if epoch == newest)
    members = len(epochs) + len(check.get("unreachable") or [])
    pending = check.get("pending_transfers") or 0
    return agreeing + peak_transfers - pending, members + peak_transfers


def _converged(description: str) -> Callable[[Output], None]:
    return lambda out: out.line(f"converged: {description}")


@command(cluster, "wait", "dynctl cluster wait",
         "dynctl cluster commit && dynctl cluster wait --timeout 300", connect=False)
@click.option("--timeout", "wait_timeout", type=click.FloatRange(min=0, min_open=True),
              default=WAIT_TIMEOUT, show_default=True, metavar="S",
              help="Give up (exit 4) after S seconds.")
async def cluster_wait(session: Session, wait_timeout: float) -> Outcome:
    """Block until every reachable member has the same ring epoch, no transfer is pending
    and no leaver still holds hints (it has not left until it delivered them).

    Polls the node every 0.5 s; exit 0 once converged, 4 at the timeout.
    """
    last = "no answer yet"
    peak_transfers = 0
    steps: tuple[int | None, int | None] = (None, None)
    with session.output.progress() as report, trio.move_on_after(wait_timeout):
        while True:
            try:
                async with session.settings.connect() as client:
                    check = await client.call("cluster_check")
            except Unavailable as exc:
                last = exc.message
            else:
                last = _describe_check(check)
                if check.get("converged") and not check.get("pending_transfers"):
                    return Outcome(check, _converged(last))
                peak_transfers = max(peak_transfers, check.get("pending_transfers") or 0)
                steps = _convergence_steps(check, peak_transfers)
            report(f"waiting: {last}", *steps)
            await trio.sleep(WAIT_POLL_INTERVAL)
    raise Unavailable(f"cluster did not converge within {wait_timeout:g}s: {last}")


@command(cluster, "up", "dynctl cluster up",
         "dynctl cluster up --nodes 5 --dir /tmp/dyn --base-port 8000", connect=False)
@click.option("--nodes", "count", type=click.IntRange(1, devcluster.MAX_NODES), default=3,
              show_default=True, help="Number of dynd processes.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("dyncluster"), show_default=True,
              help="Parent of the data dirs DIR/n1.. and logs DIR/n1.log..")
@click.option("--base-port", type=click.IntRange(1, 65535), default=7070, show_default=True,
              help="Node i listens on 127.0.0.1:(P + i - 1).")
async def cluster_up(session: Session, count: int, directory: Path, base_port: int) -> Outcome:
    """Run a local dev cluster in the foreground until Ctrl-C (which stops every node).

    Starts K dynd processes n1..nK on 127.0.0.1, joins them to n1 and commits. Restarted
    over the same --dir it brings the same cluster back without joining again.
    """
    nodes = devcluster.plan_nodes(count, directory, base_port)
    return await devcluster.run_dev_cluster(nodes, session.output)


# -- ring and tokens ---------------------------------------------------------------------

@command(main, "tokens", "dynctl tokens n1", "dynctl tokens n4 32 && dynctl cluster plan")
@click.argument("node", metavar="NODE_ID")
@click.argument("count", type=click.IntRange(min=0), required=False)
async def tokens(client: Client, node: str, count: int | None) -> Outcome:
    """Show how many partitions NODE_ID owns and wants, or stage wanting COUNT."""
    fields = {"count": count} if count is not None else {}
    result = await client.call("tokens", node=node, **fields)

    def render(out: Output) -> None:
        out.fields(result)
        if count is not None:
            _staged(f"staged: {node} to own {count} partitions")(out)
    return Outcome(result, render)


@command(main, "ring", "dynctl ring", "dynctl --json ring | jq '.owners[0]'")
async def ring(client: Client) -> Outcome:
    """Ring size, epoch, partitions per node, and balance (largest owner / mean)."""
    result = await client.call("ring")
    document = {name: result.get(name) for name in ("ring_size", "epoch", "owners")}
    owners = Counter(result.get("owners", []))
    total = sum(owners.values()) or 1

    def render(out: Output) -> None:
        if out.terminal:
            out.console.print(ring_panel(result))
            return
        out.fields({"ring_size": result.get("ring_size"), "epoch": result.get("epoch"),
                    "balance": result.get("balance")})
        rows = [[node, owned, round(owned / total, 3)] for node, owned in sorted(owners.items())]
        out.table("owner", ["node", "partitions", "share"], rows)
    return Outcome(document, render)


# -- operating ---------------------------------------------------------------------------

def _when(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "never"
    return rfc3339(datetime.fromtimestamp(seconds, UTC))


# What newer nodes add to the status reply (an older node's reply lacks them).
_STATUS_READINGS = ("disk_free_bytes", "disk_total_bytes", "oldest_hint_seconds",
                    "clock_offset_ms")


@command(main, "status", "dynctl status", "dynctl --node 127.0.0.1:7072 --json status")
async def status(client: Client) -> Outcome:
    """This node's view: members up/down, pending hints, transfers, anti-entropy, storage."""
    result = await client.call("status")

    def render(out: Output) -> None:
        if out.terminal:
            out.console.print(status_panel(result))
            return
        out.fields({name: result.get(name) for name in ("node", "epoch", "storage_bytes")}
                   | {name: result[name] for name in _STATUS_READINGS if name in result})
        out.table("member", ["id", "status", "reachable"],
                  _rows(result.get("members", []), ["id", "status", "reachable"]),
                  title="members")
        _render_hints(out, result.get("hints", {}))
        _render_transfers(out, result.get("transfers", []))
        out.table("antientropy", ["partition", "last_exchange", "repaired"],
                  [[entry.get("partition"), _when(entry.get("last_exchange")),
                    entry.get("repaired")] for entry in result.get("antientropy", [])],
                  title="anti-entropy")
    return Outcome(result, render)


@command(main, "hints", "dynctl hints")
async def hints(client: Client) -> Outcome:
    """Pending hinted-handoff entries per target node."""
    result = await client.call("hints")
    return Outcome(result, lambda out: _render_hints(out, result.get("hints", {})))


def _render_hints(out: Output, hints: Mapping[str, int]) -> None:
    out.table("hint", ["target", "count"], sorted(hints.items()), title="pending hints",
              empty="no pending hints")


_TRANSFER_COLUMNS = ["partition", "source", "target", "keys", "state"]


def _render_transfers(out: Output, transfers: Sequence[Mapping[str, Any]]) -> None:
    out.table("transfer", _TRANSFER_COLUMNS, _rows(transfers, _TRANSFER_COLUMNS),
              title="transfers", empty="no transfers in progress")


@command(main, "transfers", "dynctl transfers")
async def transfers(client: Client) -> Outcome:
    """Ownership handoffs in progress."""
    result = await client.call("transfers")
    return Outcome(result, lambda out: _render_transfers(out, result.get("transfers", [])))


@command(main, "repair", "dynctl repair", "dynctl repair -b carts --partition 12",
         connect=False)
@click.option("--bucket", "-b", metavar="NAME", help="Only this bucket (default: all).")
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition.")
async def repair(session: Session, bucket: str | None, partition: int | None) -> Outcome:
    """Run anti-entropy exchanges now and wait for them; prints keys compared and repaired.

    The deadline is --timeout, 300 s unless given.
    """
    fields = {name: value for name, value in (("bucket", bucket), ("partition", partition))
              if value is not None}
    with session.output.progress(plain=False) as report:
        report("repairing: anti-entropy exchanges running")
        async with session.settings.connect(REPAIR_TIMEOUT) as client:
            result = await client.call("repair", **fields)
    return Outcome(result, lambda out: out.fields(result))


@command(main, "backup", "dynctl backup /var/backups/dynd/n1-2024-06-01",
         "dynctl --node 10.0.0.2:7070 --json backup /var/lib/dynd-backups/$(date +%F)",
         connect=False)
@click.argument("directory", metavar="DIR")
async def backup(session: Session, directory: str) -> Outcome:
    """Write a consistent copy of the node's store into DIR, a new directory on the
    node's host (absolute path; on the data dir's file system it is made of hard links).

    Restore: stop the node, put DIR's files in place of its data dir, start it; it takes
    a new incarnation and gets what it missed from its peers (or at once: dynctl repair).
    """
    with session.output.progress(plain=False) as report:
        report(f"writing a checkpoint into {directory} on the node")
        async with session.settings.connect(REPAIR_TIMEOUT) as client:
            result = await client.call("backup", dir=directory)

    def render(out: Output) -> None:
        out.line(f"{result.get('path')} ({human_bytes(result.get('bytes'))})"
                 if out.terminal else str(result.get("path")))
    return Outcome(result, render)


_STATS_COLUMNS = ["count", "errors", "p50", "p95", "p99", "p999", "max"]


@command(main, "stats", "dynctl stats", "dynctl --json stats | jq .ops.get.p99")
async def stats(client: Client) -> Outcome:
    """Request counts and latency percentiles (ms) per operation, as seen by this node."""
    result = await client.call("stats")
    rows = [[op, *(numbers.get(column) for column in _STATS_COLUMNS)]
            for op, numbers in sorted(result.get("ops", {}).items())]

    def render(out: Output) -> None:
        if out.terminal:
            out.console.print(stats_panel(result, _STATS_COLUMNS))
            return
        out.table("op", ["op", *_STATS_COLUMNS], rows)
        out.table("event", ["name", "count"], sorted(result.get("events", {}).items()))
        out.table("gauge", ["name", "value"], sorted(result.get("gauges", {}).items()))
    return Outcome(result, render)


register_bench(main, command)
register_auth(main, command, KEY)


# -- shell completion --------------------------------------------------------------------

@main.command("completion", epilog=_examples([
    "dynctl completion bash > ~/.local/share/bash-completion/completions/dynctl",
    "eval \"$(_DYNCTL_COMPLETE=bash_source dynctl)\"   # the same, in ~/.bashrc",
    "dynctl completion fish > ~/.config/fish/completions/dynctl.fish",
    "dynctl completion zsh > \"${fpath[1]}/_dynctl\""]))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script of SHELL (what _DYNCTL_COMPLETE=SHELL_source prints)."""
    script_class = get_completion_class(shell)
    assert script_class is not None  # click ships bash, zsh and fish
    click.echo(script_class(main, {}, "dynctl", "_DYNCTL_COMPLETE").source())
