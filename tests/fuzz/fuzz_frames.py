"""Coverage-guided fuzz target (atheris) for the frame decoder and request validation.

Run with ``make fuzz`` (``FUZZ_SECONDS`` to change the default 30 minutes), or as
``python tests/fuzz/fuzz_frames.py CORPUS_DIR [libFuzzer flags]`` (``-merge=1 NEW OLD`` to
minimise a corpus). The
corpus lives in tests/fuzz/corpus/ and grows with every run (``make test`` replays it, see
test_corpus.py); crashes land in tests/fuzz/crashes/. The properties and the input format
are in properties.py; an empty corpus directory is seeded with a few valid frames.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

with atheris.instrument_imports():
    from tests.fuzz import properties


def main() -> None:
    corpus_dirs = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    if corpus_dirs:
        properties.seed(Path(corpus_dirs[0]))
    # libFuzzer runs argv[0] through the shell for -merge and -fork: make it this interpreter.
    command = f"{sys.executable} {Path(__file__).resolve()}"
    atheris.Setup([command, *sys.argv[1:]], properties.check_stream)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
