"""single_exception_unwrapped: what ended nested nurseries reaches the caller as itself."""

from __future__ import annotations

import pytest

from common.wire.trio_helpers import single_exception_unwrapped


class Failure(Exception):
    pass


def test_a_lone_exception_nested_in_groups_comes_out_as_itself() -> None:
    cause = OSError("No space left on device")
    failure = Failure("write failed")
    failure.__cause__ = cause
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [failure])])
    with pytest.raises(Failure) as raised, single_exception_unwrapped():
        raise nested
    assert raised.value is failure and raised.value.__cause__ is cause


def test_a_group_of_several_passes_unchanged() -> None:
    group = ExceptionGroup("two", [Failure("a"), ExceptionGroup("one", [Failure("b")])])
    with pytest.raises(ExceptionGroup) as raised, single_exception_unwrapped():
        raise group
    assert raised.value is group
