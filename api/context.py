"""The application state the routes share (`AppContext`), and how a request reaches it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from starlette.exceptions import HTTPException

from api.activation import ClientLocks
from api.composite import client_composite
from api.gate import ModeGate
from api.keys import KeyCache
from api.rate import TokenBuckets
from api.recorder import ActivationRecorder
from core.errors import PrewarmError
from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.leases import LeaseBook
from provisioning.schema_model import Routing
from warehouse.activations import (
    ActivationTerms,
    read_activation_terms,
    record_activations,
)
from warehouse.db import connect
from warehouse.live_keys import read_live_keys

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

T = TypeVar("T")

RETRY_AFTER_S = 5
# How long a client's mode and planned members are trusted (plans change once a cycle),
# and its routing section (a schema change reaches the choice of member this late at most).
_TERMS_MAX_AGE_S = 2.0
# Routing only orders the warm members: a busy warehouse must not hold a warm claim long.
_ROUTING_LOCK_WAIT_S = 0.5
_HEALTH_LOCK_WAIT_S = 0.5
RETRY = {"Retry-After": str(RETRY_AFTER_S)}
BUSY_DETAIL = "The warehouse is busy (a flow is writing); try again shortly."


class WarehouseUnavailable(Exception):
    """The warehouse file does not exist (no ingest has run yet)."""


class AppContext:
    """What the routes share: the warehouse and its gate, the runtime, the pool scope, the
    key snapshot, the activation limits and the outcome recorder."""

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
        self.client_locks = ClientLocks()
        self.keys = KeyCache(lambda: self.warehouse(read_live_keys))
        self.recorder = ActivationRecorder(
            lambda batch: self.warehouse(record_activations, batch, write=True),
            retryable=(PrewarmError, WarehouseUnavailable),
        )
        self._gate = ModeGate()
        self._migrated = False
        self._terms: dict[str, tuple[float, ActivationTerms]] = {}
        self._routing: dict[str, tuple[float, Routing]] = {}
        self._runtime: ContainerRuntime | None = None
        self._runtime_lock = threading.Lock()

    def warehouse(
        self, call: Callable[..., T], *args: Any, write: bool = False, wait_s: float | None = None
    ) -> T:
        """`call(warehouse_path, *args, wait_s=...)`, all waits within `lock_wait_s`.

        `write`: whether `call` opens the warehouse read-write (see `api.gate`); `wait_s`:
        a shorter bound than `lock_wait_s`."""
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
            return call(self.warehouse_path, *args, wait_s=_left(deadline))

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

    def terms(self, client_id: str) -> ActivationTerms:
        """The client's mode and planned members, read at most every `_TERMS_MAX_AGE_S`."""
        now = time.monotonic()
        cached = self._terms.get(client_id)
        if cached is not None and now - cached[0] < _TERMS_MAX_AGE_S:
            return cached[1]
        terms = self.warehouse(read_activation_terms, client_id)
        self._terms[client_id] = (now, terms)
        return terms

    def routing(self, client_id: str) -> Routing:
        """The routing section of the client's composite, read at most every
        `_TERMS_MAX_AGE_S` (one warehouse read). When it cannot be read (a busy warehouse,
        a broken schema) the last one read, else none: routing never refuses a request."""
        now = time.monotonic()
        cached = self._routing.get(client_id)
        if cached is not None and now - cached[0] < _TERMS_MAX_AGE_S:
            return cached[1]
        try:
            composite = self.warehouse(
                self.composite, client_id, wait_s=min(self.lock_wait_s, _ROUTING_LOCK_WAIT_S)
            )
            routing = Routing.model_validate(composite.get("routing") or {})
        except (PrewarmError, WarehouseUnavailable) as error:
            log.warning(
                "the routing of %s could not be read (%s); the last one kept", client_id, error
            )
            routing = cached[1] if cached is not None else Routing()
        self._routing[client_id] = (now, routing)
        return routing

    @property
    def runtime_name(self) -> str:
        """The runtime's name for `pool_events`, 'none' before one could be opened."""
        return self._runtime.name if self._runtime is not None else "none"

    def close(self) -> None:
        """Record what is queued (bounded), let go of the runtime (its members keep running)."""
        self.recorder.close(self.lock_wait_s + 1.0)
        close = getattr(self._runtime, "close", None)
        if callable(close):
            close()

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
