"""Rendering of dynctl results: one JSON document, rich tables, or stable plain lines.

Every command hands an ``Outcome`` to ``Output.emit``; nothing else in dynctl writes to
stdout or stderr, so the three promises of the contract hold in one place:

- ``--json``: exactly one JSON document on stdout, also on error
  (``{"error": {"code", "message"}}``).
- a terminal: rich tables and panels (``status_panel``, ``ring_panel``, ``stats_panel``
  build the dashboards of ``status``, ``ring`` and ``stats``), progress bars for long waits.
- a pipe: plain lines, never colour. A mapping is printed as ``key=value`` lines; a table
  row is one line ``TABLE col=value col=value ...`` (logfmt: a value holding spaces, quotes
  or ``=`` is JSON-quoted), so ``grep``/``awk`` scripts do not depend on column widths.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from common.errors import DynError


@dataclass
class Outcome:
    """What a command produced: its JSON document, its human rendering, and its error.

    ``error`` set means the exit code is ``error.exit_code``; the document (when there is
    one, as for ``get`` of a conflicting key) is still printed in JSON mode, and in human
    mode ``render`` runs and then ``error: message`` goes to stderr.
    """

    document: Any
    render: Callable[[Output], None] | None = None
    error: DynError | None = None
    warnings: list[str] = field(default_factory=list)  # to stderr, in every mode

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.error is not None else 0


def rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix: the form the contract promises."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


def text_or_base64(data: bytes) -> tuple[str, str]:
    """Return ``(text, encoding)``: the UTF-8 text when it decodes, else standard base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, datetime):
        return rfc3339(obj)
    raise TypeError(f"cannot render {type(obj).__name__} as JSON")


def plain_value(value: Any) -> str:
    """One value of a plain line: stable, never wrapped, quoted when it holds separators."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, bytes):
        value = text_or_base64(value)[0]
    if isinstance(value, Mapping):
        value = ",".join(f"{k}:{plain_value(v)}" for k, v in value.items())
    elif isinstance(value, list | tuple):
        value = ",".join(plain_value(v) for v in value)
    text = str(value)
    if not text or any(c in text for c in ' \t\n"=\\'):
        return json.dumps(text, ensure_ascii=False) if text else text
    return text


class Output:
    """Writes to the streams of the moment (looked up per call, so CliRunner can swap them)."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self._console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
        self.terminal = self._console.is_terminal and not json_mode

    @property
    def console(self) -> Console:
        """The rich console on stdout; use only when ``terminal`` is true."""
        return self._console

    # -- whole results -------------------------------------------------------------------

    def emit(self, outcome: Outcome) -> None:
        """Print an outcome the way the mode asks; the caller exits with its exit code."""
        for warning in outcome.warnings:
            self.warn(warning)
        if self.json_mode:
            if outcome.document is not None:
                self.json(outcome.document)
            elif outcome.error is not None:
                self.json({"error": outcome.error.to_wire()})
            return
        if outcome.render is not None:
            outcome.render(self)
        if outcome.error is not None:
            self.error_line(outcome.error.message)

    def error(self, exc: DynError) -> None:
        """The single error path: JSON error document on stdout, or ``error: ...`` on stderr."""
        self.emit(Outcome(document=None, error=exc))

    def json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, default=_json_default) + "\n")
        sys.stdout.flush()

    @contextmanager
    def progress(self, plain: bool = True) -> Iterator[Callable[..., None]]:
        """Yield ``update(text, completed=None, total=None)`` for a long wait.

        On a terminal a rich progress bar with spinner and elapsed time (pulsing while
        ``total`` is unknown), gone once the wait ends; piped, one plain line per change of
        ``text`` (the numbers are not printed, so the lines stay stable) unless ``plain`` is
        false; nothing in JSON mode (the final document says it all).
        """
        if self.json_mode or (not self.terminal and not plain):
            yield lambda text, completed=None, total=None: None
        elif self.terminal:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                          TimeElapsedColumn(), console=self._console, transient=True) as bar:
                task = bar.add_task("", total=None)

                def update(text: str, completed: float | None = None,
                           total: float | None = None) -> None:
                    bar.update(task, description=text, completed=completed or 0, total=total)

                yield update
        else:
            shown: list[str] = []

            def update(text: str, completed: float | None = None,
                       total: float | None = None) -> None:
                if shown != [text]:
                    shown[:] = [text]
                    self.line(text)
                    sys.stdout.flush()

            yield update

    # -- pieces for human renderers ------------------------------------------------------

    def line(self, text: str = "") -> None:
        """A line of text on stdout (rich markup is not interpreted)."""
        if self.terminal:
            self._console.print(text, markup=False)
        else:
            sys.stdout.write(text + "\n")

    def raw(self, data: bytes) -> None:
        """Bytes exactly as they are: the value of ``get``."""
        sys.stdout.flush()
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()

    def error_line(self, message: str) -> None:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()

    def warn(self, message: str) -> None:
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()

    def fields(self, mapping: Mapping[str, Any], title: str | None = None) -> None:
        """A few named scalars: a two-column table on a terminal, ``key=value`` lines piped."""
        if self.terminal:
            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for key, value in mapping.items():
                table.add_row(key, _cell(value))
            self._console.print(table)
        else:
            for key, value in mapping.items():
                sys.stdout.write(f"{key}={plain_value(value)}\n")

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              title: str | None = None, empty: str | None = None) -> None:
        """Rows of records: a rich table on a terminal (or the ``empty`` sentence when there
        are no rows), one ``name col=value ...`` line per row when piped (nothing at all for
        no rows, so ``wc -l`` counts records)."""
        if self.terminal and not rows and empty is not None:
            self.line(empty)
        elif self.terminal:
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*(_cell(value) for value in row))
            self._console.print(table)
        else:
            for row in rows:
                pairs = " ".join(f"{c}={plain_value(v)}" for c, v in zip(columns, row, strict=True))
                sys.stdout.write(f"{name} {pairs}\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else plain_value(value)


# -- dashboards (terminal only; piped, the commands print their plain lines) ------------------

_EIGHTHS = " ▏▎▍▌▋▊▉"
_OWNER_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan",
                  "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red")
