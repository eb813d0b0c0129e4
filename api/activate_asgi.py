"""POST /v1/clients/{client_id}/activate answered before FastAPI's router: the request path
that matters most, without the machinery it does not use.

A warm activation through FastAPI cost the API process ~2.5 ms of CPU, ~0.8 ms of it in
routing (matched against every route), dependency solving, and validating and encoding the
answer. With 8 callers on 2 cores that CPU is the latency: each request waits for the
others' Python. `ActivateAsgi` sits between the body cap and the router (`api.app`): an
activation request that matches the route exactly, whose key the snapshot in memory knows,
and whose client id and affinity header are valid, is answered here by the same code the
FastAPI route calls (`api.activation_route.answer_activation`), with the same checks in the
same order (`api.auth`). Everything else goes on to the router unchanged: the FastAPI route
stays the documented one (OpenAPI), and answers every case this one does not (a key to
read again, an invalid path or header) exactly as before.

An error raised here is answered by the handler the app has for it (`api.handlers`); one it
has none for goes on to the catch-all (`api.middleware.CatchAll`), as from the router.
"""

from __future__ import annotations

import inspect
import re

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, HTTPExceptionHandler, Receive, Scope, Send

from api.activation_route import (
    AFFINITY_HEADER,
    AFFINITY_MAX_LENGTH,
    AFFINITY_PATTERN,
    answer_activation,
)
from api.auth import authenticated_from_memory
from api.context import context_of
from api.models import Activated
from warehouse.validation import is_client_id

# The route's path, as Starlette compiles `/v1/clients/{client_id}/activate`.
_ROUTE = re.compile(r"^/v1/clients/(?P<client_id>[^/]+)/activate$")
_AFFINITY = re.compile(AFFINITY_PATTERN)


class ActivateAsgi:
    """Answer well-formed activation requests of known keys; pass the rest to `app`."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _ROUTE.match(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client_id = match["client_id"]
        request = Request({**scope, "path_params": {"client_id": client_id}}, receive)
        try:
            # Authentication first, as the route does: before anything about the request.
            if not authenticated_from_memory(request):
                await self.app(scope, receive, send)  # the key snapshot must be read again
                return
            affinity = request.headers.get(AFFINITY_HEADER)
            # The route's own checks: its client id pattern (at most 128 characters), and
            # the affinity header's.
            if not (is_client_id(client_id) and _valid_affinity(affinity)):
                await self.app(scope, receive, send)  # the route's 422, naming the field
                return
            answer = await answer_activation(context_of(request), client_id, affinity)
        except Exception as error:
            handler = _handler_for(self.api, error)
            if handler is None:
                raise
            response = await _handled(handler, request, error)
        else:
            response = _as_response(answer)
        await response(scope, receive, send)


def _valid_affinity(affinity: str | None) -> bool:
    if affinity is None:
        return True
    return 1 <= len(affinity) <= AFFINITY_MAX_LENGTH and _AFFINITY.match(affinity) is not None


def _as_response(answer: Activated | JSONResponse) -> JSONResponse:
    """The route's answer as FastAPI sends it: a model as its JSON (the response model)."""
    if isinstance(answer, JSONResponse):
        return answer
    return JSONResponse(answer.model_dump(mode="json"))


def _handler_for(api: FastAPI, error: Exception) -> HTTPExceptionHandler | None:
    """The app's exception handler for `error`, by its class's nearest registered base (as
    Starlette's exception middleware looks it up), or None."""
    for cls in type(error).__mro__:
        handler = api.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None


async def _handled(handler: HTTPExceptionHandler, request: Request, error: Exception) -> Response:
    answer = handler(request, error)  # the app's handlers are coroutines (api.handlers)
    return await answer if inspect.isawaitable(answer) else answer
