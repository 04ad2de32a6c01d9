"""Opt-in compiled hot path: ``DYND_COMPILE=1`` compiles the pure request-path modules
with mypyc (``make compiled`` builds them in place). Without it, and by default, the
install is pure Python and needs no compiler; the compiled modules are built from the
same sources, so either form passes the same tests."""

from __future__ import annotations

import os
from collections.abc import Mapping

from setuptools import setup

# The modules every request runs through: frame codec, request validation, DVV sets,
# sort-key ranges, quorum and query merging. They import no trio/rocksdict (pure core),
# so mypyc can compile them as a group.
COMPILED_MODULES = (
    "common/codec.py",
    "common/dvvset.py",
    "common/messages.py",
    "common/skrange.py",
    "dynd/quorum.py",
    "dynd/querymerge.py",
)
# Where the group's shared library goes (common/hotpath__mypyc.*.so): inside a package,
# so it imports however the package is installed.
GROUP_NAME = "common.hotpath"


def compile_requested(environ: Mapping[str, str]) -> bool:
    """Whether ``DYND_COMPILE`` asks for the compiled build; anything but unset, 0 or 1
    is a mistake worth stopping the build for rather than guessing."""
    value = environ.get("DYND_COMPILE", "0")
    if value not in ("0", "1"):
        raise SystemExit(f"DYND_COMPILE must be 0 or 1, not {value!r}")
    return value == "1"


def ext_modules(environ: Mapping[str, str]) -> list:
    """The extension modules to build: none unless compiling was asked for."""
    if not compile_requested(environ):
        return []
    from mypyc.build import mypycify  # only the compiled build needs mypy installed

    return mypycify(["--ignore-missing-imports", *COMPILED_MODULES], group_name=GROUP_NAME)


if __name__ == "__main__":
    setup(ext_modules=ext_modules(os.environ))
