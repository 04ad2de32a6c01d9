"""py-spy on running dynd nodes: record raw stacks, then the top costs by file:function.

``self`` is where the samples were taken (the function itself was running), ``inclusive``
counts a function whenever it is on the stack. Percentages are of the samples py-spy took
while a thread held the GIL (``--gil``): Python work, not epoll waits or an fsync in a
worker thread, which py-spy would otherwise count as busy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SAMPLE_RATE = 200  # per second
_FRAME = re.compile(r"(?P<function>.*) \((?P<path>.*?):\d+\)$")
_PREFIXES = (re.compile(r".*/site-packages/"), re.compile(r".*/lib/python3\.\d+/"),
             re.compile(r"^.*?/(?=(dynd|common|dynctl)/)"))
PROJECT = ("dynd/", "common/", "dynctl/")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install 'dynd[bench]'")
    return found


@contextmanager
def recording(pids: list[int], seconds: float, root: Path) -> Iterator[dict[int, Path]]:
    """Record each pid for ``seconds`` (py-spy needs ptrace, i.e. root or CAP_SYS_PTRACE)."""
    outputs = {pid: root / f"py-spy-{pid}.txt" for pid in pids}
    spies = [subprocess.Popen([_py_spy(), "record", "-p", str(pid), "-d", str(int(seconds) + 1),
                               "-r", str(SAMPLE_RATE), "--gil", "-f", "raw", "-o", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, path in outputs.items()]
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.wait(seconds + 30)


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["path"]
    for prefix in _PREFIXES:
        path = prefix.sub("", path)
    return f"{path}:{match['function']}"


def costs(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Samples, self samples and inclusive samples per file:function of a raw py-spy file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        names = [_name(frame) for frame in stack.split(";")]
        own[names[-1]] += samples
        for name in set(names):
            inclusive[name] += samples
    return total, own, inclusive


def report(path: Path, title: str, top: int = 15) -> str:
    """Markdown: the top self costs (any code) and inclusive costs (project code)."""
    total, own, inclusive = costs(path)
    if not total:
        return f"{title}: no samples"
    lines = [f"{title}: {total} samples", "", "| self % | file:function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | file:function (project) |", "|---|---|"]
    project = [(name, n) for name, n in inclusive.most_common()
               if name.startswith(PROJECT) and not name.endswith((":main", ":<module>"))]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in project[:top * 2]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(report(Path(argument), argument))
