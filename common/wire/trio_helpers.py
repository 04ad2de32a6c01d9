"""Trio helpers shared by the daemon and the client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_exception_unwrapped() -> Iterator[None]:
    """Re-raise the lone exception of a nursery's ExceptionGroup as itself.

    Trio wraps whatever escapes a nursery in a group, once per nursery it crosses; callers
    of this module expect the DynError classes (dynd: StorageError), so groups of one are
    unwrapped however deeply nested (larger groups pass unchanged).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        lone: BaseException = group
        while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
            lone = lone.exceptions[0]
        if lone is group:
            raise
        raise lone from lone.__cause__
