"""TOML config file (plus dynd's command-line flags) -> one frozen, validated Config.

Every setting is declared once, in the tables below: its type, its check and its
documentation. Defaults live on the dataclasses. ``describe()`` reads both, so the
example file ``etc/dynd.toml`` and the man page ``dynd.toml(5)`` are tested against
the same source the loader uses.

Validation is strict because the contract says a bad config is an error at
start-up (exit 2) before anything is written: unknown keys and sections, wrong
types (``bool`` is not an ``int``; an ``int`` is accepted where a ``float`` is
expected, never the reverse), out-of-range values and unparsable addresses all
raise ``ConfigError`` naming the file (or the command line), the key, and what
is wrong. The module is pure: it reads the one file it is given and checks no
other path (the node checks that TLS files exist).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from common.limits import REPLICA_ENVELOPE_BYTES, Limits

DEFAULT_PORT = 7070
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")
_NO_OVERRIDES: Mapping[str, object] = MappingProxyType({})
# Storage key layout (dynd/storage.py): 1-byte bucket length, 2-byte key length.
_MAX_STORABLE_BUCKET_BYTES = 255
_MAX_STORABLE_KEY_BYTES = 65535


class ConfigError(ValueError):
    """A config file, flag or value that dynd refuses to start with (exit code 2)."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval: float = 1.0
    fanout: int = 1
    max_bytes_per_second: int = 1_000_000


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    phi_threshold: float = 8.0
    min_std: float = 0.1
    acceptable_pause: float = 0.0


@dataclass(frozen=True, slots=True)
class HandoffConfig:
    interval: float = 5.0
    keys_per_second: int = 2000
    batch_keys: int = 200
    hint_warn_age: float = 3600.0


@dataclass(frozen=True, slots=True)
class AntiEntropyConfig:
    enabled: bool = True
    period: float = 300.0
    keys_per_second: int = 1000
    bytes_per_second: int = 4_000_000
    tombstone_grace: float = 86400.0


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca: str
    cert: str
    key: str
    admins: tuple[str, ...] = ()
    peer_identity: str = "ca"


@dataclass(frozen=True, slots=True)
class Config:
    node_id: str | None = None  # None: generate one and persist it on first start
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    data_dir: str = "/var/lib/dynd"
    seeds: tuple[str, ...] = ()
    zone: str = "default"
    ring_size: int = 64
    sync: Literal["batch", "none"] = "batch"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["kv", "json"] = "kv"
    metrics_listen: str | None = None
    warn_siblings: int = 10
    limits: Limits = field(default_factory=Limits)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    antientropy: AntiEntropyConfig = field(default_factory=AntiEntropyConfig)
    tls: TLSConfig | None = None

    @classmethod
    def defaults(cls) -> Config:
        """The configuration of a node started without a file or flags."""
        return cls()


