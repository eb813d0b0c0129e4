"""What the process-runtime tests look at: a worker's state as the kernel reports it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def kernel_state(pid: int) -> str | None:
    """The kernel's state letter for a pid (R, S, T, Z...), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text[text.rindex(")") + 2]


def running(pid: int) -> bool:
    return kernel_state(pid) not in (None, "Z", "X")


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """True once `condition` holds; AssertionError when it did not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return True
