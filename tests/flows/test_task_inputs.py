"""A large parameter passed `unwalked` reaches its task as itself, and Prefect never looks
inside it (it visits a plain one item by item, twice per call)."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow, task

from flows.task_inputs import unwalked


class _Untouchable(dict):
    """A mapping that fails when anything iterates over it, as Prefect's visits do."""

    def items(self) -> Any:
        raise AssertionError("walked into")

    def __iter__(self) -> Any:
        raise AssertionError("walked into")


@task
def _identity(value: Any) -> int:
    return id(value)


def test_an_unwalked_parameter_reaches_the_task_as_itself() -> None:
    value = _Untouchable(a=1)

    @flow
    def passes() -> int:
        return _identity(unwalked(value))

    assert passes() == id(value)


def test_a_plain_parameter_is_walked() -> None:
    @flow
    def walks() -> int:
        return _identity(_Untouchable(a=1))

    with pytest.raises(AssertionError, match="walked into"):
        walks()
