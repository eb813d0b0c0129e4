"""Authentication before anything about the request: every /v1 route is an
`AuthenticatedRoute`, which checks the API key and the path's client before FastAPI reads
or validates the body or the path, from the in-memory key snapshot (`api.keys`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response, status
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.context import context_of
from warehouse.api_keys import KEY_PREFIX, parse_key

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

API_KEY_HEADER = "X-API-Key"
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="prewarm"'}


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


def _authenticate(request: Request, client_of: Callable[[str], str | None]) -> str:
    """The key's client id, when it may act on the path's client; 401 / 403 otherwise.

    `client_of`: the client of a well-formed key, None for a key that is not live."""
    key = _presented_key(request)
    parsed = parse_key(key)
    if parsed is None:
        log.info("rejected a malformed API key on %s", request.url.path)
        raise _unauthorized("Invalid API key.")
    client_id = client_of(key)
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
    # Who made a change, for `client_changes`: the key's public half, never its secret.
    request.state.actor = f"api:{KEY_PREFIX}_{parsed[0]}"
    return client_id


class _NeedsReload(Exception):
    """The key snapshot is not current: the check must run where it may wait (a thread)."""


def authenticated_from_memory(request: Request) -> bool:
    """Authenticate against the key snapshot in memory (401 / 403 as `HTTPException`); False,
    having decided nothing, when the snapshot must be read again first."""
    keys = context_of(request).keys

    def from_memory(key: str) -> str | None:
        known, client_id = keys.cached_client_of(key)
        if not known:
            raise _NeedsReload
        return client_id

    try:
        _authenticate(request, from_memory)
    except _NeedsReload:
        return False
    return True


class AuthenticatedRoute(APIRoute):
    """A route that authenticates before FastAPI reads or validates anything else.

    The key is checked on the event loop when the key snapshot is current (`api.keys`: the
    common case, no I/O); only when it must be read again does the check move to a thread.
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            if not authenticated_from_memory(request):
                ctx = context_of(request)
                await run_in_threadpool(
                    _authenticate, request, lambda key: ctx.keys.client_of(key, ctx.lock_wait_s)
                )
            return await handler(request)

        return authenticated
