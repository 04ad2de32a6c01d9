"""The compiled hot path is opt-in: a default install imports the pure-Python modules, and
``make test-compiled`` (DYND_EXPECT_COMPILED=1) runs the suite against the compiled ones."""

from __future__ import annotations

import importlib
import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = runpy.run_path(str(ROOT / "setup.py"))  # not as __main__: defines, builds nothing
COMPILED_MODULES: tuple[str, ...] = SETUP["COMPILED_MODULES"]


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def test_a_default_install_compiles_nothing():
    assert SETUP["ext_modules"]({}) == []
    assert SETUP["ext_modules"]({"DYND_COMPILE": "0"}) == []


def test_a_mistyped_compile_switch_stops_the_build():
    with pytest.raises(SystemExit, match="DYND_COMPILE must be 0 or 1, not 'yes'"):
        SETUP["ext_modules"]({"DYND_COMPILE": "yes"})


def test_every_compiled_module_keeps_its_pure_python_source():
    for path in COMPILED_MODULES:
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("path", COMPILED_MODULES)
def test_the_imported_form_is_the_one_expected(path):
    """Pure by default; compiled under ``make test-compiled``. A tree left compiled by
    ``make compiled`` fails here in the default suite: ``make pure`` undoes it."""
    expect_compiled = os.environ.get("DYND_EXPECT_COMPILED", "0") == "1"
    module = importlib.import_module(_module_name(path))
    loaded_from = Path(module.__file__ or "")
    hint = "not built: make compiled" if expect_compiled else "left compiled: make pure"
    assert (loaded_from.suffix == ".so") == expect_compiled, f"{loaded_from} ({hint})"