def parse_hostport(s: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host[:port]`` (IPv6 in brackets: ``[::1]:7070``) into (host, port).

    The port defaults to ``default_port`` and must be 1..65535; the host is a
    name or address (IPv6 returned without brackets). Raises ValueError.
    """
    if not isinstance(s, str) or not s:
        raise ValueError(f"expected HOST[:PORT], got {s!r}")
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or not _IPV6_RE.fullmatch(host):
            raise ValueError(f"bad bracketed IPv6 address in {s!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {s!r}")
        port_text = rest[1:] if rest else None
    else:
        if s.count(":") > 1:
            raise ValueError(f"put IPv6 addresses in brackets, as in [::1]:{default_port}: {s!r}")
        host, sep, port_text_raw = s.partition(":")
        port_text = port_text_raw if sep else None
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"bad host name in {s!r}")
    if port_text is None:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number in 1..65535, got {port_text!r} in {s!r}")
    return host, int(port_text)


# --- the settings table: type, check and documentation of every key ----------------

Check = Callable[[Any], str | None]  # returns what is wrong with a typed value, or None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _at_most(limit: int) -> Check:
    def check(value: int) -> str | None:
        if value <= 0:
            return "must be greater than 0"
        return None if value <= limit else f"must be at most {limit}"

    return check


def _name(value: str) -> str | None:
    if _NAME_RE.fullmatch(value):
        return None
    return "must be 1 to 64 characters from A-Z a-z 0-9 _ . -"


def _address(value: str) -> str | None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        return str(exc)
    return None


def _addresses(values: tuple[str, ...]) -> str | None:
    return next((problem for v in values if (problem := _address(v))), None)


def _not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _names(values: tuple[str, ...]) -> str | None:
    return next((f"{v!r}: {problem}" for v in values if (problem := _name(v))), None)


def _ring_size(value: int) -> str | None:
    if 8 <= value <= 65536 and value & (value - 1) == 0:
        return None
    return "must be a power of two from 8 to 65536"


@dataclass(frozen=True, slots=True)
class _Setting:
    kind: Literal["int", "float", "str", "bool", "strs"]
    doc: str
    check: Check | None = None


_TOP: dict[str, _Setting] = {
    "node_id": _Setting("str", "This node's id, unique in the cluster (1-64 of A-Z a-z 0-9 _ . -). "
                        "Unset: generated on first start and kept in data_dir.", _name),
    "listen": _Setting("str", "HOST:PORT serving clients and peers on one TCP port.", _address),
    "data_dir": _Setting("str", "Directory of the node's RocksDB, node id and cluster state.",
                         _not_empty),
    "seeds": _Setting("strs", "HOST:PORT list of nodes to gossip with at start; joining a "
                      "cluster is always 'dynctl cluster join'.", _addresses),
    "zone": _Setting("str", "Data center or rack of this node; replicas of a key are spread "
                     "over distinct zones where the cluster has them.", _name),
    "ring_size": _Setting("int", "Number of partitions Q (power of two, 8..65536); fixed when "
                          "the cluster is created.", _ring_size),
    "sync": _Setting("str", "'batch': acknowledge a write only after its group commit is "
                     "fsynced. 'none': no fsync, faster, a crash can lose acknowledged writes.",
                     _one_of("batch", "none")),
    "log_level": _Setting("str", "Least severe level logged to stderr: debug, info, warning, "
                          "error.", _one_of("debug", "info", "warning", "error")),
    "log_format": _Setting("str", "Log line format: 'kv' (key=value) or 'json' (one object a "
                           "line).", _one_of("kv", "json")),
    "metrics_listen": _Setting("str", "HOST:PORT of the Prometheus metrics endpoint. Unset: "
                               "no metrics endpoint.", _address),
    "warn_siblings": _Setting("int", "Log a warning when an object has more live siblings than "
                              "this (at most [limits] max_siblings).", _positive),
}

_LIMITS: dict[str, _Setting] = {
    "max_frame_bytes": _Setting("int", "Largest frame accepted on the wire, bytes, length "
                                "prefix excluded; larger frames are refused.", _positive),
    "max_key_bytes": _Setting("int", "Largest key, bytes.", _at_most(_MAX_STORABLE_KEY_BYTES)),
    "max_value_bytes": _Setting("int", "Largest value, bytes.", _positive),
    "max_bucket_name_bytes": _Setting("int", "Longest bucket name, bytes (UTF-8).",
                                      _at_most(_MAX_STORABLE_BUCKET_BYTES)),
    "max_context_bytes": _Setting("int", "Longest encoded client context string, bytes.",
                                  _positive),
    "max_siblings": _Setting("int", "Most live siblings of one object; a write that would "
                             "exceed it is refused.", _positive),
    "max_nesting": _Setting("int", "Deepest CBOR container nesting accepted from the wire.",
                            _positive),
    "max_inflight_per_connection": _Setting("int", "Most requests in flight on one connection; "
                                            "further frames wait.", _positive),
    "max_connections": _Setting("int", "Most open connections; further ones are refused.",
                                _positive),
    "request_timeout": _Setting("float", "Default deadline of one client request, seconds.",
                                _positive),
    "idle_timeout": _Setting("float", "Seconds without a frame before a connection is closed.",
                             _positive),
    "frame_timeout": _Setting("float", "Seconds allowed to deliver the rest of a started "
                              "frame (slow-loris defence).", _positive),
    "query_fanout": _Setting("str", "Replicas a query asks first: 'n', all of the preference "
                             "list, like a get (the extra replies feed read repair); 'r', only "
                             "R of them, this node's own copy first, and the next one when one "
                             "fails or the R do not settle (less scan work; the replicas not "
                             "asked are repaired only by anti-entropy).", _one_of("n", "r")),
}

_SECTIONS: dict[str, tuple[type, dict[str, _Setting]]] = {
    "limits": (Limits, _LIMITS),
    "gossip": (GossipConfig, {
        "interval": _Setting("float", "Seconds between two gossip rounds.", _positive),
        "fanout": _Setting("int", "Peers contacted per gossip round.", _positive),
        "max_bytes_per_second": _Setting("int", "Cap on gossip traffic sent, bytes per second.",
                                         _positive),
    }),
    "detector": (DetectorConfig, {
        "phi_threshold": _Setting("float", "Suspicion level phi above which a peer is judged "
                                  "down; higher is slower but surer.", _positive),
        "min_std": _Setting("float", "Floor of the heartbeat interval standard deviation, "
                            "seconds; avoids false alarms on a very regular network.", _positive),
        "acceptable_pause": _Setting("float", "Extra seconds of silence tolerated before "
                                     "suspicion rises (e.g. GC or VM pauses).", _non_negative),
    }),
    "handoff": (HandoffConfig, {
        "interval": _Setting("float", "Seconds between two attempts to hand hints and "
                             "partitions to their owners.", _positive),
        "keys_per_second": _Setting("int", "Cap on keys handed off, per second.", _positive),
        "batch_keys": _Setting("int", "Keys sent per handoff message.", _positive),
        "hint_warn_age": _Setting("float", "Warn when a hint is older than this, seconds.",
                                  _positive),
    }),
    "antientropy": (AntiEntropyConfig, {
        "enabled": _Setting("bool", "Run background Merkle-tree anti-entropy exchanges."),
        "period": _Setting("float", "Every pair of replicas of a partition is compared at least "
                           "this often, seconds.", _positive),
        "keys_per_second": _Setting("int", "Cap on keys hashed or repaired, per second.",
                                    _positive),
        "bytes_per_second": _Setting("int", "Cap on anti-entropy traffic, bytes per second.",
                                     _positive),
        "tombstone_grace": _Setting("float", "Seconds a tombstone is kept after every primary "
                                    "holds it, before it is reaped.", _non_negative),
    }),
    "tls": (TLSConfig, {
        "ca": _Setting("str", "PEM file of the CA that signs every node and client "
                       "certificate (required in [tls]).", _not_empty),
        "cert": _Setting("str", "PEM file of this node's certificate, serverAuth and clientAuth "
                         "(required in [tls]).", _not_empty),
        "key": _Setting("str", "PEM file of this node's private key (required in [tls]).",
                        _not_empty),
        "admins": _Setting("strs", "Client certificate common names allowed admin commands.",
                           _names),
        "peer_identity": _Setting("str", "Who may run node-to-node operations: \"ca\", any "
                                  "certificate the CA signed; \"member\", only a certificate "
                                  "whose CN is the id of a cluster member.",
                                  _one_of("ca", "member")),
    }),
}

# dynd's flags, by override key; each is a top-level setting.
OVERRIDE_FLAGS: Mapping[str, str] = MappingProxyType({
    "node_id": "--node-id", "listen": "--listen", "data_dir": "--data-dir", "seeds": "--seed",
    "zone": "--zone", "ring_size": "--ring-size", "log_level": "--log-level",
})


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None  # required (tls ca/cert/key): no default


def describe() -> list[tuple[str, str, Any, str]]:
    """Every setting as (section, key, default, doc); section "" is the top level.

    The single source for documentation: tests compare etc/dynd.toml and the
    dynd.toml(5) man page with it. A default of None means unset.
    """
    rows = [("", key, _default_of(Config, key), s.doc) for key, s in _TOP.items()]
    for section, (cls, settings) in _SECTIONS.items():
        rows += [(section, key, _default_of(cls, key), s.doc) for key, s in settings.items()]
    return rows


# --- loading ------------------------------------------------------------------------


def _typed(value: object, kind: str) -> tuple[Any, str | None]:
    """Convert a TOML value to the setting's type, or say why it cannot be."""
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, f"expected an integer, got {value!r}"
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value), None
        return None, f"expected a finite number, got {value!r}"
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, f"expected true or false, "
                                                                    f"got {value!r}")
    if kind == "strs":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value), None
        return None, f"expected a list of strings, got {value!r}"
    return (value, None) if isinstance(value, str) else (None, f"expected a string, "
                                                               f"got {value!r}")


