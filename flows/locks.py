"""One writer at a time: a Prefect global concurrency limit around warehouse writes.

DuckDB lets one process write a file at a time, and served deployments run as separate
processes. Writes are short and `warehouse.db.connect` already waits (bounded) for a held
lock; under `prewarm up` the limit below also queues writers in Prefect, where the UI shows
who waits. Without a Prefect server holding the limit (one-off CLI runs), it is a no-op and
the lock wait alone keeps writes safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.concurrency.sync import concurrency

WAREHOUSE_WRITE_LIMIT = "prewarm-warehouse-write"


@contextmanager
def warehouse_write() -> Iterator[None]:
    """Hold the warehouse write slot (waits up to 10 minutes for it)."""
    with concurrency(WAREHOUSE_WRITE_LIMIT, occupy=1, timeout_seconds=600, strict=False):
        yield
