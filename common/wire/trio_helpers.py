"""Trio helpers shared by the daemon and the client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_exception_unwrapped() -> Iterator[None]:
    """Re-raise the lone exception of a nursery's ExceptionGroup as itself.

    Trio wraps whatever escapes a nursery in a group; callers of this module expect the
    DynError classes, so a group of one is unwrapped (larger groups pass unchanged).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
