"""The client-facing HTTP API: predicted profiles, composite schemas, feedback, activation.

`create_app` builds a FastAPI app over one warehouse file and (optionally) a container
runtime; `flows/` owns settings and passes them in. OpenAPI is served at /openapi.json and
/docs.

Security decisions:

- **Authentication before anything about the request.** Every /v1 route is an
  `_AuthenticatedRoute`: the API key (`Authorization: Bearer <key>` or `X-API-Key`) is
  checked, and the path's client compared with the key's, *before* FastAPI reads or
  validates the body or the path. So a missing or bad key is 401 and another client's
  resource is 403 whatever the body, and a valid key on an unknown client id is 403 too:
  responses never tell which clients exist.
- **Bodies are capped** (`max_body_bytes`): a larger Content-Length is refused before the
  body is read (413), and a body streamed without one is counted as it arrives.
- **Errors are plain JSON without internals**: `{"detail": ...}`, with `errors` per field
  on 422; anything unexpected is logged with its traceback and answered with a generic
  500. Every SQL statement is parameterised (in `warehouse/`).

Warehouse access: each request opens short-lived DuckDB connections (flows write the same
file from other processes). Nothing queues behind one process-wide lock: reads run together
and writes run together (`api.gate.ModeGate`: DuckDB refuses a read-only and a read-write
connection to one file at once within a process), and each call waits at most
`lock_wait_s`, gate and file lock together, before a 503 with Retry-After. Keys are checked
against an in-memory snapshot of the live keys (`api.keys.KeyCache`), so a flood of bad
keys is refused without opening the warehouse.

Activation is bounded per client (`api.activation`): a per-key token bucket (429), no
activation for a forecast-only client (409, nothing started), and at most the members the
applied plan gives the client plus `burst_max` (429 with Retry-After past it; cold starts
of one client coalesce). Every outcome, refusals included, is recorded in `pool_events`
through `api.recorder.ActivationRecorder`, in batches off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, Response, Security, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.activation import (
    ActivationOutcome,
    ActivationRefused,
    ClientLocks,
    ColdStartCap,
    activate_or_cold_start,
)
from api.composite import client_composite
from api.gate import ModeGate
from api.keys import KeyCache
from api.models import (
    Activated,
    ColdStarted,
    Error,
    FeedbackIn,
    FeedbackOut,
    FieldError,
    Health,
    Peak,
    Profile,
    ProfileWindow,
    ValidationFailed,
)
from api.rate import TokenBuckets, retry_after
from api.recorder import ActivationRecorder
from core.errors import PrewarmError
from core.times import aware_utc
from core.vocabulary import METRICS
from provisioning.reconciler import LABEL_HOST
from provisioning.runtime.base import ContainerRuntime, PrewarmRuntimeError, ms_since
from provisioning.runtime.leases import LeaseBook, lease_book_path
from provisioning.schema import Composite, SchemaError, render_container_config
from provisioning.schema_checks import SchemaRejected
from warehouse.activations import (
    Activation,
    ActivationTerms,
    read_activation_terms,
    record_activations,
)
from warehouse.api_keys import KEY_PREFIX, parse_key
from warehouse.client_reads import read_latest_profile
from warehouse.db import connect
from warehouse.errors import WarehouseBusy
from warehouse.feedback import record_feedback
from warehouse.live_keys import read_live_keys
from warehouse.plans import planned_host
from warehouse.validation import CLIENT_ID_PATTERN

log = logging.getLogger(__name__)

T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"
DEFAULT_LOCK_WAIT_S = 5.0
DEFAULT_BURST_MAX = 4
DEFAULT_ACTIVATE_RATE = 10.0
DEFAULT_ACTIVATE_BURST = 20
RETRY_AFTER_S = 5
# How long a client's mode and planned members are trusted (plans change once a cycle).
_TERMS_MAX_AGE_S = 2.0
FORECAST_ONLY = "forecast-only"
_HEALTH_LOCK_WAIT_S = 0.5
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="prewarm"'}
_RETRY = {"Retry-After": str(RETRY_AFTER_S)}
_INTERNAL_ERROR = "Internal server error; it has been logged."
_BUSY_DETAIL = "The warehouse is busy (a flow is writing); try again shortly."
_FASTAPI_BODY_ERROR = "There was an error parsing the body"

ClientId = Annotated[
    str,
    PathParam(
        pattern=CLIENT_ID_PATTERN,
        max_length=128,
        description="The client id (the one the API key was issued for).",
    ),
]


class WarehouseUnavailable(Exception):
    """The warehouse file does not exist (no ingest has run yet)."""


class BodyTooLarge(HTTPException):
    """A streamed request body went past the limit (raised while the body is read)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body too large: at most {max_bytes} bytes.")


