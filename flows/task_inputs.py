"""Large task parameters passed to a task without Prefect walking into them.

Prefect visits every item of a task's parameters twice per call, to resolve futures in
them and to record the task's upstream inputs: a plan's per-client container configs or a
dict of every client's history are thousands of items (measured at 1,000 clients: 0.3 s a
cycle in the visits alone). `quote` tells it not to; the task receives the value itself.
The cycle's tasks take values, never futures, so nothing is lost.
"""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.utilities.annotations import quote

T = TypeVar("T")


def unwalked(value: T) -> T:
    """`value` as a task parameter Prefect does not walk (typed as the value it delivers)."""
    return cast(T, quote(value))
