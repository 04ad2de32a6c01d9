"""common/config.py: defaults, every validation error, overrides, the example file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from common.config import (
    AntiEntropyConfig,
    Config,
    ConfigError,
    GossipConfig,
    TLSConfig,
    describe,
    load_config,
    parse_hostport,
)
from common.limits import Limits

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "dynd.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dynd.toml"
    path.write_text(text)
    return str(path)


def test_no_file_gives_the_documented_defaults() -> None:
    config = load_config(None)
    assert config == Config.defaults()
    assert config.node_id is None
    assert config.listen == "127.0.0.1:7070"
    assert config.ring_size == 64
    assert config.sync == "batch"
    assert config.limits == Limits()
    assert config.gossip == GossipConfig(interval=1.0, fanout=1, max_bytes_per_second=1_000_000)
    assert config.antientropy.period == 300.0
    assert config.tls is None


def test_a_full_file_is_read_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, """
node_id = "n1"
listen = "[::1]:7171"
seeds = ["10.0.0.1:7070", "db2"]
ring_size = 256
sync = "none"
metrics_listen = "127.0.0.1:9000"
[limits]
max_value_bytes = 2048
request_timeout = 2
[antientropy]
enabled = false
period = 60
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
admins = ["ops", "alice.b"]
""")
    config = load_config(path)
    assert config.node_id == "n1"
    assert config.seeds == ("10.0.0.1:7070", "db2")
    assert config.ring_size == 256 and config.sync == "none"
    assert config.metrics_listen == "127.0.0.1:9000"
    assert config.limits == dataclasses.replace(Limits(), max_value_bytes=2048,
                                                request_timeout=2.0)
    assert isinstance(config.limits.request_timeout, float)
    assert config.antientropy == AntiEntropyConfig(enabled=False, period=60.0)
    assert config.tls == TLSConfig(ca="ca.pem", cert="node.pem", key="node.key",
                                   admins=("ops", "alice.b"))


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config.defaults().ring_size = 8  # type: ignore[misc]


# (file text, words the error must contain: the key and what is wrong)
BAD_FILES = [
    ("foo = 1", ["unknown setting 'foo'", "top level", "ring_size"]),
    ("[gossip]\nfoo = 1", ["unknown setting 'foo' in [gossip]", "known: fanout, interval"]),
    ("[gosip]\ninterval = 1.0", ["unknown section [gosip]", "gossip"]),
    ("gossip = 3", ["[gossip] must be a table"]),
    ("ring_size = 63", ["ring_size", "power of two"]),
    ("ring_size = 4", ["ring_size", "power of two from 8 to 65536"]),
    ("ring_size = 131072", ["ring_size", "power of two"]),
    ("ring_size = 64.0", ["ring_size", "expected an integer"]),
    ("ring_size = true", ["ring_size", "expected an integer"]),
    ("ring_size = '64'", ["ring_size", "expected an integer"]),
    ("node_id = 'has space'", ["node_id", "1 to 64 characters"]),
    ("node_id = ''", ["node_id", "1 to 64 characters"]),
    (f"node_id = '{'x' * 65}'", ["node_id", "1 to 64 characters"]),
    ("node_id = 7", ["node_id", "expected a string"]),
    ("zone = 'rack/1'", ["zone", "1 to 64 characters"]),
    ("listen = '127.0.0.1:0'", ["listen", "1..65535"]),
    ("listen = '127.0.0.1:65536'", ["listen", "1..65535"]),
    ("listen = '127.0.0.1:http'", ["listen", "1..65535"]),
    ("listen = '::1:7070'", ["listen", "brackets"]),
    ("listen = ''", ["listen", "HOST[:PORT]"]),
    ("metrics_listen = 'a b:1'", ["metrics_listen", "bad host"]),
    ("seeds = 'a:1'", ["seeds", "list of strings"]),
    ("seeds = ['a:1', 2]", ["seeds", "list of strings"]),
    ("seeds = ['a:1', 'b:99999']", ["seeds", "'b:99999'"]),
    ("data_dir = ''", ["data_dir", "must not be empty"]),
    ("sync = 'always'", ["sync", "batch, none"]),
    ("log_level = 'trace'", ["log_level", "debug, info, warning, error"]),
    ("log_format = 'xml'", ["log_format", "kv, json"]),
    ("warn_siblings = 0", ["warn_siblings", "greater than 0"]),
    ("warn_siblings = 101", ["warn_siblings (101)", "max_siblings (100)"]),
    ("[limits]\nmax_key_bytes = 70000", ["[limits] max_key_bytes", "at most 65535"]),
    ("[limits]\nmax_bucket_name_bytes = 256", ["max_bucket_name_bytes", "at most 255"]),
    ("[limits]\nmax_frame_bytes = 1000", ["max_frame_bytes (1000)", "largest put"]),
    # Room for the largest put (1065984 bytes) but not for replicating its object.
    ("[limits]\nmax_frame_bytes = 1065985", ["max_frame_bytes (1065985)", "(1067584)",
                                             "could not be replicated"]),
    ("[limits]\nrequest_timeout = 0", ["[limits] request_timeout", "greater than 0"]),
    ("[limits]\nidle_timeout = -1.5", ["[limits] idle_timeout", "greater than 0"]),
    ("[limits]\nframe_timeout = inf", ["[limits] frame_timeout", "finite number"]),
    ("[limits]\nframe_timeout = nan", ["[limits] frame_timeout", "finite number"]),
    ("[gossip]\nfanout = 0", ["[gossip] fanout", "greater than 0"]),
    ("[gossip]\nfanout = 1.5", ["[gossip] fanout", "expected an integer"]),
    ("[gossip]\ninterval = '1s'", ["[gossip] interval", "expected a finite number"]),
    ("[gossip]\nmax_bytes_per_second = -1", ["max_bytes_per_second", "greater than 0"]),
    ("[detector]\nphi_threshold = 0", ["[detector] phi_threshold", "greater than 0"]),
    ("[detector]\nmin_std = 0.0", ["[detector] min_std", "greater than 0"]),
    ("[detector]\nacceptable_pause = -0.1", ["acceptable_pause", "must not be negative"]),
    ("[handoff]\nbatch_keys = 0", ["[handoff] batch_keys", "greater than 0"]),
    ("[handoff]\nhint_warn_age = 0", ["[handoff] hint_warn_age", "greater than 0"]),
    ("[antientropy]\nenabled = 1", ["[antientropy] enabled", "true or false"]),
    ("[antientropy]\nperiod = 0", ["[antientropy] period", "greater than 0"]),
    ("[antientropy]\ntombstone_grace = -1", ["tombstone_grace", "must not be negative"]),
    ("[tls]\nca = 'a'\ncert = 'b'", ["[tls]", "missing required", "key"]),
    ("[tls]\nca = 'a'\ncert = 'b'\nkey = ''", ["[tls] key", "must not be empty"]),
    ("[tls]\nca = 'a'\ncert = 'b'\nkey = 'c'\nadmins = 'ops'", ["admins", "list of strings"]),
    ("[tls]\nca = 'a'\ncert = 'b'\nkey = 'c'\nadmins = ['o p']", ["admins", "'o p'"]),
    ("[tls]\nca = 'a'\ncert = 'b'\nkey = 'c'\ncrl = 'd'", ["unknown setting 'crl' in [tls]"]),
    ("ring_size = ", ["not valid TOML"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_every_bad_value_is_a_clear_error(tmp_path: Path, text: str,
                                          expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path + ": ")
    for word in expected:
        assert word in message


def test_a_missing_or_undecodable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml: cannot read config file"):
        load_config(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"zone = '\xff'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(binary))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id = 'file'\nring_size = 128\nseeds = ['a:1']\nzone = 'z1'\n")
    config = load_config(path, {"node_id": "flag", "ring_size": 16, "seeds": ["b:2", "c"],
                                "listen": "0.0.0.0:7171", "data_dir": "/tmp/d",
                                "log_level": "debug", "zone": None})
    assert config.node_id == "flag"
    assert config.ring_size == 16
    assert config.seeds == ("b:2", "c")
    assert config.listen == "0.0.0.0:7171"
    assert config.data_dir == "/tmp/d"
    assert config.log_level == "debug"
    assert config.zone == "z1"  # None means the flag was not given


def test_flags_not_given_leave_the_file_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "seeds = ['a:1']\n")
    assert load_config(path, {"seeds": (), "node_id": None}).seeds == ("a:1",)


BAD_OVERRIDES = [
    ({"ring_size": 12}, ["--ring-size", "power of two"]),
    ({"ring_size": "64"}, ["--ring-size", "expected an integer"]),
    ({"seeds": ["x:0"]}, ["--seed", "1..65535"]),
    ({"node_id": "a b"}, ["--node-id", "1 to 64 characters"]),
    ({"log_level": "loud"}, ["--log-level", "debug, info"]),
    ({"sync": "none"}, ["unknown setting 'sync'", "overrides"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_OVERRIDES)
def test_bad_overrides_name_the_flag(overrides: dict[str, object],
                                     expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith("command line: ")
    for word in expected:
        assert word in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("db1", ("db1", 7070)),
    ("db1:7171", ("db1", 7171)),
    ("10.0.0.1:1", ("10.0.0.1", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("[fe80::1%eth0]", ("fe80::1%eth0", 7070)),
    ("node-2.example.org", ("node-2.example.org", 7070)),
])
def test_parse_hostport_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", [
    "", ":7070", "db1:", "db1:0", "db1:65536", "db1:-1", "db1:x", "::1", "[::1", "[::1]x",
    "[zz]:1", "a b:1", "db1:７０", "[::1]:",
])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_parse_hostport_default_port() -> None:
    assert parse_hostport("h", default_port=9) == ("h", 9)


def test_describe_covers_every_field_of_every_section() -> None:
    rows = describe()
    keys = {(section, key) for section, key, _, _ in rows}
    assert len(keys) == len(rows)
    sections = {"limits": Limits, "gossip": GossipConfig, "tls": TLSConfig}
    for section, cls in sections.items():
        assert {k for s, k in keys if s == section} == {f.name for f in dataclasses.fields(cls)}
    top_level = {f.name for f in dataclasses.fields(Config)} - {
        "limits", "gossip", "detector", "handoff", "antientropy", "tls"}
    assert {k for s, k in keys if s == ""} == top_level
    assert all(doc.strip() for *_, doc in rows)
    assert ("gossip", "interval", 1.0) in {row[:3] for row in rows}


def test_the_example_file_parses_to_the_defaults() -> None:
    assert load_config(str(EXAMPLE)) == Config.defaults()


def _documented_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) of every setting line of a TOML file, commented out or not."""
    section = ""
    found = set()
    for line in text.splitlines():
        if header := re.fullmatch(r"#?\s*\[(\w+)\]\s*", line):
            section = header.group(1)
        elif setting := re.match(r"#?\s*(\w+)\s*=", line):
            found.add((section, setting.group(1)))
    return found


def test_the_example_file_shows_every_setting_and_no_other() -> None:
    documented = _documented_keys(EXAMPLE.read_text())
    assert documented == {(section, key) for section, key, _, _ in describe()}


def test_the_example_tls_section_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    tls_part = text[text.index("# [tls]"):]
    uncommented = "\n".join(line.removeprefix("# ") for line in tls_part.splitlines()
                            if re.match(r"# (\[tls\]|\w+ =)", line))
    config = load_config(write(tmp_path, uncommented))
    assert config.tls == TLSConfig(ca="/etc/dynd/ca.pem", cert="/etc/dynd/node.pem",
                                   key="/etc/dynd/node.key", admins=("ops",),
                                   peer_identity="member")