def _parse_table(table: Mapping[str, object], settings: Mapping[str, _Setting], source: str,
                 label: Callable[[str], str], where: str) -> dict[str, Any]:
    """Validate every key of one table; ``label`` names a key in error messages."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        setting = settings.get(key)
        if setting is None:
            raise ConfigError(f"{source}: unknown setting {key!r} {where} "
                              f"(known: {', '.join(sorted(settings))})")
        value, problem = _typed(raw, setting.kind)
        if problem is None and setting.check is not None:
            problem = setting.check(value)
        if problem is not None:
            raise ConfigError(f"{source}: {label(key)}: {problem}")
        values[key] = value
    return values


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _build_section(section: str, raw: object, source: str) -> Any:
    cls, settings = _SECTIONS[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{section}] must be a table, got {raw!r}")
    values = _parse_table(raw, settings, source, lambda key: f"[{section}] {key}",
                          f"in [{section}]")
    missing = [k for k in settings if _default_of(cls, k) is None and k not in values]
    if missing:
        raise ConfigError(f"{source}: [{section}] is missing required setting(s) "
                          f"{', '.join(missing)}")
    return cls(**values)


def _check_consistency(config: Config, source: str) -> None:
    limits = config.limits
    if config.warn_siblings > limits.max_siblings:
        raise ConfigError(f"{source}: warn_siblings ({config.warn_siblings}) must not exceed "
                          f"[limits] max_siblings ({limits.max_siblings})")
    largest_put = limits.max_key_bytes + limits.max_value_bytes + limits.max_context_bytes
    if limits.max_frame_bytes <= largest_put:
        raise ConfigError(f"{source}: [limits] max_frame_bytes ({limits.max_frame_bytes}) must "
                          f"exceed max_key_bytes + max_value_bytes + max_context_bytes "
                          f"({largest_put}), or the largest put cannot be sent")
    largest_object = limits.max_value_bytes + limits.max_context_bytes  # its clock: a context
    if limits.max_object_bytes <= largest_object:
        raise ConfigError(f"{source}: [limits] max_frame_bytes ({limits.max_frame_bytes}) must "
                          f"exceed max_key_bytes + max_bucket_name_bytes + "
                          f"{REPLICA_ENVELOPE_BYTES} + "
                          f"max_value_bytes + max_context_bytes "
                          f"({largest_object + limits.max_frame_bytes - limits.max_object_bytes})"
                          f", or one value of the largest size could not be replicated")


def load_config(path: str | None,
                overrides: Mapping[str, object] = _NO_OVERRIDES) -> Config:
    """Read ``path`` (None: no file), apply dynd's flags, validate, return a Config.

    ``overrides`` maps the keys of OVERRIDE_FLAGS to flag values; they win over
    the file. A value of None (flag not given) and an empty ``seeds`` list are
    ignored. Raises ConfigError on anything dynd must not start with.
    """
    source = path if path is not None else "configuration"
    document = _read_toml(path) if path is not None else {}
    top_raw = {k: v for k, v in document.items() if k not in _SECTIONS}
    for key, value in top_raw.items():
        if isinstance(value, dict):
            raise ConfigError(f"{source}: unknown section [{key}] "
                              f"(known: {', '.join(_SECTIONS)})")
    top = _parse_table(top_raw, _TOP, source, str, "at top level")

    flags = {k: v for k, v in overrides.items() if v is not None and not (k == "seeds" and not v)}
    override_settings = {k: _TOP[k] for k in OVERRIDE_FLAGS}
    top |= _parse_table(flags, override_settings, "command line",
                        lambda key: OVERRIDE_FLAGS[key], "among the overrides")

    sections = {name: _build_section(name, document[name], source)
                for name in _SECTIONS if name in document}
    config = Config(**top, **sections)
    _check_consistency(config, source)
    return config
