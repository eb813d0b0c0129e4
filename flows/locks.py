"""One writer at a time: a Prefect global concurrency limit around warehouse writes.

DuckDB lets one process write a file at a time, and served deployments run as separate
processes. Writes are short and `warehouse.db.connect` already waits (bounded) for a held
lock; under `prewarm up` the limit below also queues writers in Prefect, where the UI shows
who waits. Without a Prefect server holding the limit (one-off CLI runs), it is a no-op and
the lock wait alone keeps writes safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

WAREHOUSE_WRITE_LIMIT = "prewarm-warehouse-write"


@contextmanager
def warehouse_write() -> Iterator[None]:
    """Hold the warehouse write slot when the limit exists (waits up to 10 minutes)."""
    guard = (
        concurrency(WAREHOUSE_WRITE_LIMIT, occupy=1, timeout_seconds=600, strict=False)
        if _limit_exists()
        else nullcontext()
    )
    with guard:
        yield


@cache
def _limit_exists() -> bool:
    """Whether this process's Prefect API holds the limit (`prewarm up` creates it)."""
    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(WAREHOUSE_WRITE_LIMIT)
    except ObjectNotFound:
        return False
    return True


def ensure_limit(api_url: str) -> None:
    """Create the one-slot limit on the server at `api_url` (idempotent)."""
    import httpx

    response = httpx.post(
        f"{api_url}/v2/concurrency_limits/",
        json={"name": WAREHOUSE_WRITE_LIMIT, "limit": 1, "active": True},
        timeout=10,
    )
    if response.status_code not in (200, 201, 409):
        response.raise_for_status()
