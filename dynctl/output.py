"""Rendering of dynctl results: one JSON document, rich tables, or stable plain lines.

Every command hands an ``Outcome`` to ``Output.emit``; nothing else in dynctl writes to
stdout or stderr, so the three promises of the contract hold in one place:

- ``--json``: exactly one JSON document on stdout, also on error
  (``{"error": {"code", "message"}}``).
- a terminal: rich tables and panels.
- a pipe: plain lines, never colour. A mapping is printed as ``key=value`` lines; a table
  row is one line ``TABLE col=value col=value ...`` (logfmt: a value holding spaces, quotes
  or ``=`` is JSON-quoted), so ``grep``/``awk`` scripts do not depend on column widths.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

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
    def progress(self) -> Iterator[Callable[[str], None]]:
        """Yield ``update(text)`` for a long wait: a spinner on a terminal, a plain line per
        change when piped, silence in JSON mode (the final document says it all)."""
        if self.json_mode:
            yield lambda text: None
        elif self.terminal:
            with self._console.status("") as status:
                yield lambda text: status.update(text)
        else:
            shown: list[str] = []

            def update(text: str) -> None:
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
