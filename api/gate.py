"""Warehouse calls of one process: same-mode calls together, none waiting past its deadline.

DuckDB refuses a read-only and a read-write connection to one file at the same time within
one process, while connections of the same mode share the file freely. So the API does not
serialise its warehouse calls: reads run together, writes run together, and a call of the
other mode waits until the current ones finish. New calls of the current mode hold back
while the other mode waits (those already waiting when a mode's turn starts all come in),
so neither mode starves. Every wait ends at the caller's deadline with `WarehouseBusy`, the
same answer as a file another process keeps locked: a 503 with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from warehouse.errors import WarehouseBusy


class ModeGate:
    """Admits read-only calls together or read-write calls together, each until a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._write: bool | None = None  # the mode of the calls inside, None when empty
        self._inside = 0
        self._waiting = {False: 0, True: 0}
        self._admit = 0  # callers of the current mode waiting when its turn began

    @contextmanager
    def hold(self, write: bool, deadline: float) -> Iterator[None]:
        """Inside the block, only calls of the same mode run; WarehouseBusy at `deadline`."""
        with self._cond:
            self._waiting[write] += 1
            try:
                while not self._may_enter(write):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WarehouseBusy(
                            "The warehouse is in use by this API in the other mode "
                            "(reads vs writes) past the request's deadline."
                        )
                    self._cond.wait(remaining)
                if self._inside == 0:
                    self._write = write
                    self._admit = self._waiting[write] - 1
                    self._cond.notify_all()  # those waiting for this mode may come in now
                elif self._admit:
                    self._admit -= 1
                self._inside += 1
            finally:
                self._waiting[write] -= 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                if self._inside == 0:
                    self._write = None
                    self._admit = 0
                    self._cond.notify_all()

    def _may_enter(self, write: bool) -> bool:
        if self._inside == 0:
            return True
        return self._write == write and (self._admit > 0 or not self._waiting[not write])
