"""Sibling resolution strategies of ``dynctl resolve``: pure functions of the siblings.

Each strategy turns the live siblings of a key into one value. They are deterministic and
do not depend on the order the node listed the siblings in, so two operators resolving the
same conflict at once write the same bytes (and the resulting siblings, if any, are equal).

- ``union-lines``: the set union of the lines of every sibling, sorted bytewise, each line
  ending in ``\\n``. Lines are split at ``\\n``, ``\\r\\n`` and ``\\r``.
- ``json-union``: every sibling must be JSON (UTF-8). Objects are merged key by key
  (recursively), arrays become the union of their elements (deduplicated by canonical
  JSON, in order of first appearance, siblings taken oldest first), equal scalars stay.
  Two different scalars, or an object against an array, cannot be merged: that is an
  error naming the JSON path, and the operator picks with ``--pick`` or ``--value``.
  Nesting deeper than ``MAX_JSON_DEPTH`` is refused. Output is compact with sorted keys.
- ``lww``: the sibling with the latest ``written_at`` wins; equal timestamps are broken by
  the larger value bytes, so the choice never depends on sibling order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from common.errors import Rejected

MAX_JSON_DEPTH = 100  # container levels json-union accepts in one sibling


class ResolveError(Rejected, ValueError):
    """The siblings cannot be resolved as asked (exit 5: the input does not fit the data)."""


class Sibling(Protocol):
    value: bytes
    written_at: datetime


def pick(siblings: Sequence[Sibling], index: int) -> bytes:
    """The sibling at ``index`` (0-based, the order of ``get --all`` and ``--json`` values)."""
    if not 0 <= index < len(siblings):
        raise ResolveError(f"--pick {index} is out of range: the key has {len(siblings)} "
                           f"siblings, numbered 0..{len(siblings) - 1}")
    return siblings[index].value


def union_lines(siblings: Sequence[Sibling]) -> bytes:
    lines = {line for sibling in siblings for line in sibling.value.splitlines()}
    return b"".join(line + b"\n" for line in sorted(lines))


def lww(siblings: Sequence[Sibling]) -> bytes:
    if not siblings:
        raise ResolveError("lww needs at least one sibling")
    return max(siblings, key=lambda s: (s.written_at, s.value)).value


def json_union(siblings: Sequence[Sibling]) -> bytes:
    if not siblings:
        raise ResolveError("json-union needs at least one sibling")
    ordered = sorted(siblings, key=lambda s: (s.written_at, s.value))
    documents = [_parse_json(sibling.value, position) for position, sibling in enumerate(ordered)]
    merged = documents[0]
    for document in documents:  # the first with itself too: its own arrays become sets
        merged = _merge(merged, document, "$")
    return _canonical(merged).encode("utf-8")


def _parse_json(data: bytes, position: int) -> Any:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResolveError(f"json-union: sibling {position} (oldest first) is not JSON: "
                           f"{exc}") from None
    if _depth(document) > MAX_JSON_DEPTH:
        raise ResolveError(f"json-union: sibling {position} (oldest first) nests deeper "
                           f"than {MAX_JSON_DEPTH} levels")
    return document


def _canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _merge(left: Any, right: Any, path: str) -> Any:
    if isinstance(left, dict) and isinstance(right, dict):
        merged = dict(left)
        for key, value in right.items():
            own = left[key] if key in left else value  # a new key is merged with itself too
            merged[key] = _merge(own, value, f"{path}.{key}")
        return merged
    if isinstance(left, list) and isinstance(right, list):
        union = {}
        for element in (*left, *right):
            union.setdefault(_canonical(element), element)
        return list(union.values())
    if _canonical(left) == _canonical(right):
        return left
    raise ResolveError(f"json-union cannot merge {_canonical(left)[:40]} with "
                       f"{_canonical(right)[:40]} at {path}; choose with --pick or --value")


def _depth(document: Any) -> int:
    """Container levels of a parsed document, counted without recursion."""
    deepest = 0
    stack = [(document, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


STRATEGIES: dict[str, Callable[[Sequence[Sibling]], bytes]] = {
    "union-lines": union_lines,
    "json-union": json_union,
    "lww": lww,
}