# --- application state ----------------------------------------------------------------------


class _Context:
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
        self.composite = partial(client_composite, allowed_images=allowed_images)
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
                        503, "The container runtime is unavailable; try again later.", _RETRY
                    ) from error
            return self._runtime


def _context(request: Request) -> _Context:
    return request.app.state.prewarm


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _select_one(path: Path, *, wait_s: float) -> None:
    with connect(path, read_only=True, wait_s=wait_s) as con:
        con.execute("SELECT 1").fetchall()


# --- authentication -------------------------------------------------------------------------


def _presented_key(request: Request) -> str:
    """The key from `Authorization: Bearer` (preferred) or `X-API-Key`; 401 otherwise."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        return token
    header_key = request.headers.get(API_KEY_HEADER)
    if header_key is not None and header_key.strip():
        return header_key.strip()
    raise _unauthorized(
        f"Missing API key: send 'Authorization: Bearer <key>' (or '{API_KEY_HEADER}: <key>')."
    )


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, _WWW_AUTHENTICATE)


def _authenticate(request: Request) -> str:
    """The key's client id, when it may act on the path's client; 401 / 403 otherwise."""
    key = _presented_key(request)
    parsed = parse_key(key)
    if parsed is None:
        log.info("rejected a malformed API key on %s", request.url.path)
        raise _unauthorized("Invalid API key.")
    ctx = _context(request)
    client_id = ctx.keys.client_of(key, ctx.lock_wait_s)
    if client_id is None:
        # The key id is the public half of a key: safe to log, useful to trace probing.
        log.info("rejected API key %s_%s (unknown, revoked or forged)", KEY_PREFIX, parsed[0])
        raise _unauthorized("Invalid API key.")
    # Compared raw, before path validation: an id that is malformed, unknown or someone
    # else's gets the same answer.
    wanted = request.path_params.get("client_id")
    if wanted != client_id:
        log.info("denied the key of %s access to client %r", client_id, wanted)
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "This API key does not grant access to that client."
        )
    return client_id


class _AuthenticatedRoute(APIRoute):
    """A route that authenticates before FastAPI reads or validates anything else."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            await run_in_threadpool(_authenticate, request)
            return await handler(request)

        return authenticated


# --- middleware -----------------------------------------------------------------------------


class _BodyLimit:
    """413 for bodies over `max_bytes`: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _error(400, "Malformed Content-Length header.")(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            too_large = BodyTooLarge(self.max_bytes)
            await _error(413, str(too_large.detail))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length, None when absent, -1 when unreadable."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else -1
    return None


class _CatchAll:
    """Log any unhandled error with its traceback; answer a generic 500 without it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _error(500, _INTERNAL_ERROR)(scope, receive, send)


def _error(status_code: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code, headers=dict(headers or {}))


# --- exception handlers ---------------------------------------------------------------------


