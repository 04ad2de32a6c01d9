"""The Grafana dashboard and the Prometheus alerts in etc/: every metric they query exists on
a live node's /metrics, and the rules pass promtool's check and their own rule tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from dynctl.output import CLOCK_OFFSET_ALERT_MS, DISK_FREE_ALERT_FRACTION, HINT_AGE_ALERT_SECONDS
from tests.integration.harness import Cluster, free_port

ETC = Path(__file__).resolve().parents[2] / "etc"
DASHBOARD = ETC / "grafana" / "dynd.json"
ALERTS = ETC / "prometheus" / "dynd-alerts.yml"
RULE_TESTS = ETC / "prometheus" / "dynd-alerts.test.yml"
# Series Prometheus makes itself (the scrape's health), not exported by dynd.
PROMETHEUS_SERIES = {"up"}
_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count")}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"]
              if variable.get("definition")]
    return exprs


def alert_queries() -> list[str]:
    """The `expr` of every alert rule (the file is flat YAML: one expr, maybe folded)."""
    exprs, current = [], None
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            current = stripped[len("expr:"):].strip().lstrip(">").strip()
            exprs.append(current)
        elif current is not None and line.startswith(" " * 10) and not stripped.startswith(
                ("for:", "labels:", "annotations:", "#", "- ")):
            exprs[-1] += " " + stripped
        else:
            current = None
    return exprs


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: identifiers that are not inside a label
    matcher, a string or a duration, and are followed by a selector or end a term."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_matchers)
    names = set()
    for match in _IDENTIFIER.finditer(without_ranges):
        name = match.group()
        if name.startswith("dynd_") or name in PROMETHEUS_SERIES:
            names.add(name)
    return names


def exported_sample_names(text: str) -> set[str]:
    """Sample names a scrape may hold, from its TYPE lines: a family without samples now
    (no hints pending, one node and so no peer) still counts as exported."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.update(family + suffix for suffix in _SAMPLE_SUFFIXES[kind])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    expr = ('histogram_quantile(0.999, sum by (op, le) (rate(dynd_request_seconds_bucket'
            '{op=~"get|dynd_fake"}[5m]))) > 0.3 and up{job="dynd"} == 0')
    assert metric_names(expr) == {"dynd_request_seconds_bucket", "up"}


def test_every_metric_of_the_dashboard_and_the_alerts_exists_on_a_live_node(
        dyn_cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dynd.toml"
    config.write_text(f'metrics_listen = "127.0.0.1:{port}"\n')
    dyn_cluster.add("n1", "-c", str(config))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        exported = exported_sample_names(reply.read().decode())

    used = {name: source for source, exprs in (("dashboard", dashboard_queries()),
                                               ("alerts", alert_queries()))
            for expr in exprs for name in metric_names(expr)}
    assert len(alert_queries()) == ALERTS.read_text().count("- alert:")
    assert {"dynd_requests_total", "dynd_request_seconds_bucket", "dynd_hints_pending_seconds",
            "dynd_data_dir_free_bytes", "dynd_transfers_pending"} <= set(used)
    unknown = sorted(name for name in used
                     if name not in exported | PROMETHEUS_SERIES)
    assert unknown == [], f"queried but not exported: {[(n, used[n]) for n in unknown]}"


def test_the_dashboard_shows_what_operators_watch() -> None:
    titles = " | ".join(panel["title"].lower()
                        for panel in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("request rate", "latency p99.9", "errors", "siblings", "hints pending",
                  "oldest pending hints", "transfer", "anti-entropy", "ring balance",
                  "reachability", "storage size", "free space", "gossip", "clock offset"):
        assert topic in titles, topic


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian: apt-get install prometheus; "
                           "make deps-system does it as root)")
def test_the_alert_rules_pass_promtool_and_each_alert_fires_on_its_rule_test() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels",
                            RULE_TESTS.read_text()))
    assert alerts == firing, f"alerts without a rule test that fires them: {alerts - firing}"


def test_dynctl_status_turns_red_at_the_thresholds_of_the_alerts() -> None:
    rules = dict(re.findall(r"- alert: (\w+)\n\s+(?:#.*\n\s+)?expr: (.+)", ALERTS.read_text()))
    assert rules["DyndHintsPendingTooLong"] == (
        f"dynd_hints_pending_seconds > {HINT_AGE_ALERT_SECONDS:g}")
    assert rules["DyndDiskAlmostFull"].endswith(f"< {DISK_FREE_ALERT_FRACTION:.2f}")
    assert rules["DyndClockOffsetHigh"].endswith(f"> {CLOCK_OFFSET_ALERT_MS / 1000:g}")


def test_every_alert_has_a_runbook_entry() -> None:
    runbook = (ETC.parent / "docs" / "operations.md").read_text()
    alerts = re.findall(r"- alert: (\w+)", ALERTS.read_text())
    assert [name for name in alerts if f"\n### {name}\n" not in runbook] == []
