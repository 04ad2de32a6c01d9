"""Sort-key conditions of a query, and the one half-open byte range ``[lo, hi)`` each
becomes (hi None: up to the last sort key of the partition key).

Sort keys are 1..MAX_SORT_KEY_BYTES bytes compared bytewise, so every condition a
DynamoDB Query allows is one contiguous range: the coordinator computes it once and
replicas only scan. ``x + b"\\x00"`` is the immediate successor of ``x`` in byte order
(nothing sorts between them), which turns each inclusive bound into an exclusive one.

A condition on the wire is a list: ``[op, sk]`` with op one of eq, lt, le, gt, ge,
prefix, or ``["between", lo, hi]`` (inclusive, lo <= hi).
"""

from __future__ import annotations

from typing import Any

from common.limits import MAX_SORT_KEY_BYTES

SINGLE_OPS = ("eq", "lt", "le", "gt", "ge", "prefix")
FIRST_SORT_KEY = b"\x00"  # the least sort key there can be (sort keys are never empty)

Condition = list[Any]  # ["eq", b"x"], ["between", b"a", b"b"], ...


class BadCondition(ValueError):
    """A condition that is not one of the shapes above, or breaks a limit."""


def successor(sk: bytes) -> bytes:
    """The least byte string above ``sk``."""
    return sk + b"\x00"


def prefix_end(prefix: bytes) -> bytes | None:
    """The least byte string above every string that starts with ``prefix``; None when
    there is none (``prefix`` is all 0xff: the range runs to the end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def check_condition(cond: Any) -> Condition:
    """``cond`` itself if it is a well-formed condition, else BadCondition saying why."""
    if not isinstance(cond, list) or not cond or not isinstance(cond[0], str):
        raise BadCondition("a condition is [op, sort key] or ['between', low, high]")
    op, operands = cond[0], cond[1:]
    arity = 2 if op == "between" else 1 if op in SINGLE_OPS else 0
    if not arity:
        raise BadCondition(f"unknown condition {op!r:.20}; one of "
                           f"{', '.join((*SINGLE_OPS, 'between'))}")
    if len(operands) != arity:
        raise BadCondition(f"condition {op!r} takes {arity} sort key(s), not {len(operands)}")
    for operand in operands:
        if type(operand) is not bytes:
            raise BadCondition(f"condition {op!r} takes bytes, not {type(operand).__name__}")
        if not 1 <= len(operand) <= MAX_SORT_KEY_BYTES:
            raise BadCondition(f"a sort key in a condition must be 1..{MAX_SORT_KEY_BYTES} "
                               f"bytes, not {len(operand)}")
    if op == "between" and operands[0] > operands[1]:
        raise BadCondition("between needs low <= high")
    return cond


def condition_range(cond: Condition | None) -> tuple[bytes, bytes | None]:
    """``[lo, hi)`` of the sort keys that match ``cond`` (None: every sort key)."""
    if cond is None:
        return FIRST_SORT_KEY, None
    op, x = cond[0], cond[1]
    ranges: dict[str, tuple[bytes, bytes | None]] = {
        "eq": (x, successor(x)),
        "lt": (FIRST_SORT_KEY, x),
        "le": (FIRST_SORT_KEY, successor(x)),
        "gt": (successor(x), None),
        "ge": (x, None),
        "prefix": (x, prefix_end(x)),
    }
    if op == "between":
        return x, successor(cond[2])
    return ranges[op]
