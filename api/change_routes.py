"""The /v1/clients/{client_id} routes that change a client: its attributes and its schema
extensions. The checks and the audit trail are `api/client_changes.py`, the same ones the
CLI uses; a refused change stores nothing and names what is wrong."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api import client_changes
from api.context import context_of
from api.models import (
    AttributesIn,
    ClientAttributes,
    Error,
    ExtensionStored,
    FieldError,
    ValidationFailed,
)
from api.routes import BODY_RESPONSES, ClientId, client_router
from provisioning.schema_checks import SchemaRejected
from provisioning.schema_model import SchemaError, SchemaValidationError

ExtensionName = Annotated[
    str,
    PathParam(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="The extension's name."),
]
_REFUSED: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "No such client (or extension)."},
    422: {"model": ValidationFailed, "description": "The change is refused; problems named."},
}


def changes_router() -> APIRouter:
    router = client_router({**BODY_RESPONSES, **_REFUSED})

    @router.put("/attributes", response_model=ClientAttributes, summary="Set attributes")
    def put_attributes(
        client_id: ClientId, body: AttributesIn, request: Request
    ) -> ClientAttributes | JSONResponse:
        """Set some of the client's region, tier and service (null clears one). They are
        forecasting features (and the region picks calendar events) from the next training."""
        ctx = context_of(request)
        values = body.model_dump(exclude_unset=True)
        try:
            stored = ctx.warehouse(
                client_changes.set_attributes, client_id, values, request.state.actor, write=True
            )
        except client_changes.UnknownClient as error:
            raise HTTPException(404, str(error)) from None
        except client_changes.ChangeRefused as error:
            return _refused(str(error), [("body", str(error))], "attribute_refused")
        return ClientAttributes(client_id=client_id, **stored)

    @router.post(
        "/schema/extensions",
        status_code=201,
        response_model=ExtensionStored,
        summary="Add or replace a schema extension",
    )
    def post_extension(
        client_id: ClientId,
        request: Request,
        document: Annotated[dict[str, Any], Body(description="An extension document.")],
    ) -> ExtensionStored | JSONResponse:
        """Check the extension alone and composed with the client's others, exactly as
        `prewarm schema add` does (shape, types, safety, the deployment's limits), then store
        it (replacing one of the same name). It shapes the client's members from the next
        cycle, and `GET /schema` at once."""
        ctx = context_of(request)
        try:
            name = ctx.warehouse(
                client_changes.add_extension,
                client_id,
                document,
                ctx.allowed_images,
                request.state.actor,
                write=True,
            )
        except client_changes.UnknownClient as error:
            raise HTTPException(404, str(error)) from None
        except SchemaValidationError as error:
            issues = [(f"body{path.removeprefix('$')}", problem) for path, problem in error.issues]
            return _refused(f"The extension is refused: {error}", issues, "schema_invalid")
        except SchemaRejected as error:
            field = f"body{error.field.removeprefix('$')}"
            return _refused(str(error), [(field, error.problem)], "schema_refused")
        except (SchemaError, client_changes.ChangeRefused) as error:
            return _refused(str(error), [("body", str(error))], "schema_refused")
        return ExtensionStored(name=name)

    @router.delete(
        "/schema/extensions/{name}", status_code=204, summary="Remove a schema extension"
    )
    def delete_extension(client_id: ClientId, name: ExtensionName, request: Request) -> Response:
        """Remove the client's extension called `name` (from the next cycle)."""
        ctx = context_of(request)
        try:
            removed = ctx.warehouse(
                client_changes.remove_extension, client_id, name, request.state.actor, write=True
            )
        except client_changes.UnknownClient as error:
            raise HTTPException(404, str(error)) from None
        if not removed:
            raise HTTPException(404, f"No schema extension called {name!r}.")
        return Response(status_code=204)

    return router


def _refused(detail: str, problems: list[tuple[str, str]], kind: str) -> JSONResponse:
    body = ValidationFailed(
        detail=" ".join(detail.split()),  # one line: the checks' messages may span several
        errors=[FieldError(field=field, message=message, type=kind) for field, message in problems],
    )
    return JSONResponse(body.model_dump(), 422)
