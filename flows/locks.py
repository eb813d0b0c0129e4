"""One writer at a time: a Prefect global concurrency limit around warehouse writes.

DuckDB lets one process write a file at a time, and the cycle (in the deployment server's
process), the other served deployments (a process per run) and the API are separate
processes. Writes are short and `warehouse.db.connect` already waits (bounded) for a held
lock; under `prewarm up` the limit below also queues writers in Prefect, where the UI shows
who waits. Without a Prefect server holding the limit (one-off CLI runs), it is a no-op and
the lock wait alone keeps writes safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from warehouse.db import shared_connection

WAREHOUSE_WRITE_LIMIT = "prewarm-warehouse-write"


# Whether this thread of control holds the slot already (the limit is not reentrant).
_holding: ContextVar[bool] = ContextVar("prewarm_warehouse_write", default=False)


@contextmanager
def warehouse_write() -> Iterator[None]:
    """Hold the warehouse write slot when the limit exists (waits up to 10 minutes)."""
    if _holding.get():
        yield
        return
    guard = (
        concurrency(WAREHOUSE_WRITE_LIMIT, occupy=1, timeout_seconds=600, strict=False)
        if _limit_exists()
        else nullcontext()
    )
    with guard:
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)


@contextmanager
def warehouse_session(path: Path) -> Iterator[None]:
    """A few reads and writes on one connection, holding the write slot first (a process
    that holds the file but waits for the slot would block the slot's holder)."""
    with warehouse_write(), shared_connection(path):
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
