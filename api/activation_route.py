"""What POST /activate does between authentication and the answer: rate limit, runtime,
mode, then a bounded activation (`api.activation`); every outcome, refusals included, is
queued for `pool_events`.

Everything before the runtime call answers from memory on the event loop (the token
bucket, the client's view: mode, planned members, routing, composite, host). The usual
warm claim stays on the loop too (`claim_warm_on_loop`: an idle active member, or a shadow
the process runtime resumes with its health answer awaited); the rest of the runtime's
work (Docker's calls, a cold member, a busy one, a cold start) runs in a worker thread.
Activations take turns on the loop (`api.turns`), so a burst is answered in arrival order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

from fastapi import Header, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.activation import (
    ActivationOutcome,
    ActivationRefused,
    ColdStartCap,
    activate_or_cold_start,
    claim_warm_on_loop,
)
from api.context import BUSY_DETAIL, RETRY, AppContext, WarehouseUnavailable
from api.middleware import error_response
from api.models import (
    Activated,
    ColdStarted,
)
from api.rate import retry_after
from api.turns import Turn
from api.views import ClientView
from provisioning.runtime.base import LABEL_HOST, PrewarmRuntimeError, ms_since
from provisioning.schema_model import Routing, SchemaError
from provisioning.schema_render import render_container_config
from warehouse.activations import Activation
from warehouse.errors import WarehouseBusy

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

FORECAST_ONLY = "forecast-only"

AFFINITY_HEADER = "X-Prewarm-Affinity"
# A key is hashed, never stored or echoed: bounded so a request cannot make hashing costly,
# printable ASCII without edge spaces so every HTTP stack passes it on unchanged.
AFFINITY_MAX_LENGTH = 128
AFFINITY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
AffinityKey = Annotated[
    str | None,
    Header(
        alias=AFFINITY_HEADER,
        min_length=1,
        max_length=AFFINITY_MAX_LENGTH,
        pattern=AFFINITY_PATTERN,
        description="Keeps requests with one key on one member (or host) when the client's "
        "schema asks for routing affinity (`routing.affinity`: session or host); 1-128 "
        "printable ASCII characters. Ignored otherwise.",
    ),
]


class Refusal(Exception):
    """An activation that ends without a member: its answer and its `pool_events` row."""

    def __init__(self, activation: Activation, response: JSONResponse) -> None:
        super().__init__(activation.reason)
        self.activation = activation
        self.response = response


async def activate_for_request(
    ctx: AppContext, client_id: str, started: float, turn: Turn, affinity_key: str | None = None
) -> ActivationOutcome:
    """Rate limit, runtime, mode, then a bounded activation; `Refusal` for every "no".

    Which warm member serves follows the client's routing section (from its view) and the
    request's `affinity_key`. `turn` (`api.turns`) ends when the claim is decided, or as the
    work goes to a thread."""

    def refuse(
        reason: str, status_code: int, detail: str, headers: Mapping[str, str] | None = None
    ) -> Refusal:
        activation = Activation(
            client_id=client_id,
            runtime=ctx.runtime_name,
            ms=ms_since(started),
            reason=f"request: {reason}",
            ok=False,
            error=detail,
        )
        return Refusal(activation, error_response(status_code, detail, headers))

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
        runtime = await ctx.runtime_soon()
        view = await ctx.view(client_id)
    except HTTPException as error:
        detail = str(error.detail)
        raise refuse("failed (no runtime)", error.status_code, detail, error.headers) from error
    except (WarehouseBusy, WarehouseUnavailable) as error:
        log.warning("activation for %s: the warehouse is unavailable: %s", client_id, error)
        raise refuse("failed (warehouse busy)", 503, BUSY_DETAIL, RETRY) from error
    if view.terms.mode == FORECAST_ONLY:
        raise refuse(
            "refused (forecast-only)",
            409,
            "This client is forecast-only: prewarm forecasts its demand but runs no members "
            "for it, so there is nothing to activate and none is started.",
        )
    cap = ColdStartCap(
        limit=view.terms.planned_members + ctx.burst_max,
        wait_s=ctx.lock_wait_s,
        lock=ctx.client_locks.of(client_id),
    )

    def read_routing() -> Routing:  # read only when the client has members to choose from
        return view.routing

    try:
        on_loop = await claim_warm_on_loop(
            runtime,
            client_id,
            ctx.pool_scope,
            ctx.leases,
            ctx.lease_seconds,
            cap=cap,
            read_routing=read_routing,
            affinity_key=affinity_key,
        )
        if on_loop is not None:
            return on_loop
        turn.end()  # the loop is free while the thread works
        return await run_in_threadpool(
            activate_or_cold_start,
            runtime,
            client_id,
            ctx.pool_scope,
            partial(_cold_start_inputs, view),
            ctx.leases,
            ctx.lease_seconds,
            cap=cap,
            read_routing=read_routing,
            affinity_key=affinity_key,
        )
    except ActivationRefused as refused:
        log.info("activation for %s %s", client_id, refused.reason)
        raise refuse(
            refused.reason, 429, refused.detail, {"Retry-After": retry_after(refused.retry_after_s)}
        ) from refused
    except (PrewarmRuntimeError, SchemaError) as error:
        log.warning("activation for %s failed: %s", client_id, error)
        refusal = refuse(
            "failed", 503, "No capacity could be activated or started; try again shortly.", RETRY
        )
        # The row keeps the cause (for the operator); the answer does not.
        refusal.activation = replace(refusal.activation, error=f"{type(error).__name__}: {error}")
        raise refusal from error


async def answer_activation(
    ctx: AppContext, client_id: str, affinity_key: str | None
) -> Activated | JSONResponse:
    """POST /activate once the request is authenticated and valid: the answer, its outcome
    queued for `pool_events` (written within `record_linger_s`)."""
    started = time.perf_counter()
    outcome: ActivationOutcome | Activation
    response: Activated | JSONResponse
    turn = await ctx.turns.take()
    try:
        outcome = await activate_for_request(ctx, client_id, started, turn, affinity_key)
    except Refusal as refusal:
        outcome, response = refusal.activation, refusal.response
    else:
        response = activation_response(outcome)
    finally:
        turn.end()  # the rest (outcome queued, answer built) does not yield the loop
    record_outcome(ctx, client_id, outcome)
    return response


def _cold_start_inputs(view: ClientView) -> tuple[dict[str, Any], str | None]:
    # SchemaError propagates (not _composite's 409): on /activate, 409 means "cold-started".
    return render_container_config(view.composite_or_raise()), view.planned_host


def activation_response(outcome: ActivationOutcome) -> Activated | JSONResponse:
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


def record_outcome(
    ctx: AppContext, client_id: str, outcome: ActivationOutcome | Activation
) -> Future[bool]:
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