RING_STRIP_WIDTH = 64  # partitions per line of the ring strip
RING_STRIP_MAX = 1024  # larger rings get no strip (it would be a wall of blocks)


def ownership_bar(fraction: float, width: int) -> str:
    """A horizontal bar ``width`` cells wide filled to ``fraction`` (0..1), to 1/8 cell."""
    if width < 1:
        raise ValueError(f"bar width must be at least 1, got {width}")
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def human_bytes(size: Any) -> str:
    """``1.5 MiB``: storage sizes for people (the JSON keeps exact bytes)."""
    if not isinstance(size, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def ago(moment: Any, now: float) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, or ``never`` for a missing wall-clock time."""
    if not isinstance(moment, int | float):
        return "never"
    seconds = max(0.0, now - moment)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _balance_style(balance: Any) -> str:
    if not isinstance(balance, int | float):
        return "dim"
    return "green" if balance <= 1.1 else "yellow" if balance <= 1.25 else "red"


def _owner_styles(nodes: Sequence[str]) -> dict[str, str]:
    return {node: _OWNER_COLOURS[i % len(_OWNER_COLOURS)] for i, node in enumerate(nodes)}


def ring_panel(result: Mapping[str, Any], bar_width: int = 30) -> Panel:
    """The ``ring`` dashboard: balance, one ownership bar per node, and a strip of the ring
    (one block per partition, coloured by owner) for rings up to RING_STRIP_MAX."""
    owners: list[str] = list(result.get("owners") or [])
    counts: dict[str, int] = {}
    for node in owners:
        counts[node] = counts.get(node, 0) + 1
    nodes = sorted(counts)
    styles = _owner_styles(nodes)
    total, largest = len(owners) or 1, max(counts.values(), default=1)
    mean = total / (len(nodes) or 1)
    balance = result.get("balance")
    header = Text.assemble(
        ("ring size ", "bold"), str(result.get("ring_size")), "   ",
        ("epoch ", "bold"), str(result.get("epoch")), "   ",
        ("balance ", "bold"), (plain_value(balance), _balance_style(balance)),
        (" (largest owner / mean)", "dim"))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (("node", "left"), ("partitions", "right"), ("share", "right"),
                            ("vs mean", "right"), ("ownership", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for node in nodes:
        owned = counts[node]
        table.add_row(Text(node, style=styles[node]), str(owned), f"{owned / total:.1%}",
                      f"{owned / mean - 1:+.0%}",
                      Text(ownership_bar(owned / largest, bar_width), style=styles[node]))
    parts: list[RenderableType] = [header, Text(), table]
    if 0 < len(owners) <= RING_STRIP_MAX:
        strip = Text()
        for i, node in enumerate(owners):
            if i and i % RING_STRIP_WIDTH == 0:
                strip.append("\n")
            strip.append("█", style=styles[node])
        parts += [Text(), Text(f"partitions 0..{len(owners) - 1}", style="dim"), strip]
    return Panel(Group(*parts), title="ring", title_align="left", expand=False)


def _member_table(members: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("member", "status", "reachable", "phi"):
        table.add_column(column, justify="right" if column == "phi" else "left")
    for member in members:
        up = member.get("reachable")
        table.add_row(str(member.get("id")), str(member.get("status")),
                      Text("● up", style="green") if up else Text("○ down", style="bold red"),
                      plain_value(member.get("phi")) or "-")
    return table


def _count_table(title: str, rows: Sequence[tuple[str, Any]], style: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", title=title,
                  title_justify="left", title_style="bold")
    table.add_column("target")
    table.add_column("hints", justify="right")
    for target, count in rows:
        table.add_row(target, Text(str(count), style=style))
    return table


def _transfer_table(transfers: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", title="transfers",
                  title_justify="left", title_style="bold")
    for column in ("partition", "source", "target", "keys", "state"):
        table.add_column(column, justify="right" if column in ("partition", "keys") else "left")
    for transfer in transfers:
        table.add_row(*(plain_value(transfer.get(column)) or "-" for column in
                        ("partition", "source", "target", "keys", "state")))
    return table


# Where `status` turns a reading red: the thresholds of the alerts in
# etc/prometheus/dynd-alerts.yml that the same reading would fire.
HINT_AGE_ALERT_SECONDS = 3600.0  # DyndHintsPendingTooLong ([handoff] hint_warn_age)
DISK_FREE_ALERT_FRACTION = 0.10  # DyndDiskAlmostFull
CLOCK_OFFSET_ALERT_MS = 1000.0  # DyndClockOffsetHigh


def _largest_offset_ms(offset: Any) -> float | None:
    """The clock offset to show: the reply's number, or the largest (by size) of a map
    of offsets per peer; None when the node does not report one."""
    if isinstance(offset, Mapping):
        numbers = [v for v in offset.values() if isinstance(v, int | float)]
        return max(numbers, key=abs, default=None)
    return offset if isinstance(offset, int | float) else None


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def health_line(result: Mapping[str, Any]) -> Text:
    """Free space, the oldest pending hint and the clock offset, each red where its alert
    would fire; readings a node does not report are left out."""
    parts: list[Text] = []
    free, total = result.get("disk_free_bytes"), result.get("disk_total_bytes")
    if isinstance(free, int) and isinstance(total, int) and total > 0:
        low = free < DISK_FREE_ALERT_FRACTION * total
        parts.append(Text.assemble(("disk ", "bold"), (
            f"{human_bytes(free)} free of {human_bytes(total)} ({100 * free / total:.0f}%)",
            "bold red" if low else "")))
    oldest = result.get("oldest_hint_seconds")
    if isinstance(oldest, int | float):
        style = "bold red" if oldest > HINT_AGE_ALERT_SECONDS else "yellow" if oldest else "dim"
        parts.append(Text.assemble(("oldest hint ", "bold"),
                                   (_duration(oldest) if oldest else "none", style)))
    offset = _largest_offset_ms(result.get("clock_offset_ms"))
    if offset is not None:
        style = "bold red" if abs(offset) > CLOCK_OFFSET_ALERT_MS else ""
        parts.append(Text.assemble(("clock offset ", "bold"), (f"{offset:+.0f} ms", style)))
    return Text("   ").join(parts)


def status_panel(result: Mapping[str, Any], now: float | None = None) -> Panel:
    """The ``status`` dashboard of one node: members and their reachability, hints pending
    per target, transfers, the newest anti-entropy exchange, storage size, free space,
    the oldest hint and the largest clock offset to a peer (health_line)."""
    now = time.time() if now is None else now
    members = list(result.get("members") or [])
    up = sum(1 for m in members if m.get("reachable") and m.get("status") != "removed")
    down = sum(1 for m in members if not m.get("reachable") and m.get("status") != "removed")
    hints: dict[str, int] = dict(result.get("hints") or {})
    transfers = list(result.get("transfers") or [])
    exchanges = list(result.get("antientropy") or [])
    last = max((e["last_exchange"] for e in exchanges
                if isinstance(e.get("last_exchange"), int | float)), default=None)
    exchanged = sum(1 for e in exchanges if isinstance(e.get("last_exchange"), int | float))
    repaired = sum(e.get("repaired") or 0 for e in exchanges
                   if isinstance(e.get("repaired"), int))
    summary = Table.grid(padding=(0, 3))
    for _ in range(4):
        summary.add_column()
    summary.add_row(
        Text.assemble(("members ", "bold"), (f"{up} up", "green"), ", ",
                      (f"{down} down", "bold red" if down else "dim")),
        Text.assemble(("storage ", "bold"), human_bytes(result.get("storage_bytes"))),
        Text.assemble(("hints ", "bold"), (str(sum(hints.values())),
                                           "yellow" if hints else "dim")),
        Text.assemble(("transfers ", "bold"), (str(len(transfers)),
                                               "yellow" if transfers else "dim")))
    parts: list[RenderableType] = [
        summary, health_line(result),
        Text.assemble(("anti-entropy ", "bold"), f"last exchange {ago(last, now)}, ",
                      f"{exchanged}/{len(exchanges)} partitions exchanged, ",
                      f"{repaired} keys repaired"),
        Text(), _member_table(members)]
    if hints:
        parts += [Text(), _count_table("pending hints", sorted(hints.items()), "yellow")]
    if transfers:
        parts += [Text(), _transfer_table(transfers)]
    title = f"node {result.get('node')} · epoch {result.get('epoch')}"
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


_FRIENDLY: dict[str, Callable[[Any], str]] = {
    "storage_bytes": human_bytes, "last_antientropy": lambda moment: ago(moment, time.time())}


def stats_panel(result: Mapping[str, Any], columns: Sequence[str]) -> Panel:
    """The ``stats`` dashboard: latency per operation, event counters, the node's gauges."""
    ops = Table(box=None, pad_edge=False, header_style="bold", title="latency (ms)",
                title_justify="left", title_style="bold")
    ops.add_column("op")
    for column in columns:
        ops.add_column(column, justify="right")
    for op, numbers in sorted((result.get("ops") or {}).items()):
        ops.add_row(op, *(plain_value(numbers.get(column)) for column in columns))
    parts: list[RenderableType] = [ops]
    for title, values in (("events", result.get("events")), ("node", result.get("gauges"))):
        if values:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold")
            table.add_column(justify="right")
            for name, value in sorted(values.items()):
                table.add_row(name, _FRIENDLY.get(name, plain_value)(value))
            parts += [Text(), Text(title, style="bold"), table]
    return Panel(Group(*parts), title=f"stats of {result.get('node')}", title_align="left",
                 expand=False)
