"""Exception handlers: every error is plain JSON without internals, `{"detail": ...}`, with
`errors` per field on 422."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api.context import BUSY_DETAIL, RETRY, WarehouseUnavailable, context_of
from api.middleware import error_response
from api.models import (
    FieldError,
    ValidationFailed,
)
from provisioning.schema_checks import SchemaRejected
from warehouse.activations import Activation
from warehouse.errors import WarehouseBusy

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def install_handlers(app: FastAPI) -> None:
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
        return error_response(error.status_code, str(error.detail), error.headers)

    async def invalid_request(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = [_field_error(item) for item in error.errors()]
        listing = "; ".join(f"{p.field}: {p.message}" for p in problems)
        body = ValidationFailed(detail=f"Invalid request: {listing}", errors=problems)
        return JSONResponse(body.model_dump(), 422)

    async def busy(_: Request, error: Exception) -> Response:
        log.warning("warehouse busy: %s", error)
        return error_response(503, BUSY_DETAIL, RETRY)

    async def no_warehouse(_: Request, error: Exception) -> Response:
        log.warning("no warehouse at %s", error)
        return error_response(503, "The warehouse is not available yet; try again later.", RETRY)

    async def schema_refused(request: Request, error: Exception) -> Response:
        # A stored extension failed the safety checks (one stored before they existed):
        # 422 naming the field, on /schema and /activate alike; nothing reached a runtime.
        assert isinstance(error, SchemaRejected)
        log.warning("refused the stored schema of %s: %s", request.url.path, error)
        if request.url.path.endswith("/activate"):
            ctx = context_of(request)
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
