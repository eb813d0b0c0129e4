"""Serve an API app with uvicorn (what `prewarm api` runs)."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


def serve(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, access_log: bool = False
) -> None:
    """Run `app` until interrupted; the caller built it (`api.app.create_app`) from settings.

    Binds to loopback unless told otherwise: the API hands out activations, so exposing it
    on every interface is a choice the operator should make explicitly (`--host 0.0.0.0`).

    No line per request unless `access_log`: every activation's outcome is already a
    `pool_events` row (pruned by retention), while an access log under `prewarm up` is a file
    nobody rotates, ~6 GB a day at the 700 activations a second this machine serves.
    """
    log.info("prewarm API on http://%s:%d (docs at /docs)", host, port)
    # proxy_headers off: without a trusted proxy in front, X-Forwarded-* are client-forged.
    uvicorn.run(
        app,
        host=host,
        port=port,
        proxy_headers=False,
        server_header=False,
        access_log=access_log,
    )
