"""etc/dynd.service: systemd accepts it without a warning, and it keeps its promises.

``systemd-analyze verify`` (Debian package ``systemd``, installed by ``make deps-system``)
checks every key and value, that ExecStart is executable, and that the Documentation=
man pages exist. It exits 0 even for unknown keys or bad values, which it only reports
on stderr, so a clean run means exit 0 *and* nothing said. The unit's ExecStart names
/usr/bin/dynd, which a pip install does not create: the copy verified here points at the
dynd of this environment, and MANPATH at the project's man pages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "dynd.service"
INSTALLED_DYND = "/usr/bin/dynd"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd allows a key several times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and not line.endswith("\\"), \
            f"{UNIT.name}:{number}: not 'Key=value' inside a section: {raw!r}"
        current[key.strip()].append(value.strip())
    return sections


def verify(unit_text: str, tmp_path: Path) -> str:
    """Run systemd-analyze verify on ``unit_text``; return what it reported (empty: clean)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run `make deps-system` "
                    "(apt-get install systemd, Debian package 'systemd')")
    man_root = tmp_path / "man"
    for page in (ROOT / "man").iterdir():
        section_dir = man_root / f"man{page.suffix[1:]}"
        section_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section_dir / page.name)
    dynd = Path(sys.executable).parent / "dynd"
    assert dynd.exists(), f"{dynd}: the dynd console script of this environment is missing"
    unit = tmp_path / "dynd.service"
    unit.write_text(unit_text.replace(f"ExecStart={INSTALLED_DYND} ", f"ExecStart={dynd} "))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            env={**os.environ, "MANPATH": str(man_root)}, timeout=60)
    report = (result.stdout + result.stderr).strip()
    return report or ("" if result.returncode == 0 else f"exit {result.returncode}")


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == ""


def test_verify_reports_a_bad_value(tmp_path: Path) -> None:
    """The check above can fail: systemd's 'ignoring' warnings are caught."""
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=sometimes")
    assert "sometimes" in verify(broken, tmp_path)


def test_unit_runs_dynd_as_a_hardened_notify_service() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["ExecStart"] == f"{INSTALLED_DYND} -c /etc/dynd/dynd.toml"
    expected = {
        "Type": "notify", "User": "dynd", "Group": "dynd", "StateDirectory": "dynd",
        "ReadWritePaths": "/var/lib/dynd -/var/lib/dynd-backups", "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "LimitNOFILE": "65536",
        "Restart": "on-failure", "TimeoutStopSec": "15", "KillSignal": "SIGTERM",
        "RestartPreventExitStatus": "2",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert float(service["RestartSec"]) > 0
    # sd_notify needs AF_UNIX, clients and peers AF_INET/AF_INET6.
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "man:dynd(8)" in unit["Unit"]["Documentation"][0].split()
