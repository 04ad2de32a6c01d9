"""The dynd command: config, logging, signals, sd_notify, and the node's root nursery."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time

import click
import trio

from common.config import Config, ConfigError, load_config, parse_hostport
from common.errors import DynError
from common.wire.trio_helpers import single_exception_unwrapped
from dynd import security
from dynd.features import FRAME_BATCHES
from dynd.metrics_http import serve_metrics
from dynd.node import Node
from dynd.server import Server
from dynd.storage import Storage, StorageError
from dynd.transport import TcpTransport

log = logging.getLogger("dynd")

STOP_GRACE_SECONDS = 5.0  # in-flight work gets this long after SIGTERM; exit stays under 10 s


class EventFormatter(logging.Formatter):
    """One line per event: `key=value` pairs, or one JSON object per line."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt
        self.node_id = "-"

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        message = record.getMessage()
        if record.exc_info:
            message += " exc=" + repr(self.formatException(record.exc_info))
        if self.fmt == "json":
            return json.dumps({"ts": ts, "level": record.levelname.lower(), "node": self.node_id,
                               "logger": record.name, "msg": message})
        return f"ts={ts} level={record.levelname.lower()} node={self.node_id} {message}"


def setup_logging(config: Config) -> EventFormatter:
    formatter = EventFormatter(config.log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    return formatter


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about READY=1 / STOPPING=1 when NOTIFY_SOCKET is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("event=sd_notify_failed error=%r", exc)


def tls_contexts(config: Config, source: str
                 ) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(listener context, peer-dialling context), or (None, None) without [tls].

    Raises ConfigError naming ``source`` (the config file) when a TLS file is missing or
    unusable: the TLS checks know only the setting, and dynd(8) promises both.
    """
    if config.tls is None:
        return None, None
    try:
        security.check_files(config.tls)
        return security.server_context(config.tls), security.client_context(config.tls)
    except security.TLSSetupError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


async def serve(config: Config, formatter: EventFormatter,
                server_tls: ssl.SSLContext | None = None,
                peer_tls: ssl.SSLContext | None = None) -> None:
    host, port = parse_hostport(config.listen)
    if host not in ("127.0.0.1", "localhost", "::1") and config.tls is None:
        log.warning("event=plaintext_listener listen=%s msg=%r", config.listen,
                    "serving without TLS on a non-loopback address: anyone who can reach it "
                    "can read, write and change the cluster; configure [tls]")
    aae = config.antientropy
    if aae.enabled and aae.tombstone_grace < 2 * aae.period:
        # A node handing over a partition skips keys only it holds that are older than the
        # grace (they may be deleted and reaped elsewhere): that is safe only when
        # anti-entropy had time to give every write to the other primaries within it.
        log.warning("event=short_tombstone_grace tombstone_grace=%g period=%g msg=%r",
                    aae.tombstone_grace, aae.period,
                    "tombstone_grace below twice the anti-entropy period: a node handing "
                    "over a partition may drop a write anti-entropy has not spread yet")
    os.makedirs(config.data_dir, exist_ok=True)
    storage = Storage.open(config.data_dir, sync=config.sync)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        transport = TcpTransport(peer_tls)
        node = Node(config, storage, transport, addr=f"{host}:{bound}")
        transport.may_batch = lambda: FRAME_BATCHES in node.view.state.features
        transport.frames_in, transport.frames_out = node.stats.frames_in, node.stats.frames_out
        formatter.node_id = node.id
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            node.stats.watch_node(node.gauges)  # live state read at scrape time
            if config.metrics_listen:
                await nursery.start(serve_metrics, config.metrics_listen, node.stats.registry)
            await nursery.start(Server(node.handle, config.limits, server_tls,
                                        answer_now=node.answer_now,
                                        frames_in=node.stats.frames_in,
                                        frames_out=node.stats.frames_out).serve, listeners)
            log.info("event=listening addr=%s:%d data_dir=%s tls=%s", host, bound,
                     config.data_dir, "mutual" if server_tls is not None else "off")
            sd_notify("READY=1")
            # What start-up built (modules, configuration, cluster state, caches) lives as
            # long as the process: out of the collector's full passes, which otherwise
            # scanned it every few seconds and stalled every request on the node for
            # 20-30 ms each time (measured under YCSB-A; 9-11 ms after the freeze).
            gc.freeze()
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("event=stopping signal=%s", signal.Signals(signum).name)
                    sd_notify("STOPPING=1")
                    break
            unfinished = await node.drain(STOP_GRACE_SECONDS)
            if unfinished:
                log.warning("event=stop_cancelled_requests count=%d", unfinished)
            nursery.cancel_scope.cancel()
        node.record_clean_stop()  # reached only when every service ended without an error
    finally:
        storage.close()
        log.info("event=stopped")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (see dynd.toml(5)).")
@click.option("--node-id", help="This node's id (first start only; kept in the data dir).")
@click.option("--listen", help="HOST:PORT for clients and peers [127.0.0.1:7070].")
@click.option("--data-dir", help="Where RocksDB keeps this node's data.")
@click.option("--seed", "seeds", multiple=True, help="HOST:PORT of a node to gossip with.")
@click.option("--zone", help="Data center or rack of this node.")
@click.option("--ring-size", type=int, help="Partitions Q of a new cluster (power of two).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--check-config", is_flag=True, help="Validate the configuration and exit.")
@click.version_option(package_name="dynd")
def main(config_path: str | None, check_config: bool, **flags: object) -> None:
    """Run one dynd node in the foreground.

    \b
    Examples:
      dynd -c /etc/dynd/dynd.toml
      dynd --node-id n1 --listen 127.0.0.1:7070 --data-dir /tmp/n1
      dynd -c /etc/dynd/dynd.toml --check-config
    """
    flags["seeds"] = list(flags["seeds"])  # type: ignore[arg-type]
    try:
        config = load_config(config_path, flags)
        server_tls, peer_tls = tls_contexts(config, config_path or "configuration")
    except ConfigError as exc:
        click.echo(f"dynd: {exc}", err=True)
        sys.exit(2)
    if check_config:
        click.echo(f"{config_path or 'configuration'}: ok")
        return
    formatter = setup_logging(config)
    try:
        with single_exception_unwrapped():  # what ended the node's nursery, as itself
            trio.run(serve, config, formatter, server_tls, peer_tls)
    except DynError as exc:
        log.error("event=fatal error=%r", exc.message)
        sys.exit(2)
    except StorageError as exc:  # cannot open the data dir (another dynd holds it), or the
        # disk failed under a write: stop, so that the cluster routes around this node
        log.error("event=fatal data_dir=%s error=%r", config.data_dir, str(exc))
        sys.exit(1)
    except OSError as exc:
        log.error("event=fatal error=%r", str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
