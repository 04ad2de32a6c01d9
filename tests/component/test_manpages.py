"""The man pages against the code they document, so that they cannot drift apart.

dynctl.1 must have a subsection for every dynctl command (walking the click group) that
names each of its long options, and list every global option, environment variable, exit
code and error code; dynd.8 every dynd flag; dynd.toml.5 every setting of
``common.config.describe()`` with its default. The pages must also lint clean with mandoc
(Debian package ``mandoc``, installed by ``make deps-system``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from common.config import describe
from common.errors import DynError
from common.limits import MAX_N
from common.messages import ADMIN_OPS
from dynctl.cli import main as dynctl_main
from dynd.__main__ import main as dynd_main

MAN_DIR = Path(__file__).resolve().parents[2] / "man"
PAGES = ("dynctl.1", "dynd.8", "dynd.toml.5")
SHARED_OPTIONS = ("--json", "--help")  # on every dynctl command; documented once, globally

_ESCAPES = [(r"\-", "-"), (r"\(dq", '"'), (r"\(aq", "'"), (r"\&", ""), (r"\c", ""),
            (r"\ ", " "), (r"\e", "\\")]
_FONT = re.compile(r"\\f(\[[A-Z]*\]|\(..|.)")


def plain(line: str) -> str:
    """The text of one roff source line: macro name, font changes and escapes removed."""
    if line.startswith("."):
        line = line.partition(" ")[2]
    line = _FONT.sub("", line)
    for escape, text in _ESCAPES:
        line = line.replace(escape, text)
    return line


@dataclass
class Part:
    """The lines of one .SH section, or of one .SS subsection within it."""

    section: str
    subsection: str
    lines: list[str]  # roff source lines, macros included

    @property
    def text(self) -> str:
        return "\n".join(plain(line) for line in self.lines)

    def tags(self) -> list[str]:
        """The tag (the line after ``.TP``) of every item of the part, as plain text."""
        return [plain(self.lines[i + 1]) for i, line in enumerate(self.lines[:-1])
                if line == ".TP"]


def parse(page: str) -> list[Part]:
    """Split a man page into parts: one per .SH section body and one per .SS subsection."""
    parts = [Part("", "", [])]
    for line in (MAN_DIR / page).read_text(encoding="utf-8").splitlines():
        if line.startswith(".SH "):
            parts.append(Part(plain(line).strip('"'), "", []))
        elif line.startswith(".SS "):
            parts.append(Part(parts[-1].section, plain(line).strip('"'), []))
        else:
            parts[-1].lines.append(line)
    return parts


def section_text(page: str, section: str) -> str:
    texts = [part.text for part in parse(page) if part.section == section]
    assert texts, f"{page} has no section {section}"
    return "\n".join(texts)


def item_text(page: str, tag: str) -> str:
    """The tag and body of the ``.TP`` item of ``page`` whose tag starts with ``tag``."""
    for part in parse(page):
        for i, line in enumerate(part.lines[:-1]):
            if line == ".TP" and plain(part.lines[i + 1]).startswith(tag):
                body = part.lines[i + 1:]
                end = next((j for j, rest in enumerate(body) if rest in (".TP", ".PP")),
                           len(body))
                return "\n".join(plain(rest) for rest in body[:end])
    raise AssertionError(f"{page} has no item tagged {tag!r}")


def mentions(text: str, option: str) -> bool:
    """Whether ``option`` appears as a whole word (``--r`` is not found in ``--repair``)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every leaf command under ``group``, recursively, as ("cluster join", command)."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, path + " ")
        else:
            yield path, command


def context(command: click.Command) -> click.Context:
    """A context with dynctl's own settings: click caches a command's help option from the
    first context it sees, and a bare one (only --help) broke -h for later tests."""
    return click.Context(command, **dynctl_main.context_settings)


def options(command: click.Command) -> list[click.Option]:
    return [param for param in command.get_params(context(command))
            if isinstance(param, click.Option)]


