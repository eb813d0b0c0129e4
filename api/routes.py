"""The /v1/clients/{client_id} routes: profile, schema, feedback and activate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.exceptions import HTTPException

from api.activation_route import AffinityKey, answer_activation
from api.auth import API_KEY_HEADER, AuthenticatedRoute
from api.context import context_of
from api.models import (
    Activated,
    ColdStarted,
    Error,
    FeedbackIn,
    FeedbackOut,
    Profile,
    ValidationFailed,
)
from api.profile import profile_response as profile_response  # `prewarm profile --json`
from provisioning.schema_model import Composite, SchemaError
from warehouse.feedback import record_feedback
from warehouse.validation import CLIENT_ID_PATTERN

ClientId = Annotated[
    str,
    PathParam(
        pattern=CLIENT_ID_PATTERN,
        max_length=128,
        description="The client id (the one the API key was issued for).",
    ),
]

_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "No API key, a malformed one, or an unknown one."},
    403: {"model": Error, "description": "The key belongs to another client."},
    422: {"model": ValidationFailed, "description": "Invalid path or body; fields named."},
    503: {"model": Error, "description": "Warehouse busy or unavailable; see Retry-After."},
}
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_AUTH_RESPONSES,
    400: {"model": Error, "description": "Malformed Content-Length header."},
    413: {"model": Error, "description": "Request body too large."},
}


def client_router(responses: dict[int | str, dict[str, Any]]) -> APIRouter:
    """A router for /v1/clients/{client_id}/...: every route authenticated for that client."""
    return APIRouter(
        prefix="/v1/clients/{client_id}",
        route_class=AuthenticatedRoute,
        # Documentation only (auto_error off): AuthenticatedRoute does the checking.
        dependencies=[
            Security(HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")),
            Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False)),
        ],
        responses=responses,
    )


def v1_router() -> APIRouter:
    router = client_router(_AUTH_RESPONSES)

    @router.get("/profile", response_model=Profile, summary="The current predicted profile")
    async def get_profile(client_id: ClientId, request: Request) -> Response:
        """The windows of the client's latest prediction run (empty when never predicted)."""
        view = await context_of(request).view(client_id)
        return Response(view.profile_or_raise(), media_type="application/json")

    @router.get(
        "/schema",
        response_model=Composite,
        summary="The composite workload schema",
        responses={409: {"model": Error, "description": "Stored extensions conflict."}},
    )
    async def get_schema(client_id: ClientId, request: Request) -> dict[str, Any]:
        """base <- the client's extensions <- anticipated (what the applied plan gave)."""
        view = await context_of(request).view(client_id)
        try:
            return view.composite_or_raise()
        except SchemaError as error:
            # The client's own stored extensions disagree: tell them which, it is their config.
            raise HTTPException(409, f"The stored schema cannot be composed: {error}") from error

    @router.post(
        "/feedback",
        status_code=201,
        response_model=FeedbackOut,
        summary="Rate a predicted window",
        responses=BODY_RESPONSES,
    )
    def post_feedback(client_id: ClientId, body: FeedbackIn, request: Request) -> FeedbackOut:
        """Store the client's rating (and actual usage, if given) of one window."""
        feedback_id = context_of(request).warehouse(
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
    async def post_activate(
        client_id: ClientId,
        request: Request,
        affinity: AffinityKey = None,
    ) -> Activated | JSONResponse:
        """Activate the client's warmest member (shadow, else cold); with none, start one.

        200: a warm member serves. 409 with `fallback`: none was warm, so one was created
        active (a cold start); its endpoint serves all the same. 409 without: the client is
        forecast-only. 429: rate-limited, or the client holds its limit of members (the
        members its plan gives it plus a burst allowance). Among several warm members the
        client's schema `routing` chooses: its weights per host, and its affinity with the
        `X-Prewarm-Affinity` key (a member shared with the key's other requests).
        """
        return await answer_activation(context_of(request), client_id, affinity)

    return router