def _install_handlers(app: FastAPI) -> None:
    async def http_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 400 and error.detail == _FASTAPI_BODY_ERROR:
            # FastAPI's answer to a body json.loads cannot even decode (e.g. not UTF-8):
            # the same kind of mistake as malformed JSON, so the same 422 shape.
            problem = FieldError(
                field="body", message="the body is not valid UTF-8 JSON", type="json_invalid"
            )
            body = ValidationFailed(
                detail=f"Invalid request: body: {problem.message}", errors=[problem]
            )
            return JSONResponse(body.model_dump(), 422)
        return _error(error.status_code, str(error.detail), error.headers)

    async def invalid_request(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = [_field_error(item) for item in error.errors()]
        listing = "; ".join(f"{p.field}: {p.message}" for p in problems)
        body = ValidationFailed(detail=f"Invalid request: {listing}", errors=problems)
        return JSONResponse(body.model_dump(), 422)

    async def busy(_: Request, error: Exception) -> Response:
        log.warning("warehouse busy: %s", error)
        return _error(503, _BUSY_DETAIL, _RETRY)

    async def no_warehouse(_: Request, error: Exception) -> Response:
        log.warning("no warehouse at %s", error)
        return _error(503, "The warehouse is not available yet; try again later.", _RETRY)

    async def schema_refused(request: Request, error: Exception) -> Response:
        # A stored extension failed the safety checks (one stored before they existed):
        # 422 naming the field, on /schema and /activate alike; nothing reached a runtime.
        assert isinstance(error, SchemaRejected)
        log.warning("refused the stored schema of %s: %s", request.url.path, error)
        if request.url.path.endswith("/activate"):
            ctx = _context(request)
            ctx.recorder.submit(  # written off the request path, like every outcome
                Activation(
                    client_id=str(request.path_params.get("client_id")),
                    runtime=ctx.runtime_name,
                    ms=0.0,
                    reason="request: refused (schema)",
                    ok=False,
                    error=str(error),
                )
            )
        problem = FieldError(field=error.field, message=error.problem, type="schema_refused")
        body = ValidationFailed(
            detail=f"The client's stored schema cannot be used: {error}", errors=[problem]
        )
        return JSONResponse(body.model_dump(), 422)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(WarehouseBusy, busy)
    app.add_exception_handler(WarehouseUnavailable, no_warehouse)
    app.add_exception_handler(SchemaRejected, schema_refused)


def _field_error(item: Mapping[str, Any]) -> FieldError:
    """One pydantic / FastAPI error as (dotted field, message), never echoing the input."""
    parts = [str(part) for part in item.get("loc", ())]
    is_key = parts[-1:] == ["[key]"]  # pydantic's marker for a bad dict key
    field = ".".join(parts[:-1] if is_key else parts)
    message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
    if is_key:
        message = f"not an allowed name: {message}"
    kind = str(item.get("type", "value_error"))
    if parts == ["body"] and kind in ("model_attributes_type", "dict_type"):
        message = "expected a JSON object, sent with Content-Type: application/json"
    if kind == "json_invalid":
        reason = (item.get("ctx") or {}).get("error", "")
        message = f"the body is not valid JSON ({reason})" if reason else "invalid JSON"
        field = "body"
    return FieldError(field=field or "request", message=message, type=kind)


# --- routes ---------------------------------------------------------------------------------

_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No API key, a malformed one, or an unknown one."},
    403: {"model": Error, "description": "The key belongs to another client."},
    422: {"model": ValidationFailed, "description": "Invalid path or body; fields named."},
    503: {"model": Error, "description": "Warehouse busy or unavailable; see Retry-After."},
}
_BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_AUTH_RESPONSES,
    400: {"model": Error, "description": "Malformed Content-Length header."},
    413: {"model": Error, "description": "Request body too large."},
}


def _v1_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/clients/{client_id}",
        route_class=_AuthenticatedRoute,
        # Documentation only (auto_error off): _AuthenticatedRoute does the checking.
        dependencies=[
            Security(HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")),
            Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False)),
        ],
        responses=_AUTH_RESPONSES,
    )

    @router.get("/profile", response_model=Profile, summary="The current predicted profile")
    def get_profile(client_id: ClientId, request: Request) -> Profile:
        """The windows of the client's latest prediction run (empty when never predicted)."""
        rows = _context(request).warehouse(_read_profile, client_id)
        return _profile(client_id, rows)

    @router.get(
        "/schema",
        response_model=Composite,
        summary="The composite workload schema",
        responses={409: {"model": Error, "description": "Stored extensions conflict."}},
    )
    def get_schema(client_id: ClientId, request: Request) -> dict[str, Any]:
        """base <- the client's extensions <- anticipated (what the applied plan gave)."""
        return _composite(_context(request), client_id)

    @router.post(
        "/feedback",
        status_code=201,
        response_model=FeedbackOut,
        summary="Rate a predicted window",
        responses=_BODY_RESPONSES,
    )
    def post_feedback(client_id: ClientId, body: FeedbackIn, request: Request) -> FeedbackOut:
        """Store the client's rating (and actual usage, if given) of one window."""
        feedback_id = _context(request).warehouse(
            record_feedback,
            client_id,
            body.window_start,
            body.window_end,
            body.score,
            dict(body.actual) if body.actual is not None else None,
            body.comment,
            write=True,
        )
        return FeedbackOut(feedback_id=feedback_id)

    @router.post(
        "/activate",
        response_model=Activated,
        summary="Claim warm capacity for an incoming request",
        responses={
            409: {
                "model": ColdStarted | Error,
                "description": "No warm member: one was cold-started (`fallback`). Or the "
                "client is forecast-only: nothing is started (`detail` only).",
            },
            429: {
                "model": Error,
                "description": "Too many activations for this key, or the client holds its "
                "limit of members; nothing was started. See Retry-After.",
            },
            503: {"model": Error, "description": "No runtime, or it failed; see the detail."},
        },
    )
    def post_activate(
        client_id: ClientId, request: Request, background: BackgroundTasks
    ) -> Activated | JSONResponse:
        """Activate the client's warmest member (shadow, else cold); with none, start one.

        200: a warm member serves. 409 with `fallback`: none was warm, so one was created
        active (a cold start); its endpoint serves all the same. 409 without: the client is
        forecast-only. 429: rate-limited, or the client holds its limit of members (the
        members its plan gives it plus a burst allowance).
        """
        ctx = _context(request)
        started = time.perf_counter()
        outcome: ActivationOutcome | Activation
        try:
            outcome = _activate(ctx, client_id, started)
        except _Refusal as refusal:
            outcome, response = refusal.activation, refusal.response
        else:
            response = _activation_response(outcome)
        background.add_task(_recorded, ctx, _record(ctx, client_id, outcome))
        return response

    return router


