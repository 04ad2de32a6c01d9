"""A wheel of the project installs the two commands and the three man pages.

The wheel is built from a copy of the source tree (so the build leaves nothing in the
work tree) with ``pip wheel --no-deps``, then installed with ``--no-deps --no-index`` into
a fresh virtualenv made without pip (the running pip installs into it with ``--python``).
The runtime dependencies are not downloaded again: a ``.pth`` file puts this environment's
site-packages after the new venv's own, so the project's code is imported from the wheel
while trio, click... come from here. Takes about 10 s, most of it the isolated build
(which fetches setuptools from the package index unless pip has it cached).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "common", "dynd", "dynctl", "man", "etc")
MAN_PAGES = ("man1/dynctl.1", "man5/dynd.toml.5", "man8/dynd.8")
PACKAGES = ("common", "dynd", "dynctl")


def run(*command: str | Path, cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n" \
                                   f"{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project's wheel installed; its runtime deps from here."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy(path, source / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "wheel", "-q", ".", "--no-deps", "-w", tmp / "wheelhouse", cwd=source)
    (wheel,) = (tmp / "wheelhouse").glob("dynd-*.whl")

    prefix = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", prefix, cwd=tmp)
    python = prefix / "bin" / "python"
    run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    new_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp).strip())
    (new_site / "runtime-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return prefix


@pytest.mark.parametrize("program", ["dynd", "dynctl"])
def test_console_scripts_run(venv: Path, program: str) -> None:
    output = run(venv / "bin" / program, "--version", cwd=venv)
    assert output.startswith(f"{program}, version ")


def test_code_comes_from_the_wheel(venv: Path) -> None:
    code = f"import {', '.join(PACKAGES)}; " + \
           "; ".join(f"print({name}.__file__)" for name in PACKAGES)
    for location in run(venv / "bin" / "python", "-c", code, cwd=venv).split():
        assert Path(location).is_relative_to(venv), location


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_is_installed_under_the_prefix(venv: Path, page: str) -> None:
    installed = venv / "share" / "man" / page
    assert installed.is_file(), f"{installed} missing"
    assert installed.read_bytes() == (ROOT / "man" / Path(page).name).read_bytes()
