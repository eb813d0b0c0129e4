"""The application state the routes share (`AppContext`), and how a request reaches it.

What a request needs is in memory before it comes (see `api.app` for the whole path): the
live keys (`api.keys`) and each client's view (`api.views`), both stamped with the
warehouse's version (`api.stamp`) and read again, off the event loop, when the warehouse
changed; the outcome recorder (`api.recorder`) writes in the background. The warehouse is
opened only to read those again, to store what a client sends (feedback, changes), and to
write the recorded outcomes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.activation import ClientLocks
from api.composite import client_composite
from api.gate import ModeGate
from api.keys import KeyCache
from api.outcome_writer import OutcomeWriter
from api.rate import TokenBuckets
from api.recorder import ActivationRecorder
from api.stamp import WarehouseStamp
from api.turns import ActivationTurns
from api.views import DEFAULT_MAX_CLIENTS, ClientView, ClientViews, read_client_views
from core.errors import PrewarmError
from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.leases import LeaseBook
from warehouse.activations import Activation
from warehouse.db import connect
from warehouse.live_keys import read_live_keys

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

T = TypeVar("T")

RETRY_AFTER_S = 5
_HEALTH_LOCK_WAIT_S = 0.5
# /healthz answers "the warehouse opens" from memory when it opened this recently.
_HEALTH_FRESH_S = 1.0
# Activation outcomes are written when the oldest queued one is this old (or on shutdown).
RECORD_LINGER_S = 0.5
RETRY = {"Retry-After": str(RETRY_AFTER_S)}
BUSY_DETAIL = "The warehouse is busy (a flow is writing); try again shortly."


class WarehouseUnavailable(Exception):
    """The warehouse file does not exist (no ingest has run yet)."""


class AppContext:
    """What the routes share: the warehouse and its gate, the runtime, the pool scope, the
    key snapshot, the client views, the activation limits and turns, and the outcome
    recorder."""

    def __init__(
        self,
        warehouse_path: Path,
        runtime_factory: Callable[[], ContainerRuntime] | None,
        pool_scope: Mapping[str, str],
        lock_wait_s: float,
        leases: LeaseBook,
        lease_seconds: float,
        burst_max: int,
        rate: TokenBuckets,
        allowed_images: Iterable[str] | None,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_queued_outcomes: int = 10_000,
        record_linger_s: float = RECORD_LINGER_S,
    ) -> None:
        self.warehouse_path = Path(warehouse_path)
        # A client's composite, checked against the images this deployment allows.
        self.allowed_images = tuple(allowed_images) if allowed_images is not None else None
        self.composite = partial(client_composite, allowed_images=self.allowed_images)
        self.runtime_factory = runtime_factory
        self.pool_scope = dict(pool_scope)
        self.lock_wait_s = lock_wait_s
        self.leases = leases
        self.lease_seconds = lease_seconds
        self.burst_max = burst_max
        self.rate = rate
        self.turns = ActivationTurns()  # activations in arrival order on the loop
        self.client_locks = ClientLocks()
        self.stamp = WarehouseStamp(self.warehouse_path)
        self.keys = KeyCache(lambda: self.warehouse(read_live_keys), version=self.stamp.version)
        self.views = ClientViews(
            lambda ids: self.warehouse(read_client_views, ids, self.allowed_images),
            self.stamp.version,
            max_clients=max_clients,
        )
        self.outcome_writer = OutcomeWriter(self.warehouse_path, self.stamp)
        self.recorder = ActivationRecorder(
            self._write_outcomes,
            max_queued=max_queued_outcomes,
            retryable=(PrewarmError, WarehouseUnavailable),
            linger_s=record_linger_s,
        )
        self._gate = ModeGate()
        self._migrated = False
        self._opened_at: float | None = None  # when a warehouse call last succeeded
        self._runtime: ContainerRuntime | None = None
        self._runtime_lock = threading.Lock()

    def warehouse(
        self, call: Callable[..., T], *args: Any, write: bool = False, wait_s: float | None = None
    ) -> T:
        """`call(warehouse_path, *args, wait_s=...)`, all waits within `lock_wait_s`.

        `write`: whether `call` opens the warehouse read-write (see `api.gate`): what it
        changes may be what the snapshots hold, so they are read again after it; `wait_s`: a
        shorter bound than `lock_wait_s`."""
        if not self.warehouse_path.exists():
            raise WarehouseUnavailable(str(self.warehouse_path))
        deadline = time.monotonic() + (self.lock_wait_s if wait_s is None else wait_s)
        if not self._migrated:
            # A read-only open of an older warehouse migrates it through a read-write one:
            # done once, in write mode, so it never meets this process's readers.
            with (
                self._gate.hold(True, deadline),
                connect(self.warehouse_path, wait_s=_left(deadline)),
            ):
                self._migrated = True
        with self._gate.hold(write, deadline):
            try:
                result = call(self.warehouse_path, *args, wait_s=_left(deadline))
            finally:
                if write:
                    self.stamp.invalidate()
        self._opened_at = time.monotonic()
        return result

    def _write_outcomes(self, batch: Sequence[tuple[Activation, datetime]]) -> None:
        """The recorder's writer: one transaction, in the outcome writer process."""
        if not self.warehouse_path.exists():
            raise WarehouseUnavailable(str(self.warehouse_path))
        self.outcome_writer.write(batch, wait_s=self.lock_wait_s)
        self._opened_at = time.monotonic()

    def warehouse_answers(self) -> bool:
        """Whether the warehouse opens (read-only) within a short wait."""
        if not self.warehouse_path.exists():
            return False
        try:
            self.warehouse(_select_one, wait_s=_HEALTH_LOCK_WAIT_S)
        except Exception as error:  # any failure means "not usable now"; say why in the log
            log.warning("health check: the warehouse does not open: %s", error)
            return False
        return True

    async def warehouse_answers_soon(self) -> bool:
        """`warehouse_answers`, from memory when the warehouse opened within the last second."""
        if not self.warehouse_path.exists():
            return False
        opened_at = self._opened_at
        if opened_at is not None and time.monotonic() - opened_at < _HEALTH_FRESH_S:
            return True
        return await run_in_threadpool(self.warehouse_answers)

    async def view(self, client_id: str) -> ClientView:
        """The client's current view (read first, off the event loop, when needed)."""
        return await self.views.get(client_id, self.lock_wait_s)

    @property
    def runtime_name(self) -> str:
        """The runtime's name for `pool_events`, 'none' before one could be opened."""
        return self._runtime.name if self._runtime is not None else "none"

    def open(self) -> None:
        """The app starts (again): outcomes are accepted, their writer process starts."""
        self.recorder.reopen()
        self.outcome_writer.start()

    def close(self) -> None:
        """Record what is queued (bounded), let go of the runtime (its members keep running)."""
        self.recorder.close(self.lock_wait_s + 1.0)
        self.outcome_writer.close()
        close = getattr(self._runtime, "close", None)
        if callable(close):
            close()

    async def runtime_soon(self) -> ContainerRuntime:
        """`runtime`, from memory once it is built."""
        runtime = self._runtime
        return runtime if runtime is not None else await run_in_threadpool(self.runtime)

    def runtime(self) -> ContainerRuntime:
        """The runtime, built on first use; 503 when none is configured or it fails."""
        if self.runtime_factory is None:
            raise HTTPException(
                503, "No container runtime is configured for this API: activation is unavailable."
            )
        with self._runtime_lock:
            if self._runtime is None:
                try:
                    self._runtime = self.runtime_factory()
                except Exception as error:  # the next request tries again
                    log.warning("the container runtime could not be opened: %s", error)
                    raise HTTPException(
                        503, "The container runtime is unavailable; try again later.", RETRY
                    ) from error
            return self._runtime


def context_of(request: Request) -> AppContext:
    return request.app.state.prewarm


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _select_one(path: Path, *, wait_s: float) -> None:
    with connect(path, read_only=True, wait_s=wait_s) as con:
        con.execute("SELECT 1").fetchall()