class _Refusal(Exception):
    """An activation that ends without a member: its answer and its `pool_events` row."""

    def __init__(self, activation: Activation, response: JSONResponse) -> None:
        super().__init__(activation.reason)
        self.activation = activation
        self.response = response


def _activate(ctx: _Context, client_id: str, started: float) -> ActivationOutcome:
    """Rate limit, runtime, mode, then a bounded activation; `_Refusal` for every "no"."""

    def refuse(
        reason: str, status_code: int, detail: str, headers: Mapping[str, str] | None = None
    ) -> _Refusal:
        activation = Activation(
            client_id=client_id,
            runtime=ctx.runtime_name,
            ms=ms_since(started),
            reason=f"request: {reason}",
            ok=False,
            error=detail,
        )
        return _Refusal(activation, _error(status_code, detail, headers))

    wait = ctx.rate.take(client_id)  # one live key per client: per key is per client
    if wait > 0:
        log.info("activation for %s rate-limited", client_id)
        raise refuse(
            "refused (rate limited)",
            429,
            f"Too many activations: at most {ctx.rate.rate:g} a second per key "
            f"(bursts of {ctx.rate.burst}).",
            {"Retry-After": retry_after(wait)},
        )
    try:
        runtime = ctx.runtime()
        terms = ctx.terms(client_id)
    except HTTPException as error:
        detail = str(error.detail)
        raise refuse("failed (no runtime)", error.status_code, detail, error.headers) from error
    except (WarehouseBusy, WarehouseUnavailable) as error:
        log.warning("activation for %s: the warehouse is unavailable: %s", client_id, error)
        raise refuse("failed (warehouse busy)", 503, _BUSY_DETAIL, _RETRY) from error
    if terms.mode == FORECAST_ONLY:
        raise refuse(
            "refused (forecast-only)",
            409,
            "This client is forecast-only: prewarm forecasts its demand but runs no members "
            "for it, so there is nothing to activate and none is started.",
        )
    cap = ColdStartCap(
        limit=terms.planned_members + ctx.burst_max,
        wait_s=ctx.lock_wait_s,
        lock=ctx.client_locks.of(client_id),
    )
    try:
        return activate_or_cold_start(
            runtime,
            client_id,
            ctx.pool_scope,
            lambda: _cold_start_inputs(ctx, client_id),
            ctx.leases,
            ctx.lease_seconds,
            cap=cap,
        )
    except ActivationRefused as refusal:
        log.info("activation for %s %s", client_id, refusal.reason)
        raise refuse(
            refusal.reason, 429, refusal.detail, {"Retry-After": retry_after(refusal.retry_after_s)}
        ) from refusal
    except (WarehouseBusy, WarehouseUnavailable) as error:
        log.warning("activation for %s: the warehouse is unavailable: %s", client_id, error)
        raise refuse("failed (warehouse busy)", 503, _BUSY_DETAIL, _RETRY) from error
    except (PrewarmRuntimeError, SchemaError) as error:
        log.warning("activation for %s failed: %s", client_id, error)
        refusal = refuse(
            "failed", 503, "No capacity could be activated or started; try again shortly.", _RETRY
        )
        # The row keeps the cause (for the operator); the answer does not.
        refusal.activation = replace(refusal.activation, error=f"{type(error).__name__}: {error}")
        raise refusal from error


def _read_profile(path: Path, client_id: str, *, wait_s: float) -> list[dict[str, Any]]:
    with connect(path, read_only=True, wait_s=wait_s) as con:
        return read_latest_profile(con, client_id)


