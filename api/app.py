"""The client-facing HTTP API: predicted profiles, composite schemas, feedback, activation.

`create_app` builds a FastAPI app over one warehouse file and (optionally) a container
runtime; `flows/` owns settings and passes them in. OpenAPI is served at /openapi.json and
/docs.

This module assembles the app; the pieces live beside it: `api.context` (the state the
routes share, warehouse access), `api.auth` (API keys), `api.middleware` (body cap,
catch-all 500), `api.handlers` (error answers), `api.routes` (the /v1 routes),
`api.activation_route` (what POST /activate does) and `api.activate_asgi` (where).

Security decisions:

- **Authentication before anything about the request.** Every /v1 route is an
  `AuthenticatedRoute` (`api.auth`): the API key (`Authorization: Bearer <key>` or
  `X-API-Key`) is checked, and the path's client compared with the key's, *before* FastAPI
  reads or validates the body or the path. So a missing or bad key is 401 and another client's
  resource is 403 whatever the body, and a valid key on an unknown client id is 403 too:
  responses never tell which clients exist.
- **Bodies are capped** (`max_body_bytes`): a larger Content-Length is refused before the
  body is read (413), and a body streamed without one is counted as it arrives.
- **Errors are plain JSON without internals**: `{"detail": ...}`, with `errors` per field
  on 422; anything unexpected is logged with its traceback and answered with a generic
  500. Every SQL statement is parameterised (in `warehouse/`).

The request path: nothing on it that can be done before it. A request answers from memory
on the event loop: its key against the live keys (`api.keys`), its client's view
(`api.views`: mode, planned members, host, composite, routing, the serialized `/profile`
answer), both read once and stamped with the warehouse's version (`api.stamp`: a stat of
the file and its write-ahead log per request). When another process (the cycle, the CLI)
changed the warehouse, the first request after it reads them again, off the event loop, on
one connection for all the clients waiting; this API's own changes (schema, attributes)
do the same. Only the runtime's own calls (list, lease, unpause; a cold start) run in a
worker thread. POST /activate is answered before the router (`api.activate_asgi`: the same
code and checks as its route, without FastAPI's routing and dependency solving). The
activation outcome is queued for a background writer
(`api.recorder`), which hands a batch to a child process (`api.outcome_writer`: DuckDB's
open and checkpoint hold the GIL for tens of milliseconds) when the oldest queued outcome
is `record_linger_s` (0.5 s) old, and everything queued on shutdown; a crash loses at most
the outcomes of that last half second (never more than the queue's bound).
The views are bounded (`max_clients`, least recently used dropped), the queue too
(`max_queued_outcomes`: past it outcomes are refused, counted and logged).

Warehouse access: DuckDB connections are short-lived (flows write the same file from other
processes). Nothing queues behind one process-wide lock: reads run together and writes run
together (`api.gate.ModeGate`: DuckDB refuses a read-only and a read-write connection to one
file at once within a process), and each call waits at most `lock_wait_s`, gate and file
lock together, before a 503 with Retry-After.

Activation is bounded per client (`api.activation`): a per-key token bucket (429), no
activation for a forecast-only client (409, nothing started), and at most the members the
applied plan gives the client plus `burst_max` (429 with Retry-After past it; cold starts
of one client coalesce). Every outcome, refusals included, is recorded in `pool_events`
through `api.recorder.ActivationRecorder`, in batches off the request path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from starlette.concurrency import run_in_threadpool

from api.activate_asgi import ActivateAsgi
from api.change_routes import changes_router
from api.context import RECORD_LINGER_S, AppContext, context_of
from api.handlers import install_handlers
from api.middleware import BodyLimit, CatchAll
from api.models import Health
from api.rate import TokenBuckets
from api.routes import v1_router
from api.views import DEFAULT_MAX_CLIENTS
from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.leases import LeaseBook, lease_book_path

DEFAULT_LOCK_WAIT_S = 5.0
DEFAULT_BURST_MAX = 4
DEFAULT_ACTIVATE_RATE = 10.0
DEFAULT_ACTIVATE_BURST = 20


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.prewarm.open()
    yield
    # Off the event loop: the recorder's last write may wait for the warehouse.
    await run_in_threadpool(app.state.prewarm.close)


def create_app(
    warehouse_path: Path,
    runtime_factory: Callable[[], ContainerRuntime] | None,
    pool_scope: dict[str, str],
    max_body_bytes: int = 65536,
    *,
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    leases: LeaseBook | None = None,
    lease_seconds: float = 60.0,
    burst_max: int = DEFAULT_BURST_MAX,
    activate_rate: float = DEFAULT_ACTIVATE_RATE,
    activate_burst: int = DEFAULT_ACTIVATE_BURST,
    allowed_images: Iterable[str] | None = None,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    max_queued_outcomes: int = 10_000,
    record_linger_s: float = RECORD_LINGER_S,
) -> FastAPI:
    """The API over `warehouse_path`; activation needs `runtime_factory` (built on first use).

    `pool_scope` labels the members this API may activate and the ones it cold-starts
    (e.g. `Settings.pool_scope`); `lock_wait_s` is how long a request waits for a warehouse
    another process has locked before answering 503. An activated member is leased to its
    request for `lease_seconds` in `leases` (default: the pool's book beside the warehouse).
    A client holds at most its planned members plus `burst_max`; each key may activate
    `activate_rate` times a second, in bursts of up to `activate_burst`. A schema may name
    only `allowed_images` (default: the worker image prewarm builds). At most `max_clients`
    client views are kept in memory and `max_queued_outcomes` outcomes wait to be written,
    each written within `record_linger_s` (plus one write) while activations keep coming.
    """
    if leases is None:
        pool = dict(pool_scope).get("prewarm.pool", "default")
        leases = LeaseBook(lease_book_path(Path(warehouse_path).parent, pool))
    app = FastAPI(
        lifespan=_lifespan,
        title="prewarm API",
        version="1",
        summary="Predicted resource profiles, composite schemas, feedback and activation.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        telemetry=_native_telemetry(),
    )
    app.state.prewarm = AppContext(
        warehouse_path,
        runtime_factory,
        pool_scope,
        lock_wait_s,
        leases,
        lease_seconds,
        burst_max,
        TokenBuckets(activate_rate, activate_burst),
        allowed_images,
        max_clients=max_clients,
        max_queued_outcomes=max_queued_outcomes,
        record_linger_s=record_linger_s,
    )

    @app.get("/healthz", response_model=Health, summary="Liveness, and whether the warehouse opens")
    async def healthz(request: Request) -> Health:
        return Health(status="ok", warehouse=await context_of(request).warehouse_answers_soon())

    app.include_router(v1_router())
    app.include_router(changes_router())
    install_handlers(app)
    # Inside the body cap and the catch-all, before the router (see `api.activate_asgi`).
    app.add_middleware(ActivateAsgi, api=app)
    # Added last = outermost: errors anywhere inside, the body limit included, are caught.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(CatchAll)
    return app


def _native_telemetry() -> TelemetryConfig | None:
    """FastAPI's own OpenTelemetry: as FastAPI sets it up when the environment configures
    OpenTelemetry (any `OTEL_` variable, or `FASTAPI_OTEL_AUTO_CONFIGURE`), else off. On,
    FastAPI asks on every request whether a provider has been set up since: three
    environment lookups, ~50 us, 5 % of a warm activation's CPU, for nothing when none is."""
    if any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in os.environ):
        return None
    return {"tracing": False, "metrics": False, "logs": False}
