"""ASGI middleware: the request body cap (`BodyLimit`) and the catch-all that turns any
unhandled error into a logged, generic 500 (`CatchAll`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Every module of the API logs as `api.app`, the name its records have always carried.
log = logging.getLogger("api.app")

_INTERNAL_ERROR = "Internal server error; it has been logged."


class BodyTooLarge(HTTPException):
    """A streamed request body went past the limit (raised while the body is read)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body too large: at most {max_bytes} bytes.")


class BodyLimit:
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
            await error_response(400, "Malformed Content-Length header.")(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            too_large = BodyTooLarge(self.max_bytes)
            await error_response(413, str(too_large.detail))(scope, receive, send)
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


class CatchAll:
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
            await error_response(500, _INTERNAL_ERROR)(scope, receive, send)


def error_response(
    status_code: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code, headers=dict(headers or {}))