def _profile(client_id: str, rows: list[dict[str, Any]]) -> Profile:
    windows = [
        ProfileWindow(
            start=aware_utc(row["window_start"]),
            end=aware_utc(row["window_end"]),
            duration_minutes=float(row["duration_minutes"]),
            peaks={
                metric: Peak(
                    p50=_finite(row.get(f"{metric}_p50")), p90=_finite(row.get(f"{metric}_p90"))
                )
                for metric in METRICS
            },
            p_active=_finite(row.get("p_active")),
            confidence=float(row["confidence"]),
            model_name=str(row["model_name"]),
            model_version=str(row["model_version"]),
        )
        for row in rows
    ]
    generated_at = aware_utc(rows[0]["generated_at"]) if rows else None
    return Profile(client_id=client_id, generated_at=generated_at, windows=windows)


def _composite(ctx: _Context, client_id: str) -> dict[str, Any]:
    try:
        return ctx.warehouse(ctx.composite, client_id)
    except SchemaError as error:
        # The client's own stored extensions disagree: tell them which, it is their config.
        raise HTTPException(409, f"The stored schema cannot be composed: {error}") from error


def _cold_start_inputs(ctx: _Context, client_id: str) -> tuple[dict[str, Any], str | None]:
    # SchemaError propagates (not _composite's 409): on /activate, 409 means "cold-started".
    config = render_container_config(ctx.warehouse(ctx.composite, client_id))
    return config, ctx.warehouse(_planned_host, client_id)


def _planned_host(path: Path, client_id: str, *, wait_s: float) -> str | None:
    with connect(path, read_only=True, wait_s=wait_s) as con:
        return planned_host(con, client_id)


def _activation_response(outcome: ActivationOutcome) -> Activated | JSONResponse:
    member = outcome.member
    if not outcome.cold_start:
        return Activated(
            member_id=member.id,
            endpoint=member.endpoint,
            activation_ms=outcome.ms,
            tier_before=outcome.tier_before,
        )
    body = ColdStarted(
        fallback="cold-start",
        member_id=member.id,
        endpoint=member.endpoint,
        activation_ms=outcome.ms,
        detail="No warm member was available; a new one was started for this request.",
    )
    return JSONResponse(body.model_dump(mode="json"), status.HTTP_409_CONFLICT)


def _record(ctx: _Context, client_id: str, outcome: ActivationOutcome | Activation) -> Future[bool]:
    """Queue the outcome's `pool_events` row (a refusal or failure comes as its row)."""
    if isinstance(outcome, Activation):
        return ctx.recorder.submit(outcome)
    member = outcome.member
    return ctx.recorder.submit(
        Activation(
            client_id=client_id,
            runtime=ctx.runtime_name,
            ms=outcome.ms,
            reason=outcome.reason,
            member_id=member.id,
            plan_id=member.plan_id,
            host=member.labels.get(LABEL_HOST),
            endpoint=member.endpoint,
            created_at=member.created_at,
        )
    )


async def _recorded(ctx: _Context, done: Future[bool]) -> None:
    """After the response: wait (bounded, no thread held) until the row is written, so the
    request cycle ends with its outcome in the warehouse when the warehouse allows."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), ctx.lock_wait_s + 1.0)
    except TimeoutError:
        log.info("activation outcome still queued after the response (warehouse busy)")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --- the app --------------------------------------------------------------------------------


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.prewarm.close()


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
) -> FastAPI:
    """The API over `warehouse_path`; activation needs `runtime_factory` (built on first use).

    `pool_scope` labels the members this API may activate and the ones it cold-starts
    (e.g. `Settings.pool_scope`); `lock_wait_s` is how long a request waits for a warehouse
    another process has locked before answering 503. An activated member is leased to its
    request for `lease_seconds` in `leases` (default: the pool's book beside the warehouse).
    A client holds at most its planned members plus `burst_max`; each key may activate
    `activate_rate` times a second, in bursts of up to `activate_burst`. A schema may name
    only `allowed_images` (default: the worker image prewarm builds).
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
    )
    app.state.prewarm = _Context(
        warehouse_path,
        runtime_factory,
        pool_scope,
        lock_wait_s,
        leases,
        lease_seconds,
        burst_max,
        TokenBuckets(activate_rate, activate_burst),
        allowed_images,
    )

    @app.get("/healthz", response_model=Health, summary="Liveness, and whether the warehouse opens")
    def healthz(request: Request) -> Health:
        return Health(status="ok", warehouse=_context(request).warehouse_answers())

    app.include_router(_v1_router())
    _install_handlers(app)
    # Added last = outermost: errors anywhere inside, the body limit included, are caught.
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(_CatchAll)
    return app