def long_options(command: click.Command) -> list[str]:
    return sorted({opt for param in options(command)
                   for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")})


DYNCTL_COMMANDS = dict(commands(dynctl_main))


def command_sections() -> dict[str, Part]:
    """dynctl.1's command subsections by command name (a heading may name aliases: "a, b")."""
    found = {}
    for part in parse("dynctl.1"):
        if part.section.endswith("COMMANDS") and part.subsection:
            for name in part.subsection.split(", "):
                found[name] = part
    return found


# -- dynctl.1 ------------------------------------------------------------------------------

def test_walk_finds_the_commands_of_nested_groups() -> None:
    assert {"put", "bucket set", "cluster join", "cluster up", "members"} <= set(DYNCTL_COMMANDS)
    assert "--base-port" in long_options(DYNCTL_COMMANDS["cluster up"])


@pytest.mark.parametrize("path", sorted(DYNCTL_COMMANDS))
def test_every_dynctl_command_has_a_subsection_naming_its_options(path: str) -> None:
    sections = command_sections()
    assert path in sections, f"dynctl.1 has no '.SS {path}' under a ... COMMANDS section"
    text = sections[path].text
    missing = [opt for opt in long_options(DYNCTL_COMMANDS[path])
               if opt not in SHARED_OPTIONS and not mentions(text, opt)]
    assert not missing, f"dynctl.1, '{path}': options not documented: {missing}"


def test_every_documented_command_exists() -> None:
    stale = sorted(set(command_sections()) - set(DYNCTL_COMMANDS))
    assert not stale, f"dynctl.1 documents commands dynctl does not have: {stale}"


def test_every_group_is_in_the_synopsis() -> None:
    synopsis = section_text("dynctl.1", "SYNOPSIS")
    for name, command in dynctl_main.commands.items():
        if isinstance(command, click.Group):
            assert mentions(synopsis, f"dynctl {name}"), name


def test_global_options_and_shared_options_are_documented() -> None:
    tags = "\n".join(tag for part in parse("dynctl.1") if part.section == "GLOBAL OPTIONS"
                     for tag in part.tags())
    wanted = [*long_options(dynctl_main), *SHARED_OPTIONS]
    missing = [opt for opt in wanted if not mentions(tags, opt)]
    assert not missing, f"dynctl.1 GLOBAL OPTIONS lacks {missing}"


def _envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in options(command):
        envvar: Any = param.envvar
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def test_environment_variables_are_documented() -> None:
    variables = _envvars(dynctl_main).union(*map(_envvars, DYNCTL_COMMANDS.values()))
    assert {"DYN_NODE", "DYN_TLS_CA", "DYN_TLS_CERT", "DYN_TLS_KEY"} <= variables
    environment = section_text("dynctl.1", "ENVIRONMENT")
    missing = sorted(name for name in variables if not mentions(environment, name))
    assert not missing, f"dynctl.1 ENVIRONMENT lacks {missing}"


def error_classes(cls: type[DynError] = DynError) -> Iterator[type[DynError]]:
    yield cls
    for subclass in cls.__subclasses__():
        yield from error_classes(subclass)


def test_exit_codes_and_error_codes_are_documented() -> None:
    exit_tags = {tag.strip() for part in parse("dynctl.1") if part.section == "EXIT STATUS"
                 for tag in part.tags()}
    exit_codes = {"0"} | {str(cls.exit_code) for cls in error_classes()}
    assert exit_codes <= exit_tags, f"EXIT STATUS lacks {sorted(exit_codes - exit_tags)}"
    options_text = section_text("dynctl.1", "GLOBAL OPTIONS")
    missing = sorted(cls.code for cls in error_classes() if not mentions(options_text, cls.code))
    assert not missing, f"dynctl.1 --json lists no error code {missing}"


def test_bucket_set_documents_the_largest_n() -> None:
    text = command_sections()["bucket set"].text
    assert f"between 1 and {MAX_N}" in text and f"1 to {MAX_N}" in text
    assert f"1 to {MAX_N}" in DYNCTL_COMMANDS["bucket set"].get_help(
        context(DYNCTL_COMMANDS["bucket set"]))


# The dynctl command of every op that dynd/security.py refuses without an admin CN.
ADMIN_COMMANDS = {"cluster_join": "join", "cluster_leave": "leave", "cluster_remove": "remove",
                  "cluster_replace": "replace", "cluster_plan": "plan",
                  "cluster_commit": "commit", "cluster_clear": "clear",
                  "cluster_status": "status", "cluster_check": "wait",
                  "cluster_features": "features", "tokens": "tokens",
                  "bucket_set": "bucket set", "repair": "repair", "backup": "backup"}


@pytest.mark.parametrize(("page", "tag"), [("dynctl.1", "--tls-cert"),
                                           ("dynd.8", "admin commands"),
                                           ("dynd.toml.5", "admins")])
def test_every_page_lists_the_admin_commands_the_node_enforces(page: str, tag: str) -> None:
    assert set(ADMIN_COMMANDS) == ADMIN_OPS, "map each admin op to its dynctl command"
    text = item_text(page, tag)
    missing = sorted(name for name in ADMIN_COMMANDS.values() if not mentions(text, name))
    assert not missing, f"{page}, {tag}: admin commands not listed: {missing}"


# -- dynd.8 --------------------------------------------------------------------------------

def test_every_dynd_flag_is_documented() -> None:
    tags = "\n".join(tag for part in parse("dynd.8") if part.section == "OPTIONS"
                     for tag in part.tags())
    flags = sorted({opt for param in options(dynd_main)
                    for opt in (*param.opts, *param.secondary_opts)})
    assert {"-c", "--config", "--seed", "--check-config"} <= set(flags)
    missing = [flag for flag in flags if not mentions(tags, flag)]
    assert not missing, f"dynd.8 OPTIONS lacks {missing}"
    synopsis = section_text("dynd.8", "SYNOPSIS")
    absent = [param.opts for param in options(dynd_main)
              if not any(mentions(synopsis, opt) for opt in param.opts)]
    assert not absent, f"dynd.8 SYNOPSIS lacks {absent}"


def test_dynd_page_covers_operations() -> None:
    subsections = {part.subsection for part in parse("dynd.8") if part.section == "OPERATION"}
    assert {"Joining a node", "Leaving", "Removing a dead node", "Replacing a node",
            "Recovering a lost disk"} <= subsections
    for section in ("SIGNALS", "SYSTEMD", "LOGGING", "FILES", "EXIT STATUS", "CONFIGURATION"):
        assert section_text("dynd.8", section).strip()
    assert mentions(section_text("dynd.8", "SIGNALS"), "SIGTERM")
    assert "READY=1" in section_text("dynd.8", "SYSTEMD")


# -- dynd.toml.5 ---------------------------------------------------------------------------

def toml_literal(value: object) -> str:
    """A default as written in the page (and in TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(map(toml_literal, value)) + "]"
    return repr(value)


def setting_tags() -> dict[tuple[str, str], str]:
    """(section, key) -> the tag line documenting it, from the SETTINGS subsections."""
    found = {}
    for part in parse("dynd.toml.5"):
        if part.section != "SETTINGS" or not part.subsection:
            continue
        section = "" if part.subsection == "Top level" else part.subsection.strip("[]")
        for tag in part.tags():
            found[(section, tag.split()[0])] = tag
    return found


@pytest.mark.parametrize(("section", "key", "default"),
                         [(section, key, default) for section, key, default, _ in describe()])
def test_every_setting_is_documented_with_its_default(section: str, key: str,
                                                      default: object) -> None:
    tag = setting_tags().get((section, key))
    where = f"[{section}] {key}" if section else key
    assert tag is not None, f"dynd.toml.5 does not document {where}"
    if default is None:
        assert "unset" in tag or "required" in tag, f"{where}: {tag!r}"
    else:
        assert tag.startswith(f"{key} = {toml_literal(default)} "), \
            f"{where}: default {toml_literal(default)} expected, page says {tag!r}"


def test_every_documented_setting_exists() -> None:
    known = {(section, key) for section, key, _, _ in describe()}
    stale = sorted(set(setting_tags()) - known)
    assert not stale, f"dynd.toml.5 documents settings the loader does not know: {stale}"


# -- rendering -----------------------------------------------------------------------------

def test_plain_removes_roff_markup() -> None:
    assert plain(r".BI \-\-node\-id \fIID\fP \(dqx\(dq") == '--node-id ID "x"'
    assert not mentions("--repair", "--r") and mentions("[--r R]", "--r")


@pytest.mark.parametrize("page", PAGES)
def test_page_lints_clean_with_mandoc(page: str) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.fail("mandoc is not installed: run `make deps-system` "
                    "(apt-get install mandoc, Debian package 'mandoc')")
    result = subprocess.run([mandoc, "-T", "lint", "-W", "all", str(MAN_DIR / page)],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), \
        f"mandoc -T lint {page}:\n{result.stdout}{result.stderr}"
