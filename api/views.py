"""Each client's view: what the API needs to answer a client, read before its requests come.

A request used to open the warehouse two or three times (a DuckDB connection costs about
20 ms of CPU, and requests queued behind each other's). Now a client's view is read once,
on one connection: its mode and planned members (the activation terms), the host its plan
placed it on, its composite schema (or why it cannot be composed), its routing section, and
its `/profile` answer, already serialized. Requests answer from the view in memory.

**Fresh.** Every view is stamped with the warehouse's version (`api.stamp`) of the moment
its read began; a request finding an older stamp waits for the view to be read again
(bounded by its deadline: a warehouse another process keeps locked is a 503, as before).
So a new plan, profile or schema is served from the first request after it lands.

**Batched.** One loader thread reads the views requests wait for, all of them on one
connection (up to `max_batch`): after a change, many clients' first requests cost one
connection, not one each, and concurrent requests of one client share one read.

**Bounded.** At most `max_clients` views are kept, the least recently used dropped first;
a view is only ever read for a client whose key was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from api.composite import compose_client, deployment_limits
from api.profile import profile_response
from core.errors import PrewarmError
from provisioning.schema_checks import SchemaLimits, SchemaRejected
from provisioning.schema_model import Routing, SchemaError
from warehouse.activations import ActivationTerms, fetch_activation_terms
from warehouse.db import connect
from warehouse.errors import WarehouseBusy
from warehouse.plans import planned_host
from warehouse.predictions import read_latest_profile

log = logging.getLogger("api.app")

DEFAULT_MAX_CLIENTS = 10_000
DEFAULT_MAX_BATCH = 256
# The loader thread ends after this long without work (the next request starts another).
_LOADER_IDLE_S = 30.0


@dataclass(frozen=True)
class ClientView:
    """A client as the API serves it, read on one connection (see the module doc)."""

    client_id: str
    terms: ActivationTerms
    planned_host: str | None
    composite: dict[str, Any] | None
    composite_error: Exception | None  # why there is no composite (raised where it is used)
    routing: Routing
    profile_json: bytes | None  # the /profile answer; None: `profile_error` says why
    profile_error: Exception | None = None

    def composite_or_raise(self) -> dict[str, Any]:
        """The composite, or the error that kept it from being composed."""
        if self.composite is None:
            assert self.composite_error is not None
            # Raised again at each use: without its last traceback, which would only grow.
            raise self.composite_error.with_traceback(None)
        return self.composite

    def profile_or_raise(self) -> bytes:
        if self.profile_json is None:
            assert self.profile_error is not None
            raise self.profile_error.with_traceback(None)
        return self.profile_json


def read_client_views(
    path: Path,
    client_ids: Sequence[str],
    allowed_images: Iterable[str] | None,
    *,
    wait_s: float | None = None,
) -> dict[str, ClientView]:
    """The views of `client_ids`, read on one read-only connection."""
    with connect(path, read_only=True, wait_s=wait_s) as con:
        limits = deployment_limits(con, allowed_images)
        return {client_id: _read_view(con, client_id, limits) for client_id in client_ids}


def _read_view(con: duckdb.DuckDBPyConnection, client_id: str, limits: SchemaLimits) -> ClientView:
    composite: dict[str, Any] | None = None
    composite_error: Exception | None = None
    try:
        composite = compose_client(con, client_id, limits)
    except PrewarmError as error:  # SchemaError, SchemaRejected, an unknown client
        composite_error = error
    rows = read_latest_profile(con, client_id)
    profile_json: bytes | None = None
    profile_error: Exception | None = None
    if composite is not None or not rows:
        services = dict((composite or {}).get("services") or {})
        profile_json = _serialized(client_id, rows, services)
    elif isinstance(composite_error, SchemaError | SchemaRejected):
        # The profile is still served; `GET /schema` says what is wrong with the schema.
        profile_json = _serialized(client_id, rows, {})
    else:
        profile_error = composite_error
    return ClientView(
        client_id=client_id,
        terms=fetch_activation_terms(con, client_id),
        planned_host=planned_host(con, client_id),
        composite=composite,
        composite_error=composite_error,
        routing=_routing(client_id, composite),
        profile_json=profile_json,
        profile_error=profile_error,
    )


def _serialized(client_id: str, rows: list[dict[str, Any]], services: dict[str, Any]) -> bytes:
    # What FastAPI sends for a `Profile` response model (pydantic's JSON of it).
    return profile_response(client_id, rows, services).model_dump_json().encode()


def _routing(client_id: str, composite: Mapping[str, Any] | None) -> Routing:
    """The composite's routing section; none when there is no composite: routing only orders
    the warm members and never refuses a request."""
    if composite is None:
        return Routing()
    try:
        return Routing.model_validate(composite.get("routing") or {})
    except ValueError as error:
        log.warning("the routing of %s could not be read (%s); none used", client_id, error)
        return Routing()


LoadViews = Callable[[list[str]], Mapping[str, ClientView]]


class ClientViews:
    """Client views in memory, read again when the warehouse version moved on."""

    def __init__(
        self,
        load: LoadViews,
        version: Callable[[], int],
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_clients < 1 or max_batch < 1:
            raise ValueError("max_clients and max_batch must be at least 1")
        self._load = load
        self._version = version
        self._max_clients = max_clients
        self._max_batch = max_batch
        self._cond = threading.Condition()  # guards everything below; never held for I/O
        self._views: OrderedDict[str, tuple[int, ClientView]] = OrderedDict()
        self._waiting: dict[str, Future[ClientView]] = {}  # reads asked for, not yet done
        self._queue: list[str] = []
        self._loader: threading.Thread | None = None
        self.reads = 0  # views read so far (how often the warehouse was asked)

    def __len__(self) -> int:
        return len(self._views)

    def cached(self, client_id: str) -> ClientView | None:
        """The client's view when it is current; None when it must be read first."""
        version = self._version()
        with self._cond:
            entry = self._views.get(client_id)
            if entry is None or entry[0] != version:
                return None
            self._views.move_to_end(client_id)
            return entry[1]

    async def get(self, client_id: str, wait_s: float) -> ClientView:
        """The client's current view, read first when needed; WarehouseBusy past `wait_s`."""
        view = self.cached(client_id)
        if view is not None:
            return view
        pending = asyncio.wrap_future(self._read(client_id))
        try:
            # Shielded: a request giving up does not cancel the read others may wait for.
            return await asyncio.wait_for(asyncio.shield(pending), wait_s)
        except TimeoutError:
            raise WarehouseBusy(
                f"The view of {client_id} could not be read within {wait_s:g} s."
            ) from None

    def _read(self, client_id: str) -> Future[ClientView]:
        with self._cond:
            future = self._waiting.get(client_id)
            if future is None:
                future = self._waiting[client_id] = Future()
                self._queue.append(client_id)
                self._cond.notify_all()
            if self._loader is None:
                self._loader = threading.Thread(target=self._run, name="client-views", daemon=True)
                self._loader.start()
            return future

    def _run(self) -> None:
        try:
            while self._next_batch():
                pass
        finally:
            with self._cond:
                self._loader = None
                if self._queue:  # asked for while this thread was ending: another reads it
                    self._loader = threading.Thread(
                        target=self._run, name="client-views", daemon=True
                    )
                    self._loader.start()

    def _next_batch(self) -> bool:
        """Read the views asked for (up to `max_batch`); False once idle for long."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._queue), timeout=_LOADER_IDLE_S):
                return False
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        # The version of the moment the read begins: a change landing during the read leaves
        # the views stale, and the next request reads them again.
        version = self._version()
        try:
            views = self._load(batch)
        except Exception as error:  # every waiter gets the same failure (e.g. busy)
            self._settle(batch, version, {}, error)
            return True
        self.reads += len(batch)
        self._settle(batch, version, views, None)
        return True

    def _settle(
        self,
        batch: list[str],
        version: int,
        views: Mapping[str, ClientView],
        error: Exception | None,
    ) -> None:
        with self._cond:
            waiting = [(self._waiting.pop(client_id, None), client_id) for client_id in batch]
            for client_id in batch:
                view = views.get(client_id)
                if view is not None:
                    self._views[client_id] = (version, view)
                    self._views.move_to_end(client_id)
            while len(self._views) > self._max_clients:
                self._views.popitem(last=False)
        for future, client_id in waiting:  # once the views are in place, bound and all
            if future is None or future.done():
                continue
            view = views.get(client_id)
            if view is not None:
                future.set_result(view)
            else:
                future.set_exception(error or PrewarmError(f"No view of {client_id} was read."))
